"""Lesson 02: the MLP forward pass, from pixels to probabilities.

After this lesson you can write a multi-layer perceptron's forward pass for any depth, say
the shape of every tensor in it, and explain why its weights start as He-normal. The
notation, used the same way in every lesson, docstring and docs/ page:

    H_0 = X                       the input batch                     (B, 784)
    Z_l = H_{l-1} W_l + b_l       pre-activation of layer l           (B, d_l)
    H_l = relu(Z_l)               activation of layer l (l < n)       (B, d_l)
    Z_n                           the logits                          (B, 10)
    P = softmax(Z_n)              probabilities, each row sums to 1   (B, 10)
    L = mean over the batch of -log P[b, y_b]                         scalar

Parameters travel as one flat tuple (W1, b1, W2, b2, ..., Wn, bn) with W of shape
(fan_in, fan_out), and mlp_forward works for any depth. It also returns a cache,
(H_0, H_1, ..., H_{n-1}, Z_n): every layer's input, then the logits. That is exactly what
lesson 03's backward pass needs, and nothing more. Derivations: docs/02_mlp_forward.md.

Run:
    python 02_mlp_forward.py                 # the 784-512-128-10 network on 1,000 real digits
    python 02_mlp_forward.py --device cuda   # the same on a GPU

It also shows why He init: the scale of H_l layer by layer through a 10-layer ReLU stack
whose weights are drawn three ways (N(0, 1), N(0, 0.01^2), He).
"""

import os
import signal
import sys

# Engineering, not the lesson (the lesson starts below the imports). It comes before
# "import torch", which takes seconds, so that Ctrl-C, SIGTERM or SIGHUP while torch loads
# prints one line instead of a traceback.
if __name__ == "__main__":
    _signals = []  # the signals received, then "done" once the lesson has finished
    _starting = [True]  # until the imports are done

    def _interrupted(signum, frame):
        if "done" in _signals:  # Python is shutting down: nothing is left to stop
            return
        if not _signals:  # one message, however often the key is pressed
            start = "\n" if sys.stderr.isatty() else ""  # off the line the terminal's ^C is on
            print(start + "interrupted.", file=sys.stderr, flush=True)
        _signals.append(signum)
        if _starting[0]:  # an import can swallow the exit below and go on: leave at once
            os._exit(130)  # (nothing has been written yet)
        sys.exit(130)

    # SIGHUP: the terminal closed (not on Windows). A signal ignored when the run starts stays
    # ignored: SIGHUP under nohup, SIGINT in a job started with & from a script.
    for _name in ("SIGINT", "SIGTERM", "SIGHUP"):
        _number = getattr(signal, _name, None)
        if _number is not None and signal.getsignal(_number) is not signal.SIG_IGN:
            signal.signal(_number, _interrupted)

import argparse  # noqa: E402 (after the early signal handlers, on purpose)
import importlib  # noqa: E402
import math  # noqa: E402
import textwrap  # noqa: E402

import torch  # noqa: E402

import common  # noqa: E402

# The earlier lessons' functions. A module name cannot start with a digit, so a plain
# "import 01_logistic_regression" is a syntax error; importlib takes the name as a string.
logreg = importlib.import_module("01_logistic_regression")
check_labels = logreg.check_labels
add_run_args, int_in, load_mnist = common.add_run_args, common.int_in, common.load_mnist
make_generator = common.make_generator
parse_args, pick_device, result_line = common.parse_args, common.pick_device, common.result_line
run_main = common.run_main


def init_params(sizes, generator=None, dtype=torch.float32, device="cpu"):
    """sizes (D, d_1, ..., C) -> (W1, b1, ..., Wn, bn), W (fan_in, fan_out), b (fan_out,).

    He-normal: W ~ N(0, 2 / fan_in), b = 0, so the ReLU layers keep their activations' scale
    (docs/02_mlp_forward.md derives the 2; main shows it). The draws happen on the CPU from
    generator (torch's default one if None) and then move to device, so one seed gives the
    same network on every device.
    Needs: math, torch
    """
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        W = torch.randn(fan_in, fan_out, generator=generator, dtype=dtype) * math.sqrt(2 / fan_in)
        b = torch.zeros(fan_out, dtype=dtype)
        params += [W.to(device), b.to(device)]
    return tuple(params)


def linear_forward(h, W, b):
    """h (B, I) @ W (I, O) + b (O,) -> z (B, O): Z_l = H_{l-1} W_l + b_l.

    Needs: torch
    """
    return torch.addmm(b, h, W)  # the same as h @ W + b, in one fused call


def relu(z):
    """z (B, N) -> h = max(z, 0) (B, N): H_l = relu(Z_l).

    h is also ReLU's cache for the backward pass: the gradient flows exactly where h > 0.
    Needs: nothing
    """
    return z.clamp(min=0)


def softmax(logits):
    """logits (B, C) -> probabilities P (B, C), each row summing to 1.

    Subtracting the row's max changes nothing mathematically (it cancels in the ratio) but
    keeps exp() from overflowing: the largest exponent is exp(0) = 1.
    Needs: nothing
    """
    shifted = logits - logits.max(dim=1, keepdim=True).values  # (B, C), each row's max is 0
    e = shifted.exp()  # (B, C), in (0, 1]
    return e / e.sum(dim=1, keepdim=True)


def log_softmax(logits):
    """logits (B, C) -> log probabilities (B, C): shifted - log(sum(exp(shifted))).

    Needs: nothing
    """
    shifted = logits - logits.max(dim=1, keepdim=True).values  # (B, C)
    return shifted - shifted.exp().sum(dim=1, keepdim=True).log()


def cross_entropy(logits, y):
    """Mean over the batch of -log softmax(logits)[y]; logits (B, C), y (B,) int64 -> scalar.

    Computed through log_softmax, never log(softmax): a probability that underflows to 0
    would give log(0) = -inf, while the log-softmax stays finite. gather raises for a label
    outside [0, C), as the gradient's scatter does (lesson 03).
    Needs: check_labels (01), log_softmax
    """
    check_labels(y, logits.shape[1], len(logits))
    return -log_softmax(logits).gather(1, y.unsqueeze(1)).mean()


def mlp_forward(params, x):
    """params (W1, b1, ..., Wn, bn), x (B, D) -> logits Z_n (B, C), cache.

    cache = (H_0, H_1, ..., H_{n-1}, Z_n): every layer's input, then the logits. That is all
    the backward pass needs: dW_l needs H_{l-1}, delta_l = dL/dH_l * [H_l > 0] reads its
    ReLU mask from H_l, and the loss gradient starts from the logits. x must be a batch:
    one sample is x[None] (1, D).
    Needs: linear_forward, relu
    """
    if x.dim() != 2:
        raise ValueError(f"x must be a batch of shape (B, D), got shape {tuple(x.shape)}; "
                         "for a single sample pass x[None].")
    h = x
    cache = [x]
    for i in range(0, len(params) - 2, 2):
        h = relu(linear_forward(h, params[i], params[i + 1]))  # H_l (B, d_l)
        cache.append(h)
    logits = linear_forward(h, params[-2], params[-1])  # Z_n (B, C)
    cache.append(logits)
    return logits, tuple(cache)


def count_params(params):
    """Total number of scalars in a parameter tuple.

    Needs: nothing
    """
    return sum(p.numel() for p in params)


def describe(params, sizes):
    """One line per layer: name, weight and bias shapes, parameter count.

    Needs: nothing
    """
    rows = [("layer", "W", "b", "params")]
    for i in range(len(sizes) - 1):
        W, b = params[2 * i], params[2 * i + 1]
        kind = "relu" if i < len(sizes) - 2 else "logits"
        rows.append((f"{i + 1} {kind}", "x".join(map(str, W.shape)), str(b.shape[0]),
                     f"{W.numel() + b.numel():,}"))
    # Columns at least 8, 14, 9 and 10 wide, wider when a wide or tenth layer needs it: +2 is
    # the gap before each right-aligned column; the left column needs none.
    widths = [max(least, *(len(row[c]) + (0 if c == 0 else 2) for row in rows))
              for c, least in enumerate((8, 14, 9, 10))]
    return "\n".join(f"{row[0]:<{widths[0]}}" + "".join(f"{cell:>{w}}" for cell, w in
                                                         zip(row[1:], widths[1:]))
                     for row in rows)


def activation_scales(x, width, depth, weight_std, generator):
    """Push x (B, D) through depth ReLU layers of width, weights ~ N(0, weight_std(fan_in)^2)
    and zero biases -> [rms(H_1), ..., rms(H_depth)], rms = sqrt(mean of squares).

    docs/02_mlp_forward.md derives Var(Z_l) = fan_in Var(w) E[H_{l-1}^2] and E[H_l^2] =
    Var(Z_l) / 2, so the scale is kept when Var(w) = 2 / fan_in (He) and is multiplied by
    sqrt(fan_in Var(w) / 2) per layer otherwise.
    Needs: linear_forward, relu, torch
    """
    h, scales = x, []
    for _ in range(depth):
        fan_in = h.shape[1]
        W = torch.randn(fan_in, width, generator=generator, dtype=x.dtype) * weight_std(fan_in)
        b = torch.zeros(width, dtype=x.dtype)
        h = relu(linear_forward(h, W.to(x.device), b.to(x.device)))  # H_l (B, width)
        scales.append(h.square().mean().sqrt().item())
    return scales


def main(argv=None):
    """Run this lesson from the command line -> exit status.

    Needs: argparse, int_in (common), add_run_args (common), parse_args (common),
        pick_device (common), torch, init_params, make_generator (common), textwrap, describe,
        count_params, load_mnist (common), mlp_forward, softmax, cross_entropy, math,
        activation_scales, result_line (common), sys
    """
    parser = argparse.ArgumentParser(description=__doc__, exit_on_error=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int_in(1, 65_536), nargs="+",
                        default=[784, 512, 128, 10],
                        help="layer widths, input first (default: 784 512 128 10)")
    parser.add_argument("--digits", type=int_in(1, 10_000), default=1000,
                        help="how many test digits to push through the untrained network")
    add_run_args(parser, data=False)
    args = parse_args(parser, argv)
    if len(args.sizes) < 2 or args.sizes[0] != 784:
        raise ValueError(f"--sizes must start with 784 and hold at least two widths, "
                         f"got {args.sizes}.")
    if args.sizes[-1] < 10:
        raise ValueError(f"--sizes must end with at least 10 units, one logit per digit class "
                         f"(MNIST's labels run to 9), got {args.sizes[-1]}.")
    n_weights = sum(a * b for a, b in zip(args.sizes[:-1], args.sizes[1:]))
    if n_weights > 200_000_000:
        raise ValueError(f"--sizes {' '.join(map(str, args.sizes))} would need {n_weights:,} "
                         "weights (over 200 million, 0.8 GB); give smaller widths.")
    device = pick_device(args.device)

    with torch.inference_mode():
        params = init_params(args.sizes, make_generator(args.seed), device=device)
        net = "-".join(map(str, args.sizes))
        print(f"1. the network {net} on {device}, He-normal init (random seed {args.seed})")
        print(textwrap.indent(describe(params, args.sizes), "   "))
        n_params = count_params(params)
        print(f"   parameters: {n_params:,}")

        X_test, y_test = load_mnist(device=device)[2:]
        x, y = X_test[:args.digits], y_test[:args.digits]  # (N, 784), (N,)
        logits, cache = mlp_forward(params, x)
        probs = softmax(logits)  # (N, C)
        loss = cross_entropy(logits, y).item()
        row_error = (probs.sum(dim=1) - 1).abs().max().item()
        names = ["H_0 = X"] + [f"H_{i}" for i in range(1, len(cache) - 1)] + [
            f"Z_{len(cache) - 1} (logits)"]
        print("   cache: " + ", ".join(f"{n} {'x'.join(map(str, t.shape))}"
                                        for n, t in zip(names, cache)))

        print("\n2. why He init: rms of H_l through 10 ReLU layers of width 512, on the same "
              f"{len(x)} digits")
        inits = {"N(0, 1)": lambda fan_in: 1.0, "N(0, 0.01^2)": lambda fan_in: 0.01,
                 "He N(0, 2/fan_in)": lambda fan_in: math.sqrt(2 / fan_in)}
        print(f"   {'init':<18}" + "".join(f"{'H_' + str(i):>9}" for i in range(1, 11)))
        he_ratio = None
        for name, std in inits.items():
            scales = activation_scales(x, 512, 10, std, make_generator(args.seed))
            print(f"   {name:<18}" + "".join(f"{v:>9.2g}" for v in scales))
            if name.startswith("He"):
                he_ratio = scales[-1] / scales[0]
        print(textwrap.fill(
            "N(0, 1) multiplies the scale by about sqrt(512 / 2) = 16 per layer (explodes); "
            "N(0, 0.01^2) by about 0.01 sqrt(512 / 2) = 0.16 (vanishes); He's 2 / fan_in keeps "
            f"it (H_10 / H_1 = {he_ratio:.2f} here).", width=90, initial_indent="   ",
            subsequent_indent="   "))

    n_classes = args.sizes[-1]
    chance = math.log(n_classes)
    print(f"\n3. loss of the untrained network on {len(y)} test digits: {loss:.4f}")
    print(textwrap.fill(
        f"ln {n_classes} = {chance:.4f}: an untrained network has no reason to prefer any class, "
        f"so each gets about 1/{n_classes} of the probability and the loss is about "
        f"-ln(1/{n_classes}). It lands a little above: the random logits are not all equal, and "
        "the loss, log(sum exp(logits)) - logit[y], grows with their spread (the log-sum-exp "
        "does; the true class's logit, on average, does not).", width=90, initial_indent="   ",
        subsequent_indent="   "))
    print(f"   probability rows sum to 1: largest |sum - 1| = {row_error:.2e}")
    loss_ok = math.isfinite(loss) and abs(loss - chance) < 1.0
    rows_ok, he_ok = row_error < 1e-5, 0.5 < he_ratio < 2.0
    ok = loss_ok and rows_ok and he_ok
    print(result_line(params=n_params, initial_loss=loss, ln_classes=chance,
                             row_sum_error=row_error, he_scale_ratio=he_ratio, ok=ok))
    if not ok:  # say which of the lesson's own checks failed
        why = []
        if not loss_ok:
            why.append(f"the untrained loss {loss:.4f} is not within 1 of ln {n_classes} = "
                       f"{chance:.4f} (a layer of one or a few units leaves the logits' spread "
                       "to chance: widen it in --sizes, or try another --seed)")
        if not rows_ok:
            why.append(f"softmax's rows, which must sum to 1, miss it by up to {row_error:.1e}")
        if not he_ok:
            why.append(f"with He init H_10 / H_1 = {he_ratio:.2f}, outside 0.5 to 2: try another "
                       "--seed or more --digits")
        print(f"check failed: {'; '.join(why)}.", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    _starting[0] = False
    try:
        status = run_main(main)
    finally:
        _signals.append("done")
        # Python puts back the default handlers as it shuts down (a second or so, with torch
        # loaded), and a signal then would end this finished run with no word: ignore them.
        for _name in ("SIGINT", "SIGTERM", "SIGHUP"):
            if hasattr(signal, _name):
                signal.signal(getattr(signal, _name), signal.SIG_IGN)
    sys.exit(130 if len(_signals) > 1 else status)  # an interruption swallowed is no success

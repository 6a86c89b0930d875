"""Lesson 02: the MLP forward pass, from pixels to probabilities.

A multi-layer perceptron is a stack of linear layers with a ReLU between them:

    h1 = relu(x @ W1 + b1)          (B, 512)
    h2 = relu(h1 @ W2 + b2)         (B, 128)
    logits = h2 @ W3 + b3           (B, 10)
    probs = softmax(logits)         each row sums to 1
    loss = mean over the batch of -log probs[y]

Parameters travel as one flat tuple (W1, b1, W2, b2, ..., Wn, bn) with W of shape
(fan_in, fan_out), and mlp_forward works for any depth. It also returns a cache: exactly
what lesson 03's backward pass needs, and nothing more.

Run:
    python 02_mlp_forward.py                 # the 784-512-128-10 network on 1,000 real digits
    python 02_mlp_forward.py --device cuda   # the same on a GPU
"""

import argparse
import math
import sys
import textwrap

import torch

import common


def init_params(sizes, generator=None, dtype=torch.float32, device="cpu"):
    """sizes (D, H1, ..., C) -> (W1, b1, ..., Wn, bn), W (fan_in, fan_out), b (fan_out,).

    He-normal: W ~ N(0, 2 / fan_in), b = 0, so the ReLU layers keep their activations' scale.
    The draws happen on the CPU from generator (torch's default one if None) and then move to
    device, so one seed gives the same network on every device.
    """
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        W = torch.randn(fan_in, fan_out, generator=generator, dtype=dtype) * math.sqrt(2 / fan_in)
        b = torch.zeros(fan_out, dtype=dtype)
        params += [W.to(device), b.to(device)]
    return tuple(params)


def linear_forward(x, W, b):
    """x (B, I) @ W (I, O) + b (O,) -> out (B, O)."""
    return torch.addmm(b, x, W)  # the same as x @ W + b, in one fused call


def relu(z):
    """z (B, H) -> h = max(z, 0) (B, H).

    h is also ReLU's cache for the backward pass: the gradient flows exactly where h > 0.
    """
    return z.clamp(min=0)


def softmax(logits):
    """logits (B, C) -> probabilities (B, C), each row summing to 1.

    Subtracting the row's max changes nothing mathematically (it cancels in the ratio) but
    keeps exp() from overflowing: the largest exponent is exp(0) = 1.
    """
    shifted = logits - logits.max(dim=1, keepdim=True).values  # (B, C), each row's max is 0
    e = shifted.exp()  # (B, C), in (0, 1]
    return e / e.sum(dim=1, keepdim=True)


def log_softmax(logits):
    """logits (B, C) -> log probabilities (B, C): shifted - log(sum(exp(shifted)))."""
    shifted = logits - logits.max(dim=1, keepdim=True).values  # (B, C)
    return shifted - shifted.exp().sum(dim=1, keepdim=True).log()


def cross_entropy(logits, y):
    """Mean over the batch of -log softmax(logits)[y]; logits (B, C), y (B,) int64 -> scalar.

    Computed through log_softmax, never log(softmax): a probability that underflows to 0
    would give log(0) = -inf, while the log-softmax stays finite.
    """
    return -log_softmax(logits).gather(1, y.unsqueeze(1)).mean()


def mlp_forward(params, x):
    """params (W1, b1, ..., Wn, bn), x (B, D) -> logits (B, C), cache.

    cache = (x, h1, ..., h_{n-1}, logits): the input of every linear layer, then the logits.
    That is all the backward pass needs: a layer's dW needs its input, ReLU's mask is h > 0,
    and the loss gradient starts from the logits.
    """
    h = x
    cache = [x]
    for i in range(0, len(params) - 2, 2):
        h = relu(linear_forward(h, params[i], params[i + 1]))  # (B, H_i)
        cache.append(h)
    logits = linear_forward(h, params[-2], params[-1])  # (B, C)
    cache.append(logits)
    return logits, tuple(cache)


def count_params(params):
    """Total number of scalars in a parameter tuple."""
    return sum(p.numel() for p in params)


def describe(params, sizes):
    """One line per layer: name, weight and bias shapes, parameter count."""
    lines = [f"{'layer':<8}{'W':>14}{'b':>9}{'params':>10}"]
    for i in range(len(sizes) - 1):
        W, b = params[2 * i], params[2 * i + 1]
        kind = "relu" if i < len(sizes) - 2 else "logits"
        shape_w = "x".join(map(str, W.shape))
        lines.append(f"{i + 1} {kind:<6}{shape_w:>14}{b.shape[0]:>9}{W.numel() + b.numel():>10,}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, exit_on_error=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[784, 512, 128, 10],
                        help="layer widths, input first (default: 784 512 128 10)")
    parser.add_argument("--digits", type=int, default=1000,
                        help="how many test digits to push through the untrained network")
    common.add_run_args(parser, data=False)
    args = common.parse_args(parser, argv)
    if len(args.sizes) < 2 or min(args.sizes) < 1 or args.sizes[0] != 784:
        raise ValueError(f"--sizes must start with 784 and hold at least two positive widths, "
                         f"got {args.sizes}.")
    if args.digits < 1:
        raise ValueError(f"--digits must be at least 1, got {args.digits}.")
    device = common.pick_device(args.device)

    with torch.inference_mode():
        params = init_params(args.sizes, common.make_generator(args.seed), device=device)
        net = "-".join(map(str, args.sizes))
        print(f"network {net} on {device}, He-normal init, seed {args.seed}")
        print(describe(params, args.sizes))
        n_params = count_params(params)
        print(f"parameters: {n_params:,}")

        X_test, y_test = common.load_mnist(device=device)[2:]
        x, y = X_test[:args.digits], y_test[:args.digits]  # (N, 784), (N,)
        logits, cache = mlp_forward(params, x)
        probs = softmax(logits)  # (N, C)
        loss = cross_entropy(logits, y).item()
        row_error = (probs.sum(dim=1) - 1).abs().max().item()

    n_classes = args.sizes[-1]
    chance = math.log(n_classes)
    print(f"cache: {' '.join('x'.join(map(str, t.shape)) for t in cache)}")
    print(f"loss of the untrained network on {len(y)} test digits: {loss:.4f}")
    print(textwrap.fill(
        f"ln {n_classes} = {chance:.4f}: an untrained network has no reason to prefer any class, "
        f"so each gets about 1/{n_classes} of the probability and the loss is about "
        f"-ln(1/{n_classes}). It lands a little above: the random logits are not all equal, and "
        "the loss, log(sum exp(logits)) - logit[y], grows with their spread (the log-sum-exp "
        "does; the true class's logit, on average, does not).", width=92))
    print(f"probability rows sum to 1: largest |sum - 1| = {row_error:.2e}")
    ok = math.isfinite(loss) and abs(loss - chance) < 1.0 and row_error < 1e-5
    print(common.result_line(params=n_params, initial_loss=loss, ln_classes=chance,
                             row_sum_error=row_error, ok=ok))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(common.run_main(main))

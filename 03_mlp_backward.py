"""Lesson 03: the MLP backward pass, the chain rule one layer at a time.

Lesson 02 went forward: x -> linear -> relu -> ... -> logits -> loss. Here every step gets
its backward function, which takes the gradient of the loss with respect to its output and
returns the gradient with respect to its inputs (and parameters):

    dlogits = (softmax(logits) - onehot(y)) / B        softmax_cross_entropy_backward
    dx, dW, db = dout @ W.T, x.T @ dout, dout.sum(0)  linear_backward
    dz = dout * (h > 0)                                relu_backward

mlp_backward chains them from the loss back to the first layer, for any depth. The seed
notebook took a longer road to dlogits, through the full (B, C, C) softmax Jacobian; it is
here too, shown to agree and timed against the short road.

How do we know the gradients are right, with nothing to copy them from? The main below
nudges single parameters by +-eps, measures how the loss moves (central finite
differences, in float64), and compares that slope with the gradient the backward pass gave.

Run:
    python 03_mlp_backward.py                 # gradient check + Jacobian route, a few seconds
    python 03_mlp_backward.py --device cuda   # the same on a GPU
"""

import argparse
import importlib
import math
import sys
import time

import torch

import common

forward = importlib.import_module("02_mlp_forward")
softmax, cross_entropy = forward.softmax, forward.cross_entropy
init_params, mlp_forward = forward.init_params, forward.mlp_forward


def softmax_cross_entropy_backward(logits, y):
    """d(mean cross-entropy)/dlogits: logits (B, C), y (B,) int64 -> dlogits (B, C)."""
    B, C = logits.shape
    # L = -(1/B) sum_b log p[b, y_b]  with  p = softmax(z).
    # dp[b, y_b]/dz[b, j] = p[b, y_b] ([j == y_b] - p[b, j]), so the log cancels the p[b, y_b]:
    # dL/dz[b, j] = (p[b, j] - [j == y_b]) / B, probabilities minus the one-hot label.
    dlogits = softmax(logits)  # (B, C), a fresh tensor we may edit
    dlogits[torch.arange(B, device=logits.device), y] -= 1  # (B, C): probs - onehot
    return dlogits / B  # the 1/B of the mean


def linear_backward(dz, h, W, need_dh=True):
    """Z = H W + b; dz (B, O), h (B, I), W (I, O) -> dh (B, I) or None, dW (I, O), db (O,).

    dz is delta = dL/dZ for this layer's output, h its input H_{l-1}. Shape check: each
    gradient has the shape of what it differentiates (dW like W, dh like h).
    Needs: torch (tensor methods only)
    """
    # Z[b, o] = sum_i H[b, i] W[i, o] + b[o], so each weight collects over the batch:
    dW = h.T @ dz  # (I, O): dW[i, o] = sum_b H[b, i] dz[b, o]
    db = dz.sum(dim=0)  # (O,): b is added to every row, so its gradient sums over the rows
    dh = dz @ W.T if need_dh else None  # (B, I): dh[b, i] = sum_o dz[b, o] W[i, o]
    return dh, dW, db


def relu_backward(dh, h):
    """H = relu(Z); dh (B, H) = dL/dH, h (B, H) -> dz (B, H) = dL/dZ: passes where h > 0.

    Needs: torch (tensor methods only)
    """
    # relu'(z) is 1 where z > 0 and 0 elsewhere, and z > 0 exactly where h > 0. As h >= 0,
    # h.sign() is that mask already in floats: the same numbers as dh * (h > 0), several
    # times faster on a CPU, where the comparison builds a bool tensor that is then converted.
    return dh * h.sign()


def mlp_backward_from(params, cache, dlogits):
    """Carry dlogits = delta_n (B, C) back through the layers -> (dW1, db1, ..., dWn, dbn).

    cache = (H_0, H_1, ..., H_{n-1}, Z_n) as mlp_forward returns it: every layer's input,
    then the logits (not read here).
    Needs: linear_backward, relu_backward
    """
    grads = [None] * len(params)
    dz = dlogits  # delta of the layer we are at: (B, out)
    for i in range(len(params) // 2 - 1, -1, -1):
        h = cache[i]  # the input of layer i + 1: the data X, or the ReLU output H_i
        dh, grads[2 * i], grads[2 * i + 1] = linear_backward(dz, h, params[2 * i],
                                                             need_dh=i > 0)
        if i > 0:
            dz = relu_backward(dh, h)  # (B, in): through the ReLU that made h
    # The first layer's dh would be the gradient for the pixels: nobody needs it, and
    # skipping it saves the largest matmul of the backward pass (784 x 512 per example).
    return tuple(grads)


def mlp_backward(params, cache, y):
    """Gradients of the mean cross-entropy -> (dW1, db1, ..., dWn, dbn), shaped like params.

    params and cache as mlp_forward took and returned them; y (B,) int64.
    """
    dlogits = softmax_cross_entropy_backward(cache[-1], y)  # (B, C)
    return mlp_backward_from(params, cache, dlogits)


# ----------------------------------------------------------------------------- the seed's route

def softmax_jacobian(probs):
    """probs (B, C) -> J (B, C, C) with J[b, i, j] = dp[b, i]/dz[b, j] = p_i ([i == j] - p_j)."""
    return torch.diag_embed(probs) - probs.unsqueeze(2) * probs.unsqueeze(1)  # (B, C, C)


def notebook_softmax_cross_entropy_backward(logits, y):
    """The seed's road to dlogits (B, C): dL/dprobs, then the full softmax Jacobian.

    Same answer as softmax_cross_entropy_backward, with a (B, C, C) tensor on the way, and
    fragile: a probability that underflows to 0 makes dL/dp = -1/(B p) infinite.
    """
    B, C = logits.shape
    rows = torch.arange(B, device=logits.device)
    probs = softmax(logits)  # (B, C)
    # L = -(1/B) sum_b log p[b, y_b] depends on p[b, y_b] alone: dL/dp is 0 elsewhere.
    dprobs = torch.zeros_like(probs)  # (B, C)
    dprobs[rows, y] = -1 / (B * probs[rows, y])
    return (softmax_jacobian(probs) @ dprobs.unsqueeze(2)).squeeze(2)  # (B, C); J is symmetric


def notebook_mlp_backward(params, cache, y):
    """mlp_backward with the seed's Jacobian road to dlogits."""
    return mlp_backward_from(params, cache, notebook_softmax_cross_entropy_backward(cache[-1], y))


# ----------------------------------------------------------------------------- gradient check

def random_params(sizes, generator, dtype=torch.float64, device="cpu"):
    """He-normal weights and random non-zero biases: a zero bias could hide a wrong db."""
    params = init_params(sizes, generator, dtype=dtype, device=device)
    return tuple(p if p.dim() == 2 else
                 (0.1 * torch.randn(p.shape, generator=generator, dtype=dtype)).to(device)
                 for p in params)


def with_entry(params, k, entry, delta):
    """A copy of params whose tensor k has delta added at flat position entry."""
    p = params[k].clone()
    p.view(-1)[entry] += delta
    return params[:k] + (p,) + params[k + 1:]


def finite_difference(params, x, y, k, entry, eps):
    """(L(theta + eps) - L(theta - eps)) / 2 eps for one entry of params[k]: error O(eps^2)."""
    def loss(ps):
        return cross_entropy(mlp_forward(ps, x)[0], y).item()
    return (loss(with_entry(params, k, entry, eps)) - loss(with_entry(params, k, entry, -eps))) / (
        2 * eps)


def relative_error(a, b):
    """|a - b| / max(|a|, |b|), and 0 where both are 0."""
    scale = max(abs(a), abs(b))
    return abs(a - b) / scale if scale > 0 else 0.0


def gradient_check(sizes, generator, device, batch=4, entries=6, eps=1e-6):
    """Compare mlp_backward with finite differences on a few random entries of every tensor.

    Returns one row per parameter tensor: (name, max abs diff, max relative error).
    """
    params = random_params(sizes, generator, device=device)
    x = torch.randn(batch, sizes[0], generator=generator, dtype=torch.float64).to(device)
    y = torch.randint(0, sizes[-1], (batch,), generator=generator).to(device)
    grads = mlp_backward(params, mlp_forward(params, x)[1], y)
    rows = []
    for k, (p, g) in enumerate(zip(params, grads)):
        picks = torch.randperm(p.numel(), generator=generator)[:entries].tolist()
        diffs, rels = [], []
        for entry in picks:
            numeric = finite_difference(params, x, y, k, entry, eps)
            analytic = g.reshape(-1)[entry].item()
            diffs.append(abs(analytic - numeric))
            rels.append(relative_error(analytic, numeric))
        name = f"{'W' if k % 2 == 0 else 'b'}{k // 2 + 1}"
        rows.append((name, "x".join(map(str, p.shape)), max(diffs), max(rels)))
    return rows


def median_seconds(fn, device, repeats=50):
    """Median wall time of fn() after 3 warm-up calls; waits for the GPU on CUDA only."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, exit_on_error=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tolerance", type=float, default=1e-6,
                        help="largest relative error the check accepts (float64)")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per measurement")
    common.add_run_args(parser, data=False)
    args = common.parse_args(parser, argv)
    if args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {args.repeats}.")
    device = common.pick_device(args.device)
    generator = common.make_generator(args.seed)

    with torch.inference_mode():
        print(f"1. gradient check on {device}: central differences in float64, eps 1e-6")
        print(f"   {'network':<14}{'tensor':<7}{'shape':>7}{'max |diff|':>13}{'rel error':>12}"
              "  ok?")
        worst = 0.0
        for sizes in ([6, 4], [6, 5, 4], [7, 6, 5, 4], [8, 7, 6, 5, 3]):
            net = "-".join(map(str, sizes))
            for name, shape, diff, rel in gradient_check(sizes, generator, device):
                worst = max(worst, rel)
                ok = "ok" if rel < args.tolerance else "FAIL"
                print(f"   {net:<14}{name:<7}{shape:>7}{diff:>13.2e}{rel:>12.2e}  {ok}")
                net = ""
        grad_ok = worst < args.tolerance
        print(f"   largest relative error {worst:.2e} "
              f"({'below' if grad_ok else 'ABOVE'} {args.tolerance:g}): "
              f"{'the backward pass is right' if grad_ok else 'a gradient is wrong'}")

        print("\n2. the seed's road: dlogits through the full (B, C, C) softmax Jacobian")
        logits = 3 * torch.randn(64, 10, generator=generator, dtype=torch.float64).to(device)
        y = torch.randint(0, 10, (64,), generator=generator).to(device)
        jac_diff = (softmax_cross_entropy_backward(logits, y)
                    - notebook_softmax_cross_entropy_backward(logits, y)).abs().max().item()
        jac_ok = jac_diff < 1e-12
        print(f"   same dlogits in float64: largest |difference| {jac_diff:.1e} "
              f"({'ok' if jac_ok else 'FAIL'})")

        params = init_params([784, 512, 128, 10], generator, device=device)
        print(f"   time on {device}, 784-512-128-10, float32 (median of {args.repeats} calls):")
        print(f"   {'batch':>7}  {'dlogits: ours':>14}{'seed':>10}{'slower':>8}"
              f"  {'backward: ours':>15}{'seed':>10}{'slower':>8}")
        slowdown = {}
        for B in (32, 512):
            x = torch.rand(B, 784, generator=generator).to(device)
            y = torch.randint(0, 10, (B,), generator=generator).to(device)
            logits, cache = mlp_forward(params, x)
            t = [median_seconds(lambda f=f, z=logits, y=y: f(z, y), device, args.repeats)
                 for f in (softmax_cross_entropy_backward, notebook_softmax_cross_entropy_backward)]
            u = [median_seconds(lambda f=f, c=cache, y=y: f(params, c, y), device, args.repeats)
                 for f in (mlp_backward, notebook_mlp_backward)]
            slowdown[B] = u[1] / u[0]
            print(f"   {B:>7}  {t[0] * 1e6:>11.0f} us{t[1] * 1e6:>7.0f} us{t[1] / t[0]:>7.1f}x"
                  f"  {u[0] * 1e6:>12.0f} us{u[1] * 1e6:>7.0f} us{u[1] / u[0]:>7.2f}x")
        print("   The Jacobian route builds B*C*C numbers where B*C suffice, so dlogits costs "
              "several times more;\n   but dlogits is a small part of the backward pass, whose "
              "matmuls dominate, so the whole pass\n   slows down far less.")

    ok = grad_ok and jac_ok and math.isfinite(worst)
    print(f"\nverdict: {'every gradient checks out' if ok else 'CHECK FAILED'}")
    print(common.result_line(max_rel_error=worst, jacobian_max_diff=jac_diff,
                             jacobian_slowdown_b32=slowdown[32],
                             jacobian_slowdown_b512=slowdown[512], ok=ok))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(common.run_main(main))

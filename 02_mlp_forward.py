"""Lesson 02: the MLP forward pass, from pixels to probabilities.

After this lesson you can write a multi-layer perceptron's forward pass for any depth, say
the shape of every tensor in it, and explain why its weights start He-normal. The notation,
the same in every lesson, docstring and docs/ page:

    H_0 = X                       the input batch                     (B, 784)
    Z_l = H_{l-1} W_l + b_l       pre-activation of layer l           (B, d_l)
    H_l = relu(Z_l)               activation of layer l (l < n)       (B, d_l)
    Z_n                           the logits                          (B, 10)
    P = softmax(Z_n)              probabilities, each row sums to 1   (B, 10)
    L = mean over the batch of -log P[b, y_b]                         scalar

Parameters travel as one flat tuple (W1, b1, W2, b2, ..., Wn, bn), W of shape (fan_in,
fan_out). mlp_forward also returns a cache, (H_0, H_1, ..., H_{n-1}, Z_n): each layer's
input, then the logits, which is exactly what lesson 03's backward pass needs. Derivations:
docs/02_mlp_forward.md.

Run:
    python 02_mlp_forward.py                          # 784-512-128-10 on 1,000 real digits
    python 02_mlp_forward.py --sizes 784 256 256 10   # another network
"""

import math
import sys

import torch

import common


def init_params(sizes, generator=None, dtype=torch.float32, device="cpu"):
    """sizes (D, d_1, ..., C) -> (W1, b1, ..., Wn, bn), W (fan_in, fan_out), b (fan_out,).

    He-normal: W ~ N(0, 2 / fan_in) and b = 0, so ReLU layers keep their activations' scale
    (docs/02, section 4). Drawn on the CPU, then moved: one seed, one network, any device.
    Needs: math, torch
    """
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        W = torch.randn(fan_in, fan_out, generator=generator, dtype=dtype) * math.sqrt(2 / fan_in)
        params += [W.to(device), torch.zeros(fan_out, dtype=dtype, device=device)]
    return tuple(params)


def linear_forward(h, W, b):
    """h (B, I), W (I, O), b (O,) -> Z = h W + b (B, O); b is added to every row.

    Needs: nothing
    """
    return h @ W + b


def relu(z):
    """z (B, N) -> H = max(z, 0) (B, N).

    Needs: nothing
    """
    return z.clamp(min=0)


def softmax(logits):
    """logits (B, C) -> probabilities P (B, C), each row summing to 1.

    Subtracting each row's max changes nothing (it cancels in the ratio) but keeps exp() from
    overflowing: the largest exponent is exp(0) = 1 (docs/02, section 2).
    Needs: nothing
    """
    e = (logits - logits.max(dim=1, keepdim=True).values).exp()  # (B, C), in (0, 1]
    return e / e.sum(dim=1, keepdim=True)


def log_softmax(logits):
    """logits (B, C) -> log P (B, C) = shifted - log(sum(exp(shifted))), finite for any logits.

    Needs: nothing
    """
    shifted = logits - logits.max(dim=1, keepdim=True).values  # (B, C), each row's max is 0
    return shifted - shifted.exp().sum(dim=1, keepdim=True).log()


def cross_entropy(logits, y):
    """Mean over the batch of -log P[b, y_b]: logits (B, C), labels y (B,) int64 -> scalar.

    Taken from log_softmax, never log(softmax), which gives log(0) = -inf once a probability
    underflows (docs/02, section 3). gather raises for a label outside [0, C) and for labels
    that are not integers (uint8, bool, float): a wrong label is never read as another class.
    Needs: log_softmax
    """
    return -log_softmax(logits).gather(1, y.unsqueeze(1)).mean()


def mlp_forward(params, x):
    """params (W1, b1, ..., Wn, bn), x (B, D) -> logits Z_n (B, C), cache (H_0, ..., H_{n-1}, Z_n).

    Needs: linear_forward, relu
    """
    cache = [x]
    for l in range(len(params) // 2 - 1):  # hidden layer l + 1: W, b = params[2l], params[2l + 1]
        cache.append(relu(linear_forward(cache[-1], params[2 * l], params[2 * l + 1])))  # H_l
    logits = linear_forward(cache[-1], params[-2], params[-1])  # Z_n (B, C), no ReLU
    return logits, (*cache, logits)


def activation_scales(x, width, depth, weight_std, generator):
    """x (B, D) through depth ReLU layers of width, W ~ N(0, weight_std(fan_in)^2), b = 0
    -> [rms(H_1), ..., rms(H_depth)], rms = sqrt(mean of squares).

    Needs: linear_forward, relu, torch
    """
    h, scales = x, []
    for _ in range(depth):
        W = torch.randn(h.shape[1], width, generator=generator) * weight_std(h.shape[1])
        h = relu(linear_forward(h, W.to(x), torch.zeros(width, device=x.device)))  # (B, width)
        scales.append(h.square().mean().sqrt().item())
    return scales


def main(argv=None):
    """Build the network, push real digits through it, show why He init -> exit status.

    Needs: common, init_params, mlp_forward, softmax, cross_entropy, activation_scales, math
    """
    parser = common.make_parser(__doc__)
    parser.add_argument("--sizes", type=common.int_in(1, 16_384), nargs="+",
                        default=[784, 512, 128, 10], help="layer widths, 784 first, 10+ last")
    parser.add_argument("--digits", type=common.int_in(1, 10_000), default=1000,
                        help="test digits to push through the untrained network")
    args = parser.parse_args(argv)
    if len(args.sizes) < 2 or args.sizes[0] != 784 or args.sizes[-1] < 10:
        parser.error("argument --sizes: start with 784 (the pixels) and end with at least 10 "
                     f"(the classes), got {' '.join(map(str, args.sizes))}")

    params = init_params(args.sizes, common.make_generator(args.seed), device=args.device)
    print(f"1. the network {'-'.join(map(str, args.sizes))} on {args.device}, He-normal init")
    for l, (W, b) in enumerate(zip(params[::2], params[1::2]), 1):
        print(f"   layer {l}: W_{l} {'x'.join(map(str, W.shape)):>9}, b_{l} {b.shape[0]:>5}, "
              f"{W.numel() + b.numel():>9,} parameters")
    n_params = sum(p.numel() for p in params)
    X_test, y_test = common.load_mnist(device=args.device)[2:]
    x, y = X_test[:args.digits], y_test[:args.digits]  # (N, 784), (N,)
    logits, cache = mlp_forward(params, x)
    names = [f"H_{l}" for l in range(len(cache) - 1)] + [f"Z_{len(cache) - 1}"]
    print(f"   {n_params:,} parameters; the cache for {len(x)} digits: "
          + ", ".join(f"{n} {'x'.join(map(str, t.shape))}" for n, t in zip(names, cache)))

    print(f"\n2. why He init: rms of H_l through 10 ReLU layers of width 512, on {len(x)} digits")
    print(f"   {'weights':<18}" + "".join(f"{'H_' + str(l):>8}" for l in range(1, 11)))
    for name, std in (("N(0, 1)", lambda fan_in: 1.0), ("N(0, 0.01^2)", lambda fan_in: 0.01),
                      ("He N(0, 2/fan_in)", lambda fan_in: math.sqrt(2 / fan_in))):
        scales = activation_scales(x, 512, 10, std, common.make_generator(args.seed))
        print(f"   {name:<18}" + "".join(f"{v:>8.1e}" for v in scales))
    he_ratio = scales[-1] / scales[0]
    print("   N(0, 1) multiplies the scale by about sqrt(512 / 2) = 16 a layer, N(0, 0.01^2) by "
          f"0.16;\n   He keeps it: H_10 / H_1 = {he_ratio:.2f}")

    loss = cross_entropy(logits, y).item()
    row_error = (softmax(logits).sum(dim=1) - 1).abs().max().item()
    print(f"\n3. the untrained loss {loss:.3f}, near ln {args.sizes[-1]} = "
          f"{math.log(args.sizes[-1]):.3f}: no class is preferred yet, so each gets about "
          f"1/{args.sizes[-1]}\n   (and each row of P sums to 1, to float32's rounding)")
    ok = abs(loss - math.log(args.sizes[-1])) < 1 and 0.5 < he_ratio < 2 and row_error < 1e-5
    print(f"result: params={n_params} initial_loss={loss:.4f} he_scale_ratio={he_ratio:.4f} "
          f"ok={str(ok).lower()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(common.run_main(main))

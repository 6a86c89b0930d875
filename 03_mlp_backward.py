"""Lesson 03: the MLP backward pass, the chain rule one layer at a time.

After this lesson you can derive and code the gradient of every parameter of an MLP of any
depth, check it against finite differences, and recognise the usual backprop bugs by the
gradients they break. Lesson 02 went forward (H_0 = X, Z_l = H_{l-1} W_l + b_l,
H_l = relu(Z_l), logits Z_n, P = softmax(Z_n)). Going back, the gradient the pass carries
is delta_l = dL/dZ_l (code: dz), and each step has its backward function:

    delta_n = dlogits = (P - Y) / B                    softmax_cross_entropy_backward
    dW_l = H_{l-1}^T delta_l,  db_l = column sums,     linear_backward
    dL/dH_{l-1} = delta_l W_l^T
    delta_{l-1} = dL/dH_{l-1} * [H_{l-1} > 0]          relu_backward

mlp_backward chains them from the loss back to the first layer, for any depth. Every line is
derived step by step, with shape checks, in docs/03_mlp_backward.md. The notebook this
repository grew from reached delta_n the long way, through the full (B, C, C) softmax
Jacobian; that route is here too (notebook_softmax_cross_entropy_backward), shown to agree
and timed against the short one.

How do we know the gradients are right, with nothing to copy them from? The main below
nudges single parameters by +-eps, measures how the loss moves (central finite differences,
in float64), and compares that slope with the gradient the backward pass gave. Agreement on
many random entries is strong evidence (not a proof) that the backward pass is right.

Run:
    python 03_mlp_backward.py                 # gradient check, shapes, the notebook's route
    python 03_mlp_backward.py --bug list      # exercises: backward passes with one bug each
    python 03_mlp_backward.py --bug no-mean   # predict which tensors fail, then run it
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
import time  # noqa: E402

import torch  # noqa: E402

import common  # noqa: E402

# The earlier lessons' functions. A module name cannot start with a digit, so a plain
# "import 01_logistic_regression" is a syntax error; importlib takes the name as a string.
logreg = importlib.import_module("01_logistic_regression")
forward = importlib.import_module("02_mlp_forward")
one_hot, check_labels = logreg.one_hot, logreg.check_labels
softmax, cross_entropy, relu = forward.softmax, forward.cross_entropy, forward.relu
init_params, mlp_forward, linear_forward = (forward.init_params, forward.mlp_forward,
                                            forward.linear_forward)


def softmax_cross_entropy_backward(logits, y):
    """d(mean cross-entropy)/dlogits: logits Z_n (B, C), y (B,) int64 -> delta_n (B, C).

    L = -(1/B) sum_b log P[b, y_b] with P = softmax(Z_n). The log cancels the P[b, y_b] that
    the softmax's derivative brings, leaving probabilities minus the one-hot labels:
    delta_n = (P - Y) / B (docs/03_mlp_backward.md, section 1).
    Needs: softmax (02), one_hot (01)
    """
    B, C = logits.shape
    Y = one_hot(y, C, logits.dtype, B)  # (B, C); one label per row, each in [0, C)
    return (softmax(logits) - Y) / B  # (B, C); the 1/B is the mean's


def linear_backward(dz, h, W, need_dh=True):
    """Z = H W + b; dz (B, O), h (B, I), W (I, O) -> dh (B, I) or None, dW (I, O), db (O,).

    dz is delta_l = dL/dZ_l, h the layer's input H_{l-1}, dh = dL/dH_{l-1}. Shape check:
    each gradient has the shape of what it differentiates (dW like W, dh like h).
    Needs: nothing
    """
    # Z[b, k] = sum_i H[b, i] W[i, k] + b_l[k], so each weight collects over the batch:
    dW = h.T @ dz  # (I, O) = (I, B) @ (B, O): dW[i, k] = sum_b H[b, i] dz[b, k]
    db = dz.sum(dim=0)  # (O,): b_l is added to every row, so its gradient sums over the rows
    dh = dz @ W.T if need_dh else None  # (B, I) = (B, O) @ (O, I): sum_k dz[b, k] W[i, k]
    return dh, dW, db


def relu_backward(dh, h):
    """H = relu(Z); dh (B, U) = dL/dH, h (B, U) = H -> dz (B, U) = dL/dZ: passes where h > 0.

    Needs: nothing
    """
    # relu'(z) is 1 where z > 0 and 0 elsewhere, and z > 0 exactly where h > 0. As h >= 0,
    # h.sign() is that mask already in floats: the same numbers as dh * (h > 0), faster on a
    # CPU (up to several times on small tensors), where the comparison builds a bool tensor
    # that is then converted.
    return dh * h.sign()


def mlp_backward_from(params, cache, dlogits):
    """Carry dlogits = delta_n (B, C) back through the layers -> (dW1, db1, ..., dWn, dbn).

    params (W1, b1, ..., Wn, bn); cache = (H_0, H_1, ..., H_{n-1}, Z_n) as mlp_forward
    returns it: every layer's input, then the logits (not read here).
    Needs: linear_backward, relu_backward
    """
    grads = [None] * len(params)
    dz = dlogits  # delta of the layer we are at: (B, out)
    for i in range(len(params) // 2 - 1, -1, -1):  # i = l - 1 for layer l = n, ..., 1
        h = cache[i]  # H_{l-1}, the layer's input: the data X, or a ReLU output
        dh, grads[2 * i], grads[2 * i + 1] = linear_backward(dz, h, params[2 * i],
                                                             need_dh=i > 0)
        if i > 0:
            dz = relu_backward(dh, h)  # delta_{l-1} (B, in): through the ReLU that made h
    # The first layer's dh would be the gradient for the pixels: nobody needs it, and
    # skipping it saves a matmul with as many multiply-adds as dW_1's (784 * 512 per example).
    return tuple(grads)


def mlp_backward(params, cache, y):
    """Gradients of the mean cross-entropy -> (dW1, db1, ..., dWn, dbn), shaped like params.

    params and cache as mlp_forward took and returned them; y (B,) int64 in [0, C).
    Needs: softmax_cross_entropy_backward, mlp_backward_from
    """
    dlogits = softmax_cross_entropy_backward(cache[-1], y)  # delta_n (B, C)
    return mlp_backward_from(params, cache, dlogits)


# ----------------------------------------------------------------------------- the notebook's route

def softmax_jacobian(probs):
    """P (B, C) -> J (B, C, C) with J[b, i, j] = dP[b, i]/dZ[b, j] = P_i ([i == j] - P_j).

    Needs: torch
    """
    return torch.diag_embed(probs) - probs.unsqueeze(2) * probs.unsqueeze(1)  # (B, C, C)


def notebook_softmax_cross_entropy_backward(logits, y):
    """The notebook's route to delta_n (B, C): dL/dP, then the full softmax Jacobian.

    Same answer as softmax_cross_entropy_backward, with a (B, C, C) tensor on the way, and
    fragile: a probability that underflows to 0 makes dL/dP = -1/(B P) infinite.
    Needs: softmax (02), softmax_jacobian, check_labels (01), torch
    """
    B, C = logits.shape
    check_labels(y, C, B)
    probs = softmax(logits)  # (B, C)
    # L = -(1/B) sum_b log P[b, y_b] depends on P[b, y_b] alone: dL/dP is 0 elsewhere.
    p_y = probs.gather(1, y.unsqueeze(1))  # (B, 1); gather refuses labels outside [0, C)
    dprobs = torch.zeros_like(probs).scatter_(1, y.unsqueeze(1), -1 / (B * p_y))  # (B, C)
    return (softmax_jacobian(probs) @ dprobs.unsqueeze(2)).squeeze(2)  # (B, C); J symmetric


def notebook_mlp_backward(params, cache, y):
    """mlp_backward with the notebook's Jacobian route to delta_n.

    Needs: mlp_backward_from, notebook_softmax_cross_entropy_backward
    """
    return mlp_backward_from(params, cache, notebook_softmax_cross_entropy_backward(cache[-1], y))



# ============================================================================= checking it
# Below: the tools that check the lesson's functions (finite differences, shapes, timing)
# and the exercises. Nothing above depends on them.

# common.py's helpers for the command line, under short names.
add_run_args, float_in, int_in = common.add_run_args, common.float_in, common.int_in
make_generator = common.make_generator
parse_args, pick_device, result_line = common.parse_args, common.pick_device, common.result_line
run_main = common.run_main

def random_params(sizes, generator, dtype=torch.float64, device="cpu"):
    """He-normal weights and random non-zero biases: a zero bias could hide a wrong db.

    Needs: init_params (02), torch
    """
    params = init_params(sizes, generator, dtype=dtype, device=device)
    return tuple(p if p.dim() == 2 else
                 (0.1 * torch.randn(p.shape, generator=generator, dtype=dtype)).to(device)
                 for p in params)


def with_entry(params, k, entry, nudge):
    """A copy of params whose tensor k has nudge added at flat position entry.

    Needs: nothing
    """
    p = params[k].clone()
    p.view(-1)[entry] += nudge
    return params[:k] + (p,) + params[k + 1:]


def finite_difference(params, x, y, k, entry, eps):
    """(L(theta + eps) - L(theta - eps)) / 2 eps for one entry of params[k]: error O(eps^2).

    Needs: cross_entropy (02), mlp_forward (02), with_entry
    """
    def loss(ps):
        return cross_entropy(mlp_forward(ps, x)[0], y).item()
    return (loss(with_entry(params, k, entry, eps)) - loss(with_entry(params, k, entry, -eps))) / (
        2 * eps)


def relative_error(analytic, numeric, floor=1e-3):
    """max |a - n| / max(|a|, |n|, floor) over the sampled entries of one tensor (lists of
    floats); inf where any is not finite.

    One scale per tensor, so that an entry whose gradient is (rightly) about 0 is judged
    against the tensor's size, not against its own rounding noise; and a tensor whose sampled
    gradients are all tiny (a saturated softmax gives 1e-8) is judged against floor, so that
    finite differences' rounding (about 1e-10) does not count as an error.
    Needs: math
    """
    if not all(math.isfinite(v) for v in analytic + numeric):
        return math.inf
    scale = max([abs(v) for v in analytic + numeric] + [floor])
    return max(abs(a - n) for a, n in zip(analytic, numeric)) / scale


def gradient_check(sizes, generator, device, backward=None, batch=4, entries=6, eps=1e-6,
                   largest_logit=None):
    """Compare a backward pass (mlp_backward unless given) with finite differences on a few
    random entries of every parameter tensor of a random float64 network.

    Returns one row per tensor: (name, shape, max abs diff, max relative error, problem),
    problem being None or a few words (a wrong shape, say). With largest_logit, the inputs
    are scaled so that the largest logit is about that (a ReLU network scales linearly with
    its input apart from the biases, so three rescalings get close).
    Needs: mlp_backward, random_params, torch, mlp_forward (02), math, finite_difference,
        relative_error
    """
    backward = backward or mlp_backward
    params = random_params(sizes, generator, device=device)
    x = torch.randn(batch, sizes[0], generator=generator, dtype=torch.float64).to(device)
    for _ in range(3 if largest_logit is not None else 0):  # the biases make it inexact
        x = x * (largest_logit / mlp_forward(params, x)[0].max().clamp_min(1e-3))
    y = torch.randint(0, sizes[-1], (batch,), generator=generator).to(device)
    grads = backward(params, mlp_forward(params, x)[1], y)
    rows = []
    for k, (p, g) in enumerate(zip(params, grads)):
        name = f"{'W' if k % 2 == 0 else 'b'}{k // 2 + 1}"
        shape = "x".join(map(str, p.shape))
        if tuple(g.shape) != tuple(p.shape):
            rows.append((name, shape, math.inf, math.inf,
                         f"shape {'x'.join(map(str, g.shape))}, not {shape}"))
            continue
        picks = torch.randperm(p.numel(), generator=generator)[:entries].tolist()
        numeric = [finite_difference(params, x, y, k, entry, eps) for entry in picks]
        analytic = [g.reshape(-1)[entry].item() for entry in picks]
        rel = relative_error(analytic, numeric)
        diff = max(abs(a - n) for a, n in zip(analytic, numeric)) if math.isfinite(rel) else rel
        rows.append((name, shape, diff, rel, None))
    return rows


# The networks the check runs on, (sizes, largest logit, eps): depths 1 to 4, then one whose
# inputs are scaled so that its logits reach 2,000 (where an unshifted softmax overflows, even
# in float64); its loss is in the hundreds (about 643 with seed 0), so a larger eps keeps
# rounding small.
# No W is square (all widths differ), so a transposed dW has the wrong shape; and every
# network ends in 3 classes while the batch is 4 and no width is 4, so no delta is square
# and a bias gradient summed over the wrong axis has the wrong shape too.
CHECK_NETWORKS = (([6, 3], None, 1e-6), ([6, 5, 3], None, 1e-6), ([7, 6, 5, 3], None, 1e-6),
                  ([8, 7, 6, 5, 3], None, 1e-6), ([8, 7, 6, 5, 3], 2000.0, 1e-4))


def run_gradient_check(generator, device, tolerance, backward=None):
    """Print the finite-difference table for CHECK_NETWORKS -> (largest relative error, ok).

    Needs: CHECK_NETWORKS, gradient_check, math
    """
    print(f"   {'network':<18}{'tensor':<7}{'shape':>7}{'max |diff|':>13}{'rel error':>12}  ok?")
    worst, ok = 0.0, True
    for sizes, largest, eps in CHECK_NETWORKS:
        net = "-".join(map(str, sizes)) + (f" z~{largest:g}" if largest else "")
        for name, shape, diff, rel, problem in gradient_check(sizes, generator, device, backward,
                                                              eps=eps, largest_logit=largest):
            good = problem is None and rel < tolerance
            worst, ok = max(worst, rel), ok and good
            verdict = "ok" if good else f"FAIL{': ' + problem if problem else ''}"
            print(f"   {net:<18}{name:<7}{shape:>7}{diff:>13.2e}{rel:>12.2e}  {verdict}")
            net = ""
    return worst, ok and math.isfinite(worst)


def shape_walkthrough(params, x, y):
    """Every tensor of one forward and backward pass, in order -> rows (name, shape, how).

    Built from the lesson's own functions, layer by layer, so the shapes are the real ones.
    Needs: linear_forward (02), relu (02), softmax (02), softmax_cross_entropy_backward,
        linear_backward, relu_backward
    """
    n = len(params) // 2
    rows, hs = [("H_0 = X", x, "the input batch")], [x]
    h = x
    for l in range(1, n + 1):
        z = linear_forward(h, params[2 * l - 2], params[2 * l - 1])
        if l < n:
            h = relu(z)
            rows += [(f"Z_{l}", z, f"H_{l - 1} W_{l} + b_{l}"), (f"H_{l}", h, f"relu(Z_{l})")]
            hs.append(h)
        else:
            rows += [(f"Z_{l} (logits)", z, f"H_{l - 1} W_{l} + b_{l}"),
                     ("P", softmax(z), f"softmax(Z_{l}), rows sum to 1")]
    dz = softmax_cross_entropy_backward(z, y)
    rows.append((f"delta_{n}", dz, "(P - Y) / B"))
    for l in range(n, 0, -1):
        dh, dW, db = linear_backward(dz, hs[l - 1], params[2 * l - 2], need_dh=l > 1)
        rows += [(f"dW_{l}", dW, f"H_{l - 1}^T delta_{l}   (like W_{l})"),
                 (f"db_{l}", db, f"column sums of delta_{l}   (like b_{l})")]
        if l > 1:
            dz = relu_backward(dh, hs[l - 1])
            rows += [(f"dL/dH_{l - 1}", dh, f"delta_{l} W_{l}^T   (like H_{l - 1})"),
                     (f"delta_{l - 1}", dz, f"dL/dH_{l - 1} * [H_{l - 1} > 0]")]
    return [(name, "x".join(map(str, t.shape)), how) for name, t, how in rows]


def interleaved_seconds(fns, device, repeats=50):
    """Time each of fns in turn, round after round -> one list of seconds per function.

    fns: functions of no arguments; device: a torch.device or a name ("cpu", "cuda", "mps"),
    where fns run (a GPU is waited for before and after each call, so its time is counted).
    Interleaving means a slow moment of a shared machine hits every contender alike.
    Needs: time, torch
    """
    device = torch.device(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type == "mps":
            torch.mps.synchronize()
    for fn in fns:  # warm up
        fn(), fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, mine in zip(fns, times):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            mine.append(time.perf_counter() - start)
    return times


def median(values):
    """The middle value (the lower of the two middle ones for an even count).

    Needs: nothing
    """
    return sorted(values)[(len(values) - 1) // 2]


def ratio_summary(slow, fast):
    """Per-round ratios slow/fast -> (median, first quartile, third quartile).

    Needs: median
    """
    ratios = sorted(a / b for a, b in zip(slow, fast))
    q = len(ratios) // 4
    return median(ratios), ratios[q], ratios[-1 - q]


# ----------------------------------------------------------------------------- exercises
# Each bug is one realistic mistake, written as a broken variant of one piece of the backward
# pass. backward_with assembles a whole backward pass from pieces, so a bug is passed in:
# the lesson's own functions above are never changed.

def backward_with(params, cache, y, dlogits_fn=None, linear_bw=None, relu_bw=None):
    """mlp_backward_from's loop with each piece replaceable -> (dW1, db1, ..., dWn, dbn).

    Needs: softmax_cross_entropy_backward, linear_backward, relu_backward
    """
    dlogits_fn = dlogits_fn or softmax_cross_entropy_backward
    linear_bw, relu_bw = linear_bw or linear_backward, relu_bw or relu_backward
    grads = [None] * len(params)
    dz = dlogits_fn(cache[-1], y)
    for i in range(len(params) // 2 - 1, -1, -1):
        dh, grads[2 * i], grads[2 * i + 1] = linear_bw(dz, cache[i], params[2 * i], i > 0)
        if i > 0:
            dz = relu_bw(dh, cache[i])
    return tuple(grads)


def bug_no_mean(logits, y):
    """delta_n without the 1/B. Needs: softmax (02), one_hot (01)"""
    return softmax(logits) - one_hot(y, logits.shape[1], logits.dtype)


def bug_no_max_shift(logits, y):
    """delta_n from a softmax without the max shift. Needs: one_hot (01)"""
    e = logits.exp()  # overflows to inf for logits above ~709 in float64 (~88 in float32)
    return (e / e.sum(dim=1, keepdim=True) - one_hot(y, logits.shape[1], logits.dtype)) / len(y)


def bug_softmax_as_sigmoid(logits, y):
    """The notebook's route keeping only the Jacobian's diagonal P(1 - P). Needs: softmax (02),
    one_hot (01)"""
    B, C = logits.shape
    probs = softmax(logits)
    dprobs = -one_hot(y, C, logits.dtype) / (B * probs)  # (B, C), 0 off the label
    return probs * (1 - probs) * dprobs  # elementwise: each p_i treated as depending on z_i only


def bug_transposed_dW(dz, h, W, need_dh=True):
    """dW = dz^T h instead of h^T dz. Needs: linear_backward"""
    dh, dW, db = linear_backward(dz, h, W, need_dh)
    return dh, dz.T @ h, db


def bug_bias_first_row(dz, h, W, need_dh=True):
    """db from the first example only. Needs: linear_backward"""
    dh, dW, _ = linear_backward(dz, h, W, need_dh)
    return dh, dW, dz[0]


def bug_no_relu_mask(dh, h):
    """The ReLU passes every gradient. Needs: nothing"""
    return dh


def bug_mask_from_gradient(dh, h):
    """The ReLU's mask taken from the gradient's sign instead of the activation. Needs: nothing"""
    return dh * (dh > 0)


BUGS = {
    "no-mean": ("the 1/B of the mean forgotten in delta_n", {"dlogits_fn": bug_no_mean},
                "Every gradient is B times too large (B = 4 here, so the relative error is 3/4 = "
                "0.75 on every tensor). The loss is a mean over the batch, so its gradient "
                "carries the 1/B; with a sum instead, the learning rate would silently be B "
                "times larger."),
    "transposed-dW": ("dW = delta^T H instead of H^T delta", {"linear_bw": bug_transposed_dW},
                      "Every dW comes out with the shape (out, in) instead of W's (in, out); the "
                      "biases are fine. The shape check catches it: dW must have W's shape, and "
                      "only H^T delta = (I, B)(B, O) gives (I, O)."),
    "bias-first-row": ("db from the first example instead of the sum over the batch",
                       {"linear_bw": bug_bias_first_row},
                       "Every db is wrong while every dW is right. b is added to every row of "
                       "the batch, so each row's delta contributes to db: it is the column sum "
                       "of delta, not one row of it."),
    "no-relu-mask": ("the ReLU's mask forgotten: dL/dZ = dL/dH",
                     {"relu_bw": bug_no_relu_mask},
                     "The last layer (W and b) is right and the earlier layers usually go wrong, "
                     "since the error enters at the last hidden layer's ReLU, the first one met "
                     "on the way back; a tensor "
                     "can still pass when its sampled entries only met units that were on, and "
                     "the one-layer network has no ReLU at all. Units that were "
                     "off (Z <= 0) did not change the loss, so no gradient may pass them."),
    "mask-from-gradient": ("the ReLU's mask taken from dL/dH > 0 instead of H > 0",
                           {"relu_bw": bug_mask_from_gradient},
                           "Again the last layer is right and the earlier ones usually fail (a "
                           "tensor can pass by luck of the sampled entries). The "
                           "mask is relu's derivative at Z, a property of the forward pass: "
                           "whether the unit was on, not which way the gradient points."),
    "softmax-as-sigmoid": ("the notebook's route with only the Jacobian's diagonal P(1 - P)",
                           {"dlogits_fn": bug_softmax_as_sigmoid},
                           "Every tensor fails, since delta_n itself is wrong. A softmax output "
                           "depends on every logit of its row: the off-diagonal -P_i P_j terms "
                           "of J carry the push-down of the wrong classes. On the z~2000 "
                           "network it even gives inf/NaN: some P underflow to 0, and "
                           "Y / (B P) divides 0 by 0."),
    "no-max-shift": ("softmax without the max shift, on large logits",
                     {"dlogits_fn": bug_no_max_shift},
                     "The small networks pass; only the z~2000 network, whose logits reach "
                     "2,000, fails with inf/NaN gradients. exp(z) overflows above ~709 in "
                     "float64 (~88 in float32), while exp(z - max z) <= 1 never does."),
}


def bug_backward(name):
    """The whole broken backward pass of BUGS[name] -> backward(params, cache, y).

    Needs: BUGS, backward_with, bug_no_mean, bug_transposed_dW, bug_bias_first_row,
        bug_no_relu_mask, bug_mask_from_gradient, bug_softmax_as_sigmoid, bug_no_max_shift
    """
    pieces = BUGS[name][1]
    return lambda params, cache, y: backward_with(params, cache, y, **pieces)


def list_bugs():
    """One line per bug: name and what is wrong.

    Needs: BUGS, bug_no_mean, bug_transposed_dW, bug_bias_first_row, bug_no_relu_mask,
        bug_mask_from_gradient, bug_softmax_as_sigmoid, bug_no_max_shift
    """
    return "\n".join(f"{name:<20}{summary}" for name, (summary, _, _) in BUGS.items())


# ============================================================================= main

def main(argv=None):
    """Run this lesson from the command line -> exit status.

    Needs: argparse, float_in (common), int_in (common), add_run_args (common), parse_args (common),
        list_bugs, BUGS, pick_device (common), make_generator (common), torch, run_gradient_check,
        bug_backward, textwrap, result_line (common), init_params (02), shape_walkthrough,
        softmax_cross_entropy_backward, notebook_softmax_cross_entropy_backward, mlp_forward (02),
        interleaved_seconds, mlp_backward, notebook_mlp_backward, ratio_summary, median,
        bug_no_mean, bug_transposed_dW, bug_bias_first_row, bug_no_relu_mask,
        bug_mask_from_gradient, bug_softmax_as_sigmoid, bug_no_max_shift
    """
    parser = argparse.ArgumentParser(description=__doc__, exit_on_error=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tolerance", type=float_in(1e-7, 1), default=1e-6,
                        help="largest relative error the check accepts (float64; at least "
                        "1e-7, since the central differences themselves err by up to about "
                        "1e-7 times the loss: docs/03_mlp_backward.md, 'Why central differences')")
    parser.add_argument("--repeats", type=int_in(1, 100_000), default=50,
                        help="timed calls per measurement")
    parser.add_argument("--bug", metavar="NAME",
                        help="check a backward pass with one injected bug; 'list' lists them")
    add_run_args(parser, data=False)
    args = parse_args(parser, argv)
    if args.bug == "list":
        print(list_bugs())
        return 0
    if args.bug is not None and args.bug not in BUGS:
        raise ValueError(f"unknown bug {args.bug!r}; `--bug list` lists them: "
                         f"{', '.join(BUGS)}.")
    device = pick_device(args.device)
    generator = make_generator(args.seed)

    with torch.inference_mode():
        if args.bug is not None:
            summary, _, why = BUGS[args.bug]
            print(f"exercise {args.bug}: {summary}")
            print(f"1. gradient check on {device}: central differences in float64")
            worst, grad_ok = run_gradient_check(generator, device, args.tolerance,
                                                bug_backward(args.bug))
            print("\n" + textwrap.fill(why, width=90, initial_indent="   ",
                                       subsequent_indent="   "))
            print(result_line(bug=args.bug, max_rel_error=worst, caught=not grad_ok,
                                     ok=grad_ok))
            return 0 if grad_ok else 1

        print(f"1. gradient check on {device}: central differences in float64")
        worst, grad_ok = run_gradient_check(generator, device, args.tolerance)
        print(f"   largest relative error {worst:.2e} "
              f"({'below' if grad_ok else 'ABOVE'} {args.tolerance:g}): "
              f"{'every sampled entry agrees' if grad_ok else 'a gradient is wrong'}")

        params = init_params([784, 512, 128, 10], generator, device=device)
        # B = 100, not lesson 04's default batch of 128: then no batch dimension looks like
        # the 128-unit layer.
        x = torch.rand(100, 784, generator=generator).to(device)
        y = torch.randint(0, 10, (100,), generator=generator).to(device)
        print("\n2. every tensor of one step of 784-512-128-10 at batch B = 100, forward then "
              "backward")
        for name, shape, how in shape_walkthrough(params, x, y):
            print(f"   {name:<16}{shape:>9}   {how}")

        print("\n3. the notebook's route: delta_n through the full (B, C, C) softmax Jacobian")
        logits = 3 * torch.randn(64, 10, generator=generator, dtype=torch.float64).to(device)
        y64 = torch.randint(0, 10, (64,), generator=generator).to(device)
        jac_diff = (softmax_cross_entropy_backward(logits, y64)
                    - notebook_softmax_cross_entropy_backward(logits, y64)).abs().max().item()
        jac_ok = jac_diff < 1e-12
        print(f"   same delta_n in float64: largest |difference| {jac_diff:.1e} "
              f"({'ok' if jac_ok else 'FAIL'})")
        print(f"   time on {device}, float32, {args.repeats} interleaved rounds: medians, and "
              "the notebook/ours ratio (median [quartiles] of the rounds)")
        print(f"   {'batch':>7}  {'delta_n: ours':>14}{'notebook':>10}{'ratio':>20}"
              f"  {'backward: ours':>15}{'notebook':>10}{'ratio':>20}")
        ratios = {}
        for B in (32, 512):
            xb = torch.rand(B, 784, generator=generator).to(device)
            yb = torch.randint(0, 10, (B,), generator=generator).to(device)
            zb, cache = mlp_forward(params, xb)
            t = interleaved_seconds(
                [lambda z=zb, y=yb: softmax_cross_entropy_backward(z, y),
                 lambda z=zb, y=yb: notebook_softmax_cross_entropy_backward(z, y)],
                device, args.repeats)
            u = interleaved_seconds([lambda c=cache, y=yb: mlp_backward(params, c, y),
                                     lambda c=cache, y=yb: notebook_mlp_backward(params, c, y)],
                                    device, args.repeats)
            r_t, r_u = ratio_summary(t[1], t[0]), ratio_summary(u[1], u[0])
            ratios[B] = {"delta_n alone": r_t, "whole backward pass": r_u}
            print(f"   {B:>7}  {median(t[0]) * 1e6:>11.0f} us{median(t[1]) * 1e6:>7.0f} us"
                  f"{r_t[0]:>6.2f}x [{r_t[1]:.2f}-{r_t[2]:.2f}]"
                  f"  {median(u[0]) * 1e6:>12.0f} us{median(u[1]) * 1e6:>7.0f} us"
                  f"{r_u[0]:>6.2f}x [{r_u[1]:.2f}-{r_u[2]:.2f}]")
        for B, by_part in ratios.items():
            for part, (mid, low, high) in by_part.items():
                if low > 1.0:
                    verdict = f"slower in most rounds (median {mid:.2f}x)"
                elif high < 1.0:
                    verdict = f"faster in most rounds (median {mid:.2f}x)"
                else:
                    verdict = ("within this machine's noise (the quartiles straddle 1.0): no "
                               "difference shown")
                print(f"   batch {B}, {part}: the notebook's route is {verdict}.")
        print("   (a ratio is the median of the rounds' own ratios, so while the machine's speed "
              "drifts it can differ\n   from the ratio of the two medians beside it; the "
              "whole pass hides delta_n's cost when its matmuls dominate)")

    ok = grad_ok and jac_ok
    print(f"\nverdict: {'every check passed' if ok else 'CHECK FAILED'}")
    print(result_line(max_rel_error=worst, jacobian_max_diff=jac_diff,
                      delta_ratio_b32=ratios[32]["delta_n alone"][0],
                      backward_ratio_b32=ratios[32]["whole backward pass"][0],
                      backward_ratio_b512=ratios[512]["whole backward pass"][0], ok=ok))
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

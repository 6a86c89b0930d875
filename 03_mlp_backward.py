"""Lesson 03: the MLP backward pass, the chain rule one layer at a time.

After this lesson you can derive and code the gradient of every parameter of an MLP of any
depth, check it against finite differences, carry backprop to any graph of operations, and
recognise the usual backprop bugs by the gradients they break. Going back through lesson
02's network, the pass carries delta_l = dL/dZ_l (code: dz), and each step has a function:

    delta_n = (P - Y) / B                              softmax_cross_entropy_backward
    dW_l = H_{l-1}^T delta_l,  db_l = column sums,     linear_backward
    dL/dH_{l-1} = delta_l W_l^T
    delta_{l-1} = dL/dH_{l-1} * [H_{l-1} > 0]          relu_backward

mlp_backward chains them from the loss back to the first layer. docs/03_mlp_backward.md
derives every line; derive them yourself first, then write them:

    python 03_mlp_backward.py --blank > mine.py     # the backward functions, bodies empty
    python 03_mlp_backward.py --yours mine.py       # each checked as soon as you write it
    python 03_mlp_backward.py                       # the lesson: checks, shapes, backprop as
                                                    # an algorithm, and why it is fast
    python 03_mlp_backward.py --bug list            # exercises: one bug each; predict which
    python 03_mlp_backward.py --bug no-mean         # gradients break, run, then --explain
"""

import importlib
import sys
import tempfile
import time
from pathlib import Path

import torch

import common
import exercises

L2 = importlib.import_module("02_mlp_forward")  # a module name cannot start with a digit
softmax, cross_entropy, relu = L2.softmax, L2.cross_entropy, L2.relu
init_params, mlp_forward, linear_forward = L2.init_params, L2.mlp_forward, L2.linear_forward


def one_hot(y, n_classes, dtype):
    """Labels y (B,) int64 in [0, n_classes) -> Y (B, n_classes) of dtype: 1 at [b, y_b].

    scatter_ raises for a label outside [0, n_classes) and for labels that are not integers.
    Needs: torch
    """
    return torch.zeros(len(y), n_classes, dtype=dtype, device=y.device).scatter_(
        1, y.unsqueeze(1), 1.0)


def softmax_cross_entropy_backward(logits, y):
    """delta_n = dL/dZ_n (B, C) of cross_entropy (02); logits Z_n (B, C), labels y (B,) int64.

    Derive it in docs/03_mlp_backward.md, section 1 (steps 1-17).
    Needs: softmax (02), one_hot
    """
    B, C = logits.shape
    return (softmax(logits) - one_hot(y, C, logits.dtype)) / B  # (P - Y) / B, step 17


def linear_backward(dz, h, W, need_dh=True):
    """Z = H W + b: dz = dL/dZ (B, O), h = H (B, I), W (I, O) -> dh (B, I), dW (I, O), db (O,).

    dh = dL/dH, or None when need_dh is False. Derive it in docs/03, section 2 (steps 18-26).
    Needs: nothing
    """
    dW = h.T @ dz  # (I, B) @ (B, O) = (I, O): sum over the batch of H[b, i] dz[b, k], step 22
    db = dz.sum(dim=0)  # (O,): b is added to every row, so its gradient sums them, step 24
    dh = dz @ W.T if need_dh else None  # (B, O) @ (O, I) = (B, I), step 26
    return dh, dW, db


def relu_backward(dh, h):
    """H = relu(Z): dh = dL/dH (B, U), h = H (B, U) -> dz = dL/dZ (B, U).

    Derive it in docs/03, section 3 (steps 27-31).
    Needs: nothing
    """
    return dh * (h > 0)  # the mask: relu's slope is 1 where Z > 0, that is where H > 0


def mlp_backward_from(params, cache, dlogits):
    """Carry dlogits = delta_n (B, C) back through the layers -> (dW1, db1, ..., dWn, dbn).

    params and cache = (H_0, ..., H_{n-1}, Z_n) as mlp_forward (02) gave them. The recursion
    is docs/03, section 4 (steps 32-35); the first layer's dh, the pixels' gradient, is skipped.
    Needs: linear_backward, relu_backward
    """
    grads = [None] * len(params)
    dz = dlogits  # delta_l of the layer we are at, starting with the last
    for i in reversed(range(len(params) // 2)):  # layer l = i + 1, from the last to the first
        W, h = params[2 * i], cache[i]  # W_l, and the layer's input H_{l-1}
        dh, grads[2 * i], grads[2 * i + 1] = linear_backward(dz, h, W, need_dh=i > 0)
        if i > 0:
            dz = relu_backward(dh, h)  # delta_{l-1}, through the ReLU that made H_{l-1}
    return tuple(grads)


def mlp_backward(params, cache, y):
    """Gradients of the mean cross-entropy -> (dW1, db1, ..., dWn, dbn), shaped like params.

    params and cache as mlp_forward (02) took and returned them; y (B,) int64.
    Needs: softmax_cross_entropy_backward, mlp_backward_from
    """
    return mlp_backward_from(params, cache, softmax_cross_entropy_backward(cache[-1], y))


def softmax_jacobian(probs):
    """P (B, C) -> J (B, C, C), J[b, i, j] = dP[b, i] / dZ[b, j] = P_i ([i = j] - P_j) (step 6).

    Needs: torch
    """
    return torch.diag_embed(probs) - probs.unsqueeze(2) * probs.unsqueeze(1)


def notebook_softmax_cross_entropy_backward(logits, y):
    """The notebook's route to delta_n (B, C): dL/dP, then the full softmax Jacobian (steps 7-11).

    Same answer as softmax_cross_entropy_backward, through a (B, C, C) tensor, and fragile: a
    probability that underflows to 0 makes dL/dP = -1 / (B P) infinite.
    Needs: softmax (02), softmax_jacobian, torch
    """
    B = len(y)
    probs = softmax(logits)  # (B, C)
    dprobs = torch.zeros_like(probs).scatter_(  # (B, C): -1 / (B P[b, y_b]) at the label, step 9
        1, y.unsqueeze(1), -1 / (B * probs.gather(1, y.unsqueeze(1))))
    return (softmax_jacobian(probs) @ dprobs.unsqueeze(2)).squeeze(2)  # J dL/dP, step 11


# ============================================================================= checking it
# Below: the checks (the functions above against central differences, the same check your
# own file gets), a walk through the shapes, backprop on a small graph, and the exercises.

def your_turn_tasks(generator):
    """The backward functions, smallest first, each on float64 cases: B 7, and no two sizes equal.

    Needs: relu_backward, linear_backward, softmax_cross_entropy_backward, mlp_backward_from,
        mlp_backward, relu (02), cross_entropy (02), init_params (02), mlp_forward (02), relu_hint,
        bias_hint, rows_hint, layers_hint, torch
    """
    def randn(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=generator, dtype=torch.float64)
    z, dh = randn(7, 4), randn(7, 4)  # B 7, U 4
    relu_case = {"args": (dh, relu(z)), "names": ("dz",), "B": 7, "hint": relu_hint,
                 "at": (z,), "loss": lambda z: (relu(z) * dh).sum()}
    dz, h, W, b = randn(7, 3), randn(7, 4), randn(4, 3), randn(3)  # B 7, I 4, O 3
    linear_case = {"args": (dz, h, W), "names": ("dh", "dW", "db"), "B": 7, "hint": bias_hint,
                   "at": (h, W, b), "loss": lambda h, W, b: ((h @ W + b) * dz).sum()}
    y = torch.randint(0, 3, (7,), generator=generator)
    softmax_cases = [{"args": (logits, y), "names": ("delta_n",), "B": 7, "hint": rows_hint,
                      "at": (logits,), "loss": lambda z: cross_entropy(z, y)}
                     for logits in (randn(7, 3, scale=3), randn(7, 3, scale=3) + 800)]  # > 709
    from_cases, mlp_cases = [], []
    for sizes, largest in (([6, 3], None), ([6, 5, 3], None), ([6, 5, 4, 3], None),
                           ([6, 5, 4, 3], 800.0)):  # depths 1-3, then logits past exp's 709
        params = tuple(p if p.dim() == 2 else randn(*p.shape, scale=0.1)  # biases not 0
                       for p in init_params(sizes, generator, dtype=torch.float64))
        x, y7 = randn(7, sizes[0]), torch.randint(0, 3, (7,), generator=generator)
        if largest:  # a ReLU network is nearly linear in its input: scale it up to the logits
            x = x * largest / mlp_forward(params, x)[0].abs().max()
        logits, cache = mlp_forward(params, x)
        case = {"args": (params, cache, y7), "B": 7, "at": params, "rows_hint": layers_hint,
                "names": [f"d{'Wb'[k % 2]}{k // 2 + 1}" for k in range(len(params))],
                "loss": lambda *ps, x=x, y=y7: cross_entropy(mlp_forward(ps, x)[0], y)}
        mlp_cases.append(case)
        from_cases.append(dict(case, args=(params, cache,
                                           softmax_cross_entropy_backward(logits, y7))))
    return [("relu_backward", relu_backward, [relu_case]),
            ("linear_backward", linear_backward, [linear_case]),
            ("softmax_cross_entropy_backward", softmax_cross_entropy_backward, softmax_cases),
            ("mlp_backward_from", mlp_backward_from, from_cases),
            ("mlp_backward", mlp_backward, mlp_cases)]


def relu_hint(mine, want, args):
    """The pattern a wrong ReLU backward leaves, read off where it is wrong.

    Needs: nothing
    """
    dh, h = args
    wrong = (mine - want).abs() > 1e-9
    if not (wrong & (h > 0)).any():
        return "wrong only where H = 0, the unit off: no gradient passes there (the mask H > 0)"
    if wrong.equal((h > 0) != (dh > 0)):
        return "the mask follows the gradient's sign; it must come from the forward pass, H > 0"
    return "where the unit is on (H > 0), dz is dh unchanged; elsewhere 0" if wrong.any() else None


def bias_hint(mine, want, args):
    """db's pattern: b is added to every row, so its gradient sums over the batch.

    Needs: nothing
    """
    if mine.shape == want.shape and mine.dim() == 1 and mine.shape == args[0].shape[1:]:
        return "b is added to every row of Z, so db sums delta over the batch (step 24)"
    return None


def rows_hint(mine, want, args):
    """delta_n's pattern: each row of P - Y sums to 0.

    Needs: nothing
    """
    rows = mine.sum(dim=1)  # (B,)
    if (rows - 1 / len(rows)).abs().max() < 1e-9:
        return "each row sums to 1/B, not 0: the one-hot Y is missing (step 17)"
    if rows.abs().max() > 1e-9:
        return ("each row of delta_n must sum to 0: a softmax output depends on every logit of "
                "its row, so the Jacobian's off-diagonal terms count (steps 6-17)")
    return None


def layers_hint(rows):
    """The recursion's pattern: the last layer right and the ones below it wrong.

    Needs: nothing
    """
    if all(r[1] == "ok" for r in rows[-2:]):
        return ("the last layer is right and the layers below are wrong: check what is carried "
                "down between layers, dL/dH and the ReLU's mask (steps 34-35)")
    return None


def shape_walkthrough(params, x, y):
    """Every tensor of one forward and backward pass, in order -> rows (name, shape, how).

    Needs: linear_forward (02), relu (02), softmax_cross_entropy_backward, linear_backward,
        relu_backward
    """
    n, hs, rows = len(params) // 2, [x], [("H_0 = X", x, "the input batch")]
    for l in range(1, n + 1):
        z = linear_forward(hs[-1], params[2 * l - 2], params[2 * l - 1])
        rows.append((f"Z_{l}", z, f"H_{l - 1} W_{l} + b_{l}" + (" (logits)" if l == n else "")))
        if l < n:
            hs.append(relu(z))
            rows.append((f"H_{l}", hs[-1], f"relu(Z_{l})"))
    dz = softmax_cross_entropy_backward(z, y)
    rows.append((f"delta_{n}", dz, "(P - Y) / B"))
    for l in range(n, 0, -1):
        dh, dW, db = linear_backward(dz, hs[l - 1], params[2 * l - 2], l > 1)
        rows += [(f"dW_{l}", dW, f"H_{l - 1}^T delta_{l}, like W_{l}"),
                 (f"db_{l}", db, f"column sums of delta_{l}, like b_{l}")]
        if l > 1:
            dz = relu_backward(dh, hs[l - 1])
            rows += [(f"dL/dH_{l - 1}", dh, f"delta_{l} W_{l}^T, like H_{l - 1}"),
                     (f"delta_{l - 1}", dz, f"dL/dH_{l - 1} * [H_{l - 1} > 0]")]
    return [(name, "x".join(map(str, t.shape)), how) for name, t, how in rows]


def backprop_on_a_graph(a=3.0, b=2.0, c=-1.0):
    """f = max(a b + c, c), backward node by node -> lines to print, (df/da, df/db, df/dc).

    Needs: nothing
    """
    q = a * b  # multiply
    r = q + c  # add
    f = max(r, c)  # max; c is used twice: here and in r
    df = 1.0
    dr, dc_max = (df, 0.0) if r > c else (0.0, df)  # max routes: the larger input gets it all
    dq, dc_add = dr, dr  # add distributes: both local gradients are 1
    da, db = b * dq, a * dq  # multiply swaps: d(ab)/da = b, d(ab)/db = a
    dc = dc_max + dc_add  # a value used twice: its gradients add

    def f_of(a, b, c):
        return max(a * b + c, c)
    slopes = [(f_of(*(v + 1e-6 * (i == k) for i, v in enumerate((a, b, c))))
               - f_of(*(v - 1e-6 * (i == k) for i, v in enumerate((a, b, c))))) / 2e-6
              for k in range(3)]
    lines = [f"forward:  q = a b = {q:g},  r = q + c = {r:g},  f = max(r, c) = {f:g}",
             "backward, each node's local gradient times the gradient from above (df/df = 1):",
             f"  f = max(r, c) routes it:   df/dr = {dr:g},  df/dc += {dc_max:g}   (r is larger)",
             f"  r = q + c distributes it:  df/dq = {dq:g},  df/dc += {dc_add:g}",
             f"  q = a b swaps the inputs:  df/da = b = {da:g},  df/db = a = {db:g}",
             f"  c feeds two nodes, so its gradients add: df/dc = {dc_max:g} + {dc_add:g} = {dc:g}",
             "central differences agree: " + ", ".join(f"{s:.3f}" for s in slopes),
             "a bias is a value used many times too: b_l is added to each of the B rows of Z_l,",
             "so db_l adds up delta_l over the rows. Broadcasting forward is summing backward."]
    return lines, (da, db, dc)


def backprop_against_differences(params, x, y, repeats=5):
    """One gradient by backprop (forward and backward) and one forward pass with its loss, each
    timed as the fastest of repeats -> (backprop seconds, seconds for central differences of
    every parameter: two forward passes each).

    Needs: mlp_forward (02), mlp_backward, cross_entropy (02), time
    """
    def fastest(fn):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn().reshape(-1)[0].item()  # .item(): a GPU finishes its work first
            times.append(time.perf_counter() - start)
        return min(times)
    forward = fastest(lambda: cross_entropy(mlp_forward(params, x)[0], y))
    backprop = fastest(lambda: mlp_backward(params, mlp_forward(params, x)[1], y)[0])
    return backprop, 2 * sum(p.numel() for p in params) * forward


# ----------------------------------------------------------------------------- exercises
# Each bug is one realistic mistake in one backward function, written with its name and
# arguments: --bug NAME checks a copy of the lesson's functions with that one replaced,
# exactly as --yours checks your file.

def bug_no_mean(logits, y):
    """delta_n without the 1/B. Needs: softmax (02), one_hot"""
    return softmax(logits) - one_hot(y, logits.shape[1], logits.dtype)


def bug_no_max_shift(logits, y):
    """delta_n from a softmax without the max shift. Needs: one_hot, torch"""
    e = torch.exp(logits)  # inf for a logit above ~709 in float64 (~88 in float32)
    return (e / e.sum(dim=1, keepdim=True) - one_hot(y, logits.shape[1], logits.dtype)) / len(y)


def bug_softmax_as_sigmoid(logits, y):
    """the Jacobian route keeping only the diagonal P (1 - P). Needs: softmax (02), one_hot"""
    probs = softmax(logits)
    dprobs = -one_hot(y, logits.shape[1], logits.dtype) / (len(y) * probs)  # 0 off the label
    return probs * (1 - probs) * dprobs  # as if each P_i depended on its own Z_i alone


def bug_transposed_dW(dz, h, W, need_dh=True):
    """dW = delta^T H instead of H^T delta. Needs: nothing"""
    return (dz @ W.T if need_dh else None), dz.T @ h, dz.sum(dim=0)


def bug_bias_first_row(dz, h, W, need_dh=True):
    """db from the first example instead of the whole batch. Needs: nothing"""
    return (dz @ W.T if need_dh else None), h.T @ dz, dz[0]


def bug_no_relu_mask(dh, h):
    """the ReLU passes every gradient. Needs: nothing"""
    return dh


def bug_mask_from_gradient(dh, h):
    """the mask taken from the gradient's sign instead of the activation. Needs: nothing"""
    return dh * (dh > 0)


BUGS = {  # name: (the bug, the function it replaces, why it breaks what it breaks)
    "no-mean": (bug_no_mean, "softmax_cross_entropy_backward",
                "The loss is a mean over the batch, so delta_n carries 1/B, and every later "
                "gradient inherits it: without it all are B times too large, as if the learning "
                "rate were B times larger."),
    "no-max-shift": (bug_no_max_shift, "softmax_cross_entropy_backward",
                     "Fine on ordinary logits; on logits in the hundreds exp overflows to inf and "
                     "inf / inf is NaN. exp(z - max z) <= 1 never overflows."),
    "softmax-as-sigmoid": (bug_softmax_as_sigmoid, "softmax_cross_entropy_backward",
                           "A softmax output depends on every logit of its row: the Jacobian's "
                           "off-diagonal -P_i P_j terms push the wrong classes down. With the "
                           "diagonal alone, delta_n's rows no longer sum to 0."),
    "transposed-dW": (bug_transposed_dW, "linear_backward",
                      "dW must have W's shape (I, O), and only H^T delta = (I, B)(B, O) gives it; "
                      "delta^T H is (O, I). Checks on sizes that all differ catch it at once."),
    "bias-first-row": (bug_bias_first_row, "linear_backward",
                       "Every dW is right and every db wrong: b is added to every row of Z, so "
                       "each row's delta reaches db, which is delta's column sum."),
    "no-relu-mask": (bug_no_relu_mask, "relu_backward",
                     "A unit that was off (Z <= 0) did not change the loss, so no gradient may "
                     "pass it. The last layer, which no ReLU follows, stays right; the layers "
                     "below it go wrong."),
    "mask-from-gradient": (bug_mask_from_gradient, "relu_backward",
                           "The mask is relu's slope at Z, a fact of the forward pass (was the "
                           "unit on?), not of which way the gradient points."),
}

YOURS = (relu_backward, linear_backward, softmax_cross_entropy_backward, mlp_backward_from,
         mlp_backward)  # checked in this order, smallest first


def source_with_bug(name):
    """The lesson's backward functions as a learner's file, one replaced by BUGS[name] -> str.

    Needs: exercises, BUGS, YOURS, softmax (02), one_hot
    """
    import inspect

    bug, target, _ = BUGS[name]
    parts = [exercises.blank_header("03_mlp_backward", [softmax, one_hot])]
    for fn in YOURS:
        parts.append(inspect.getsource(fn) if fn.__name__ != target else
                     inspect.getsource(bug).replace(f"def {bug.__name__}(", f"def {target}(", 1))
    return "\n\n".join(parts)


def main(argv=None):
    """Check the backward pass, walk its shapes, run backprop on a graph -> exit status.

    Needs: common, exercises, BUGS, YOURS, softmax (02), one_hot, your_turn_tasks, source_with_bug,
        init_params (02),
        shape_walkthrough, softmax_cross_entropy_backward, notebook_softmax_cross_entropy_backward,
        backprop_on_a_graph, backprop_against_differences, torch, tempfile, Path
    """
    parser = common.make_parser(__doc__)
    exercises.add_your_turn(parser)
    parser.add_argument("--bug", choices=["list", *BUGS], help="check a pass with one bug")
    parser.add_argument("--explain", action="store_true", help="with --bug: say why it breaks")
    args = parser.parse_args(argv)
    generator = common.make_generator(args.seed)
    status = exercises.your_turn(args, "03_mlp_backward", [softmax, one_hot], your_turn_tasks,
                                 YOURS)
    if status is not None:
        return status
    if args.bug == "list":
        for name, (bug, target, _) in BUGS.items():
            print(f"{name:<20} {bug.__doc__.split('.')[0]} (in {target})")
        return 0
    if args.bug:
        with tempfile.TemporaryDirectory() as folder:  # the lesson's file, the bug pasted in
            (Path(folder) / "bug.py").write_text(source_with_bug(args.bug))
            print(f"checking the backward pass with the bug {args.bug}: each function against "
                  "the lesson's own and central differences (float64)")
            exercises.check_functions(exercises.load_yours(Path(folder) / "bug.py"),
                                   your_turn_tasks(generator), hints=args.explain)
        print(f"\nwhy: {BUGS[args.bug][2]}" if args.explain else
              "\n(predict why these outputs break, then run it again with --explain)")
        return 1  # the check failed, as it must: tests/test_exercises.py

    print("1. the backward functions against central differences in float64, as --yours checks "
          "yours:\n   ok means every entry within 1e-6, relative (float64 rounding leaves ~1e-10)")
    ok = exercises.check_functions(globals(), your_turn_tasks(generator))
    params = init_params([784, 512, 128, 10], generator, device=args.device)
    x = torch.rand(100, 784, generator=generator).to(args.device)  # B = 100: no size repeats
    y = torch.randint(0, 10, (100,), generator=generator).to(args.device)
    print("\n2. every tensor of one step of 784-512-128-10 at batch B = 100, forward then back")
    for name, shape, how in shape_walkthrough(params, x, y):
        print(f"   {name:<16}{shape:>9}   {how}")

    logits = 3 * torch.randn(64, 10, generator=generator, dtype=torch.float64)
    y64 = torch.randint(0, 10, (64,), generator=generator)
    gap = (softmax_cross_entropy_backward(logits, y64)
           - notebook_softmax_cross_entropy_backward(logits, y64)).abs().max().item()
    print(f"\n3. the notebook's route through the (B, C, C) Jacobian gives the same delta_n: "
          f"{'yes' if gap < 1e-12 else 'NO'}, within 1e-12 in float64")
    ok = ok and gap < 1e-12

    lines, _ = backprop_on_a_graph()
    print("\n4. backprop on any graph (docs/03, section 5): f = max(a b + c, c) at a = 3, b = 2, "
          "c = -1\n   " + "\n   ".join(lines))
    backprop, numeric = backprop_against_differences(params, x[:32], y[:32])
    print(f"\n5. why backprop is fast, at batch 32: one gradient of all 468,874 parameters by "
          f"backprop took {backprop * 1e3:.1f} ms here;\n   central differences, two forward "
          f"passes per parameter, would take about {numeric / 60:.0f} minutes, "
          f"{numeric / backprop:,.0f} times longer\n   (counting multiply-adds predicts 437,648 "
          "times: docs/03, section 5)")
    print(f"result: checks_ok={str(ok).lower()} differences_over_backprop={numeric / backprop:.3g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(common.run_main(main))

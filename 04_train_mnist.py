"""Lesson 04: train the MLP on MNIST with the hand-written passes of lessons 02 and 03.

After this lesson you can write the loop that trains a network, one pure step at a time,

    params, velocity, loss = train_step(params, velocity, x, y, lr, momentum, ...)

(forward, backward, update; nothing is changed in place), say what each trick of the recipe
buys (momentum, a learning-rate schedule, batch size, augmentation, weight decay, label
smoothing: --ablation measures each), and read a run's health off its diagnostics.

    python 04_train_mnist.py --overfit-batch     # the first check: can the step learn at all?
    python 04_train_mnist.py                     # the default recipe, ~99.3 % test
    python 04_train_mnist.py --preset notebook   # the notebook's plain SGD, ~96.5 % test
    python 04_train_mnist.py --resume            # continue runs/default/ after a stop
    python 04_train_mnist.py --eval runs/default/checkpoint.pt
    python 04_train_mnist.py --blank > mine.py   # your turn: label smoothing's gradient,
    python 04_train_mnist.py --yours mine.py     # weight decay's, the momentum update

Each run writes into runs/<preset>/: checkpoint.pt after every epoch, metrics.json, and the
pictures curves.png, diagnostics.png and predictions.png. Derivations: docs/04_train_mnist.md.
"""

import importlib
import io
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import common
import exercises
from common import accuracy, minibatches

L1 = importlib.import_module("01_logistic_regression")  # a module name cannot start with a digit
L2 = importlib.import_module("02_mlp_forward")
L3 = importlib.import_module("03_mlp_backward")
sgd_step, linear_decay = L1.sgd_step, L1.linear_decay
init_params, mlp_forward = L2.init_params, L2.mlp_forward
softmax, log_softmax, cross_entropy = L2.softmax, L2.log_softmax, L2.cross_entropy
one_hot, mlp_backward_from = L3.one_hot, L3.mlp_backward_from


def train_step(params, velocity, x, y, lr, momentum=0.0, weight_decay=0.0, smoothing=0.0):
    """Forward, backward, update -> (new params, new velocity, loss); the inputs stay unchanged.

    x (B, D), y (B,) int64; loss is the batch's mean smoothed cross-entropy before the update.
    Momentum 0 is lesson 01's plain SGD, smoothing 0 lesson 02's loss and 03's delta_n; the
    new pieces are below, under "loss and updates".
    Needs: mlp_forward (02), smoothed_cross_entropy, smoothed_cross_entropy_backward,
        mlp_backward_from (03), add_weight_decay, momentum_step, sgd_step (01)
    """
    logits, cache = mlp_forward(params, x)  # Z_n (B, C) and (H_0, ..., H_{n-1}, Z_n)
    loss = smoothed_cross_entropy(logits, y, smoothing)
    grads = mlp_backward_from(params, cache, smoothed_cross_entropy_backward(logits, y, smoothing))
    if weight_decay:
        grads = add_weight_decay(grads, params, weight_decay)
    if momentum:
        params, velocity = momentum_step(params, velocity, grads, lr, momentum)
    else:
        params = sgd_step(params, grads, lr)
    return params, velocity, loss


def train_epoch(params, velocity, X, y, config, generator, first_step, total_steps):
    """One shuffled pass over X (N, D), y (N,) -> (params, velocity, mean step loss, the params
    before and after the epoch's middle step). Each batch is freshly distorted, then stepped.

    Needs: minibatches (common), augment, linear_decay (01), train_step, math, torch, tqdm
    """
    steps = math.ceil(len(X) / config["batch_size"])  # the last batch may be smaller
    losses, batches = [], minibatches(X, y, config["batch_size"], generator)
    for s, (xb, yb) in enumerate(tqdm(batches, total=steps, leave=False, disable=None)):
        xb = augment(xb, generator, config["rotate"], config["scale"], config["shift"])
        lr = (config["lr"] if config["schedule"] == "constant"
              else linear_decay(config["lr"], first_step + s, total_steps))  # to 0, as in 01
        before = params
        params, velocity, loss = train_step(params, velocity, xb, yb, lr, config["momentum"],
                                            config["weight_decay"], config["smoothing"])
        losses.append(loss)  # left on the device: read back once, at the end
        if s == steps // 2:
            middle = (before, params)  # one step's update, for the diagnostics
    return params, velocity, torch.stack(losses).mean().item(), middle


def fit(config, data, generator, state=None, on_epoch=None, log=print):
    """Train for config's epochs, from state's if resuming -> (params, velocity, history).

    data: X_train, y_train, X_val, y_val on one device (X_val may be empty). After each epoch
    a record goes into history and on_epoch(params, velocity, history) saves it; a loss or
    parameter that is no longer finite stops the run with FloatingPointError.
    Needs: init_params (02), init_velocity, train_epoch, evaluate, diagnostics, time, math
    """
    X_train, y_train, X_val, y_val = data
    if state is None:
        params = init_params([784, *config["hidden"], 10], generator, device=X_train.device)
        velocity, history = init_velocity(params), []
    else:
        params = tuple(t.to(X_train.device) for t in state["params"])
        velocity = tuple(t.to(X_train.device) for t in state["velocity"])
        history = state["history"]
        generator.set_state(state["generator"])
    steps = math.ceil(len(X_train) / config["batch_size"])  # per epoch
    probe = (X_val if len(X_val) else X_train)[:1000]  # a fixed batch for the diagnostics
    for epoch in range(len(history) + 1, config["epochs"] + 1):
        tic = time.perf_counter()
        params, velocity, loss, middle = train_epoch(params, velocity, X_train, y_train, config,
                                                     generator, (epoch - 1) * steps,
                                                     config["epochs"] * steps)
        if not (math.isfinite(loss) and all(p.isfinite().all() for p in params)):
            raise FloatingPointError(f"the loss or the weights stopped being finite in epoch "
                                     f"{epoch} (mean loss {loss:g}); lower --lr")
        val_loss, val_acc = evaluate(params, X_val, y_val)
        history.append({"epoch": epoch, "loss": loss, "val_loss": val_loss,
                        "val_accuracy": val_acc, "seconds": time.perf_counter() - tic,
                        "diagnostics": diagnostics(*middle, probe)})
        val = "" if val_acc is None else f" | val {val_acc:6.2%}"
        log(f"epoch {epoch:>3}/{config['epochs']} | train loss {loss:.4f}{val} | "
            f"{history[-1]['seconds']:5.1f} s")
        if on_epoch:
            on_epoch(params, velocity, history)
    return params, velocity, history


# ----------------------------------------------------------------------------- loss and updates

def init_velocity(params):
    """Momentum's starting velocity: zeros shaped like params.

    Needs: torch
    """
    return tuple(torch.zeros_like(p) for p in params)


def momentum_step(params, velocity, grads, lr, momentum):
    """v <- momentum v + g, then p <- p - lr v -> (new params, new velocity).

    On a steady gradient v tends to g / (1 - momentum): the effective step is lr / (1 -
    momentum) (docs/04, section 1).
    Needs: torch
    """
    velocity = tuple(torch.add(g, v, alpha=momentum) for v, g in zip(velocity, grads))
    return tuple(torch.add(p, v, alpha=-lr) for p, v in zip(params, velocity)), velocity


def add_weight_decay(grads, params, weight_decay):
    """grads of L -> grads of L + (weight_decay / 2) * sum of every W's squares (biases unchanged).

    Derive it in docs/04, section 2.
    Needs: torch
    """
    return tuple(torch.add(g, p, alpha=weight_decay) if p.dim() == 2 else g  # g + wd W
                 for g, p in zip(grads, params))


def smoothed_cross_entropy(logits, y, smoothing=0.0):
    """Mean over the batch of -sum_j Y_s[b, j] log P[b, j], Y_s = (1 - smoothing) Y + smoothing / C.

    logits (B, C), y (B,) int64 -> scalar; smoothing 0 is lesson 02's cross_entropy.
    Needs: one_hot (03), log_softmax (02)
    """
    C = logits.shape[1]
    Y_s = one_hot(y, C, logits.dtype) * (1 - smoothing) + smoothing / C  # (B, C), rows sum to 1
    return -(Y_s * log_softmax(logits)).sum(dim=1).mean()


def smoothed_cross_entropy_backward(logits, y, smoothing=0.0):
    """delta_n = dL/dZ_n (B, C) of smoothed_cross_entropy; logits (B, C), y (B,) int64.

    Derive it in docs/04, section 4.
    Needs: one_hot (03), softmax (02)
    """
    B, C = logits.shape
    Y_s = one_hot(y, C, logits.dtype) * (1 - smoothing) + smoothing / C  # (B, C)
    return (softmax(logits) - Y_s) / B  # (P - Y_s) / B; smoothing 0 gives lesson 03's


# ----------------------------------------------------------------------------- augmentation

def affine_theta(angle, s, t, side):
    """The maps grid_sample reads through -> theta (B, 2, 3): turn by angle (B,) radians,
    enlarge by s (B,) about the centre, move by t (B, 2) pixels (x right, y down).

    theta maps an OUTPUT position to the INPUT position it shows, so it is the inverse
    map, in units of half the image (docs/04, section 5, steps 21-26).
    Needs: torch
    """
    cos_s, sin_s = torch.cos(angle) / s, torch.sin(angle) / s  # (B,)
    A = torch.stack([torch.stack([cos_s, sin_s], -1), torch.stack([-sin_s, cos_s], -1)], 1)
    return torch.cat([A, -A @ (t * 2 / side).unsqueeze(2)], 2)  # (B, 2, 3): [R^T/s | -R^T t'/s]


def warp(x, theta):
    """Resample each square image in x (B, side^2) through its map theta (B, 2, 3) -> (B, side^2).

    Output pixel (i, j) reads the input at theta[b] @ (c_j, c_i, 1), c_k = (2k + 1) / side - 1
    being pixel k's centre in grid_sample's units (docs/04, section 5); bilinear, and what comes
    in from outside the image is 0, the background.
    Needs: math, torch, F
    """
    B, side = x.shape[0], math.isqrt(x.shape[1])
    c = (torch.arange(side, dtype=x.dtype, device=x.device) * 2 + 1) / side - 1  # (side,)
    theta = theta.to(x)
    rows = theta[:, None, :, 1] * c[:, None] + theta[:, None, :, 2]  # (B, side, 2): c_i's part
    cols = theta[:, None, :, 0] * c[:, None]  # (B, side, 2): c_j's part
    grid = rows[:, :, None] + cols[:, None, :]  # (B, side, side, 2): one add per position
    return F.grid_sample(x.view(B, 1, side, side), grid, align_corners=False).view(B, -1)


def augment(x, generator, rotate=0.0, scale=0.0, shift=0.0):
    """Each image of x (B, side^2) turned by up to rotate degrees, resized by up to scale, moved
    by up to shift pixels along each axis, all drawn uniformly from generator -> (B, side^2);
    all 0: x itself.

    Needs: affine_theta, warp, math, torch
    """
    if not (rotate or scale or shift):
        return x
    u = torch.rand(len(x), 4, generator=generator) * 2 - 1  # (B, 4), uniform in [-1, 1]
    theta = affine_theta(u[:, 0] * math.radians(rotate), 1 + u[:, 1] * scale, u[:, 2:] * shift,
                         math.isqrt(x.shape[1]))
    return warp(x, theta)


# ----------------------------------------------------------------------------- measuring a run

def evaluate(params, X, y):
    """-> (mean cross-entropy, accuracy) on X (N, D), y (N,); (None, None) when N = 0.

    Needs: mlp_forward (02), cross_entropy (02), accuracy (common)
    """
    if len(X) == 0:
        return None, None
    logits = mlp_forward(params, X)[0]  # (N, C)
    return cross_entropy(logits, y).item(), accuracy(logits, y)


def diagnostics(before, after, probe):
    """Per layer: log10 |update| / |W| of a step (before -> after), and on a fixed batch probe
    (N, D), the share of ReLUs that fire for none of it and the rms of each H_l -> dict.

    Needs: mlp_forward (02), math
    """
    hidden = mlp_forward(after, probe)[1][1:-1]  # H_1 ... H_{n-1}
    return {"update_ratio": [math.log10((new - old).norm().item() / new.norm().item())
                             for old, new in zip(before[::2], after[::2])],  # W's only
            "dead": [((h > 0).sum(dim=0) == 0).float().mean().item() for h in hidden],
            "rms": [h.square().mean().sqrt().item() for h in hidden]}


def overfit_batch(hidden, X, y, generator, lr=0.1, momentum=0.9, target=0.01, max_steps=500):
    """Train a fresh network on one fixed batch X (B, 784), y (B,), nothing else (no augmentation,
    smoothing or decay), until its loss < target -> the steps taken, or None. A correct step
    gets there in dozens of steps; one that cannot has a bug in its gradient or its update.

    Needs: init_params (02), init_velocity, train_step, cross_entropy (02), mlp_forward (02)
    """
    params = init_params([784, *hidden, 10], generator, device=X.device)
    velocity = init_velocity(params)
    for step in range(max_steps + 1):
        loss = cross_entropy(mlp_forward(params, X)[0], y).item()  # after `step` updates
        if step & (step - 1) == 0 or loss < target:  # steps 0, 1, 2, 4, 8, ... and the last
            print(f"after {step:>3} steps | loss on the batch {loss:.4f}")
        if loss < target:
            return step
        params, velocity, _ = train_step(params, velocity, X, y, lr, momentum)
    return None


# ----------------------------------------------------------------------------- your turn

def your_turn_tasks(generator):
    """Label smoothing's gradient, weight decay's, the momentum update: float64 cases, each a
    dict that exercises.check_case reads (its docstring says what each key means).

    Needs: smoothed_cross_entropy, smoothed_cross_entropy_backward, add_weight_decay,
        momentum_step, init_params (02), torch
    """
    logits = torch.randn(5, 3, generator=generator, dtype=torch.float64)  # B 5, C 3
    y = torch.tensor([0, 2, 1, 2, 0])
    params = init_params([4, 3, 2], generator, dtype=torch.float64)
    grads, velocity = (tuple(torch.randn(p.shape, generator=generator, dtype=torch.float64)
                             for p in params) for _ in range(2))
    names = ["W1", "b1", "W2", "b2"]
    return [("smoothed_cross_entropy_backward", smoothed_cross_entropy_backward,
             [{"args": (logits, y, 0.1), "names": ("delta_n",), "B": 5, "at": (logits,),
               "loss": lambda z: smoothed_cross_entropy(z, y, 0.1)}]),
            ("add_weight_decay", add_weight_decay,
             [{"args": (grads, params, 0.01), "names": [f"d{n}" for n in names], "B": 5,
               "at": params, "hint": lambda m, w, args: m.dim() == 1 and "biases keep their "
               "gradient: the penalty holds the weights W only",
               # a loss whose gradient is g + 0.01 W: <g, p> + (0.01 / 2) |W|^2
               "loss": lambda *ps: sum((g * p).sum() + (0.005 * (p * p).sum() if p.dim() == 2
                                                       else 0) for g, p in zip(grads, ps))}]),
            ("momentum_step", momentum_step,
             [{"args": (params, velocity, grads, 0.1, 0.9), "B": 5,
               "names": [f"new {n}" for n in names] + [f"velocity {n}" for n in names]}])]


# ----------------------------------------------------------------------------- runs

PRESETS = {
    # The notebook: He init, plain SGD at a constant lr 0.01, batch 32, 8 epochs, trained on
    # all 60,000 digits (its "validation" was the test set).
    "notebook": {"hidden": [512, 128], "epochs": 8, "batch_size": 32, "lr": 0.01,
                 "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant", "val_size": 0,
                 "shift": 0.0, "rotate": 0.0, "scale": 0.0, "smoothing": 0.0},
    # The same network, momentum, lr 0.1 falling to 0, batch 128, weight decay, each digit
    # turned (10 degrees), resized (10 %) and moved (2 px) at random, label smoothing; 5,000
    # digits held out for validation. Each change is measured by --ablation.
    "default": {"hidden": [512, 128], "epochs": 30, "batch_size": 128, "lr": 0.1,
                "momentum": 0.9, "weight_decay": 1e-4, "schedule": "linear", "val_size": 5000,
                "shift": 2.0, "rotate": 10.0, "scale": 0.1, "smoothing": 0.1},
}
PRESETS["best"] = dict(PRESETS["default"], epochs=100)  # the default, longer
ABLATION = (("the notebook's recipe, 5,000 digits held out", {"val_size": 5000}),
            ("+ momentum 0.9", {"momentum": 0.9}),
            ("+ lr falling linearly to 0", {"schedule": "linear"}),
            ("+ batch 128, lr 0.1", {"batch_size": 128, "lr": 0.1}),
            ("+ random moves of 1 px", {"shift": 1.0}),
            ("+ weight decay 1e-4", {"weight_decay": 1e-4}),
            ("+ 30 epochs", {"epochs": 30}),
            ("+ turns, resizes, 2 px moves", {"shift": 2.0, "rotate": 10.0, "scale": 0.1}),
            ("+ label smoothing 0.1: the default", {"smoothing": 0.1}))
FORMAT = "backprop-mnist-checkpoint/3"


def build_parser():
    """The command line: a preset, any hyperparameter over it, and the run modes.

    Needs: common, exercises, PRESETS
    """
    p = common.make_parser(__doc__, "[--preset NAME] [--resume | --eval FILE | ...] [options]")
    p.add_argument("--preset", choices=list(PRESETS), default="default")
    p.add_argument("--hidden", type=common.int_in(1, 16_384), nargs="+", help="hidden widths")
    p.add_argument("--epochs", type=common.int_in(1, 10_000))
    p.add_argument("--batch-size", type=common.int_in(1, 60_000))
    p.add_argument("--lr", type=common.float_in(0, 1e6, lo_open=True))
    p.add_argument("--momentum", type=common.float_in(0, 0.999))
    p.add_argument("--weight-decay", type=common.float_in(0, 1))
    p.add_argument("--schedule", choices=("constant", "linear"))
    p.add_argument("--shift", type=common.float_in(0, 14), help="move by up to N pixels")
    p.add_argument("--rotate", type=common.float_in(0, 180), help="turn by up to N degrees")
    p.add_argument("--scale", type=common.float_in(0, 0.9), help="resize by up to this share")
    p.add_argument("--smoothing", type=common.float_in(0, 0.999), help="label smoothing")
    p.add_argument("--val-size", type=common.int_in(0, 59_999), help="digits held out")
    p.add_argument("--limit", type=common.int_in(1, 60_000), metavar="N",
                   help="only the first N training and test digits (quick checks)")
    p.add_argument("--out", type=common.writable_dir, help="the run's folder (runs/<preset>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--eval", metavar="CHECKPOINT", help="test a checkpoint; train nothing")
    p.add_argument("--ablation", action="store_true", help="train the ablation's rungs")
    p.add_argument("--seeds", type=common.int_in(1, 20), default=3, help="seeds per rung")
    p.add_argument("--overfit-batch", action="store_true", help="fit one batch, nothing more")
    exercises.add_your_turn(p)
    return p


def resolve_config(args, parser):
    """The preset with every given flag over it, checked against the data's size -> config.

    Needs: PRESETS
    """
    config = dict(PRESETS[args.preset], seed=args.seed, limit=args.limit, preset=args.preset)
    given = {k: getattr(args, k) for k in (*PRESETS["default"], "limit")
             if getattr(args, k) is not None}
    config.update(given)
    n = config["limit"] or 60_000
    if config["val_size"] + config["batch_size"] > n:
        parser.error(f"argument --val-size: {config['val_size']:,} held out and a batch of "
                     f"{config['batch_size']} need more than the {n:,} digits there are; "
                     "give a smaller --val-size or --batch-size, or a larger --limit")
    return config, given


def save_checkpoint(path, params, velocity, config, generator, history):
    """The run's state, atomically: plain tensors, numbers and strings (weights_only loads it).

    Needs: common, FORMAT, io, torch
    """
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "config": config, "history": history,
                "params": [p.cpu() for p in params], "velocity": [v.cpu() for v in velocity],
                "generator": generator.get_state()}, buffer)
    common.atomic_write(path, buffer.getvalue())


def load_checkpoint(path):
    """A checkpoint this lesson wrote -> its state; anything else -> ValueError in one sentence.

    Needs: FORMAT, torch
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception:
        raise ValueError(f"{path} is not a checkpoint that torch can read safely; give a "
                         "checkpoint.pt that this lesson wrote.") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file; give a checkpoint.pt that this "
                         "lesson wrote.")
    sizes = [784, *state["config"]["hidden"], 10]
    shapes = [s for a, b in zip(sizes, sizes[1:]) for s in ((a, b), (b,))]
    for key in ("params", "velocity"):
        if [tuple(t.shape) for t in state[key]] != shapes or not all(
                t.isfinite().all() for t in state[key]):
            raise ValueError(f"{path} holds {key} that are not a finite "
                             f"{'-'.join(map(str, sizes))} network, as its config says; it is "
                             "damaged or not this lesson's.")
    return state


def run(config, device, out, state=None):
    """Train config into out/ (checkpoint and metrics after every epoch, pictures at the end).

    Needs: common, fit, save_checkpoint, evaluate, mlp_forward (02), time, math
    """
    started = time.perf_counter()
    X_all, y_all, X_test, y_test = (t[:config["limit"]] for t in common.load_mnist(device=device))
    generator = common.make_generator(config["seed"])
    X_train, y_train, X_val, y_val = common.train_val_split(X_all, y_all, config["val_size"],
                                                            generator)
    print(f"{config['preset']}: {len(X_train):,} training, {len(X_val):,} validation, "
          f"{len(X_test):,} test digits on {device} ({common.device_description(device)})")

    latest = {"history": state["history"] if state else []}  # what the checkpoint holds

    def record(history, status, **final):
        common.save_json(out / "metrics.json", {"status": status, "config": config,
                                                "history": history, **final,
                                                "device": common.device_description(device)})

    def save(params, velocity, history):
        save_checkpoint(out / "checkpoint.pt", params, velocity, config, generator, history)
        record(history, "running")
        latest["history"] = list(history)

    try:
        params, velocity, history = fit(config, (X_train, y_train, X_val, y_val), generator,
                                        state, save)
    except (FloatingPointError, KeyboardInterrupt) as err:
        record(latest["history"], "diverged" if isinstance(err, FloatingPointError)
               else "interrupted", error=str(err))
        if isinstance(err, KeyboardInterrupt):
            raise
        saved = (f"{out / 'checkpoint.pt'} holds epoch {len(latest['history'])}, the last good one"
                 if latest["history"] else "no epoch of this run finished, so it saved nothing")
        raise FloatingPointError(f"{err}; {saved}") from None
    train_acc = evaluate(params, X_train, y_train)[1]
    test_loss, test_acc = evaluate(params, X_test, y_test)  # the one look at the test set
    seconds = sum(h["seconds"] for h in history)
    record(history, "finished", train_accuracy=train_acc, test_accuracy=test_acc,
           test_loss=test_loss, train_seconds=seconds)
    title = f"{config['preset']} (seed {config['seed']}): test {test_acc:.2%}"
    top, rest = 1 - config["smoothing"] * 0.9, config["smoothing"] / 10  # Y_s's entries, C = 10
    floor = -top * math.log(top) - 9 * rest * math.log(rest) if rest else None  # docs/04, step 20
    common.plot_curves(history, out / "curves.png", title, floor)
    common.plot_diagnostics(history, out / "diagnostics.png", title)
    common.plot_digits(X_test.cpu(), y_test.cpu(), mlp_forward(params, X_test)[0].argmax(1).cpu(),
                       out / "predictions.png", title)
    print(f"train {train_acc:.2%} | test {test_acc:.2%} | {seconds:.1f} s in the epochs, "
          f"{time.perf_counter() - started:.1f} s in all\nwrote {out}: checkpoint.pt, "
          "metrics.json, curves.png, diagnostics.png, predictions.png")
    val = history[-1]["val_accuracy"]
    print(f"result: test_accuracy={test_acc:.4f} val_accuracy={val and round(val, 4)} "
          f"train_accuracy={train_acc:.4f} train_seconds={seconds:.1f}")
    return test_acc


def run_ablation(args, out):
    """Each rung of ABLATION for --seeds seeds; finished runs are kept in ablation.json, so a
    stopped ablation goes on where it stopped -> prints a Markdown table.

    Needs: common, ABLATION, PRESETS, fit, evaluate
    """
    import json
    import statistics

    path = out / "ablation.json"
    runs = json.loads(path.read_text()) if path.is_file() else {}
    config = dict(PRESETS["notebook"], limit=args.limit, preset="ablation")
    data = [t[:args.limit] for t in common.load_mnist(device=args.device)]
    rows = ["| rung | change | val accuracy | test accuracy | seconds |",
            "|---:|---|---:|---:|---:|"]
    for rung, (label, change) in enumerate(ABLATION):
        config = dict(config, **change)
        for seed in range(args.seeds):
            key = f"{rung}/{seed}/{args.limit}"
            if key not in runs:
                generator = common.make_generator(seed)
                split = common.train_val_split(data[0], data[1], config["val_size"], generator)
                params, _, history = fit(dict(config, seed=seed), split, generator,
                                         log=lambda line: None)
                runs[key] = {"val": history[-1]["val_accuracy"],
                             "test": evaluate(params, data[2], data[3])[1],
                             "seconds": sum(h["seconds"] for h in history)}
                common.save_json(path, runs)
                print(f"rung {rung} seed {seed}: val {runs[key]['val']:.2%}, test "
                      f"{runs[key]['test']:.2%}, {runs[key]['seconds']:.0f} s  ({label})")
        mine = [runs[f"{rung}/{s}/{args.limit}"] for s in range(args.seeds)]
        cells = []
        for key in ("val", "test"):  # mean and sample standard deviation over the seeds
            values = [100 * r[key] for r in mine]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.2f} ± {spread:.2f} %")
        rows.append(f"| {rung} | {label} | {' | '.join(cells)} | "
                    f"{statistics.median(r['seconds'] for r in mine):.0f} |")
    print("\n".join(rows))
    return 0


def main(argv=None):
    """Train, resume, evaluate, overfit one batch, run the ablation, or check yours -> status.

    Needs: common, exercises, build_parser, resolve_config, softmax (02), one_hot (03),
        your_turn_tasks, load_checkpoint, evaluate, overfit_batch, run_ablation, run, Path, sys
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    config, given = resolve_config(args, parser)
    status = exercises.your_turn(args, "04_train_mnist", [softmax, one_hot], your_turn_tasks)
    if status is not None:
        return status
    if args.eval:
        state = load_checkpoint(args.eval)
        X_test, y_test = common.load_mnist(device=args.device)[2:]
        params = tuple(p.to(args.device) for p in state["params"])
        loss, acc = evaluate(params, X_test, y_test)
        print(f"{args.eval}: {state['config']['preset']} after {len(state['history'])} epochs: "
              f"test accuracy {acc:.2%} (loss {loss:.4f})\nresult: test_accuracy={acc:.4f}")
        return 0
    if args.overfit_batch:
        X, y = common.load_mnist(device=args.device)[:2]
        lr, momentum = given.get("lr", 0.1), given.get("momentum", 0.9)  # not the preset's
        print(f"one batch of {config['batch_size']} digits, lr {lr:g}, momentum {momentum:g}; "
              "the loss starts near ln 10 = 2.30 (lesson 02)")
        steps = overfit_batch(config["hidden"], X[:config["batch_size"]], y[:config["batch_size"]],
                              common.make_generator(args.seed), lr, momentum)
        print(f"fitted one batch of {config['batch_size']} in {steps} steps: the step can learn"
              if steps else "could not fit one batch in 500 steps: look for a bug in the step")
        return 0 if steps else 1
    common.keep_freed_memory()  # speed only: reuse freed buffers (docs/benchmarks.md)
    out = args.out or common.writable_dir(Path(__file__).resolve().parent / "runs" /
                                          ("ablation" if args.ablation else args.preset))
    with common.lock_folder(out):
        if args.ablation:
            return run_ablation(args, out)
        state = None
        if args.resume:
            if given:
                parser.error(f"argument --resume: the run goes on with its own settings; drop "
                             f"--{', --'.join(k.replace('_', '-') for k in given)}")
            if not (out / "checkpoint.pt").is_file():
                parser.error(f"argument --resume: {out} holds no checkpoint.pt; train first, "
                             "or give the run's folder with --out")
            state = load_checkpoint(out / "checkpoint.pt")
            config = state["config"]
            print(f"resuming {out} after epoch {len(state['history'])}")
        try:
            run(config, args.device, out, state)
        except FloatingPointError as err:
            print(f"error: {err}.", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"\ninterrupted; to go on from the last finished epoch: python "
                  f"{Path(__file__).name} --resume --out {out}", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(common.run_main(main))

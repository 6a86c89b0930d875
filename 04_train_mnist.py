"""Lesson 04: train the MLP on MNIST with the hand-written passes of lessons 02 and 03.

A training step is forward (02), backward (03), update: parameters, gradients and the
momentum "velocity" are tuples, and the update functions return new tuples. One epoch is one
pass over a freshly shuffled training set; validation digits, held out of the 60,000
training digits, are scored after every epoch; the test digits are scored once, at the end,
and choose nothing.

    python 04_train_mnist.py                   # default: momentum, decaying lr, ~98.8 % test
    python 04_train_mnist.py --preset notebook # the notebook's recipe: plain SGD, ~96.5 %
    python 04_train_mnist.py --lr 0.05 --epochs 5 --hidden 256 --device cuda
    python 04_train_mnist.py --resume          # continue runs/default/ after an interruption
    python 04_train_mnist.py --eval runs/default/checkpoint.pt

Everything lands in runs/<preset>/ (or --out): metrics.json, checkpoint.pt, curves.png and
predictions.png. A checkpoint is written, atomically, after each finished epoch, so Ctrl-C
or a diverging run never leaves a broken one behind.
"""

import argparse
import importlib
import json
import math
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import common

logreg = importlib.import_module("01_logistic_regression")
forward = importlib.import_module("02_mlp_forward")
backward = importlib.import_module("03_mlp_backward")
sgd_step, linear_decay = logreg.sgd_step, logreg.linear_decay
init_params, mlp_forward, cross_entropy = (forward.init_params, forward.mlp_forward,
                                           forward.cross_entropy)
mlp_backward, softmax_cross_entropy_backward = (backward.mlp_backward,
                                                backward.softmax_cross_entropy_backward)

PRESETS = {
    # The notebook: He init, plain SGD at a constant lr 0.01, batch 32, 8 epochs, trained
    # on all 60,000 digits (it had no validation set; its "validation" was the test set).
    "notebook": {"hidden": [512, 128], "epochs": 8, "batch_size": 32, "lr": 0.01, "momentum": 0.0,
             "weight_decay": 0.0, "shift": 0, "schedule": "constant", "val_size": 0},
    # This repository's default: the same network, SGD with momentum 0.9, a learning rate
    # falling linearly to 0, batches of 128, each digit shifted by up to 1 pixel at random;
    # 5,000 training digits held out for validation. (Chosen on validation accuracy.)
    "default": {"hidden": [512, 128], "epochs": 10, "batch_size": 128, "lr": 0.1,
                "momentum": 0.9, "weight_decay": 0.0, "shift": 1, "schedule": "linear",
                "val_size": 5000},
}
HYPERPARAMETERS = ("hidden", "epochs", "batch_size", "lr", "momentum", "weight_decay", "shift",
                   "schedule", "val_size", "seed", "limit", "step")
CHECKPOINT_FORMAT = "backprop-mnist-checkpoint/1"
N_TRAIN, N_INPUT, N_CLASSES = 60_000, 784, 10


# ----------------------------------------------------------------------------- updates

def momentum_step(params, velocity, grads, lr, momentum):
    """v <- momentum * v + g, then p <- p - lr * v -> (new params, new velocity), inputs unchanged.

    The velocity is a running sum of past gradients, decaying by `momentum` each step: steps
    grow along directions where the gradients agree and cancel where they zig-zag.
    """
    velocity = tuple(torch.add(g, v, alpha=momentum) for v, g in zip(velocity, grads))  # one pass
    params = tuple(torch.add(p, v, alpha=-lr) for p, v in zip(params, velocity))
    return params, velocity


def add_weight_decay(grads, params, weight_decay):
    """g + weight_decay * W for each weight matrix (biases unchanged) -> new grads tuple.

    The gradient of the L2 penalty (weight_decay / 2) * sum(W ** 2): it pulls every weight
    a little towards 0 each step, so the network cannot lean hard on any single pixel.
    """
    return tuple(g + weight_decay * p if p.dim() == 2 else g for g, p in zip(grads, params))


def train_step(params, velocity, x, y, lr, momentum, weight_decay=0.0):
    """Forward, backward, update -> (new params, new velocity, loss); the inputs stay unchanged.

    x (B, 784), y (B,); loss is the batch's mean cross-entropy before the update (a 0-d tensor).
    With momentum 0 it is plain SGD (lesson 01's sgd_step) and velocity passes through.
    """
    logits, cache = mlp_forward(params, x)
    loss = cross_entropy(logits, y)
    grads = mlp_backward(params, cache, y)
    if weight_decay:
        grads = add_weight_decay(grads, params, weight_decay)
    if momentum:
        params, velocity = momentum_step(params, velocity, grads, lr, momentum)
    else:
        params = sgd_step(params, grads, lr)
    return params, velocity, loss


def train_step_(params, velocity, x, y, lr, momentum, weight_decay=0.0):
    """train_step done in place (torch's trailing _), each gradient fused into its update -> loss.

    The same math as train_step, but no gradient tuple is ever built: each layer's dW goes
    straight into its velocity (or weight) through one addmm_, which computes
    out = beta * out + alpha * (x.T @ d) without storing x.T @ d. Layer i's dx is computed
    before W_i changes, so every gradient still sees the old parameters.
    """
    logits, cache = mlp_forward(params, x)
    loss = cross_entropy(logits, y)
    d = softmax_cross_entropy_backward(logits, y)  # (B, C)
    for i in range(len(params) // 2 - 1, -1, -1):
        W, b, h = params[2 * i], params[2 * i + 1], cache[i]  # h: this layer's input
        dx = d @ W.T if i > 0 else None  # (B, in), from the old W
        if momentum:
            vW, vb = velocity[2 * i], velocity[2 * i + 1]
            vW.addmm_(h.T, d, beta=momentum)  # vW = momentum * vW + h.T @ d
            if weight_decay:
                vW.add_(W, alpha=weight_decay)  # + weight_decay * W
            vb.mul_(momentum).add_(d.sum(dim=0))
            W.add_(vW, alpha=-lr)
            b.add_(vb, alpha=-lr)
        else:
            W.addmm_(h.T, d, beta=1 - lr * weight_decay, alpha=-lr)  # W -= lr (h.T @ d + wd W)
            b.sub_(d.sum(dim=0), alpha=lr)
        if i > 0:
            d = dx.mul_(h.sign())  # (B, in): relu_backward, in place on dx (nobody else has it)
    return loss


def random_shift(x, max_shift, generator):
    """Move each square image in x (B, side * side) by up to max_shift pixels -> (B, side * side).

    Every epoch the network sees each digit in a slightly different place, so it cannot
    memorise exact pixel positions ("data augmentation"). Each image gets its own offset,
    and the shift is one gather on the device: no per-image Python loop.
    """
    B, side, m = x.shape[0], math.isqrt(x.shape[1]), max_shift
    padded = torch.nn.functional.pad(x.view(B, side, side), (m, m, m, m))  # (B, side+2m, side+2m)
    dy, dx = torch.randint(0, 2 * m + 1, (2, B, 1), generator=generator).to(x.device)  # (B, 1)
    rows = torch.arange(side, device=x.device) + dy  # (B, side): the rows each image keeps
    cols = torch.arange(side, device=x.device) + dx  # (B, side)
    batch = torch.arange(B, device=x.device)[:, None, None]  # (B, 1, 1)
    return padded[batch, rows[:, :, None], cols[:, None, :]].reshape(B, side * side)


def learning_rate(config, step, total_steps):
    """The lr at this step: constant (the notebook) or lesson 01's linear decay to 0."""
    if config["schedule"] == "constant":
        return config["lr"]
    return linear_decay(config["lr"], step, total_steps)


# ----------------------------------------------------------------------------- evaluation

def predict(params, X, chunk=10_000):
    """Logits (N, C) for X (N, D), computed chunk rows at a time to bound memory."""
    return torch.cat([mlp_forward(params, X[i:i + chunk])[0] for i in range(0, len(X), chunk)])


def evaluate(params, X, y):
    """-> (mean cross-entropy, accuracy) of params on X, y; (None, None) for an empty set."""
    if len(X) == 0:
        return None, None
    logits = predict(params, X)
    return cross_entropy(logits, y).item(), common.accuracy(logits, y)


# ----------------------------------------------------------------------------- config

def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, exit_on_error=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default", help="default or notebook")
    parser.add_argument("--hidden", type=int, nargs="+", help="hidden widths, e.g. 512 128")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="first learning rate")
    parser.add_argument("--momentum", type=float, help="0 for plain SGD")
    parser.add_argument("--weight-decay", type=float, help="L2 penalty on the weights")
    parser.add_argument("--shift", type=int, help="shift digits by up to N pixels (0: off)")
    parser.add_argument("--schedule", help="linear (decay to 0) or constant")
    parser.add_argument("--val-size", type=int, help="training digits held out for validation")
    parser.add_argument("--step", help="inplace (fused, faster; the default) or pure")
    parser.add_argument("--out", type=Path, help="output folder (default: runs/<preset>/)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint in the output folder")
    parser.add_argument("--eval", type=Path, metavar="CHECKPOINT",
                        help="report the test accuracy of a checkpoint, train nothing")
    return common.add_run_args(parser, seed=None)  # --seed None: the preset's seed


def resolve_config(args):
    """The preset (already checked to exist), overridden by every flag given -> config dict."""
    config = dict(PRESETS[args.preset], seed=0, limit=None, step="inplace", preset=args.preset)
    config.update({k: getattr(args, k) for k in HYPERPARAMETERS if getattr(args, k) is not None})
    check_config(config)
    return config


def check_config(config):
    """Raise ValueError with one sentence for the first value that cannot work."""
    n_train = N_TRAIN if config["limit"] is None else config["limit"]
    rules = [
        (config["limit"] is None or config["limit"] >= 2, f"--limit must be at least 2, got "
         f"{config['limit']}"),
        (config["epochs"] >= 1, f"--epochs must be at least 1, got {config['epochs']}"),
        (config["lr"] > 0 and math.isfinite(config["lr"]),
         f"--lr must be a positive number, got {config['lr']}"),
        (0 <= config["momentum"] < 1, f"--momentum must be in [0, 1), got {config['momentum']}"),
        (0 <= config["weight_decay"] < 1,
         f"--weight-decay must be in [0, 1), got {config['weight_decay']}"),
        (len(config["hidden"]) >= 1 and min(config["hidden"]) >= 1,
         f"--hidden needs widths of at least 1, got {config['hidden']}"),
        (0 <= config["shift"] <= 13, f"--shift must be between 0 and 13, got {config['shift']}"),
        (config["schedule"] in ("linear", "constant"),
         f"--schedule must be linear or constant, got {config['schedule']!r}"),
        (config["step"] in ("inplace", "pure"),
         f"--step must be inplace or pure, got {config['step']!r}"),
        (0 <= config["val_size"] < n_train,
         f"--val-size must be between 0 and {n_train - 1}, got {config['val_size']}"),
        (config["batch_size"] >= 1, f"--batch-size must be at least 1, got "
         f"{config['batch_size']}"),
        (config["batch_size"] <= n_train - config["val_size"],
         f"--batch-size {config['batch_size']} is larger than the "
         f"{n_train - config['val_size']} training digits"),
    ]
    for ok, sentence in rules:
        if not ok:
            raise ValueError(sentence + ".")


# ----------------------------------------------------------------------------- files

def save_checkpoint(path, params, velocity, config, epoch, generator, history):
    """Write the run's state atomically: tensors and plain types only (weights_only loads it)."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "params": [p.detach().cpu().clone() for p in params],
        "velocity": [v.detach().cpu().clone() for v in velocity],
        "config": config,
        "epoch": epoch,
        "generator_state": generator.get_state(),
        "history": history,
    }
    common.atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path):
    """torch.load(weights_only=True) + shape checks -> state dict; ValueError if it is not ours."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}; train first or give the path of checkpoint.pt.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a checkpoint this script can read "
                         f"({type(err).__name__}); give the path of a checkpoint.pt it "
                         "wrote.") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a checkpoint written by 04_train_mnist.py; "
                         "give the path of a checkpoint.pt it wrote.")
    sizes = [N_INPUT, *state["config"]["hidden"], N_CLASSES]
    shapes = [s for a, b in zip(sizes[:-1], sizes[1:]) for s in ((a, b), (b,))]
    if [tuple(p.shape) for p in state["params"]] != shapes:
        raise ValueError(f"{path} holds parameters that do not match its own config; "
                         "it is damaged: train again or use another checkpoint.")
    return state


def save_json(path, data):
    common.atomic_write(path, lambda f: f.write(json.dumps(data, indent=2).encode() + b"\n"))


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported only when a run ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(path, fig):
    """Save a matplotlib figure as PNG, atomically, then free it."""
    common.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=80))
    pyplot().close(fig)


def plot_curves(history, path, title):
    """curves.png: training loss and validation accuracy by epoch."""
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.plot(epochs, [h["loss"] for h in history], "o-", label="training (mean over the epoch)")
    if history[0]["val_loss"] is not None:
        ax1.plot(epochs, [h["val_loss"] for h in history], "s--", label="validation")
        ax2.plot(epochs, [100 * h["val_accuracy"] for h in history], "o-", color="C2")
    else:
        ax2.text(0.5, 0.5, "no validation set (--val-size 0)", ha="center",
                 transform=ax2.transAxes)
    ax1.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    ax1.legend()
    ax2.set(xlabel="epoch", ylabel="%", title="validation accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(path, fig)


def plot_predictions(X, y, pred, path, title, n_first=40, n_mistakes=20):
    """predictions.png: the first test digits, then some mistakes, marked in red."""
    plt = pyplot()
    X, y, pred = X.numpy(), y.tolist(), pred.tolist()
    wrong = [i for i in range(len(y)) if pred[i] != y[i]][:n_mistakes]
    picks = list(range(min(n_first, len(y)))) + [i for i in wrong if i >= n_first]
    cols = 10
    rows = -(-len(picks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.0, rows * 1.15), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, picks):
        bad = pred[i] != y[i]
        side = math.isqrt(X.shape[1])
        ax.imshow(X[i].reshape(side, side), cmap="Reds" if bad else "gray_r", vmin=0, vmax=1)
        label = f"{pred[i]}" if not bad else f"{pred[i]} (is {y[i]})"
        ax.set_title(label, fontsize=9, color="red" if bad else "black")
    fig.suptitle(f"{title}\nthe first {min(n_first, len(y))} test digits, then mistakes in "
                 "red: predicted (is true)", fontsize=10)
    fig.tight_layout()
    save_figure(path, fig)


# ----------------------------------------------------------------------------- training

def train_epoch(params, velocity, X, y, config, generator, first_step, total_steps, epoch,
                progress, check_every=20):
    """One shuffled pass over X, y -> (params, velocity, mean loss).

    Each step's loss stays on the device; every check_every steps they are read back at once
    (one sync, not one per step) and a NaN or infinity stops the run with FloatingPointError.
    """
    steps = -(-len(X) // config["batch_size"])
    losses = torch.empty(steps, device=X.device)  # (steps,)
    step_fn = train_step_ if config["step"] == "inplace" else train_step
    bar = tqdm(total=steps, desc=f"epoch {epoch}/{config['epochs']}", leave=False,
               disable=not progress, unit="step")
    checked = 0
    for s, (xb, yb) in enumerate(common.minibatches(X, y, config["batch_size"], generator)):
        lr = learning_rate(config, first_step + s, total_steps)
        if config["shift"]:
            xb = random_shift(xb, config["shift"], generator)
        if config["step"] == "inplace":
            losses[s] = step_fn(params, velocity, xb, yb, lr, config["momentum"],
                                config["weight_decay"])
        else:
            params, velocity, losses[s] = step_fn(params, velocity, xb, yb, lr,
                                                  config["momentum"], config["weight_decay"])
        if s + 1 - checked == check_every or s + 1 == steps:
            window = losses[checked:s + 1]
            bad = (~torch.isfinite(window)).nonzero()
            if len(bad):
                at = checked + bad[0].item() + 1
                raise FloatingPointError(
                    f"the loss became {window[bad[0].item()].item()} at epoch {epoch}, step "
                    f"{at} of {steps} (lr {config['lr']:g}); training stopped and no checkpoint "
                    "was written for this epoch: try a lower --lr (e.g. a tenth).")
            bar.set_postfix(loss=f"{window.mean().item():.4f}")
            bar.update(s + 1 - checked)
            checked = s + 1
    bar.close()
    return params, velocity, losses.mean().item()


def describe_config(config):
    net = "-".join(map(str, [N_INPUT, *config["hidden"], N_CLASSES]))
    parts = [net, f"momentum {config['momentum']:g}" if config["momentum"] else "plain SGD",
             f"lr {config['lr']:g} ({config['schedule']})", f"batch {config['batch_size']}",
             f"{config['epochs']} epochs"]
    if config["weight_decay"]:
        parts.append(f"weight decay {config['weight_decay']:g}")
    if config["shift"]:
        parts.append(f"shifts of {config['shift']} px")
    return ", ".join(parts) + f", seed {config['seed']}"


def run_eval(path, device, limit):
    """--eval: the test accuracy of a saved checkpoint."""
    state = load_checkpoint(path)
    X_test, y_test = common.load_mnist_limited(device, limit)[2:]
    with torch.inference_mode():
        params = tuple(p.to(device) for p in state["params"])
        loss, acc = evaluate(params, X_test, y_test)
    print(f"{path}: {describe_config(state['config'])}, trained {state['epoch']} epochs")
    print(f"test accuracy {acc:.2%} on {len(y_test):,} digits (loss {loss:.4f})")
    print(common.result_line(test_accuracy=acc, test_loss=loss, epochs=state["epoch"]))
    return 0


def prepare(args):
    """Everything that can fail on bad input, before any work -> (config, device, out, state)."""
    device = common.pick_device(args.device)
    if args.preset not in PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; choose one of: {', '.join(PRESETS)}.")
    out = args.out or Path(__file__).resolve().parent / "runs" / args.preset
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; give a folder for the run.")
    if not args.resume:
        return resolve_config(args), device, out, None
    given = [k for k in HYPERPARAMETERS if getattr(args, k) is not None]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ValueError(f"--resume continues with the checkpoint's own settings; drop {flags}.")
    state = load_checkpoint(out / "checkpoint.pt")
    return state["config"], device, out, state


def metrics_record(config, device, history, status, started, final=None):
    """The metrics.json contents: config, per-epoch history, final accuracies, machine."""
    return {
        "status": status,  # running (after each epoch) or finished
        "config": config,
        "history": history,
        **(final or {}),
        "train_seconds": sum(h["seconds"] for h in history),
        "total_seconds": time.perf_counter() - started,  # this process, data loading included
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def train(config, device, out, state, progress, started):
    """The training run -> exit status. Files in out/ change only after a finished epoch."""
    X_all, y_all, X_test, y_test = common.load_mnist_limited(device, config["limit"])
    generator = common.make_generator(config["seed"])
    X_train, y_train, X_val, y_val = common.train_val_split(X_all, y_all, config["val_size"],
                                                            generator)
    if state is None:
        params = init_params([N_INPUT, *config["hidden"], N_CLASSES], generator, device=device)
        velocity = tuple(torch.zeros_like(p) for p in params)
        history = []
    else:  # the split above is the seed's first draw, so it is the same split as before
        params = tuple(p.to(device) for p in state["params"])
        velocity = tuple(v.to(device) for v in state["velocity"])
        generator.set_state(state["generator_state"])
        history = list(state["history"])
        print(f"resuming {out} after epoch {len(history)}")

    steps_per_epoch = -(-len(X_train) // config["batch_size"])
    total_steps = config["epochs"] * steps_per_epoch
    print(f"{describe_config(config)}; {len(X_train):,} training, {len(X_val):,} validation, "
          f"{len(X_test):,} test digits on {device}")
    for epoch in range(len(history) + 1, config["epochs"] + 1):
        tic = time.perf_counter()
        params, velocity, loss = train_epoch(params, velocity, X_train, y_train, config,
                                             generator, (epoch - 1) * steps_per_epoch,
                                             total_steps, epoch, progress)
        val_loss, val_acc = evaluate(params, X_val, y_val)  # .item() waits for the device
        seconds = time.perf_counter() - tic
        history.append({"epoch": epoch, "loss": loss, "val_loss": val_loss,
                        "val_accuracy": val_acc, "seconds": seconds})
        val = "     -" if val_acc is None else f"{val_acc:6.2%}"
        print(f"epoch {epoch:>2}/{config['epochs']} | loss {loss:.4f} | val {val} | "
              f"{seconds:5.1f} s")
        save_checkpoint(out / "checkpoint.pt", params, velocity, config, epoch, generator, history)
        save_json(out / "metrics.json", metrics_record(config, device, history, "running", started))

    _, train_acc = evaluate(params, X_train, y_train)
    test_loss, test_acc = evaluate(params, X_test, y_test)  # the one look at the test set
    val_acc = history[-1]["val_accuracy"]
    pred = predict(params, X_test).argmax(dim=1)
    title = f"{describe_config(config)}: test {test_acc:.2%}"
    plot_curves(history, out / "curves.png", title)
    plot_predictions(X_test.cpu(), y_test.cpu(), pred.cpu(), out / "predictions.png", title)
    final = {"train_accuracy": train_acc, "val_accuracy": val_acc, "test_accuracy": test_acc,
             "test_loss": test_loss}
    record = metrics_record(config, device, history, "finished", started, final)
    save_json(out / "metrics.json", record)
    val = "-" if val_acc is None else f"{val_acc:.2%}"
    print(f"train accuracy {train_acc:.2%} | val {val} | test {test_acc:.2%} | "
          f"{record['train_seconds']:.1f} s training, {record['total_seconds']:.1f} s in all")
    print(f"wrote {out}: metrics.json, checkpoint.pt, curves.png, predictions.png")
    print(common.result_line(test_accuracy=test_acc, val_accuracy=val_acc,
                             train_accuracy=train_acc, train_seconds=record["train_seconds"],
                             epochs=config["epochs"]))
    return 0


def raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    started = time.perf_counter()
    args = common.parse_args(build_parser(), argv)
    if args.eval is not None:
        return run_eval(args.eval, common.pick_device(args.device), args.limit)
    config, device, out, state = prepare(args)
    previous = signal.signal(signal.SIGTERM, raise_keyboard_interrupt)  # SIGTERM = Ctrl-C
    try:
        with torch.inference_mode():
            return train(config, device, out, state, common.show_progress(args.no_progress),
                         started)
    except FloatingPointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        done = "no checkpoint yet"
        if (out / "checkpoint.pt").is_file():
            done = f"{out / 'checkpoint.pt'} holds the last finished epoch"
        print(f"\ninterrupted: {done}; continue with --resume"
              f"{'' if args.preset == 'default' else ' --preset ' + args.preset}"
              f"{'' if args.out is None else ' --out ' + str(args.out)}.", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(common.run_main(main))

"""Lesson 01: logistic regression by hand. Is this digit a 9?

After this lesson you can derive and code the gradient of one linear unit with a sigmoid
and binary cross-entropy, and train it with minibatch SGD. For a batch of B images X (B, 784):

    z = X w + b                          logits (B,)
    p = sigmoid(z) = 1 / (1 + exp(-z))   probability of "9"
    L = mean over the batch of -[y log p + (1 - y) log(1 - p)]

and the whole backward pass is three lines (logreg_backward):

    dL/dz = (p - y) / B      dL/dw = X^T dL/dz      dL/db = sum of dL/dz

Each line is derived step by step in docs/01_logistic_regression.md. Gradient descent then
moves w and b a small step against their gradients (sgd_step), with a learning rate that
shrinks linearly to zero over the run (linear_decay). Labels are int64 class indices here as
in every lesson: 1 for a 9, 0 for anything else.

Run:
    python 01_logistic_regression.py                 # 10 epochs over 60,000 digits, seconds
    python 01_logistic_regression.py --device cuda   # the same on a GPU

Only 1 digit in 10 is a 9, so answering "not 9" every time is already 89.91 % accurate on
the test set. The report therefore gives precision, recall and F1 for the 9s beside accuracy.
It also draws the trained weight vector as a 28x28 picture (weights.png): the "9 detector".
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
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import common  # noqa: E402

minibatches, pyplot, save_figure = common.minibatches, common.pyplot, common.save_figure
add_run_args, check_writable_dir = common.add_run_args, common.check_writable_dir
lock_folder, clean_leftovers = common.lock_folder, common.clean_leftovers
float_in, int_in = common.float_in, common.int_in
load_mnist_limited, make_generator = common.load_mnist_limited, common.make_generator
parse_args, pick_device = common.parse_args, common.pick_device
result_line, run_main, show_progress = common.result_line, common.run_main, common.show_progress


def sigmoid(z):
    """z (...) -> p = 1 / (1 + exp(-z)) (...), without overflow for any z.

    Needs: torch
    """
    e = torch.exp(-z.abs())  # in (0, 1]: exp(-|z|) never overflows
    # For z < 0 the textbook form is computed as e^z / (1 + e^z): same value, no exp(+large).
    return torch.where(z >= 0, 1 / (1 + e), e / (1 + e))


def one_hot(y, n_classes, dtype, rows=None):
    """y (B,) int64 in [0, n_classes) -> Y (B, n_classes) of dtype: 1 at [b, y_b], 0 elsewhere.

    Labels are refused as check_labels says (rows: how many logits they go with, if known),
    and scatter_ raises for a label outside [0, n_classes) (a device-side error on a GPU), so
    a wrong label is never silently read as another class.
    Needs: check_labels, torch
    """
    check_labels(y, n_classes, rows)
    Y = torch.zeros(y.shape[0], n_classes, dtype=dtype, device=y.device)  # (B, n_classes)
    return Y.scatter_(1, y.unsqueeze(1), 1.0)


def bce_with_logits(z, y):
    """Mean over the batch of the binary cross-entropy: logits z (B,), y (B,) int64 in {0, 1}.

    -[y log p + (1 - y) log(1 - p)] with p = sigmoid(z) simplifies to
    max(z, 0) - z y + log(1 + exp(-|z|)), which is finite for every z (log(p) is not: p
    rounds to 0 for z = -1e4). Derivation: docs/01_logistic_regression.md.
    Needs: one_hot, torch
    """
    # (B,) float targets: y.to(z.dtype), but through one_hot, so that a label other than
    # 0 or 1 is refused (by its scatter) instead of silently entering the loss.
    t = one_hot(y, 2, z.dtype, len(z))[:, 1]  # 1.0 for class 1, 0.0 for class 0
    return (z.clamp(min=0) - z * t + torch.log1p(torch.exp(-z.abs()))).mean()


def logreg_init(n_features, generator, dtype=torch.float32, device="cpu"):
    """-> params (w (D,) ~ N(0, 0.01^2), b (1,) = 0), drawn on the CPU from generator.

    Needs: torch
    """
    w = 0.01 * torch.randn(n_features, generator=generator, dtype=dtype)
    return w.to(device), torch.zeros(1, dtype=dtype, device=device)


def logreg_forward(params, x):
    """params (w (D,), b (1,)), x (B, D) -> logits z (B,) = x @ w + b.

    x must be a batch: one sample is x[None] (1, D).
    Needs: nothing
    """
    if x.dim() != 2:
        raise ValueError(f"x must be a batch of shape (B, D), got shape {tuple(x.shape)}; "
                         "for a single sample pass x[None].")
    w, b = params
    return x @ w + b


def logreg_backward(x, z, y):
    """Gradients of the mean binary cross-entropy -> (dw (D,), db (1,)).

    x (B, D) the inputs, z (B,) the logits logreg_forward gave, y (B,) int64 in {0, 1}.
    Needs: sigmoid, one_hot
    """
    if x.dim() != 2 or z.shape != (x.shape[0],):
        raise ValueError(f"x must be a batch (B, D) and z its logits (B,), got shapes "
                         f"{tuple(x.shape)} and {tuple(z.shape)}; for a single sample pass "
                         "x[None].")
    B = x.shape[0]
    t = one_hot(y, 2, z.dtype, len(z))[:, 1]  # (B,) float targets, checked as the loss does
    # dL/dp = (p - t) / (B p (1 - p)) and dp/dz = p (1 - p): the product is (p - t) / B,
    # "prediction minus truth" (docs/01_logistic_regression.md, steps 1-12).
    dz = (sigmoid(z) - t) / B  # (B,)
    return x.T @ dz, dz.sum().reshape(1)  # (D,), (1,): z = x @ w + b, as in any linear layer


def linear_decay(lr, step, total_steps):
    """The learning rate at step (0-based) of total_steps: lr falling linearly to 0, then 0.

    Large early steps cover ground; small late ones let SGD settle instead of bouncing
    around the minimum with the noise of each minibatch.
    Needs: nothing
    """
    if total_steps < 1 or step < 0:
        raise ValueError(f"linear_decay needs total_steps >= 1 and step >= 0, got step {step} "
                         f"of {total_steps}.")
    return lr * max(0.0, 1 - step / total_steps)


def sgd_step(params, grads, lr):
    """One step of gradient descent -> new tuple of p - lr * g (params and grads unchanged).

    Each gradient must have its parameter's shape, dtype and device: a float64 gradient
    would otherwise silently turn float32 parameters into float64.
    Needs: check_grads, torch
    """
    check_grads(params, grads)
    return tuple(torch.add(p, g, alpha=-lr) for p, g in zip(params, grads))  # p - lr * g


# The checks the functions above call: a wrong input gets one sentence, not a wrong answer.

def check_grads(params, grads):
    """Raise ValueError unless grads match params one to one in shape, dtype and device.

    Needs: nothing
    """
    if len(params) != len(grads):
        raise ValueError(f"got {len(grads)} gradients for {len(params)} parameters.")
    for i, (p, g) in enumerate(zip(params, grads)):
        if p.shape != g.shape or p.dtype != g.dtype or p.device != g.device:
            raise ValueError(f"gradient {i} is {g.dtype} {tuple(g.shape)} on {g.device} but its "
                             f"parameter is {p.dtype} {tuple(p.shape)} on {p.device}; convert "
                             "the gradient (g.to(p)) before the update.")


def check_labels(y, n_classes, rows=None):
    """Refuse labels that are not class indices -> y (B,) int64 in [0, n_classes), unchanged.

    A wrong dtype or shape, or a count other than rows (the number of logits they go with,
    when known), gets one ValueError sentence. The values are not read here (on a GPU that
    would make Python wait at every step): a label outside [0, n_classes) is refused by
    one_hot's scatter or cross_entropy's gather instead, in the loss and its gradient alike.
    Needs: torch
    """
    if y.dtype != torch.int64 or y.dim() != 1:
        raise ValueError(f"labels must be a 1-D int64 tensor of class indices in [0, "
                         f"{n_classes}), got {y.dtype} of shape {tuple(y.shape)}; convert "
                         "them with y.long() (a uint8 or bool tensor would index as a mask).")
    if rows is not None and len(y) != rows:
        raise ValueError(f"got {len(y)} labels for {rows} rows of logits; pass one label per "
                         "row.")
    return y


def is_nine(y):
    """Digit labels (N,) int64 -> binary labels (N,) int64: 1 for a 9, 0 otherwise.

    Needs: torch
    """
    return (y == 9).to(torch.int64)


def binary_metrics(z, y):
    """Predict "9" where logits z (N,) > 0 -> accuracy, precision, recall, F1 against y (N,) int64.

    Needs: one_hot
    """
    truth = one_hot(y, 2, z.dtype, len(z))[:, 1] > 0.5  # (N,) bool; refuses labels but 0, 1
    pred = z > 0
    tp = (pred & truth).sum().item()
    fp = (pred & ~truth).sum().item()
    fn = (~pred & truth).sum().item()
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (pred == truth).float().mean().item(),
            "precision": precision, "recall": recall, "f1": f1}


def train(params, X, y, epochs, batch_size, lr, generator, progress=False):
    """Minibatch SGD on the mean BCE, lr decaying linearly -> trained params; a line per epoch.

    X (N, D), y (N,) int64 in {0, 1}. A loss that is no longer finite stops the run with
    FloatingPointError (this model's gradient is bounded, so only an lr near float32's
    largest number, ~1e37 and up, gets there).
    Needs: logreg_forward, logreg_backward, sgd_step, linear_decay, bce_with_logits,
        minibatches (common), time, tqdm, math
    """
    steps = -(-len(X) // batch_size)  # batches per epoch, the last one maybe smaller
    step = 0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        batches = minibatches(X, y, batch_size, generator)
        for xb, yb in tqdm(batches, total=steps, desc=f"epoch {epoch}", leave=False,
                           disable=not progress):
            z = logreg_forward(params, xb)  # (len(xb),): the last batch may be short
            grads = logreg_backward(xb, z, yb)
            params = sgd_step(params, grads, linear_decay(lr, step, epochs * steps))
            step += 1
        # The mean BCE over all of X with the weights as the epoch left them (not an average
        # of the minibatches' losses). Each step follows one noisy minibatch, so it need not
        # fall every epoch; the shrinking lr makes it settle.
        loss = bce_with_logits(logreg_forward(params, X), y).item()
        if not math.isfinite(loss):
            raise FloatingPointError(f"the train loss became {loss} in epoch {epoch} (lr {lr:g}); "
                                     "training stopped and nothing was written: try a lower "
                                     "--lr (e.g. the default, 0.5).")
        print(f"epoch {epoch:>{len(str(epochs))}}/{epochs} | train loss {loss:.4f} | "
              f"{time.perf_counter() - start:4.1f} s")
    return params


def plot_weights(w, path, title):
    """The weight vector w (784,) as a 28x28 image, red for "9", blue for "not 9", 0 white.

    Needs: save_figure (common), pyplot (common), math
    """
    plt = pyplot()
    side = math.isqrt(w.numel())
    image = w.detach().cpu().reshape(side, side).numpy()
    limit = float(abs(image).max()) or 1.0
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    shown = ax.imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit)  # centred on 0
    fig.colorbar(shown, ax=ax, label="weight")
    ax.set_title(title, fontsize=10)
    ax.set(xticks=[], yticks=[])
    fig.tight_layout()
    save_figure(path, fig)


def main(argv=None):
    """Run this lesson from the command line -> exit status.

    Needs: argparse, int_in (common), float_in (common), pathlib, add_run_args (common),
        parse_args (common), pick_device (common), check_writable_dir (common),
        load_mnist_limited (common), is_nine, torch, make_generator (common), logreg_init,
        train, show_progress (common), sys, binary_metrics, logreg_forward, lock_folder (common),
        clean_leftovers (common), plot_weights, math, result_line (common)
    """
    parser = argparse.ArgumentParser(description=__doc__, exit_on_error=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int_in(1, 10_000), default=10,
                        help="passes over the training digits (default 10)")
    parser.add_argument("--batch-size", type=int_in(1, 60_000), default=64,
                        help="digits per SGD step (default 64)")
    # 3.4e38 is float32's largest number: a larger lr could not enter a float32 update at all.
    parser.add_argument("--lr", type=float_in(0, 3.4e38, lo_open=True), default=0.5,
                        help="first learning rate; decays to 0")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "runs" / "01"),
                        help="folder for weights.png (default: runs/01/)")
    add_run_args(parser)
    args = parse_args(parser, argv)
    device = pick_device(args.device)
    out = check_writable_dir(args.out)
    with lock_folder(out):  # a folder in use, or a bad .lock, is refused now, not after training
        clean_leftovers(out, ("weights.png",))  # what a killed run left mid-write
    X_train, y_train, X_test, y_test = load_mnist_limited(device, args.limit)
    if args.batch_size > len(X_train):
        raise ValueError(f"--batch-size {args.batch_size} is larger than the {len(X_train):,} "
                         "training digits; give a smaller one.")
    t_train, t_test = is_nine(y_train), is_nine(y_test)  # (N,) labels: 1 for a 9
    print(f"9 versus not-9: {len(X_train):,} training digits "
          f"({t_train.float().mean().item():.2%} nines), {len(X_test):,} test digits, on {device}")

    with torch.inference_mode():
        generator = make_generator(args.seed)
        params = logreg_init(X_train.shape[1], generator, device=device)
        try:
            params = train(params, X_train, t_train, args.epochs, args.batch_size, args.lr,
                           generator, show_progress(args.no_progress))
        except FloatingPointError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        test = binary_metrics(logreg_forward(params, X_test), t_test)
        train_accuracy = binary_metrics(logreg_forward(params, X_train), t_train)["accuracy"]

    baseline = 1 - t_test.float().mean().item()  # always answer "not 9"
    print(f"train accuracy {train_accuracy:.2%}")
    print(f"test  accuracy {test['accuracy']:.2%}   (always 'not 9': {baseline:.2%})")
    print(f"test  class 9: precision {test['precision']:.2%}  recall {test['recall']:.2%}  "
          f"F1 {test['f1']:.3f}")
    with lock_folder(out):  # no other run writes in out/ meanwhile (else one sentence)
        plot_weights(params[0], out / "weights.png",
                     f"w, the 9 detector (test {test['accuracy']:.2%})")
    print(f"wrote {out / 'weights.png'}: red pixels vote for 9, blue against")
    ok = test["accuracy"] > baseline and test["f1"] > 0 and math.isfinite(test["accuracy"])
    print(result_line(test_accuracy=test["accuracy"], precision=test["precision"],
                             recall=test["recall"], f1=test["f1"], baseline_accuracy=baseline,
                             train_accuracy=train_accuracy, ok=ok))
    if not ok:  # the run worked, but what it learned fails the lesson's own check
        why = (f"the {len(t_test):,} test digits hold no 9, so there is none to find (F1 0): "
               "give a larger --limit" if t_test.sum().item() == 0 else
               f"the detector does not beat always answering 'not 9' ({test['accuracy']:.2%} "
               f"against {baseline:.2%}; F1 {test['f1']:.3f}): train longer or on more digits "
               "(--epochs, --limit), or go back to the defaults --lr 0.5 and --batch-size 64")
        print(f"check failed: {why}.", file=sys.stderr)
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

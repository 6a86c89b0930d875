"""Lesson 01: logistic regression by hand. Is this digit a 9?

After this lesson you can derive and code the gradient of one linear unit with a sigmoid and
binary cross-entropy, train it with minibatch SGD, and say why cross-entropy and not squared
error. For a batch of B images X (B, 784) and labels y (B,), 1 for a 9 and 0 otherwise:

    z = X w + b                          logits (B,)
    p = sigmoid(z) = 1 / (1 + exp(-z))   the probability of "9"
    L = mean over the batch of -[y log p + (1 - y) log(1 - p)]

Its gradient is three lines (logreg_backward), derived step by step in
docs/01_logistic_regression.md. Gradient descent moves w and b a small step against it
(sgd_step), with a learning rate that falls linearly to 0 (linear_decay).

Run:
    python 01_logistic_regression.py                 # 10 epochs over 60,000 digits, seconds
    python 01_logistic_regression.py --blank > mine.py   # your turn: write the gradients
    python 01_logistic_regression.py --yours mine.py     # ... and check them against the
                                                         # loss's slope, measured by nudging
                                                         # each weight (lesson 03 explains how)

Only 1 digit in 10 is a 9, so answering "not 9" every time is already 89.91 % accurate: the
report gives precision, recall and F1 for the 9s too, and draws w as a 28x28 picture.
"""

import math
import sys
from pathlib import Path

import torch

import common
import exercises
from common import minibatches, pyplot, save_figure


def sigmoid(z):
    """z (...) -> p = 1 / (1 + exp(-z)) (...), without overflow for any z (docs/01, step 25).

    Needs: torch
    """
    e = torch.exp(-z.abs())  # in (0, 1]: exp(-|z|) never overflows
    return torch.where(z >= 0, 1 / (1 + e), e / (1 + e))  # for z < 0: e^z / (1 + e^z)


def bce_with_logits(z, y):
    """Mean binary cross-entropy over the batch: logits z (B,), labels y (B,) in {0, 1} -> scalar.

    Written as max(z, 0) - z y + log(1 + exp(-|z|)) (docs/01, step 24): finite for every z.
    Needs: torch
    """
    y = y.to(z.dtype)
    return (z.clamp(min=0) - z * y + torch.log1p(torch.exp(-z.abs()))).mean()


def logreg_init(n_features, generator, dtype=torch.float32, device="cpu"):
    """-> params (w (D,) ~ N(0, 0.01^2), b (1,) = 0), drawn on the CPU from generator.

    Needs: torch
    """
    w = 0.01 * torch.randn(n_features, generator=generator, dtype=dtype)
    return w.to(device), torch.zeros(1, dtype=dtype, device=device)


def logreg_forward(params, x):
    """params (w (D,), b (1,)), x (B, D) -> logits z (B,).

    Needs: nothing
    """
    w, b = params
    return x @ w + b


def logreg_backward(x, z, y):
    """The gradient of bce_with_logits: x (B, D), its logits z (B,), y (B,) -> (dw (D,), db (1,)).

    Derive it in docs/01_logistic_regression.md, steps 1-16.
    Needs: sigmoid
    """
    B = x.shape[0]
    dz = (sigmoid(z) - y.to(z.dtype)) / B  # (B,): dL/dz = (p - y) / B, step 12
    return x.T @ dz, dz.sum().reshape(1)  # (D,) = X^T dz, step 15; (1,): step 16


def mse_loss(z, y):
    """Mean squared error of the probability: mean over the batch of (sigmoid(z) - y)^2.

    Needs: sigmoid
    """
    return ((sigmoid(z) - y.to(z.dtype)) ** 2).mean()


def mse_backward(x, z, y):
    """The gradient of mse_loss: x (B, D), its logits z (B,), y (B,) -> (dw (D,), db (1,)).

    Derive it in docs/01_logistic_regression.md, section 9.
    Needs: sigmoid
    """
    p = sigmoid(z)
    dz = 2 * (p - y.to(z.dtype)) * p * (1 - p) / x.shape[0]  # (B,): p(1 - p) does not cancel
    return x.T @ dz, dz.sum().reshape(1)


def linear_decay(lr, step, total_steps):
    """The learning rate at step (0-based) of total_steps: lr falling linearly towards 0.

    Needs: nothing
    """
    return lr * (1 - step / total_steps)


def sgd_step(params, grads, lr):
    """One step of gradient descent -> a new tuple of p - lr * g (the inputs stay unchanged).

    Needs: torch
    """
    return tuple(torch.add(p, g, alpha=-lr) for p, g in zip(params, grads))  # p - lr g


def is_nine(y):
    """Digit labels (N,) -> binary labels (N,) int64: 1 for a 9, 0 otherwise.

    Needs: torch
    """
    return (y == 9).to(torch.int64)


def binary_metrics(z, y):
    """Predict "9" where the logit z (N,) > 0 -> accuracy, precision, recall, F1 against y (N,).

    Needs: nothing
    """
    pred, truth = z > 0, y == 1
    tp, fp, fn = ((pred & truth).sum().item(), (pred & ~truth).sum().item(),
                  (~pred & truth).sum().item())
    precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return {"accuracy": (pred == truth).float().mean().item(), "precision": precision,
            "recall": recall, "f1": 2 * precision * recall / max(precision + recall, 1e-12)}


def train(params, X, y, epochs, batch_size, lr, generator, backward=logreg_backward,
          on_epoch=None):
    """Minibatch SGD on X (N, D), y (N,) in {0, 1}, lr falling linearly -> trained params.

    backward(x, z, y) is the gradient followed; on_epoch(epoch, params) is called after each.
    Needs: logreg_forward, logreg_backward, sgd_step, linear_decay, minibatches (common)
    """
    steps = -(-len(X) // batch_size)  # batches per epoch: ceil(N / batch_size)
    for epoch in range(epochs):
        for s, (xb, yb) in enumerate(minibatches(X, y, batch_size, generator)):
            grads = backward(xb, logreg_forward(params, xb), yb)
            params = sgd_step(params, grads, linear_decay(lr, epoch * steps + s, epochs * steps))
        if on_epoch:
            on_epoch(epoch + 1, params)
    return params


def plot_weights(w, path, title):
    """w (784,) as a 28x28 picture: red pixels vote for "9", blue against.

    Needs: pyplot (common), save_figure (common), math
    """
    fig, ax = pyplot().subplots(figsize=(4.2, 3.6))
    limit = w.abs().max().item() or 1.0
    side = math.isqrt(w.numel())
    shown = ax.imshow(w.cpu().view(side, side).numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
    fig.colorbar(shown, ax=ax, label="weight")
    ax.set(xticks=[], yticks=[], title=title)
    fig.tight_layout()
    save_figure(fig, path)


# ----------------------------------------------------------------------------- your turn

def your_turn_tasks(generator):
    """The functions --yours checks, smallest first, each on a float64 batch: B 7, D 5.

    Needs: bce_with_logits, logreg_backward, mse_loss, mse_backward, torch
    """
    x, w, b = (torch.randn(*shape, generator=generator, dtype=torch.float64)
               for shape in ((7, 5), (5,), (1,)))
    y = torch.randint(0, 2, (7,), generator=generator)
    z = x @ w + b  # (7,)
    tasks = []
    for name, loss, reference in (("logreg_backward", bce_with_logits, logreg_backward),
                                  ("mse_backward", mse_loss, mse_backward)):
        case = {"args": (x, z, y), "names": ("dw", "db"), "B": 7, "at": (w, b),
                "loss": lambda w, b, loss=loss: loss(x @ w + b, y)}
        tasks.append((name, reference, [case]))
    return tasks


def cross_entropy_or_squared_error(X, y, batch_size, lr, seed, epochs=3, b=6.0):
    """Train from one confidently wrong start with each loss; print their epochs side by side.

    Start: w = 0, b = 6, so p = 0.998 for every digit: "9" for the 90 % that are not.
    -> {loss name: [(cross-entropy, accuracy, recall of the 9s) at the start and each epoch]}.
    Needs: common, logreg_backward, mse_backward, sigmoid, logreg_forward, bce_with_logits,
        binary_metrics, train, torch
    """
    start = (torch.zeros(X.shape[1], device=X.device), torch.full((1,), b, device=X.device))
    z, p = logreg_forward(start, X), sigmoid(torch.tensor(b)).item()
    print(f"\n2. why cross-entropy: w = 0, b = {b:g} calls every digit a 9 with p = {p:.4f}.\n"
          f"   There dL/db is {logreg_backward(X, z, y)[1].item():.3f} with cross-entropy and only "
          f"{mse_backward(X, z, y)[1].item():.5f} with squared error,\n   whose p(1 - p) = "
          f"{p * (1 - p):.4f} does not cancel (docs/01, section 9).")

    def measured(params):
        found = binary_metrics(logreg_forward(params, X), y)
        loss = bce_with_logits(logreg_forward(params, X), y).item()
        return loss, found["accuracy"], found["recall"]
    rows = {}
    for name, backward in (("cross-entropy", logreg_backward), ("squared error", mse_backward)):
        rows[name] = [measured(start)]
        train(start, X, y, epochs, batch_size, lr, common.make_generator(seed), backward,
              lambda epoch, params, name=name: rows[name].append(measured(params)))
    print(f"   Trained on {len(X):,} digits, same batches, same lr; scored on them:\n"
          f"   {'trained with':>14}{'cross-entropy':>32}{'squared error':>32}\n"
          f"   {'epoch':>14}" + f"{'CE loss':>10}{'accuracy':>11}{'9s found':>11}" * 2)
    for epoch, (ce, se) in enumerate(zip(*rows.values())):
        print(f"   {epoch:>14}" + "".join(f"{loss:>10.3f}{acc:>11.2%}{found:>11.2%}"
                                          for loss, acc, found in (ce, se)))
    return rows


def main(argv=None):
    """Train the 9 detector, compare cross-entropy with squared error -> exit status.

    Needs: common, exercises, sigmoid, your_turn_tasks, Path, is_nine, logreg_init, train,
        bce_with_logits, binary_metrics, logreg_forward, plot_weights,
        cross_entropy_or_squared_error
    """
    parser = common.make_parser(__doc__)
    parser.add_argument("--epochs", type=common.int_in(1, 1000), default=10)
    parser.add_argument("--batch-size", type=common.int_in(1, 60_000), default=64)
    parser.add_argument("--lr", type=common.float_in(0, 1e6, lo_open=True), default=0.5,
                        help="the first learning rate; it falls linearly to 0 (default 0.5)")
    parser.add_argument("--limit", type=common.int_in(1, 60_000), metavar="N",
                        help="use only the first N training and N test digits (quick checks)")
    parser.add_argument("--out", type=common.writable_dir,
                        default=str(Path(__file__).resolve().parent / "runs" / "01"))
    exercises.add_your_turn(parser)
    args = parser.parse_args(argv)
    status = exercises.your_turn(args, "01_logistic_regression", [sigmoid], your_turn_tasks)
    if status is not None:
        return status

    X_train, y_train, X_test, y_test = common.load_mnist(device=args.device)[:4]
    X_train, y_train = X_train[:args.limit], is_nine(y_train[:args.limit])
    X_test, y_test = X_test[:args.limit], is_nine(y_test[:args.limit])
    print(f"1. training: {len(X_train):,} digits ({y_train.float().mean().item():.2%} nines) "
          f"on {args.device}, {args.epochs} epochs of batches of {args.batch_size}")
    generator = common.make_generator(args.seed)
    params = logreg_init(X_train.shape[1], generator, device=args.device)
    params = train(params, X_train, y_train, args.epochs, args.batch_size, args.lr, generator,
                   on_epoch=lambda epoch, params: print(
                       f"   epoch {epoch:>2}/{args.epochs} | train loss "
                       f"{bce_with_logits(logreg_forward(params, X_train), y_train).item():.4f}"))
    test = binary_metrics(logreg_forward(params, X_test), y_test)
    baseline = 1 - y_test.float().mean().item()  # always answering "not 9"
    print(f"   test accuracy {test['accuracy']:.2%} on {len(X_test):,} digits (always 'not 9': "
          f"{baseline:.2%})\n   the 9s: precision {test['precision']:.2%}, recall "
          f"{test['recall']:.2%}, F1 {test['f1']:.3f}")
    plot_weights(params[0], args.out / "weights.png", f"w, the 9 detector: test "
                 f"{test['accuracy']:.2%}")
    print(f"   wrote {args.out / 'weights.png'}: red pixels vote for 9, blue against")
    rows = cross_entropy_or_squared_error(X_train[:10_000], y_train[:10_000],
                                          args.batch_size, args.lr, args.seed)
    ok = test["accuracy"] > baseline  # the lesson's own check: it learnt more than the base rate
    print(f"result: test_accuracy={test['accuracy']:.4f} f1={test['f1']:.4f} "
          f"baseline={baseline:.4f} ce_trained_recall={rows['cross-entropy'][-1][2]:.4f} "
          f"se_trained_recall={rows['squared error'][-1][2]:.4f} ok={str(ok).lower()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(common.run_main(main))

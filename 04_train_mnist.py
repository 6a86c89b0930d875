"""Lesson 04: train the MLP on MNIST with the hand-written passes of lessons 02 and 03.

After this lesson you can write the loop that trains a network: one step is forward (02),
backward (03), update; one epoch is one pass over the freshly shuffled training digits. Then
you can say what each trick of the recipe buys, measured: momentum, a learning-rate schedule,
the batch size, data augmentation, weight decay, more epochs, label smoothing (README's
ablation table).

    python 04_train_mnist.py                     # the default recipe, ~99.2 % test
    python 04_train_mnist.py --preset notebook   # the notebook's recipe: plain SGD, ~96.5 %
    python 04_train_mnist.py --preset best       # the default for 100 epochs, about 5 minutes
    python 04_train_mnist.py --ablation          # README's ablation table, from scratch
    python 04_train_mnist.py --resume            # continue runs/default/ after an interruption
    python 04_train_mnist.py --eval runs/default/checkpoint.pt

The first screens are the lesson: the training step, the epoch loop, the update rules and the
augmentation. Below the line marked "engineering" come a faster step, the checks that turn a
bad input or a diverged run into one sentence, presets, argument checks, files, signals and
pictures, which a learner may skip. Derivations: docs/04_train_mnist.md.
"""

import os
import signal
import sys

# Engineering, not the lesson (the lesson starts below the imports). It comes before
# "import torch", which takes seconds, so that Ctrl-C, SIGTERM or SIGHUP while torch loads
# prints one line instead of a traceback.
if __name__ == "__main__":
    _phase = ["starting"]  # then "running" (main's own handlers take over), then "done"

    def _interrupted_while_starting(signum, frame):
        if _phase[0] == "running":  # before main's handlers are in, or after they are gone
            raise KeyboardInterrupt(signal.Signals(signum).name)
        if _phase[0] == "starting":
            _phase[0] = "done"  # one message, however often the key is pressed
            start = "\n" if sys.stderr.isatty() else ""  # off the line the terminal's ^C is on
            print(start + "interrupted while starting; nothing was written.", file=sys.stderr,
                  flush=True)
            os._exit(130)  # not sys.exit: an import in progress can swallow it and go on
        # "done": the run has said how it ended; a signal while Python shuts down changes nothing

    # SIGHUP: the terminal closed (not on Windows). A signal ignored when the run starts stays
    # ignored: SIGHUP under nohup, SIGINT in a job started with & from a script.
    for _name in ("SIGINT", "SIGTERM", "SIGHUP"):
        _number = getattr(signal, _name, None)
        if _number is not None and signal.getsignal(_number) is not signal.SIG_IGN:
            signal.signal(_number, _interrupted_while_starting)

import argparse  # noqa: E402 (after the early signal handlers, on purpose)
import importlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shlex  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

import common  # noqa: E402

# The earlier lessons' functions. A module name cannot start with a digit, so a plain
# "import 01_logistic_regression" is a syntax error; importlib takes the name as a string.
logreg = importlib.import_module("01_logistic_regression")
forward = importlib.import_module("02_mlp_forward")
backward = importlib.import_module("03_mlp_backward")
sgd_step, linear_decay, check_grads = logreg.sgd_step, logreg.linear_decay, logreg.check_grads
one_hot = logreg.one_hot
log_softmax, softmax = forward.log_softmax, forward.softmax
init_params, mlp_forward, cross_entropy = (forward.init_params, forward.mlp_forward,
                                           forward.cross_entropy)
mlp_backward_from = backward.mlp_backward_from
minibatches, accuracy = common.minibatches, common.accuracy


# ---------------------------------------------------------------------------- the step and the loop
# Read top-down: the step and the loop first; the pieces they call (the smoothed loss, the
# updates, the schedule, the augmentation) follow in the next sections. The checks they call
# (check_*, all_finite) and the constants N_INPUT = 784, N_CLASSES = 10 and STEPS sit below
# the engineering line.

def train_step(params, velocity, x, y, lr, momentum, weight_decay=0.0, smoothing=0.0):
    """Forward, backward, update -> (new params, new velocity, loss); the inputs stay unchanged.

    params (W1, b1, ..., Wn, bn); velocity shaped like params (init_velocity); x (B, D),
    y (B,) int64. loss is the batch's mean (smoothed) cross-entropy before the update, a 0-d
    tensor left on the device. With momentum 0 it is plain SGD (lesson 01's sgd_step); with
    smoothing 0 the loss and delta_n are lesson 02's and 03's exactly.
    Needs: mlp_forward (02), smoothed_cross_entropy, smoothed_cross_entropy_backward,
        mlp_backward_from (03), add_weight_decay, momentum_step, sgd_step (01)
    """
    logits, cache = mlp_forward(params, x)  # 02: Z_n (B, C) and (H_0, ..., H_{n-1}, Z_n)
    loss = smoothed_cross_entropy(logits, y, smoothing)
    dlogits = smoothed_cross_entropy_backward(logits, y, smoothing)  # delta_n (B, C)
    grads = mlp_backward_from(params, cache, dlogits)  # 03: (dW1, db1, ..., dWn, dbn)
    if weight_decay:
        grads = add_weight_decay(grads, params, weight_decay)
    if momentum:
        params, velocity = momentum_step(params, velocity, grads, lr, momentum)
    else:
        params = sgd_step(params, grads, lr)
    return params, velocity, loss


def train_step_(params, velocity, x, y, lr, momentum, weight_decay=0.0, smoothing=0.0):
    """train_step with the update done in place (torch's trailing _) -> loss.

    The same forward and backward (lessons 02 and 03); only the update writes into params
    and velocity instead of building new tuples, which saves allocating two copies of the
    network per step. params and velocity must be tensors that may be written in place:
    not ones that require grad, and not inference tensors (made inside torch.inference_mode)
    when this runs outside it.
    Needs: mlp_forward (02), smoothed_cross_entropy, smoothed_cross_entropy_backward,
        mlp_backward_from (03), momentum_step_
    """
    logits, cache = mlp_forward(params, x)
    loss = smoothed_cross_entropy(logits, y, smoothing)
    grads = mlp_backward_from(params, cache, smoothed_cross_entropy_backward(logits, y, smoothing))
    momentum_step_(params, velocity, grads, lr, momentum, weight_decay)
    return loss


def train_epoch(params, velocity, X, y, config, generator, first_step, total_steps,
                step_fn, progress=False, check_every=20):
    """One shuffled pass over X (N, D), y (N,) -> (params, velocity, mean loss of the epoch).

    Each batch: augment it (a fresh random distortion every time it is seen), take the
    learning rate of this step, take one step. Each step's loss stays on the device; every
    check_every steps they are read back at once (one wait for the device, not one per step)
    and a NaN or infinity stops the run with FloatingPointError. config keys read: batch_size,
    momentum, weight_decay, smoothing, lr, and those of learning_rate and augment_batch.
    Needs: torch, tqdm, minibatches (common), augment_batch, learning_rate, train_step,
        check_finite_losses
    """
    steps = -(-len(X) // config["batch_size"])  # ceil(N / batch_size): the last may be short
    losses = torch.empty(steps, device=X.device)  # (steps,)
    bar = tqdm(total=steps, leave=False, disable=not progress, unit="step")
    checked = 0
    for s, (xb, yb) in enumerate(minibatches(X, y, config["batch_size"], generator)):
        xb = augment_batch(xb, config, generator)
        lr = learning_rate(config, first_step + s, total_steps)
        args = (xb, yb, lr, config["momentum"], config["weight_decay"], config["smoothing"])
        if step_fn is train_step:  # pure: new tuples back
            params, velocity, losses[s] = train_step(params, velocity, *args)
        else:  # in place: params and velocity change where they are
            losses[s] = step_fn(params, velocity, *args)
        if s + 1 - checked == check_every or s + 1 == steps:
            window = losses[checked:s + 1]  # steps checked+1 .. s+1, read back at once
            check_finite_losses(window, checked, steps, config["lr"])
            bar.set_postfix(loss=f"{window.mean().item():.4f}")
            bar.update(s + 1 - checked)
            checked = s + 1
    bar.close()
    return params, velocity, losses.mean().item()


def fit(config, data, generator, state=None, on_epoch=None, progress=False, log=print):
    """Train for the config's epochs (from state's, if resuming) -> (params, velocity, history).

    data (X_train, y_train, X_val, y_val, ...): (N, D) float and (N,) int64 tensors on one
    device; X_val may be empty (no validation). After each epoch: check that every parameter,
    and the loss on 1,000 training digits, is finite (a divergence on an epoch's last update
    shows only here), score the validation digits, log one line, call on_epoch (which saves
    the checkpoint). config["step"] picks the step through STEPS (below the engineering
    line): "inplace" is train_step_ (every preset's), "pure" train_step, "fused"
    fused_train_step_. config keys read: hidden, epochs, step, and train_epoch's. state (to
    resume) is a dict with params, velocity, generator_state (generator.get_state()) and
    history (the list this returns).
    Needs: init_params (02), N_INPUT, N_CLASSES, init_velocity, time, train_epoch, STEPS,
        check_finite_after_epoch, evaluate, train_step_, train_step, fused_train_step_
    """
    X_train, y_train, X_val, y_val = data[:4]
    device = X_train.device
    if state is None:
        params = init_params([N_INPUT, *config["hidden"], N_CLASSES], generator, device=device)
        velocity, history = init_velocity(params), []
    else:
        params = tuple(p.to(device) for p in state["params"])
        velocity = tuple(v.to(device) for v in state["velocity"])
        generator.set_state(state["generator_state"])
        history = list(state["history"])
    steps_per_epoch = -(-len(X_train) // config["batch_size"])  # ceil(N / batch_size)
    total_steps = config["epochs"] * steps_per_epoch
    width = len(str(config["epochs"]))
    for epoch in range(len(history) + 1, config["epochs"] + 1):
        tic = time.perf_counter()
        try:
            params, velocity, loss = train_epoch(params, velocity, X_train, y_train, config,
                                                 generator, (epoch - 1) * steps_per_epoch,
                                                 total_steps, STEPS[config["step"]], progress)
        except FloatingPointError as err:
            raise FloatingPointError(str(err).replace(" at step ", f" at epoch {epoch}, step ",
                                                      1)) from None
        # The step losses were taken before each update; the last update shows only here.
        check_finite_after_epoch(params, velocity, X_train, y_train, epoch, config["lr"])
        val_loss, val_acc = evaluate(params, X_val, y_val)  # .item() waits for the device
        seconds = time.perf_counter() - tic
        history.append({"epoch": epoch, "loss": loss, "val_loss": val_loss,
                        "val_accuracy": val_acc, "seconds": seconds})
        val = "" if val_acc is None else f" | val {val_acc:6.2%}"
        log(f"epoch {epoch:>{width}}/{config['epochs']} | loss {loss:.4f}{val} | "
            f"{seconds:5.1f} s")
        if on_epoch:
            on_epoch(params, velocity, epoch, history)
    return params, velocity, history


# ----------------------------------------------------------------------------- loss and updates

def init_velocity(params):
    """Momentum's starting velocity: zeros shaped like params (same dtypes and devices).

    Needs: torch
    """
    return tuple(torch.zeros_like(p) for p in params)


def momentum_step(params, velocity, grads, lr, momentum):
    """v <- momentum * v + g, then p <- p - lr * v -> (new params, new velocity), inputs unchanged.

    The velocity is a running sum of past gradients, decaying by `momentum` each step: steps
    grow along directions where the gradients agree and cancel where they zig-zag. On a steady
    gradient v tends to g / (1 - momentum), so the effective step is lr / (1 - momentum): 1.0
    for lr 0.1 and momentum 0.9, a hundred times the notebook's 0.01 (docs/04_train_mnist.md).
    Needs: check_grads (01), check_velocity, torch
    """
    check_grads(params, grads)
    check_velocity(params, velocity)
    velocity = tuple(torch.add(g, v, alpha=momentum) for v, g in zip(velocity, grads))
    params = tuple(torch.add(p, v, alpha=-lr) for p, v in zip(params, velocity))
    return params, velocity


def momentum_step_(params, velocity, grads, lr, momentum, weight_decay=0.0):
    """momentum_step (and add_weight_decay) in place on params and velocity -> None.

    With momentum 0 it is plain SGD and velocity is not touched (it may be empty). grads
    serve as scratch space: with weight decay, each weight matrix's gradient is changed in
    place into g + weight_decay * W (train_step_ passes gradients that nothing else reads;
    pass copies if you need yours afterwards).
    Needs: check_grads (01), check_velocity
    """
    check_grads(params, grads)
    if momentum:
        check_velocity(params, velocity)
    for i, (p, g) in enumerate(zip(params, grads)):
        if weight_decay and p.dim() == 2:
            g = g.add_(p, alpha=weight_decay)  # in place: saves allocating a copy of W
        if momentum:
            g = velocity[i].mul_(momentum).add_(g)  # v <- momentum v + g
        p.add_(g, alpha=-lr)


def add_weight_decay(grads, params, weight_decay):
    """g + weight_decay * W for each weight matrix (biases unchanged) -> new grads tuple.

    The gradient of the L2 penalty (weight_decay / 2) * sum(W ** 2): it pulls every weight
    a little towards 0 each step, so the network cannot lean hard on any single pixel.
    Needs: nothing
    """
    return tuple(g + weight_decay * p if p.dim() == 2 else g for g, p in zip(grads, params))


def smoothed_cross_entropy(logits, y, smoothing=0.0):
    """Mean over the batch of -sum_j Y_s[b, j] log P[b, j] with smoothed labels -> scalar.

    logits (B, C), y (B,) int64. Y_s = (1 - smoothing) Y + smoothing / C: the true class
    keeps most of the target, every class gets a little, so the network is never pushed to
    make one logit infinitely larger than the rest ("label smoothing"). smoothing 0 is lesson
    02's cross_entropy.
    Needs: one_hot (01), log_softmax (02)
    """
    B, C = logits.shape
    Y_s = one_hot(y, C, logits.dtype, B) * (1 - smoothing) + smoothing / C  # (B, C), rows sum to 1
    return -(Y_s * log_softmax(logits)).sum(dim=1).mean()


def smoothed_cross_entropy_backward(logits, y, smoothing=0.0):
    """delta_n = dL/dlogits (B, C) = (P - Y_s) / B for smoothed_cross_entropy.

    1. L = -(1/B) sum_b sum_j Y_s[b, j] log P[b, j]
    2. d log P[b, j] / dZ[b, k] = [j = k] - P[b, k]                  (log-softmax's derivative)
    3. dL/dZ[b, k] = -(1/B) sum_j Y_s[b, j] ([j = k] - P[b, k])
                   = -(1/B) (Y_s[b, k] - P[b, k] sum_j Y_s[b, j])     (the [j = k] picks j = k)
                   = (1/B) (P[b, k] - Y_s[b, k])                      (rows of Y_s sum to 1)
    shape check: (B, C), like the logits; smoothing 0 gives lesson 03's (P - Y) / B.
    Needs: one_hot (01), softmax (02)
    """
    B, C = logits.shape
    Y_s = one_hot(y, C, logits.dtype, B) * (1 - smoothing) + smoothing / C  # (B, C)
    return (softmax(logits) - Y_s) / B


def learning_rate(config, step, total_steps):
    """The lr at this step: constant (the notebook) or lesson 01's linear decay to 0.

    config keys read: schedule ("constant" or "linear"), lr.
    Needs: linear_decay (01)
    """
    if config["schedule"] == "constant":
        return config["lr"]
    return linear_decay(config["lr"], step, total_steps)


# ----------------------------------------------------------------------------- augmentation
# Every epoch the network sees each digit slightly moved, turned, resized or bent, so it
# cannot memorise exact pixel positions. Each image gets its own random distortion, drawn
# from the run's generator (same seed, same distortions), and the whole batch is resampled
# at once on the device: no per-image Python loop, no gradient machinery.

def augment_batch(xb, config, generator):
    """The run's augmentation of one batch xb (B, 784) -> (B, 784) (xb itself when off).

    Shifts alone (--shift N) move each digit by whole pixels, one gather. With any rotation,
    scaling or elastic distortion, everything goes through augment's single bilinear
    resample, and the shift becomes a continuous one of up to N pixels. config keys read:
    rotate (degrees), scale, shift (pixels), elastic (alpha, pixels), elastic_sigma.
    Needs: augment, random_shift
    """
    if config["rotate"] or config["scale"] or config["elastic"]:
        return augment(xb, generator, config["rotate"], config["scale"], config["shift"],
                       config["elastic"], config["elastic_sigma"])
    if config["shift"]:
        return random_shift(xb, int(config["shift"]), generator)
    return xb


def random_shift(x, max_shift, generator):
    """Move each square image in x (B, side * side) by up to max_shift whole pixels.

    Each image gets its own offset, and the shift is one gather on the device: no per-image
    Python loop. Pixels that come in from outside are 0 (the background).
    Needs: math, torch, F
    """
    B, side, m = x.shape[0], math.isqrt(x.shape[1]), max_shift
    padded = F.pad(x.view(B, side, side), (m, m, m, m))  # (B, side + 2m, side + 2m)
    oy, ox = torch.randint(0, 2 * m + 1, (2, B, 1), generator=generator).to(x.device)  # (B, 1)
    rows = torch.arange(side, device=x.device) + oy  # (B, side): the rows each image keeps
    cols = torch.arange(side, device=x.device) + ox  # (B, side)
    batch = torch.arange(B, device=x.device)[:, None, None]  # (B, 1, 1)
    return padded[batch, rows[:, :, None], cols[:, None, :]].reshape(B, side * side)


def affine_theta(angle, s, t, side):
    """Affine maps for grid_sample -> theta (B, 2, 3), on angle's device and dtype.

    angle (B,) radians, s (B,) enlargement factors, t (B, 2) shifts in pixels (x right, y down).
    The image is rotated by angle (clockwise on screen, as y points down), enlarged by s about
    its centre, then moved by t: a point p_in lands at p_out = s R p_in + t, with
    R = [[cos, -sin], [sin, cos]]. theta maps an OUTPUT position to the INPUT position it reads
    (grid_sample's convention), so it is the inverse, in grid_sample's normalised units
    (2 / side per pixel, so t' = t * 2 / side):
        p_in = R^T (p_out - t) / s   ->   theta = [R^T / s | -R^T t' / s]
    (docs/04_train_mnist.md, section 5, derives it step by step).
    Needs: torch
    """
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s  # (B,) each
    A = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], 1)  # R^T / s
    offset = -(A @ (t * (2 / side)).unsqueeze(2))  # (B, 2, 1): -R^T t' / s, normalised units
    return torch.cat([A, offset], 2)  # (B, 2, 3)


def affine_matrices(batch, generator, rotate_deg, scale, shift_px, side):
    """Random per-image affine maps -> theta (batch, 2, 3), torch's default dtype, on the CPU.

    Image b is rotated by an angle in [-rotate_deg, rotate_deg] degrees, enlarged by a factor
    s in [1 - scale, 1 + scale] and moved by t in [-shift_px, shift_px] pixels per axis,
    each drawn uniformly from generator (4 numbers per image).
    Needs: affine_theta, torch, math
    """
    u = torch.rand(batch, 4, generator=generator) * 2 - 1  # (B, 4) uniform in [-1, 1]
    angle = u[:, 0] * math.radians(rotate_deg)  # (B,)
    s = 1 + u[:, 1] * scale  # (B,)
    t = u[:, 2:] * shift_px  # (B, 2) pixels
    return affine_theta(angle, s, t, side)


def elastic_displacement(batch, generator, alpha, sigma, side, device="cpu"):
    """A smooth random displacement field -> (batch, side, side, 2) in normalised units.

    Simard et al. (2003): uniform noise in [-1, 1] for each pixel and axis, smoothed by a
    Gaussian of width sigma pixels (separably: G @ noise @ G.T, first down each column, then
    along each row), times alpha pixels. The kernel sums to 1 and |noise| <= 1, so no pixel
    ever moves more than alpha pixels per axis; the smoothing averages the noise, so the
    typical move is far smaller. Where the kernel is not cut by the border, one pixel's move
    is alpha * sum_m sum_q G[i, m] noise[m, q] G[j, q]; the noise is independent with
    variance 1/3, so its variance is alpha^2 / 3 * (sum_k kappa_k^2)^2, and a Gaussian kernel
    kappa of width sigma has sum_k kappa_k^2 ~ 1 / (2 sqrt(pi) sigma) ~ 1 / (3.5 sigma). Its
    standard deviation is therefore about alpha * 0.58 / (3.5 * sigma) pixels per axis (0.8 px
    for alpha 20, sigma 4 at the centre, less near the border; docs/04, section 5). The noise
    is drawn on the CPU, then smoothed on the device, in torch's default dtype.
    Needs: torch, gaussian_matrix
    """
    noise = torch.rand(batch, 2, side, side, generator=generator) * 2 - 1  # (B, 2, side, side)
    G = gaussian_matrix(side, sigma, noise.dtype).to(device)  # (side, side)
    field = G @ noise.to(device) @ G.T  # (B, 2, side, side): (x, y) displacement, pixels / alpha
    return field.permute(0, 2, 3, 1) * (alpha * 2 / side)  # (B, side, side, 2), normalised units


def warp(x, theta, displacement=None):
    """Resample each image through its affine map plus a displacement: x (B, side^2) -> same.

    theta (B, 2, 3) as affine_theta makes; displacement None or (B, side, side, 2) in normalised
    units, added to the affine grid, so both cost one bilinear grid_sample. Reads outside the
    image give 0 (the background).
    Needs: math, sampling_grid, F
    """
    B, side = x.shape[0], math.isqrt(x.shape[1])
    grid = sampling_grid(theta.to(x), side)  # (B, side, side, 2)
    if displacement is not None:
        grid = grid + displacement.to(x)
    out = F.grid_sample(x.view(B, 1, side, side), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)  # (B, 1, side, side)
    return out.view(B, side * side)


def augment(x, generator, rotate_deg=0.0, scale=0.0, shift_px=0.0, alpha=0.0, sigma=4.0):
    """Random affine map plus elastic field, one bilinear resample: x (B, side^2) -> (B, side^2).

    x holds square images flattened row by row (MNIST: side 28), values in [0, 1]; the result
    is on x's device and dtype. Outside the image counts as 0 (the background). All strengths 0
    (the defaults) return x itself and draw nothing; a zero-strength warp would also give x back,
    but only to float rounding (grid_sample reads at pixel centres computed in float32, ~1e-6).
    Needs: affine_matrices, elastic_displacement, warp, math
    """
    if not (rotate_deg or scale or shift_px or alpha):
        return x  # the identity, exactly; nothing drawn
    B, side = x.shape[0], math.isqrt(x.shape[1])
    theta = affine_matrices(B, generator, rotate_deg, scale, shift_px, side)  # (B, 2, 3)
    field = elastic_displacement(B, generator, alpha, sigma, side, x.device) if alpha else None
    return warp(x, theta, field)


def gaussian_matrix(side, sigma, dtype=torch.float32):
    """Gaussian smoothing along one axis as a matrix -> G (side, side), G[i, j] = kappa(i - j).

    kappa is a Gaussian of width sigma pixels, cut at 3 sigma and scaled to sum to 1; G @ v smooths
    v (side,) like a 1-D convolution with zero padding (rows near the edge sum to less than 1).
    A matmul, because on a CPU it is ~10x faster than conv2d with a 1-channel kernel.
    Needs: torch, math
    """
    r = torch.arange(side, dtype=dtype)  # (side,)
    d = r[:, None] - r[None, :]  # (side, side) the offset i - j
    radius = max(1, math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (d / sigma) ** 2) * (d.abs() <= radius)  # (side, side)
    full = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=dtype) / sigma) ** 2).sum()
    return k / full


def sampling_grid(theta, side):
    """F.affine_grid(theta, (B, 1, side, side), align_corners=False), built by broadcasting.

    theta (B, 2, 3) -> grid (B, side, side, 2): grid[b, i, j] = theta[b] @ (c_j, c_i, 1), with
    c_k = (2k + 1) / side - 1 the centre of pixel k in normalised units. The same numbers as
    affine_grid (to float rounding), about 4x faster on a CPU: each entry is one add of a
    per-row and a per-column term instead of a small matmul.
    Needs: torch
    """
    c = (torch.arange(side, dtype=theta.dtype, device=theta.device) * 2 + 1) / side - 1  # (side,)
    # Both rows r of theta at once: by_row[b, i, r] = theta[b, r, 1] c_i + theta[b, r, 2] and
    # by_col[b, j, r] = theta[b, r, 0] c_j, so grid[b, i, j, r] is their sum.
    by_row = (theta[:, :, 1:2] * c + theta[:, :, 2:3]).transpose(1, 2)  # (B, side, 2)
    by_col = (theta[:, :, 0:1] * c).transpose(1, 2)  # (B, side, 2)
    return by_row[:, :, None, :] + by_col[:, None, :, :]  # (B, side, side, 2)


# ----------------------------------------------------------------------------- evaluation

def predict(params, X, chunk=10_000):
    """Logits (N, C) for X (N, D), computed chunk rows at a time to bound memory.

    Needs: mlp_forward (02), torch
    """
    return torch.cat([mlp_forward(params, X[i:i + chunk])[0] for i in range(0, len(X), chunk)])


def evaluate(params, X, y):
    """-> (mean cross-entropy, accuracy) of params on X (N, D), y (N,); (None, None) if N = 0.

    Needs: predict, cross_entropy (02), accuracy (common)
    """
    if len(X) == 0:
        return None, None
    logits = predict(params, X)
    return cross_entropy(logits, y).item(), accuracy(logits, y)


# ============================================================================= engineering
# Below: presets, argument checks, the run folder (checkpoints, metrics, a lock), signals,
# pictures and the ablation. None of it is needed to understand training; all of it is what
# makes a run safe to interrupt, resume and compare.

# common.py's helpers for all of that, under short names.
add_run_args, atomic_write = common.add_run_args, common.atomic_write
check_writable_dir, clean_leftovers = common.check_writable_dir, common.clean_leftovers
device_description = common.device_description
float_in, install_interrupt_handlers = common.float_in, common.install_interrupt_handlers
int_in, is_out_of_memory = common.int_in, common.is_out_of_memory
load_mnist_limited, lock_folder = common.load_mnist_limited, common.lock_folder
make_generator = common.make_generator
parse_args, pick_device = common.parse_args, common.pick_device
pyplot, restore_interrupt_handlers = common.pyplot, common.restore_interrupt_handlers
result_line, run_main = common.result_line, common.run_main
save_figure, save_json, show_progress = common.save_figure, common.save_json, common.show_progress
train_val_split = common.train_val_split

# ----------------------------------------------------------------------------- faster versions
# The same math as the readable code above (tests check it equal in float64), faster on a CPU.

def fused_train_step_(params, velocity, x, y, lr, momentum, weight_decay=0.0, smoothing=0.0):
    """train_step_ with each gradient fused into its update -> loss. Faster, harder to read.

    The same math as train_step (tested equal), but no gradient tuple is ever built: each
    layer's dW goes straight into its velocity (or weight) through one addmm_, which computes
    out = beta * out + alpha * (H^T @ delta) without storing H^T @ delta. dL/dH_{l-1} is
    computed before W_l changes, so every gradient still sees the old parameters. The same
    restrictions on params and velocity as train_step_ (velocity may be empty with momentum 0).
    Needs: mlp_forward (02), smoothed_cross_entropy, smoothed_cross_entropy_backward,
        check_velocity
    """
    if momentum:
        check_velocity(params, velocity)
    logits, cache = mlp_forward(params, x)
    loss = smoothed_cross_entropy(logits, y, smoothing)
    dz = smoothed_cross_entropy_backward(logits, y, smoothing)  # delta_n (B, C)
    for i in range(len(params) // 2 - 1, -1, -1):
        W, b, h = params[2 * i], params[2 * i + 1], cache[i]  # h: the layer's input H_{l-1}
        dh = dz @ W.T if i > 0 else None  # (B, in), from the old W
        if momentum:
            vW, vb = velocity[2 * i], velocity[2 * i + 1]
            vW.addmm_(h.T, dz, beta=momentum)  # vW = momentum * vW + H^T delta
            if weight_decay:
                vW.add_(W, alpha=weight_decay)  # + weight_decay * W
            vb.mul_(momentum).add_(dz.sum(dim=0))
            W.add_(vW, alpha=-lr)
            b.add_(vb, alpha=-lr)
        else:
            W.addmm_(h.T, dz, beta=1 - lr * weight_decay, alpha=-lr)  # W -= lr (H^T delta + wd W)
            b.sub_(dz.sum(dim=0), alpha=lr)
        if i > 0:
            dz = dh.mul_(h.sign())  # delta_{l-1}: relu_backward, in place on dh (ours alone)
    return loss


# ----------------------------------------------------------------------------- checks
# What the loop and the updates call to turn a bad input or a diverged run into one sentence.

def check_velocity(params, velocity):
    """Raise ValueError unless velocity holds one tensor like each parameter (shape, dtype,
    device): a short or mismatched velocity would otherwise drop parameters (zip stops at the
    shorter) or silently turn them into another dtype.

    Needs: nothing
    """
    if len(velocity) != len(params):
        raise ValueError(f"got {len(velocity)} velocity tensors for {len(params)} parameters; "
                         "start the velocity with init_velocity(params).")
    for i, (p, v) in enumerate(zip(params, velocity)):
        if p.shape != v.shape or p.dtype != v.dtype or p.device != v.device:
            raise ValueError(f"velocity {i} is {v.dtype} {tuple(v.shape)} on {v.device} but its "
                             f"parameter is {p.dtype} {tuple(p.shape)} on {p.device}; start the "
                             "velocity with init_velocity(params).")


def check_finite_losses(window, first, steps, lr):
    """Stop the run at the first NaN or infinite loss in window -> None.

    window (k,): the losses of steps first + 1 .. first + k of an epoch of steps, on the
    device; reading them back is one wait for the device per window, not one per step.
    Needs: torch
    """
    bad = (~torch.isfinite(window)).nonzero()  # (n_bad, 1)
    if len(bad):
        raise FloatingPointError(
            f"the loss became {window[bad[0].item()].item()} at step {first + bad[0].item() + 1} "
            f"of {steps} (lr {lr:g}); training stopped and no checkpoint was written for this "
            "epoch: try a lower --lr (e.g. a tenth).")


def check_finite_after_epoch(params, velocity, X, y, epoch, lr):
    """Stop the run if the epoch's updates left anything infinite or NaN -> None.

    A step's loss is taken before its update, so a divergence on an epoch's last update shows
    only in the parameters, the velocity, or the loss they now give (on X[:1000], y[:1000]).
    Needs: cross_entropy (02), mlp_forward (02), all_finite
    """
    probe = cross_entropy(mlp_forward(params, X[:1000])[0], y[:1000])
    if not all_finite(params + velocity + (probe,)):
        raise FloatingPointError(
            f"the parameters became infinite or NaN during epoch {epoch} (lr {lr:g}); training "
            "stopped and no checkpoint was written for this epoch: try a lower --lr (e.g. a "
            "tenth).")


def all_finite(tensors):
    """Whether every entry of every tensor is finite, as one Python bool (one device wait).

    Needs: torch
    """
    return bool(torch.stack([t.isfinite().all() for t in tensors]).all())



# ----------------------------------------------------------------------- presets and arguments

N_TRAIN, N_INPUT, N_CLASSES = 60_000, 784, 10
STEPS = {"inplace": train_step_, "pure": train_step, "fused": fused_train_step_}
NO_AUGMENTATION = {"shift": 0, "rotate": 0.0, "scale": 0.0, "elastic": 0.0, "elastic_sigma": 4.0,
                   "smoothing": 0.0}
PRESETS = {
    # The notebook: He init, plain SGD at a constant lr 0.01, batch 32, 8 epochs, trained on
    # all 60,000 digits (it had no validation set; its "validation" was the test set).
    "notebook": {"hidden": [512, 128], "epochs": 8, "batch_size": 32, "lr": 0.01,
                 "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant", "val_size": 0,
                 **NO_AUGMENTATION},
    # The same network: momentum 0.9, lr 0.1 falling linearly to 0, batches of 128, weight
    # decay, each digit randomly turned (up to 10 degrees), resized (up to 10 %) and moved
    # (up to 2 pixels), label smoothing 0.1; 5,000 training digits held out for validation.
    # Chosen on validation (README's ablation). Like every preset it trains with train_step_:
    # lesson 02's mlp_forward and 03's mlp_backward_from, with this lesson's smoothed loss and
    # momentum_step_; --step fused is the same math (tested equal), its epochs about 6-7 %
    # faster (README, lesson 04).
    "default": {"hidden": [512, 128], "epochs": 30, "batch_size": 128, "lr": 0.1,
                "momentum": 0.9, "weight_decay": 1e-4, "schedule": "linear", "val_size": 5000,
                **NO_AUGMENTATION, "shift": 2, "rotate": 10.0, "scale": 0.1, "smoothing": 0.1},
    # The default, longer (100 epochs): about 5 minutes on 2 CPU cores.
    "best": {"hidden": [512, 128], "epochs": 100, "batch_size": 128, "lr": 0.1,
             "momentum": 0.9, "weight_decay": 1e-4, "schedule": "linear", "val_size": 5000,
             **NO_AUGMENTATION, "shift": 2, "rotate": 10.0, "scale": 0.1, "smoothing": 0.1},
}
HYPERPARAMETERS = ("hidden", "epochs", "batch_size", "lr", "momentum", "weight_decay", "shift",
                   "rotate", "scale", "elastic", "elastic_sigma", "smoothing", "schedule",
                   "val_size", "seed", "limit", "step")
CHECKPOINT_FORMAT = "backprop-mnist-checkpoint/2"
HISTORY_KEYS = ("epoch", "loss", "val_loss", "val_accuracy", "seconds")  # one epoch's record
RUN_FILES = (".lock", "checkpoint.pt", "metrics.json", "curves.png", "predictions.png",
             "weights.png", "confusion.png")  # what a run writes into its folder
MAX_WEIGHTS = 200_000_000  # 0.8 GB of float32 weights: far past what this lesson needs


def build_parser():
    """The command line: every hyperparameter, the run modes, the shared flags -> parser.

    Needs: argparse, PRESETS, int_in (common), N_TRAIN, float_in (common), add_run_args (common),
        NO_AUGMENTATION
    """
    parser = argparse.ArgumentParser(description=__doc__, exit_on_error=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", help=f"{', '.join(PRESETS)} (default: default)")
    parser.add_argument("--hidden", type=int_in(1, 65_536), nargs="+",
                        help="hidden widths, e.g. 512 128")
    parser.add_argument("--epochs", type=int_in(1, 100_000),
                        help="passes over the training digits")
    parser.add_argument("--batch-size", type=int_in(1, N_TRAIN), help="digits per step")
    # 3.4e38 is float32's largest number: a larger lr could not enter a float32 update at all.
    parser.add_argument("--lr", type=float_in(0, 3.4e38, lo_open=True),
                        help="first learning rate")
    parser.add_argument("--momentum", type=float_in(0, 1, hi_open=True),
                        help="0 for plain SGD")
    parser.add_argument("--weight-decay", type=float_in(0, 1, hi_open=True),
                        help="L2 penalty on the weights")
    parser.add_argument("--shift", type=int_in(0, 13),
                        help="move digits by up to N pixels (0: off)")
    parser.add_argument("--rotate", type=float_in(0, 180),
                        help="turn digits by up to D degrees (0: off)")
    parser.add_argument("--scale", type=float_in(0, 1, hi_open=True),
                        help="resize digits by up to this fraction (0: off)")
    parser.add_argument("--elastic", type=float_in(0, 100),
                        help="elastic distortion strength alpha in pixels: no move exceeds it, "
                        "the typical one is about alpha / 24 px at sigma 4 (0: off)")
    parser.add_argument("--elastic-sigma", type=float_in(0.5, 28),
                        help="smoothness of the elastic field in pixels (default 4)")
    parser.add_argument("--smoothing", type=float_in(0, 1, hi_open=True),
                        help="label smoothing: the share of each target spread over all classes")
    parser.add_argument("--schedule", help="linear (decay to 0) or constant")
    parser.add_argument("--val-size", type=int_in(0, N_TRAIN - 1),
                        help="training digits held out for validation")
    parser.add_argument("--step", help="inplace (train_step_, the default), pure (train_step) "
                        "or fused (fused_train_step_): equal in float64, the same to float32 "
                        "rounding")
    parser.add_argument("--out", help="output folder (default: runs/<preset>/)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint in the output folder")
    parser.add_argument("--eval", metavar="CHECKPOINT",
                        help="report the test accuracy of a checkpoint, train nothing")
    parser.add_argument("--ablation", action="store_true",
                        help="train README's ablation ladder (several seeds per rung)")
    parser.add_argument("--seeds", type=int_in(1, 100),
                        help="seeds per rung of --ablation (default 3)")
    return add_run_args(parser, seed=None)  # --seed None: the preset's seed, 0


def given_flags(args, names):
    """The flags among names that were given on the command line, as '--flag' strings.

    Needs: nothing
    """
    return ["--" + k.replace("_", "-") for k in names if getattr(args, k, None) is not None]


def resolve_config(args):
    """The preset (checked to exist), overridden by every flag given -> config dict.

    Needs: PRESETS, HYPERPARAMETERS, check_config, NO_AUGMENTATION
    """
    preset = "default" if args.preset is None else args.preset
    if preset not in PRESETS:
        hint = " (the notebook's recipe is --preset notebook)" if preset == "seed" else ""
        raise ValueError(f"unknown preset {preset!r}{hint}; choose one of: "
                         f"{', '.join(PRESETS)}.")
    config = dict({"step": "inplace"}, **PRESETS[preset], seed=0, limit=None, preset=preset)
    config.update({k: getattr(args, k) for k in HYPERPARAMETERS if getattr(args, k) is not None})
    check_config(config)
    return config


def check_config(config):
    """Raise ValueError with one sentence for the first value that cannot work together.

    Needs: N_TRAIN, N_INPUT, N_CLASSES, MAX_WEIGHTS, STEPS, train_step_, train_step,
        fused_train_step_
    """
    n_train = N_TRAIN if config["limit"] is None else config["limit"]
    sizes = [N_INPUT, *config["hidden"], N_CLASSES]
    n_weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    rules = [
        (config["limit"] is None or config["limit"] >= 2,
         f"--limit must be at least 2 for training, got {config['limit']}"),
        (n_weights <= MAX_WEIGHTS, f"--hidden {' '.join(map(str, config['hidden']))} would "
         f"need {n_weights:,} weights (over {MAX_WEIGHTS:,}); give smaller widths"),
        (config["schedule"] in ("linear", "constant"),
         f"--schedule must be linear or constant, got {config['schedule']!r}"),
        (config["step"] in STEPS,
         f"--step must be one of {', '.join(STEPS)}, got {config['step']!r}"),
        (config["val_size"] < n_train,
         f"--val-size must be below the {n_train} training digits, got {config['val_size']}"
         if config["limit"] is None else
         f"--limit {n_train} leaves no digits to train on once {config['val_size']:,} are held "
         f"out for validation (--val-size; the default and best presets hold out 5,000 unless "
         f"it is given): add e.g. --val-size {min(n_train // 10, n_train - config['batch_size'])}"
         f", or raise --limit" if n_train - config["batch_size"] >= 0 else
         f"--limit {n_train} leaves no digits to train on once {config['val_size']:,} are held "
         f"out for validation (--val-size): raise --limit, or give a smaller --val-size and "
         f"--batch-size"),
        (config["batch_size"] <= n_train - config["val_size"],
         f"--batch-size {config['batch_size']} is larger than the "
         f"{n_train - config['val_size']} training digits left after --val-size "
         f"{config['val_size']}; give a smaller --batch-size (or --val-size)"
         + (" or raise --limit (the default and best presets use batches of 128 and 5,000 "
            "validation digits unless given)" if config["limit"] is not None else "")),
    ]
    for ok, sentence in rules:
        if not ok:
            raise ValueError(sentence + ".")


def check_saved_config(config):
    """Check a config read back from a file through the command line's own rules -> None.

    Each field goes through its flag's argparse type (so a checkpoint cannot hold what the
    command line would refuse, such as batch_size 0), then check_config; ValueError names
    the first field that fails.

    Needs: build_parser, HYPERPARAMETERS, PRESETS, argparse, check_config, NO_AUGMENTATION
    """
    if not isinstance(config, dict):
        raise ValueError("its config is not a dict")
    keys = (*HYPERPARAMETERS, "preset")
    missing = [k for k in keys if k not in config]
    if missing:
        raise ValueError(f"its config lacks {', '.join(missing)}")
    unknown = [k for k in config if k not in keys]  # a run writes these keys and no others
    if unknown:
        raise ValueError(f"its config holds keys no run writes ({str(unknown)[:40]})")
    actions = {a.dest: a for a in build_parser()._actions}
    for key in HYPERPARAMETERS:
        value, action = config[key], actions[key]
        if key == "limit" and value is None:  # None: all the training digits
            continue
        if action.nargs == "+" and not (isinstance(value, list) and value):
            raise ValueError(f"its config's {key} is not a list of numbers")
        for v in value if action.nargs == "+" else [value]:
            ok = (isinstance(v, str) if action.type is None else
                  isinstance(v, (int, float)) and not isinstance(v, bool))
            try:
                if not ok:
                    raise argparse.ArgumentTypeError(f"a {type(v).__name__}")
                if action.type is not None:
                    action.type(str(v))
            except (argparse.ArgumentTypeError, ValueError) as err:
                raise ValueError(f"its config's {key} = {str(value)[:40]} does not hold: "
                                 f"{err}") from None
    if not isinstance(config["preset"], str) or config["preset"] not in PRESETS:
        raise ValueError(f"its config's preset {str(config['preset'])[:40]!r} is unknown")
    check_config(config)


def describe_config(config):
    """One line: the network and the recipe.

    Needs: N_INPUT, N_CLASSES
    """
    net = "-".join(map(str, [N_INPUT, *config["hidden"], N_CLASSES]))
    parts = [net, f"momentum {config['momentum']:g}" if config["momentum"] else "plain SGD",
             f"lr {config['lr']:g} ({config['schedule']})", f"batch {config['batch_size']}",
             f"{config['epochs']} epoch{'s' if config['epochs'] != 1 else ''}"]
    if config["weight_decay"]:
        parts.append(f"weight decay {config['weight_decay']:g}")
    if config["smoothing"]:
        parts.append(f"label smoothing {config['smoothing']:g}")
    moves = [f"shifts {config['shift']:g} px" if config["shift"] else "",
             f"turns {config['rotate']:g} deg" if config["rotate"] else "",
             f"resizes {config['scale']:.0%}" if config["scale"] else "",
             f"elastic {config['elastic']:g} px" if config["elastic"] else ""]
    if any(moves):
        parts.append("augmented: " + ", ".join(m for m in moves if m))
    return ", ".join(parts) + f"; random seed {config['seed']}"


# ----------------------------------------------------------------------------- files

def save_checkpoint(path, params, velocity, config, epoch, generator, history):
    """Write the run's state atomically: tensors and plain types only (weights_only loads it).

    Needs: CHECKPOINT_FORMAT, atomic_write (common), torch
    """
    state = {
        "format": CHECKPOINT_FORMAT,
        "params": [p.detach().cpu().clone() for p in params],
        "velocity": [v.detach().cpu().clone() for v in velocity],
        "config": config,
        "epoch": epoch,
        "generator_state": generator.get_state(),
        "history": history,
    }
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path):
    """torch.load(weights_only=True) + checks of every field -> state; ValueError if not ours.

    Needs: pathlib, torch, warnings, CHECKPOINT_FORMAT, check_saved_config, N_INPUT,
        N_CLASSES, all_finite, history_agrees
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}; train first or give the path of checkpoint.pt.")
    try:
        with warnings.catch_warnings():  # torch's notes on a crafted file: our sentence says it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a checkpoint this script can read "
                         f"({type(err).__name__}); give the path of a checkpoint.pt it "
                         "wrote.") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a checkpoint written by this version of "
                         "04_train_mnist.py; give the path of a checkpoint.pt it wrote.")
    damaged = f"{path} is damaged ({{}}); train again or use another checkpoint."
    keys = {"params", "velocity", "config", "epoch", "generator_state", "history"}
    if not keys <= set(state):
        raise ValueError(damaged.format(f"it lacks {', '.join(sorted(keys - set(state)))}"))
    config = state["config"]
    try:
        check_saved_config(config)
    except ValueError as err:
        raise ValueError(damaged.format(str(err).rstrip("."))) from None
    sizes = [N_INPUT, *config["hidden"], N_CLASSES]
    shapes = [s for a, b in zip(sizes[:-1], sizes[1:]) for s in ((a, b), (b,))]
    for name in ("params", "velocity"):
        tensors = state[name]
        if (not isinstance(tensors, (list, tuple)) or len(tensors) != len(shapes)
                or any(not isinstance(t, torch.Tensor) or tuple(t.shape) != s
                       or t.dtype != torch.float32 or t.layout != torch.strided
                       or t.device.type != "cpu"  # map_location leaves a "meta" tensor be
                       for t, s in zip(tensors, shapes))):
            raise ValueError(damaged.format(f"its {name} are not dense float32 tensors of "
                                            "the shapes its config gives"))
        if not all_finite(tensors):  # never saved by a run: each checkpoint is checked first
            raise ValueError(damaged.format(f"its {name} hold NaN or infinite values"))
        # Fresh memory for each tensor, as save_checkpoint wrote them: a crafted file can make
        # two tensors share memory, or one element stand for many (a stride of 0), which the
        # in-place updates would corrupt or refuse; detach drops a flag that asks torch to
        # record operations for its gradient machinery.
        state[name] = [t.detach().clone(memory_format=torch.contiguous_format) for t in tensors]
    epoch, history, gen = state["epoch"], state["history"], state["generator_state"]
    if (type(epoch) is not int or not 1 <= epoch <= config["epochs"]  # bool is not an epoch
            or not history_agrees(history, epoch, config["val_size"] > 0)
            or not isinstance(gen, torch.Tensor) or gen.dtype != torch.uint8):
        raise ValueError(damaged.format("its epoch, history or generator state do not agree"))
    try:
        torch.Generator().set_state(gen)
    except RuntimeError:
        raise ValueError(damaged.format("its generator state is not one")) from None
    return state


def history_agrees(history, epoch, validated):
    """Whether history is what a run writes after `epoch` epochs -> bool.

    One dict per epoch, numbered from 1, holding HISTORY_KEYS and nothing else: a loss and
    seconds that are finite floats, not negative (the seconds' sum finite too), and a
    validation loss and accuracy (in [0, 1]) exactly when the run holds digits out for
    validation (validated), None otherwise.

    Needs: HISTORY_KEYS, finite_number, math
    """
    def non_negative(value):  # a float, as a run writes (an int could overflow a float sum)
        return isinstance(value, float) and finite_number(value) and value >= 0

    def agrees(h, i):
        if not isinstance(h, dict) or set(h) != set(HISTORY_KEYS):
            return False
        val = (h["val_loss"], h["val_accuracy"])
        return (type(h["epoch"]) is int and h["epoch"] == i and non_negative(h["loss"])
                and non_negative(h["seconds"])
                and (all(non_negative(v) for v in val) and val[1] <= 1 if validated
                     else val == (None, None)))

    return (isinstance(history, list) and len(history) == epoch
            and all(agrees(h, i) for i, h in enumerate(history, 1))
            and math.isfinite(sum(h["seconds"] for h in history)))


def finite_number(value):
    """Whether value is an int or float (not a bool) that is a finite float -> bool.

    Needs: math
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def metrics_record(config, device, history, status, started, final=None):
    """The metrics.json contents: config, per-epoch history, final accuracies, machine.

    Needs: time, torch, device_description (common)
    """
    return {
        "status": status,  # running (after each epoch), finished, interrupted, diverged,
        # out of memory or failed
        "config": config,
        "history": history,
        **(final or {}),
        "train_seconds": sum(h["seconds"] for h in history),
        "total_seconds": time.perf_counter() - started,  # this process, data loading included
        # The machine fields describe the process that wrote this record: after --resume, the
        # last one (the earlier epochs' seconds are in history).
        "device": str(device),
        "device_name": device_description(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


# ----------------------------------------------------------------------------- pictures

def plot_curves(history, path, title):
    """curves.png: training loss and validation accuracy by epoch.

    Needs: pyplot (common), save_figure (common)
    """
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    # Training: the mean of the epoch's step losses, on augmented digits, against smoothed
    # targets (with label smoothing eps its floor is above 0: ~0.50 for eps 0.1, C 10; see
    # docs/04_train_mnist.md). Validation: the plain cross-entropy of lesson 02.
    ax1.plot(epochs, [h["loss"] for h in history], "o-", ms=3,
             label="training: mean over the epoch's steps")
    if history[0]["val_loss"] is not None:
        ax1.plot(epochs, [h["val_loss"] for h in history], "s--", ms=3,
                 label="validation: plain cross-entropy")
        ax2.plot(epochs, [100 * h["val_accuracy"] for h in history], "o-", ms=3, color="C2")
    else:
        ax2.text(0.5, 0.5, "no validation set (--val-size 0)", ha="center",
                 transform=ax2.transAxes)
    # A log axis shows the loss's late, small changes; it cannot draw a 0 (a tiny training set
    # learnt exactly), so such a history gets a linear axis instead of a warning.
    plotted = [h[k] for h in history for k in ("loss", "val_loss") if h[k] is not None]
    scale = "log" if all(value > 0 for value in plotted) else "linear"
    ax1.set(xlabel="epoch", ylabel="cross-entropy", yscale=scale, title="loss")
    ax1.legend()
    ax2.set(xlabel="epoch", ylabel="%", title="validation accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(path, fig)


def mosaic(images, cols, gap=1, fill=float("nan")):
    """images (N, side, side) -> one (rows * (side + gap), cols * (side + gap)) picture.

    Needs: math, torch
    """
    N, side = images.shape[0], images.shape[1]
    rows = max(1, math.ceil(N / cols))
    out = torch.full((rows * (side + gap), cols * (side + gap)), fill)
    for k in range(N):
        r, c = divmod(k, cols)
        out[r * (side + gap):r * (side + gap) + side, c * (side + gap):c * (side + gap) + side] = (
            images[k])
    return out


def plot_predictions(X, y, pred, path, title, n_first=40, n_mistakes=20, cols=10):
    """predictions.png: the first test digits, then some mistakes, in red: one picture.

    Needs: mosaic, pyplot (common), save_figure (common), math, torch
    """
    plt = pyplot()
    wrong = (pred != y).nonzero().flatten()
    picks = torch.cat([torch.arange(min(n_first, len(y))), wrong[wrong >= n_first][:n_mistakes]])
    side = math.isqrt(X.shape[1])
    images = X[picks].view(-1, side, side).clone()
    bad = pred[picks] != y[picks]
    images[bad] = -images[bad]  # mistakes drawn in the negative half of the colour map
    rows = math.ceil(len(picks) / cols)
    fig, ax = plt.subplots(figsize=(cols * 0.9, rows * 1.05 + 0.6))
    ax.imshow(mosaic(images, cols, gap=8).numpy(), cmap="RdGy", vmin=-1, vmax=1)
    for k, i in enumerate(picks.tolist()):
        r, c = divmod(k, cols)
        label = f"{pred[i]}" if not bad[k] else f"{pred[i]} (is {y[i]})"
        ax.text(c * (side + 8) + side / 2, r * (side + 8) + side + 3, label, ha="center",
                va="center", fontsize=8, color="red" if bad[k] else "black")
    ax.axis("off")
    ax.set_title(f"{title}\nthe first {min(n_first, len(y))} test digits, then mistakes in red: "
                 "predicted (is true)", fontsize=9)
    fig.tight_layout()
    save_figure(path, fig)


def plot_first_layer(W1, path, title, n_units=64, cols=16):
    """weights.png: the first n_units columns of W1 (784, d_1), each as a 28x28 image.

    Needs: mosaic, pyplot (common), save_figure (common), math
    """
    plt = pyplot()
    W = W1[:, :n_units].T.cpu()  # (units, 784)
    side = math.isqrt(W.shape[1])
    W = W / W.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)  # each unit on its own scale
    rows = math.ceil(len(W) / cols)
    fig, ax = plt.subplots(figsize=(cols * 0.55, rows * 0.55 + 0.6))
    ax.imshow(mosaic(W.view(-1, side, side), cols, gap=2).numpy(), cmap="RdBu_r", vmin=-1,
              vmax=1)
    ax.axis("off")
    ax.set_title(f"{title}\nfirst-layer units as 28x28 images (red +, blue -, each on its "
                 "own scale)", fontsize=9)
    fig.tight_layout()
    save_figure(path, fig)


def confusion_matrix(y, pred, n_classes=N_CLASSES):
    """y (N,), pred (N,) int64 -> counts (n_classes, n_classes): row = true, column = predicted.

    Needs: N_CLASSES, torch
    """
    return torch.bincount(y * n_classes + pred, minlength=n_classes**2).view(n_classes, n_classes)


def plot_confusion(counts, path, title):
    """confusion.png: the test set's confusion matrix with counts, the diagonal dimmed.

    Needs: pyplot (common), save_figure (common), textwrap
    """
    plt = pyplot()
    C = len(counts)
    off = counts.clone().fill_diagonal_(0)
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    ax.imshow(off.numpy(), cmap="Reds")
    for i in range(C):
        for j in range(C):
            n = counts[i, j].item()
            ax.text(j, i, str(n), ha="center", va="center", fontsize=8,
                    color="gray" if i == j else ("white" if n > off.max() / 2 else "black"))
    ax.set(xticks=range(C), yticks=range(C), xlabel="predicted", ylabel="true")
    narrow = textwrap.fill(title.replace("\n", " "), width=62)  # this figure is narrower
    ax.set_title(f"{narrow}\ntest mistakes: {off.sum().item()} of {counts.sum().item()}",
                 fontsize=9)
    fig.tight_layout()
    save_figure(path, fig)


# ----------------------------------------------------------------------------- runs

def prepare_data(config, device):
    """The run's data and generator: split first, so the split is the seed's first draw.

    Needs: load_mnist_limited (common), make_generator (common), train_val_split (common)
    """
    X_all, y_all, X_test, y_test = load_mnist_limited(device, config["limit"])
    generator = make_generator(config["seed"])
    X_train, y_train, X_val, y_val = train_val_split(X_all, y_all, config["val_size"],
                                                            generator)
    return (X_train, y_train, X_val, y_val, X_test, y_test), generator


def train(config, device, out, state, progress, started, signals):
    """The training run -> exit status. Files in out/ change only after a finished epoch.

    Needs: prepare_data, save_json (common), metrics_record, describe_config, save_checkpoint,
        fit, evaluate, predict, plot_curves, plot_predictions, plot_first_layer,
        plot_confusion, confusion_matrix, result_line (common), textwrap
    """
    data, generator = prepare_data(config, device)
    X_train, y_train, X_val, y_val, X_test, y_test = data
    if state is not None and len(state["history"]) >= config["epochs"]:
        # Nothing left to train: scored and drawn again, and its finished record stays as
        # it is until the new one is complete (an interruption changes nothing).
        done = ("its one epoch is" if config["epochs"] == 1 else
                f"all {config['epochs']} epochs are")
        print(f"resuming {out}: {done} done, so it is only scored and drawn again")
    elif state is not None:
        print(f"resuming {out} after epoch {len(state['history'])}")
        save_json(out / "metrics.json", metrics_record(
            config, device, state["history"], "running", started))  # never behind the checkpoint
    print(f"{describe_config(config)}\n{len(X_train):,} training, {len(X_val):,} validation, "
          f"{len(X_test):,} test digits on {device}")

    def save(params, velocity, epoch, history):
        save_checkpoint(out / "checkpoint.pt", params, velocity, config, epoch, generator,
                        history)
        save_json(out / "metrics.json",
                         metrics_record(config, device, history, "running", started))

    params, velocity, history = fit(config, data, generator, state, save, progress)
    _, train_acc = evaluate(params, X_train, y_train)
    test_loss, test_acc = evaluate(params, X_test, y_test)  # the one look at the test set
    val_acc = history[-1]["val_accuracy"]
    pred = predict(params, X_test).argmax(dim=1)
    title = textwrap.fill(f"{describe_config(config)}: test {test_acc:.2%}", width=100)
    plot_curves(history, out / "curves.png", title)
    plot_predictions(X_test.cpu(), y_test.cpu(), pred.cpu(), out / "predictions.png", title)
    plot_first_layer(params[0], out / "weights.png", title)
    plot_confusion(confusion_matrix(y_test.cpu(), pred.cpu()), out / "confusion.png", title)
    if signals["received"]:  # a signal swallowed while plotting is still an interruption
        raise KeyboardInterrupt
    final = {"train_accuracy": train_acc, "val_accuracy": val_acc, "test_accuracy": test_acc,
             "test_loss": test_loss}
    if state is not None and len(state["history"]) >= config["epochs"]:
        final["rescored"] = True  # the machine fields are this process's, not the training's
    record = metrics_record(config, device, history, "finished", started, final)
    save_json(out / "metrics.json", record)
    val = "" if val_acc is None else f" | val {val_acc:.2%}"
    whole = ("in all (data, evaluation and pictures included)" if state is None else
             "in this resumed process (the epochs before it excluded)")
    print(f"train accuracy {train_acc:.2%}{val} | test {test_acc:.2%} | "
          f"{record['train_seconds']:.1f} s in the epochs, {record['total_seconds']:.1f} s "
          f"{whole}")
    print(f"wrote {out}: metrics.json, checkpoint.pt, curves.png, predictions.png, weights.png, "
          "confusion.png")
    print(result_line(test_accuracy=test_acc, val_accuracy=val_acc,
                             train_accuracy=train_acc, train_seconds=record["train_seconds"],
                             epochs=config["epochs"]))
    return 0


def run_eval(args):
    """--eval: the test accuracy of a saved checkpoint.

    Needs: given_flags, HYPERPARAMETERS, pick_device (common), load_checkpoint,
        load_mnist_limited (common), torch, math, evaluate, describe_config,
        result_line (common)
    """
    extra = given_flags(args, [k for k in HYPERPARAMETERS if k not in ("limit",)] + ["preset"])
    if args.resume or args.out is not None or args.ablation:
        extra += ["--resume"] * args.resume + ["--out"] * (args.out is not None) + [
            "--ablation"] * args.ablation
    if extra:
        raise ValueError(f"--eval only reads a checkpoint; drop {', '.join(extra)}.")
    device = pick_device(args.device)
    state = load_checkpoint(args.eval)
    X_test, y_test = load_mnist_limited(device)[2:]
    if args.limit is not None:  # here --limit counts test digits
        if args.limit > len(X_test):
            raise ValueError(f"--limit with --eval scores the first N test digits: give 1 to "
                             f"{len(X_test):,}, got {args.limit}, or leave it out for all.")
        X_test, y_test = X_test[:args.limit], y_test[:args.limit]
    with torch.inference_mode():
        params = tuple(p.to(device) for p in state["params"])
        loss, acc = evaluate(params, X_test, y_test)
    if not math.isfinite(loss):  # finite parameters, but so large that the logits overflow
        raise ValueError(f"{args.eval} gives a test loss of {loss}: its parameters are too "
                         "large to score (no run saves such); train again or use another "
                         "checkpoint.")
    epochs = f"{state['epoch']} epoch{'' if state['epoch'] == 1 else 's'}"
    print(f"{args.eval}: {describe_config(state['config'])}, trained {epochs}")
    print(f"test accuracy {acc:.2%} on {len(y_test):,} digits (loss {loss:.4f})")
    print(result_line(test_accuracy=acc, test_loss=loss, epochs=state["epoch"]))
    return 0


def prepare(args):
    """Everything that can fail on bad input, before any work -> (config, device, out).

    Needs: pick_device (common), given_flags, HYPERPARAMETERS, PRESETS, resolve_config, pathlib,
        check_writable_dir (common), NO_AUGMENTATION, check_only_files_at, RUN_FILES
    """
    device = pick_device(args.device)
    if args.resume:
        given = given_flags(args, HYPERPARAMETERS)
        if given:
            raise ValueError("--resume continues with the checkpoint's own settings; drop "
                             f"{', '.join(given)}.")
        config = None
        preset = "default" if args.preset is None else args.preset
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}.")
    else:
        config = resolve_config(args)
        preset = config["preset"]
    out = (Path(__file__).resolve().parent / "runs" / preset if args.out is None else
           Path(args.out).expanduser() if args.out.strip() else args.out)  # "" is refused below
    if args.resume and not (Path(out) / "checkpoint.pt").is_file():
        there = Path(out) / "checkpoint.pt"
        raise ValueError(f"{there} is a folder, not a checkpoint; move it away, or give the "
                         "run's folder with --out." if there.is_dir() else
                         f"no checkpoint at {there}; train first, or give the run's folder "
                         "with --out.")
    out = check_writable_dir(out)  # created and probed before any training
    check_only_files_at(out, RUN_FILES)
    return config, device, out


def check_only_files_at(out, names):
    """Raise ValueError if something other than a plain file (a folder, a FIFO, a device)
    sits where the run will write, or read back, one of its files.

    Needs: nothing
    """
    for name in names:
        path = out / name
        if path.is_dir():
            raise ValueError(f"{path} is a folder, where this run writes a file; move it "
                             "away or give another --out.")
        if path.exists() and not path.is_file():  # reading a FIFO would wait for ever
            raise ValueError(f"{path} is not a plain file (a FIFO or a device, say), where "
                             "this run writes a file; move it away or give another --out.")


def mark_stopped(path, status):
    """metrics.json's status "running" -> status ("interrupted", "diverged", ...), all else kept.

    Needs: read_record, save_json (common)
    """
    record = read_record(path)
    if record is not None and record.get("status") == "running":
        save_json(path, dict(record, status=status))


def interrupted_message(args, out, earlier=None):
    """The lines an interrupted run ends with: what is on disk and how to go on.

    earlier is file_identity(out / "checkpoint.pt") from before this run began: a checkpoint
    still the same is another run's (or, resuming, the one this run started from), and a new
    run that saved nothing must not send the learner to --resume someone else's epochs.
    Needs: file_identity, os, shlex, run_status
    """
    checkpoint = out / "checkpoint.pt"
    if not checkpoint.is_file():
        return ("\ninterrupted before the first checkpoint was saved, so nothing was saved; "
                "run the same command again to start over.")
    if getattr(args, "resume", False) and run_status(out / "metrics.json") == "finished":
        return (f"\ninterrupted: {out} holds a run that had finished all its epochs; its "
                "checkpoint and metrics.json are as they were.")
    if earlier is not None and not args.resume and file_identity(checkpoint) == earlier:
        return (f"\ninterrupted before this run saved its first checkpoint: {checkpoint} is "
                "still the earlier run's, unchanged; run the same command again to start over.")
    try:
        script = os.path.relpath(__file__)  # as typed from here
    except ValueError:  # Windows: another drive
        script = os.path.abspath(__file__)
    command = (f"python {shlex.quote(script)} --resume"
               + ("" if args.preset in (None, "default") else " --preset " + args.preset)
               + ("" if getattr(args, "device", "auto") == "auto" else " --device " + args.device)
               + ("" if args.out is None else " --out=" + shlex.quote(str(args.out))))
    return (f"\ninterrupted: {checkpoint} holds the last finished epoch; to continue, run:\n"
            f"    {command}")


def run_status(path):
    """metrics.json's "status" ("running", "finished", ...) -> str, or None if unreadable.

    Needs: read_record
    """
    record = read_record(path)
    return None if record is None else record.get("status")


def read_record(path):
    """A JSON object from a plain file -> dict, or None if missing, unreadable or not one.

    Needs: json
    """
    if not path.is_file():  # nothing there, or a FIFO that would block the read
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return None
    return record if isinstance(record, dict) else None


def file_identity(path):
    """(inode, size, modification time in ns) of path, or None if there is no file there.

    Files here are replaced by renaming a new one over them, so a rewrite changes the inode.
    Needs: os
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def main(argv=None):
    """Run this lesson from the command line -> exit status.

    Needs: time, parse_args (common), build_parser, run_eval, run_ablation, prepare,
        install_interrupt_handlers (common), lock_folder (common), clean_leftovers (common),
        RUN_FILES, file_identity, load_checkpoint, torch, train, show_progress (common), sys,
        interrupted_message, restore_interrupt_handlers (common), is_out_of_memory (common),
        mark_stopped
    """
    started = time.perf_counter()
    args = parse_args(build_parser(), argv)
    if args.seeds is not None and not args.ablation:
        raise ValueError("--seeds sets how many seeds each rung of --ablation trains; add "
                         "--ablation, or drop --seeds (a single run takes --seed).")
    if args.eval is not None:
        return run_eval(args)
    if args.ablation:
        return run_ablation(args)
    config, device, out = prepare(args)
    earlier = file_identity(out / "checkpoint.pt")  # another run's, if there is one
    signals = install_interrupt_handlers()
    try:
        with lock_folder(out):
            clean_leftovers(out, RUN_FILES[1:])  # not .lock: never written through atomic_write
            if earlier is not None and not args.resume:
                print(f"note: {out} holds an earlier run; this one replaces its checkpoint and "
                      "metrics when its first epoch ends, and its pictures when it finishes "
                      "(give another --out to keep both, or stop now and add --resume to "
                      "continue the earlier one).")
            state = None
            if args.resume:
                state = load_checkpoint(out / "checkpoint.pt")
                config = state["config"]
                if args.preset is not None and args.preset != config["preset"]:
                    raise ValueError(f"{out} holds a run of preset {config['preset']!r}, not "
                                     f"{args.preset!r}; drop --preset or give its folder.")
            try:
                with torch.inference_mode():
                    return train(config, device, out, state, show_progress(args.no_progress),
                                 started, signals)
            except (Exception, KeyboardInterrupt) as err:  # still holding the lock
                status = ("diverged" if isinstance(err, FloatingPointError) else
                          "interrupted" if isinstance(err, KeyboardInterrupt) else
                          "out of memory" if is_out_of_memory(err) else "failed")
                mark_stopped(out / "metrics.json", status)  # never left saying "running"
                clean_leftovers(out, RUN_FILES[1:])  # a file a signal cut off mid-write
                raise
    except FloatingPointError as err:
        text = str(err)
        if args.resume:  # a resumed run keeps its checkpoint's recipe, lr included
            text = text.replace("try a lower --lr", "start a new run (a new --out, no --resume) "
                                "with a lower --lr")
        print(f"error: {text}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(interrupted_message(args, out, earlier), file=sys.stderr)
        return 130
    finally:
        restore_interrupt_handlers(signals)


# ----------------------------------------------------------------------------- the ablation
# From the notebook's recipe to the default, one change at a time, cumulatively. Every rung
# holds 5,000 training digits out for validation (the notebook itself trained on all 60,000),
# so every row is chosen and compared the same way.

ABLATION = (
    ("the notebook's recipe", {"val_size": 5000}),
    ("+ momentum 0.9", {"momentum": 0.9}),
    ("+ lr falling linearly to 0", {"schedule": "linear"}),
    ("+ batch 128, lr 0.1", {"batch_size": 128, "lr": 0.1}),
    ("+ random 1-pixel shifts", {"shift": 1}),
    ("+ weight decay 1e-4", {"weight_decay": 1e-4}),
    ("+ 30 epochs", {"epochs": 30}),
    ("+ turns, resizes, 2-pixel moves", {"shift": 2, "rotate": 10.0, "scale": 0.1}),
    ("+ label smoothing 0.1 (the default)", {"smoothing": 0.1}),
)


def ablation_configs(seed):
    """-> [(label, config)] for each rung, cumulative from PRESETS['notebook'].

    Needs: PRESETS, ABLATION, NO_AUGMENTATION
    """
    config = dict(PRESETS["notebook"], seed=seed, limit=None, step="inplace", preset="notebook")
    rungs = []
    for label, change in ABLATION:
        config = dict(config, **change)
        rungs.append((label, dict(config)))
    return rungs


def command_for(config):
    """The shortest command line that trains config: a preset plus the flags that differ.

    The step variant is left out: all three compute the same math (equal in float64; in
    float32, to rounding).
    Needs: PRESETS, HYPERPARAMETERS, NO_AUGMENTATION
    """
    options = []
    for preset in PRESETS:
        flags = [f"--preset {preset}"] if preset != "default" else []
        base = dict(PRESETS[preset], seed=0, limit=None)
        for key in HYPERPARAMETERS:
            value = config.get(key)
            if key != "step" and value != base.get(key):
                shown = (" ".join(map(str, value)) if isinstance(value, list)
                         else f"{value:g}" if isinstance(value, float) else str(value))
                flags.append(f"--{key.replace('_', '-')} {shown}")
        options.append(" ".join(["python 04_train_mnist.py", *flags]))
    return min(options, key=len)


def mean_std(values):
    """-> (mean, sample standard deviation; 0 for a single value).

    Needs: math
    """
    m = sum(values) / len(values)
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return m, math.sqrt(var)


def ablation_table(runs):
    """Markdown rows: rung, val and test accuracy (mean +- std over seeds), seconds, command.

    Needs: ABLATION, mean_std, command_for
    """
    lines = ["| rung | change | val accuracy | test accuracy | seconds (median) | seeds | "
             "command |",
             "|---:|---|---:|---:|---:|---:|---|"]
    for i, (label, _) in enumerate(ABLATION):
        mine = [r for r in runs if r["rung"] == i]
        if not mine:
            continue
        val = mean_std([100 * r["val_accuracy"] for r in mine])
        test = mean_std([100 * r["test_accuracy"] for r in mine])
        secs = sorted(r["train_seconds"] for r in mine)[(len(mine) - 1) // 2]  # the median
        lines.append(f"| {i} | {label} | {val[0]:.2f} ± {val[1]:.2f} % | "
                     f"{test[0]:.2f} ± {test[1]:.2f} % | {secs:.0f} | {len(mine)} | "
                     f"`{command_for(dict(mine[0]['config'], seed=0))}` |")
    return "\n".join(lines)


ABLATION_RUN_KEYS = {"rung": int, "seed": int, "label": str, "config": dict,
                     "val_accuracy": float, "test_accuracy": float, "train_seconds": float}


def read_ablation_runs(path):
    """The finished runs in an earlier ablation.json, its other plans' too -> list (or []).

    A file that is not one (damaged, or someone else's) is moved aside to
    ablation.unreadable.json (or .1.json, .2.json, ...: never over an earlier one), and the
    ablation starts afresh.
    Needs: json, ABLATION_RUN_KEYS, sys
    """
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
        runs = data["runs"] + data.get("other_runs", [])  # other_runs: other plans' (below)
        if not isinstance(runs, list) or not all(
                isinstance(r, dict) and all(isinstance(r.get(k), (t, int) if t is float else t)
                                            for k, t in ABLATION_RUN_KEYS.items())
                for r in runs):
            raise TypeError("not a list of runs")
        return runs
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        aside, n = path.with_name("ablation.unreadable.json"), 1
        while aside.exists() or aside.is_symlink():  # an earlier one stays as it is
            aside, n = path.with_name(f"ablation.unreadable.{n}.json"), n + 1
        path.replace(aside)
        print(f"{path} is not an ablation this script wrote: moved it to {aside.name} and "
              "starting the ablation afresh", file=sys.stderr)
        return []


def run_ablation(args):
    """--ablation: every rung for --seeds seeds -> a table, and ablation.json beside the runs.

    Finished runs are kept in ablation.json after each one, so an interrupted ablation goes
    on where it stopped when started again (a run is redone only if its config changed).
    Needs: given_flags, HYPERPARAMETERS, pick_device (common), pathlib, check_writable_dir (common),
        install_interrupt_handlers (common), lock_folder (common), clean_leftovers (common), sys,
        ablation_configs, torch, prepare_data, fit, show_progress (common), evaluate,
        save_json (common), ABLATION, restore_interrupt_handlers (common), ablation_table,
        mean_std, result_line (common), check_config, check_only_files_at, read_ablation_runs,
        load_mnist_limited (common)
    """
    extra = given_flags(args, [k for k in HYPERPARAMETERS if k not in ("limit", "step")])
    if args.preset is not None or args.resume:
        extra += ["--preset"] * (args.preset is not None) + ["--resume"] * args.resume
    if extra:
        raise ValueError(f"--ablation trains its own fixed ladder; drop {', '.join(extra)}.")
    device = pick_device(args.device)
    n_seeds = 3 if args.seeds is None else args.seeds
    todo = [(i, s, label, dict(config, limit=args.limit, step=args.step or "inplace"))
            for s in range(n_seeds) for i, (label, config) in enumerate(ablation_configs(s))]
    for _, _, label, config in todo[:len(ABLATION)]:  # every rung's config, before any work
        try:
            check_config(config)
        except ValueError as err:
            fits_without_limit = True
            try:
                check_config(dict(config, limit=None))
            except ValueError:
                fits_without_limit = False
            if args.limit is not None and fits_without_limit:  # only --limit is at fault
                raise ValueError(f"--ablation, rung {label!r}, cannot train on --limit "
                                 f"{args.limit}: every rung holds 5,000 digits out for "
                                 "validation and trains on batches of up to 128; give --limit "
                                 "5128 or more, or none.") from None
            raise ValueError(f"--ablation, rung {label!r}: {str(err).rstrip('.')}.") from None
    default = Path(__file__).resolve().parent / "runs" / "ablation"
    out = check_writable_dir(args.out if args.out is not None else default)
    check_only_files_at(out, (".lock", "ablation.json"))
    load_mnist_limited("cpu", args.limit)  # --limit against the data, before any file moves
    path = out / "ablation.json"
    seeds = list(range(n_seeds))
    signals = install_interrupt_handlers()
    try:
        with lock_folder(out):
            clean_leftovers(out, ("ablation.json",))
            done = read_ablation_runs(path)
            # Runs of other plans (other seeds, --limit, --step) stay in the file, apart.
            others = [r for r in done if not any(r["rung"] == i and r["config"] == config
                                                 for i, _, _, config in todo)]
            runs = []
            for n, (i, seed, label, config) in enumerate(todo, 1):
                kept = [r for r in done if r["rung"] == i and r["config"] == config]
                if kept:
                    runs.append(kept[0])
                    continue
                with torch.inference_mode():
                    data, generator = prepare_data(config, device)
                    params, _, history = fit(config, data, generator, log=lambda line: None,
                                             progress=show_progress(args.no_progress))
                    _, test_acc = evaluate(params, data[4], data[5])
                runs.append({"rung": i, "seed": seed, "label": label, "config": config,
                             "val_accuracy": history[-1]["val_accuracy"],
                             "test_accuracy": test_acc,
                             "train_seconds": sum(h["seconds"] for h in history)})
                save_json(path, {"rungs": [label for label, _ in ABLATION], "runs": runs,
                                 "other_runs": others, "device": str(device),
                                 "torch": torch.__version__,
                                 "threads": torch.get_num_threads()})
                r = runs[-1]
                print(f"[{n:>2}/{len(todo)}] rung {i} seed {seed}: val {r['val_accuracy']:.2%}, "
                      f"test {r['test_accuracy']:.2%}, {r['train_seconds']:.1f} s  ({label})")
            if signals["received"]:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        where = (f"the finished runs are in {path}" if path.is_file() else
                 "no run had finished yet")
        print(f"\ninterrupted: {where}; run --ablation again to go on.", file=sys.stderr)
        return 130
    except FloatingPointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        restore_interrupt_handlers(signals)
    print(ablation_table(runs))
    print(f"wrote {path}")
    best = max(range(len(ABLATION)), key=lambda i: mean_std(
        [r["val_accuracy"] for r in runs if r["rung"] == i])[0])
    test = mean_std([r["test_accuracy"] for r in runs if r["rung"] == best])[0]
    print(result_line(rungs=len(ABLATION), seeds=len(seeds), best_rung=best,
                             best_test_accuracy=test))
    return 0


if __name__ == "__main__":
    _phase[0] = "running"
    status = run_main(main)
    _phase[0] = "done"
    # Python puts back the default handlers as it shuts down (a second or so, with torch
    # loaded), and a signal then would end this finished run with no word: ignore them.
    for _name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, _name):
            signal.signal(getattr(signal, _name), signal.SIG_IGN)
    sys.exit(status)

"""How fast is the hand-written MLP? Forward, backward and one training step of the notebook's
784-512-128-10 network, by batch size and device, beside what a user would pick instead.

Implementations, on identical inputs already on the device:
    manual    this repository's functions (lessons 02-04), inside torch.inference_mode()
    inplace   (step only) lesson 04's train_step_: each gradient fused into its update
    autograd  the same network as torch.nn.Linear/ReLU layers, F.cross_entropy,
              loss.backward() and torch.optim.SGD
    notebook  the notebook's route: the loss from the probabilities and the backward
              pass through the full (B, C, C) softmax Jacobian (lesson 03)
The step is plain SGD at lr 0.01, the notebook's optimizer.

FLOPs credited to every implementation alike (a multiply-add is 2; elementwise work is
not counted, so extra work shows up as lower GFLOP/s):
    forward  = 2 B (784*512 + 512*128 + 128*10)             = 2 B * 467,264
    backward = forward's, for every dW, + 2 B (512*128 + 128*10) for dx of all
               layers but the first (nobody needs the gradient of the pixels)
    step     = forward + backward                           = 2 B * 1,001,344

    python -m pytest benchmarks                      # times everything, groups side by side
    python -m pytest benchmarks --benchmark-autosave # ... and saves .benchmarks/.../NNNN_*.json
    python benchmarks/report.py                      # the newest saved run as tables
"""

import contextlib
import importlib

import pytest
import torch
import torch.nn.functional as F
from conftest import sync

forward = importlib.import_module("02_mlp_forward")
backward = importlib.import_module("03_mlp_backward")
training = importlib.import_module("04_train_mnist")

SIZES = (784, 512, 128, 10)
BATCHES = (1, 32, 128, 512, 2048)
LR = 0.01

# Two seconds of rounds for each benchmark: on a shared machine the fastest of many rounds is
# the one least disturbed by others' work (report.py uses that minimum).
pytestmark = pytest.mark.benchmark(warmup=True, warmup_iterations=10, min_rounds=20,
                                   max_time=2.0)


def matmul_flops(sizes, batch):
    """2 B sum(fan_in * fan_out) over the layers of sizes."""
    return 2 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def op_flops(op, batch):
    fwd = matmul_flops(SIZES, batch)
    bwd = fwd + matmul_flops(SIZES[1:], batch)
    return {"forward": fwd, "backward": bwd, "step": fwd + bwd}[op]


def make_problem(batch, device):
    """He-initialised parameters, random pixels in [0, 1) and labels; the same on every device."""
    g = torch.Generator().manual_seed(batch)
    params = forward.init_params(SIZES, g, device=device)
    x = torch.rand(batch, SIZES[0], generator=g).to(device)
    y = torch.randint(0, SIZES[-1], (batch,), generator=g).to(device)
    return params, x, y


def autograd_model(params):
    """torch.nn layers holding the same weights (nn.Linear stores W transposed, as (out, in))."""
    layers = []
    for W, b in zip(params[::2], params[1::2]):
        linear = torch.nn.Linear(*W.shape, device=W.device)
        with torch.no_grad():
            linear.weight.copy_(W.T)
            linear.bias.copy_(b)
        layers += [linear, torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def torch_order(model):
    """The model's parameters in this repository's order and layout: (W1, b1, ...), W (in, out)."""
    return tuple(p.T if p.dim() == 2 else p for p in model.parameters())


def notebook_loss(logits, y):
    """The notebook's loss: probabilities first, then the mean of -log p[y]."""
    probs = forward.softmax(logits)  # (B, C)
    return -probs[torch.arange(len(y), device=y.device), y].log().mean()


def rel_error(ours, reference):
    return ((ours - reference).abs().max() / reference.abs().max().clamp_min(1e-30)).item()


# ----------------------------------------------------------------------------- implementations
# Each maker takes (params, x, y) and returns the function to time and the tensors that
# result from one call of it (checked against autograd before anything is timed).

def forward_manual(params, x, y):
    def fn():
        logits, _ = forward.mlp_forward(params, x)
        return forward.cross_entropy(logits, y)
    return fn, lambda: (fn(),)


def forward_notebook(params, x, y):
    def fn():
        return notebook_loss(forward.mlp_forward(params, x)[0], y)
    return fn, lambda: (fn(),)


def forward_autograd(params, x, y):
    model = autograd_model(params)

    def fn():
        return F.cross_entropy(model(x), y)  # records the graph, as a training forward does
    return fn, lambda: (fn().detach(),)


def backward_manual(params, x, y, route=backward.mlp_backward):
    _, cache = forward.mlp_forward(params, x)

    def fn():
        return route(params, cache, y)
    return fn, fn


def backward_notebook(params, x, y):
    return backward_manual(params, x, y, route=backward.notebook_mlp_backward)


def backward_autograd(params, x, y):
    model = autograd_model(params)
    loss = F.cross_entropy(model(x), y)
    weights = tuple(model.parameters())

    def fn():
        return torch.autograd.grad(loss, weights, retain_graph=True)

    def result():
        grads = fn()
        return tuple(g.T if g.dim() == 2 else g for g in grads)
    return fn, result


def step_manual(params, x, y, lr=LR):
    state = [params, tuple(torch.zeros_like(p) for p in params)]

    def fn():
        state[0], state[1], _ = training.train_step(*state, x, y, lr, 0.0)

    def result():
        return training.train_step(params, state[1], x, y, lr, 0.0)[0]
    return fn, result


def step_inplace(params, x, y, lr=LR):
    mine = [p.clone() for p in params]
    velocity = [torch.zeros_like(p) for p in params]

    def fn():
        training.train_step_(mine, velocity, x, y, lr, 0.0)

    def result():
        fresh = [p.clone() for p in params]
        training.train_step_(fresh, velocity, x, y, lr, 0.0)
        return fresh
    return fn, result


def step_notebook(params, x, y, lr=LR):
    state = [params]

    def one(ps):
        logits, cache = forward.mlp_forward(ps, x)
        notebook_loss(logits, y)
        return training.sgd_step(ps, backward.notebook_mlp_backward(ps, cache, y), lr)

    def fn():
        state[0] = one(state[0])
    return fn, lambda: one(params)


def step_autograd(params, x, y, lr=LR):
    def build():
        model = autograd_model(params)
        return model, torch.optim.SGD(model.parameters(), lr=lr)

    model, optimizer = build()

    def step(model, optimizer):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    def result():
        fresh = build()
        step(*fresh)
        return tuple(p.detach() for p in torch_order(fresh[0]))
    return lambda: step(model, optimizer), result


IMPLEMENTATIONS = {
    "forward": {"manual": forward_manual, "autograd": forward_autograd,
                "notebook": forward_notebook},
    "backward": {"manual": backward_manual, "autograd": backward_autograd,
                 "notebook": backward_notebook},
    "step": {"manual": step_manual, "inplace": step_inplace, "autograd": step_autograd,
             "notebook": step_notebook},
}
# One group (operation, batch) at a time, its implementations one after the other, so that
# the machine's slow drifts touch the implementations being compared alike.
CASES = [(op, batch, impl) for op, impls in IMPLEMENTATIONS.items() for batch in BATCHES
         for impl in impls]


def check_against_autograd(op, impl, params, x, y):
    """The implementation's result on the benchmark's inputs agrees with autograd's (float32)."""
    # A step is checked with lr 1, so that what it changes stands well above float32 rounding.
    kwargs = {"lr": 1.0} if op == "step" else {}
    with mode(impl):
        ours = IMPLEMENTATIONS[op][impl](params, x, y, **kwargs)[1]()
    reference = IMPLEMENTATIONS[op]["autograd"](params, x, y, **kwargs)[1]()
    if op == "step":  # compare what the step changed, not the (nearly equal) parameters
        ours = [a - p for a, p in zip(ours, params)]
        reference = [a - p for a, p in zip(reference, params)]
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        assert a.shape == b.shape and rel_error(a, b) < 1e-4, (op, impl)


def mode(impl):
    """The hand-written code runs without autograd; the autograd one with it, as in training."""
    return contextlib.nullcontext() if impl == "autograd" else torch.inference_mode()


@pytest.mark.parametrize("op, batch, impl", CASES)
def test_mlp(benchmark, device, matmul_peak, op, batch, impl):
    params, x, y = make_problem(batch, device)
    check_against_autograd(op, impl, params, x, y)
    fn, _ = IMPLEMENTATIONS[op][impl](params, x, y)
    timed = fn if device.type == "cpu" else lambda: (fn(), sync(device))
    benchmark.group = f"{op:<8} batch {batch:>4} {device.type}"
    benchmark.extra_info.update(
        op=op, impl=impl, batch=batch, device=device.type, flops=op_flops(op, batch),
        device_name=(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
        threads=torch.get_num_threads(), torch=torch.__version__)
    with mode(impl):
        benchmark(timed)
    if benchmark.enabled:
        peak = matmul_peak(device)
        best = benchmark.stats.stats.min  # the fastest round: the least disturbed by noise
        gflops = op_flops(op, batch) / best / 1e9
        benchmark.extra_info.update(
            samples_per_s=batch / best, gflops=gflops, peak_gflops=peak["gflops"],
            peak_matmul_n=peak["n"], pct_of_peak=100 * gflops / peak["gflops"])

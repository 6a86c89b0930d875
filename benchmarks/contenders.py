"""The implementations the benchmarks compare, on identical inputs already on the device.

    manual     this repository's functions (lessons 02-04), inside torch.inference_mode()
    fused      (step only) lesson 04's fused_train_step_: each gradient fused into its update
    compiled   (step only) torch.compile of lesson 04's pure train_step (momentum 0), one
               static-shape compilation per batch size; the first call (the compilation)
               is timed apart from the steps
    cudagraph  (step only, CUDA only) fused_train_step_ captured once as a CUDA graph, then replayed
    jax        (step only) the same network and step in JAX (jax_step.py), jax.jit(jax.grad),
               run and timed in a worker process of its own (JaxWorker)
    autograd   the same network as torch.nn.Linear/ReLU layers, F.cross_entropy,
               loss.backward() and torch.optim.SGD
    notebook   the notebook's route: the loss from the probabilities and the backward
               pass through the full (B, C, C) softmax Jacobian (lesson 03)
The step is plain SGD at lr 0.01, the notebook's optimizer.

Each maker takes (params, x, y[, lr]) and returns (fn, result): fn is what is timed, result()
gives the tensors one call produces, checked against autograd before anything is timed. The
checks are float32 on the benchmark's device (MPS has no float64; the float64 gradient checks
stay on the CPU, in tests/).

FLOPs credited to every implementation alike (a multiply-add is 2; elementwise work is
not counted, so extra work shows up as lower GFLOP/s):
    forward  = 2 B (784*512 + 512*128 + 128*10)             = 2 B * 468,224
    backward = forward's, for every dW, + 2 B (512*128 + 128*10) for dh of all
               layers but the first (nobody needs the gradient of the pixels)
                                                            = 2 B * 535,040
    step     = forward + backward                           = 2 B * 1,003,264
"""

import contextlib
import importlib
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for folder in (ROOT, HERE):  # the lessons live at the repository root; jax_step.py here
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import jax_step  # noqa: E402  (message framing only: importing it does not import jax)

common = importlib.import_module("common")
forward = importlib.import_module("02_mlp_forward")
backward = importlib.import_module("03_mlp_backward")
training = importlib.import_module("04_train_mnist")

SIZES = (784, 512, 128, 10)
LR = 0.01


def seconds_from_env(name, default, environ=None):
    """A positive, finite number of seconds from the environment variable name (or default).

    Anything else (BENCH_MAX_TIME=abc, 0, nan) is a ValueError in one sentence.
    """
    text = (os.environ if environ is None else environ).get(name)
    if text is None or not text.strip():  # unset, or set to nothing
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of seconds (e.g. {name}=0.5), "
                         f"got {text!r}.")
    return value


class Skip(Exception):
    """This implementation cannot run here; the message says why."""


# The device in words: a GPU's name, or the CPU with its widest vector instructions (AVX2 or
# AVX-512 roughly halves or doubles the matmul rate), or "mps".
device_label = common.device_description


def sync(device):
    """Wait for queued GPU work; nothing to wait for on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_flops(sizes, batch):
    """2 B sum(fan_in * fan_out) over the layers of sizes."""
    return 2 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def op_flops(op, batch, sizes=SIZES):
    fwd = matmul_flops(sizes, batch)
    bwd = fwd + matmul_flops(sizes[1:], batch)
    return {"forward": fwd, "backward": bwd, "step": fwd + bwd}[op]


def make_problem(batch, device, sizes=SIZES):
    """He-initialised parameters, random pixels in [0, 1) and labels; the same on every device."""
    g = torch.Generator().manual_seed(batch)
    params = forward.init_params(sizes, g, device=device)
    x = torch.rand(batch, sizes[0], generator=g).to(device)
    y = torch.randint(0, sizes[-1], (batch,), generator=g).to(device)
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


# ----------------------------------------------------------------------------- forward, backward

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


# ----------------------------------------------------------------------------- steps

def step_manual(params, x, y, lr=LR):
    state = [params, tuple(torch.zeros_like(p) for p in params)]

    def fn():
        state[0], state[1], _ = training.train_step(*state, x, y, lr, 0.0)

    def result():
        return training.train_step(params, state[1], x, y, lr, 0.0)[0]
    return fn, result


def step_fused(params, x, y, lr=LR):
    mine = [p.clone() for p in params]
    velocity = [torch.zeros_like(p) for p in params]

    def fn():
        training.fused_train_step_(mine, velocity, x, y, lr, 0.0)

    def result():
        fresh = [p.clone() for p in params]
        training.fused_train_step_(fresh, velocity, x, y, lr, 0.0)
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


def allow_recompiles(limit=64):
    """torch.compile keeps 8 graphs per function by default, then silently runs eager code:
    one graph per (batch size, lr) here would pass that, so allow more (this process only)."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), limit))


COMPILE_OPTIONS = {"pattern_matcher": False}


def step_compiled(params, x, y, lr=LR):
    """torch.compile(train_step) with static shapes; fn.first_call_s is the compile's time.

    The compilation happens here, in the first call, so that fn times only steps. A failure
    to compile (no C++ compiler, an unsupported device) raises Skip with the reason.
    """
    allow_recompiles()
    # pattern_matcher off: torch 2.14.1's inductor rewrites torch.add(p, a @ b, alpha=-lr) into
    # addmm(p, a, b) and drops the alpha, so sgd_step's weight update came out as p + dW
    # (caught by the check against autograd; see benchmarks/compile_bug.py). Related report:
    # https://github.com/pytorch/pytorch/issues/167313 (the reverse rewrite drops alpha too).
    compiled = torch.compile(training.train_step, dynamic=False, options=COMPILE_OPTIONS)
    velocity = tuple(torch.zeros_like(p) for p in params)
    state = [params]

    def fn():
        state[0] = compiled(state[0], velocity, x, y, lr, 0.0)[0]

    begin = time.perf_counter()
    try:
        first = compiled(params, velocity, x, y, lr, 0.0)[0]
        sync(x.device)
    except Exception as err:  # e.g. torch._inductor's InductorError when no compiler works
        raise Skip(f"torch.compile failed here: {type(err).__name__}: "
                   f"{(str(err).strip().splitlines() or [''])[0][:200]}") from None
    fn.first_call_s = time.perf_counter() - begin
    return fn, lambda: first


def step_cudagraph(params, x, y, lr=LR):
    """fused_train_step_ captured once as a CUDA graph on static tensors; fn replays it."""
    if x.device.type != "cuda":
        raise Skip(f"CUDA graphs need a CUDA device; this is {x.device.type}")
    mine = [p.clone() for p in params]
    velocity = [torch.zeros_like(p) for p in params]
    scratch = [p.clone() for p in params]
    side = torch.cuda.Stream(x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side):  # warm up outside the graph: cuBLAS handles, workspaces
        for _ in range(3):
            training.fused_train_step_(scratch, velocity, x, y, lr, 0.0)
    torch.cuda.current_stream(x.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):  # records the kernels; computes nothing yet
            training.fused_train_step_(mine, velocity, x, y, lr, 0.0)
    except RuntimeError as err:
        raise Skip(f"CUDA graph capture failed: {str(err).splitlines()[0]}") from None
    start = [p.clone() for p in mine]

    def result():
        for p, p0 in zip(mine, start):
            p.copy_(p0)
        graph.replay()
        out = [p.clone() for p in mine]
        for p, p0 in zip(mine, start):
            p.copy_(p0)
        return out
    return graph.replay, result


class JaxWorker:
    """A jax_step.py worker process: it holds the JAX step; this process never imports jax.

    time(steps) returns the seconds that `steps` back-to-back steps took, measured by the
    worker's own clock, so the pipe between the processes is not part of any timing.
    """

    def __init__(self):
        self.process = None
        if os.environ.get("BENCH_NO_JAX", "") not in ("", "0"):
            raise Skip("BENCH_NO_JAX is set: JAX treated as not installed")
        if sys.modules.get("jax", ()) is None:  # sys.modules["jax"] = None hides it
            raise Skip("jax is hidden in this process (sys.modules['jax'] is None)")
        import importlib.util

        if importlib.util.find_spec("jax") is None:
            raise Skip("jax is not installed (pip install -r requirements-jax.txt)")
        self.process = subprocess.Popen([sys.executable, str(HERE / "jax_step.py"), "--serve"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            self.info = self.ask("hello")
        except BaseException:  # Skip, or Ctrl-C or SIGTERM while jax loads there (seconds)
            self.stop()
            raise

    def ask(self, *message):
        jax_step.send(self.process.stdin, message)
        answer = jax_step.receive(self.process.stdout)
        if answer is None:
            raise Skip("the JAX worker process ended unexpectedly")
        status, value = answer
        if status != "ok":
            raise Skip(value)
        return value

    def stop(self):
        """End the worker now (kill, then wait: no orphan, no zombie), whatever it is doing."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
        self.process = None

    def close(self):
        """Ask the worker to quit and wait for it: the polite end, between requests."""
        if self.process is not None and self.process.poll() is None:
            jax_step.send(self.process.stdin, ("quit",))
            self.process.stdin.close()
            self.process.wait(timeout=30)
        self.process = None


def jax_platform(device):
    if device.type == "cpu":
        return "cpu"
    if device.type == "cuda":
        return "gpu"
    raise Skip(f"JAX has no {device.type} backend here")


def step_jax(params, x, y, lr=LR, worker=None):
    """The JAX step in the worker; fn() runs one step there. fn.block(steps) times a block."""
    if worker is None:
        raise Skip("the JAX step needs a JaxWorker (the jax_worker fixture)")
    platform = jax_platform(x.device)
    if platform not in worker.info["platforms"]:
        raise Skip(f"this JAX has no {platform} backend ({worker.info['platforms']})")
    numpy = [p.detach().cpu().numpy() for p in params]
    first_call_s = worker.ask("problem", numpy, x.cpu().numpy(), y.cpu().numpy(), platform)

    def fn():
        return worker.ask("time", 1, lr)

    def result():
        out = worker.ask("step", lr)
        return tuple(torch.from_numpy(a.copy()).to(x.device) for a in out)

    fn.block = lambda steps: worker.ask("time", steps, lr)
    fn.first_call_s = first_call_s
    return fn, result


IMPLEMENTATIONS = {
    "forward": {"manual": forward_manual, "autograd": forward_autograd,
                "notebook": forward_notebook},
    "backward": {"manual": backward_manual, "autograd": backward_autograd,
                 "notebook": backward_notebook},
    "step": {"manual": step_manual, "fused": step_fused, "compiled": step_compiled,
             "cudagraph": step_cudagraph, "jax": step_jax, "autograd": step_autograd,
             "notebook": step_notebook},
}


def mode(impl):
    """The hand-written code runs without autograd; the autograd one with it, as in training."""
    return contextlib.nullcontext() if impl == "autograd" else torch.inference_mode()


def build(op, impl, params, x, y, **kwargs):
    """The maker of (op, impl) called inside its mode -> (fn, result)."""
    with mode(impl):
        return IMPLEMENTATIONS[op][impl](params, x, y, **kwargs)


def check_against_autograd(op, impl, params, x, y, made=None, **kwargs):
    """The implementation's result on the benchmark's inputs agrees with autograd's (float32).

    A step is checked with lr 1, so that what it changes stands well above float32 rounding;
    made, if given, is an already built (fn, result) at lr 1 (a compiled step, a worker's).
    """
    if op == "step":
        kwargs["lr"] = 1.0
    with mode(impl):
        made = made or IMPLEMENTATIONS[op][impl](params, x, y, **kwargs)
        ours = made[1]()
    reference = build(op, "autograd", params, x, y, **({"lr": 1.0} if op == "step" else {}))[1]()
    if op == "step":  # compare what the step changed, not the (nearly equal) parameters
        ours = [a - p for a, p in zip(ours, params)]
        reference = [a - p for a, p in zip(reference, params)]
    assert len(ours) == len(reference), (op, impl)
    for a, b in zip(ours, reference):
        assert a.shape == b.shape and rel_error(a, b) < 1e-4, (op, impl, rel_error(a, b))

"""The implementations the benchmarks compare, on identical inputs already on the device.

    manual     (forward, backward) the lessons' functions (02, 03)
    autograd   torch.nn.Linear/ReLU layers, F.cross_entropy, loss.backward(), torch.optim.SGD
  and for one training step (plain SGD at lr 0.01, the notebook's optimizer):
    pure       lesson 04's train_step, what every preset trains with
    inplace    inplace_train_step_: the lessons' passes, the update in place
    fused      fused_train_step_: addmm forward, each dW fused into its update
    compiled   torch.compile(train_step), one static-shape compilation per batch size
    cudagraph  (CUDA only) fused_train_step_ captured once as a CUDA graph, then replayed
    jax        the same step in JAX (jax_step.py), in a worker process of its own
    matmuls    the floor: exactly the step's matrix products (same shapes, operands, library)
Each maker takes (params, x, y[, lr]) and returns (fn, result): fn is timed; result(), called
first, is what one call gives, checked against autograd (float32, on the benchmark's device).
The hand-written code runs in torch.inference_mode(). The torch processes call
common.keep_freed_memory() first, as lesson 04 does.

FLOPs credited to every implementation alike (a multiply-add is 2; elementwise work is not
counted, so extra work shows up as a lower GFLOP/s):
    forward  = 2 B (784*512 + 512*128 + 128*10)                          = 2 B * 468,224
    backward = the forward's for the dW + 2 B (512*128 + 128*10) for the dH of every layer
               but the first (nobody needs the pixels' gradient)        = 2 B * 535,040
    step     = forward + backward                                        = 2 B * 1,003,264
"""

import contextlib
import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
for folder in (HERE.parent, HERE):  # the lessons live at the repository root
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import jax_step  # noqa: E402  (the worker's message framing; importing it does not import jax)

common = importlib.import_module("common")
forward = importlib.import_module("02_mlp_forward")
backward = importlib.import_module("03_mlp_backward")
training = importlib.import_module("04_train_mnist")
SIZES = (784, 512, 128, 10)
LR = 0.01


class Skip(Exception):
    """This implementation cannot run here; the message says why."""


def op_flops(op, batch, sizes=SIZES):
    """The matmul FLOPs of op ("forward", "backward" or "step") at batch (see above)."""
    layers = [2 * batch * a * b for a, b in zip(sizes[:-1], sizes[1:])]
    forward_flops, backward_flops = sum(layers), sum(layers) + sum(layers[1:])
    return {"forward": forward_flops, "backward": backward_flops,
            "step": forward_flops + backward_flops}[op]


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


def forward_manual(params, x, y):
    def fn():
        return forward.cross_entropy(forward.mlp_forward(params, x)[0], y)
    return fn, lambda: (fn(),)


def forward_autograd(params, x, y):
    model = autograd_model(params)

    def fn():
        return F.cross_entropy(model(x), y)  # records the graph, as a training forward does
    return fn, lambda: (fn().detach(),)


def backward_manual(params, x, y):
    _, cache = forward.mlp_forward(params, x)

    def fn():
        return backward.mlp_backward(params, cache, y)
    return fn, fn


def backward_autograd(params, x, y):
    model = autograd_model(params)
    loss = F.cross_entropy(model(x), y)
    weights = tuple(model.parameters())

    def fn():
        return torch.autograd.grad(loss, weights, retain_graph=True)
    return fn, lambda: tuple(g.T if g.dim() == 2 else g for g in fn())


# ----------------------------------------------------------------------------- steps
# Two faster ways to write lesson 04's train_step (step_variants.py times an epoch of each).

def inplace_train_step_(params, velocity, x, y, lr, momentum=0.0, weight_decay=0.0, smoothing=0.0):
    """train_step with the update written into params and velocity (tuples of tensors) -> loss."""
    logits, cache = forward.mlp_forward(params, x)
    loss = training.smoothed_cross_entropy(logits, y, smoothing)
    delta = training.smoothed_cross_entropy_backward(logits, y, smoothing)  # (B, C)
    grads = backward.mlp_backward_from(params, cache, delta)  # this step's own: scratch space
    for p, v, g in zip(params, velocity, grads):
        if weight_decay and p.dim() == 2:
            g.add_(p, alpha=weight_decay)  # g + wd W
        if momentum:
            g = v.mul_(momentum).add_(g)  # v <- momentum v + g
        p.add_(g, alpha=-lr)
    return loss


def loss_and_delta(logits, y, smoothing):
    """smoothed_cross_entropy and its backward from one log-softmax -> (loss, delta_n (B, C))."""
    B, C = logits.shape
    Y_s = backward.one_hot(y, C, logits.dtype).mul_(1 - smoothing).add_(smoothing / C)  # (B, C)
    log_p = forward.log_softmax(logits)  # (B, C)
    loss = -(Y_s * log_p).sum() / B
    return loss, log_p.exp_().sub_(Y_s).div_(B)  # (P - Y_s) / B


def fused_train_step_(params, velocity, x, y, lr, momentum=0.0, weight_decay=0.0, smoothing=0.0):
    """train_step with fewer passes over memory, params and velocity changed in place -> loss.

    addmm for H W + b, ReLU in place, the mask as sign(H) (torch makes the bool (H > 0) and its
    cast to float several times slower), loss and delta_n from one log-softmax, each dW fused
    into its update by addmm_. dL/dH_{l-1} is taken before W_l changes.
    """
    n = len(params) // 2
    cache = [x]
    for i in range(n):  # Z_l = b_l + H_{l-1} W_l in one call; H_l = relu(Z_l) in place
        z = torch.addmm(params[2 * i + 1], cache[-1], params[2 * i])  # (B, d_l)
        cache.append(z.clamp_min_(0) if i < n - 1 else z)
    loss, dz = loss_and_delta(cache[-1], y, smoothing)
    for i in reversed(range(n)):
        W, b, h = params[2 * i], params[2 * i + 1], cache[i]  # h = H_{l-1}
        dh = dz @ W.T if i > 0 else None  # (B, d_{l-1}), from the old W
        if momentum:
            vW, vb = velocity[2 * i], velocity[2 * i + 1]
            vW.addmm_(h.T, dz, beta=momentum)  # vW <- momentum vW + H^T delta
            if weight_decay:
                vW.add_(W, alpha=weight_decay)
            vb.mul_(momentum).add_(dz.sum(0))
            W.add_(vW, alpha=-lr)
            b.add_(vb, alpha=-lr)
        else:
            W.addmm_(h.T, dz, beta=1 - lr * weight_decay, alpha=-lr)  # W - lr (H^T delta + wd W)
            b.sub_(dz.sum(0), alpha=lr)
        if i > 0:
            dz = dh.mul_(h.sign_())  # delta_{l-1}: H >= 0, so sign(H) is the mask (H > 0)
    return loss


def step_pure(params, x, y, lr=LR):
    state = [params, training.init_velocity(params)]

    def fn():
        state[0], state[1], _ = training.train_step(*state, x, y, lr)
    return fn, lambda: training.train_step(params, state[1], x, y, lr)[0]


def in_place(step):
    """A maker for a step that changes params and velocity in place."""
    def make(params, x, y, lr=LR):
        mine, velocity = [p.clone() for p in params], training.init_velocity(params)

        def fn():
            step(mine, velocity, x, y, lr)

        def result():
            fn()
            return mine
        return fn, result
    return make


def step_autograd(params, x, y, lr=LR):
    model = autograd_model(params)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def fn():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    def result():
        fn()
        return [p.detach().T if p.dim() == 2 else p.detach() for p in model.parameters()]
    return fn, result


def step_products(params, x, y):
    """The operands of the matrix products one step performs, in its order -> [(a, b)], and the
    indices of the dW products among them, for W_1 ... W_n.

    Forward: H_{l-1} @ W_l for every layer; backward, from the last layer: H_{l-1}^T @ delta_l
    (dW_l) and, but for the first layer, delta_l @ W_l^T (dH_{l-1}). The operands come from one
    real forward and backward pass: the step's own tensors, transposed views included.
    """
    logits, cache = forward.mlp_forward(params, x)
    dz = backward.softmax_cross_entropy_backward(logits, y)  # delta_n (B, C)
    n = len(params) // 2
    pairs, dW_at = [(cache[i], params[2 * i]) for i in range(n)], [None] * n
    for i in reversed(range(n)):
        dW_at[i] = len(pairs)
        pairs.append((cache[i].T, dz))
        if i > 0:
            pairs.append((dz, params[2 * i].T))
            dz = backward.relu_backward(dz @ params[2 * i].T, cache[i])  # delta_{l-1}
    return pairs, dW_at


def step_matmuls(params, x, y, lr=LR):
    """The step's products alone, into buffers made once; result() -> its dW products."""
    pairs, dW_at = step_products(params, x, y)
    outs = [a.new_empty(a.shape[0], b.shape[1]) for a, b in pairs]

    def fn():
        for (a, b), out in zip(pairs, outs):
            torch.mm(a, b, out=out)

    def result():
        fn()
        return tuple(outs[i] for i in dW_at)
    return fn, result


def step_compiled(params, x, y, lr=LR):
    """torch.compile(train_step) with static shapes; fn.first_call_s is the compile's time."""
    config = torch._dynamo.config  # 8 graphs per function by default, then eager code, silently
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 64))
    # pattern_matcher off: torch 2.14.1's inductor (CPU) rewrites torch.add(p, a @ b, alpha=-lr)
    # into addmm(p, a, b) and drops the alpha, so lesson 01's sgd_step moved each weight by +dW
    # instead of -lr dW. The check against autograd caught it.
    compiled = torch.compile(training.train_step, dynamic=False,
                             options={"pattern_matcher": False})
    velocity, state = training.init_velocity(params), [params]

    def fn():
        state[0] = compiled(state[0], velocity, x, y, lr)[0]
    begin = time.perf_counter()
    try:
        first = compiled(params, velocity, x, y, lr)[0]
        common.sync(x.device)
    except Exception as err:  # e.g. InductorError where no C++ compiler works
        raise Skip(f"torch.compile failed here: {type(err).__name__}: "
                   f"{(str(err).strip().splitlines() or [''])[0][:200]}") from None
    fn.first_call_s = time.perf_counter() - begin
    return fn, lambda: first


def step_cudagraph(params, x, y, lr=LR):
    """fused_train_step_ captured once as a CUDA graph on static tensors; fn replays it."""
    if x.device.type != "cuda":
        raise Skip(f"CUDA graphs need a CUDA device; this is {x.device.type}")
    mine, scratch = [p.clone() for p in params], [p.clone() for p in params]
    velocity = training.init_velocity(params)
    side = torch.cuda.Stream(x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side):  # warm up outside the graph: cuBLAS handles, workspaces
        for _ in range(3):
            fused_train_step_(scratch, velocity, x, y, lr)
    torch.cuda.current_stream(x.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # records the kernels; computes nothing yet
        fused_train_step_(mine, velocity, x, y, lr)

    def result():
        graph.replay()
        return [p.clone() for p in mine]
    return graph.replay, result


class JaxWorker:
    """A jax_step.py worker process holding the JAX step; this process never imports jax.

    In a session of its own (Ctrl-C reaches this process, which closes it), with glibc's
    allocator set as keep_freed_memory sets this process's.
    """

    def __init__(self):
        if os.environ.get("BENCH_NO_JAX", "") not in ("", "0"):
            raise Skip("BENCH_NO_JAX is set: JAX treated as not installed")
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(32 << 20),
                   MALLOC_TRIM_THRESHOLD_=str(1 << 30))
        self.process = subprocess.Popen([sys.executable, str(HERE / "jax_step.py")],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                        start_new_session=True)
        try:
            self.version = self.ask("hello")
        except BaseException:
            self.close()
            raise

    def ask(self, *message):
        jax_step.send(self.process.stdin, message)
        answer = jax_step.receive(self.process.stdout)
        if answer is None:
            raise Skip("the JAX worker process ended unexpectedly")
        if answer[0] != "ok":
            raise Skip(answer[1])
        return answer[1]

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def step_jax(params, x, y, lr=LR, worker=None):
    """The JAX step in the worker; fn() runs one step there, fn.block(steps) times a block."""
    if worker is None:
        raise Skip("the JAX step needs a JaxWorker (the jax_worker fixture)")
    platform = {"cpu": "cpu", "cuda": "gpu"}.get(x.device.type, x.device.type)
    worker.ask("problem", [p.cpu().numpy() for p in params], x.cpu().numpy(),
               y.cpu().int().numpy(), platform)  # and its first step: the compilation

    def fn():
        return worker.ask("time", 1, lr)

    def result():
        return tuple(torch.from_numpy(a.copy()).to(x.device) for a in worker.ask("step", lr))
    fn.block = lambda steps: worker.ask("time", steps, lr)
    return fn, result


IMPLEMENTATIONS = {
    "forward": {"manual": forward_manual, "autograd": forward_autograd},
    "backward": {"manual": backward_manual, "autograd": backward_autograd},
    "step": {"pure": step_pure, "inplace": in_place(inplace_train_step_),
             "fused": in_place(fused_train_step_), "compiled": step_compiled,
             "cudagraph": step_cudagraph, "jax": step_jax, "autograd": step_autograd,
             "matmuls": step_matmuls},
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

    A step is checked at lr 1, so that what it changes stands well above float32 rounding: by
    what it changed, against minus autograd's gradients; the matmuls' dW products are checked as
    the weights' gradients. made, if given, is an already built (fn, result) at lr 1.
    """
    if op == "step":
        kwargs["lr"] = 1.0
    with mode(impl):
        ours = (made or IMPLEMENTATIONS[op][impl](params, x, y, **kwargs))[1]()
    reference = build("forward" if op == "forward" else "backward", "autograd", params, x, y)[1]()
    if impl == "matmuls":
        reference = reference[::2]
    elif op == "step":
        ours, reference = [a - p for a, p in zip(ours, params)], [-g for g in reference]
    assert len(ours) == len(reference), (op, impl)
    for a, b in zip(ours, reference):
        error = ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
        assert a.shape == b.shape and error < 1e-4, (op, impl, error)

"""The peer: the same MLP and plain-SGD step written the JAX way, run in a process of its own.

Pure functions over a tuple of parameters (W1, b1, ..., Wn, bn), W (fan_in, fan_out), as in
this repository; the gradient comes from jax.grad and the whole step is compiled by jax.jit
(one compilation per input shape):

    loss(params, x, y) = mean over the batch of -log_softmax(mlp(params, x))[y]
    sgd_step = jax.jit(lambda params, x, y, lr: params - lr * jax.grad(loss)(params, x, y))

Run, this file is a worker (started by contenders.JaxWorker; it never imports torch, whose
thread pool and JAX's slow each other down in one process): it takes the benchmark's parameters
and batch as numpy arrays, returns one step's result for the check against autograd, and times
blocks of steps by its own clock. BENCH_NO_JAX=1 makes the benchmarks treat JAX as absent.
"""

import os
import pickle
import struct
import sys
import time

import numpy as np


def use_platform(jax, platform):
    """jax's first device on platform ("cpu" or "gpu"; RuntimeError where it has none), with
    float32 matmuls as torch computes them: on recent NVIDIA GPUs JAX's default rounds their
    inputs to TensorFloat32, so "highest" there."""
    jax.config.update("jax_default_matmul_precision", "highest" if platform == "gpu" else None)
    return jax.devices(platform)[0]


def make_step(jax):
    """-> sgd_step(params, x, y, lr), jax.jit of the update by jax.grad of the mean loss."""

    def mlp(params, x):
        """params (W1, b1, ..., Wn, bn), x (B, D) -> logits (B, C); ReLU between layers."""
        h = x
        for W, b in zip(params[:-2:2], params[1:-2:2]):
            h = jax.nn.relu(h @ W + b)  # (B, d_l)
        return h @ params[-2] + params[-1]  # (B, C)

    def loss(params, x, y):
        """Mean cross-entropy over the batch; y (B,) int labels."""
        log_p = jax.nn.log_softmax(mlp(params, x))  # (B, C)
        return -jax.numpy.mean(jax.numpy.take_along_axis(log_p, y[:, None], axis=1))

    @jax.jit
    def sgd_step(params, x, y, lr):
        grads = jax.grad(loss)(params, x, y)  # a tuple shaped like params
        return tuple(p - lr * g for p, g in zip(params, grads))

    return sgd_step


class Worker:
    """The requests the benchmarks send, one method each: ("name", *args) calls name(*args)."""

    def __init__(self):
        # JAX takes 75 % of a GPU's memory as it starts, which the torch process beside it may
        # need: allocate as it goes instead.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        import jax

        self.jax = jax
        self.sgd_step = make_step(self.jax)  # jit compiles once per input shape

    def hello(self):
        return self.jax.__version__

    def problem(self, params, x, y, platform):
        """params (numpy arrays) and a batch onto platform's device, and a first step (the
        compilation)."""
        device = use_platform(self.jax, platform)
        self.start = self.params = tuple(self.jax.device_put(p, device) for p in params)
        self.x, self.y = self.jax.device_put(x, device), self.jax.device_put(y, device)
        self.step(1.0)

    def step(self, lr):
        """One step from the initial parameters -> the new parameters as numpy arrays."""
        out = self.jax.block_until_ready(self.sgd_step(self.start, self.x, self.y, lr))
        return [np.asarray(p) for p in out]

    def time(self, steps, lr):
        """steps back-to-back steps from the current parameters -> seconds for all of them."""
        begin = time.perf_counter()
        for _ in range(steps):
            self.params = self.sgd_step(self.params, self.x, self.y, lr)
        self.jax.block_until_ready(self.params)  # JAX dispatches asynchronously: wait for it
        return time.perf_counter() - begin


# Messages are pickled tuples, each after its length (8 bytes, little-endian), on the worker's
# stdin (requests) and stdout (answers: ("ok", value) or ("error", reason)).

def send(stream, message):
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def receive(stream):
    """The next message from stream, or None at its end."""
    head = stream.read(8)
    return pickle.loads(stream.read(struct.unpack("<Q", head)[0])) if len(head) == 8 else None


def serve(requests, answers):
    """Answer each request until they end: ("ok", value) or ("error", reason)."""
    try:
        worker = Worker()
    except ImportError as err:
        worker, missing = None, f"{err} (pip install -r requirements-jax.txt)"
    while (message := receive(requests)) is not None:
        try:
            if worker is None:
                raise ImportError(missing)
            answer = ("ok", getattr(worker, message[0])(*message[1:]))
        except Exception as err:  # the worker answers; the benchmark decides what to do
            answer = ("error", f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}")
        send(answers, answer)


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)

"""The peer: the same MLP and plain-SGD step written the JAX way, timed in a process of its own.

Pure functions over a tuple of parameters (W1, b1, ..., Wn, bn), W (fan_in, fan_out), as in
this repository and in JAX's own MNIST-from-scratch example; the gradient comes from
jax.grad and the whole step is compiled by jax.jit (one compilation per input shape):

    loss(params, x, y) = mean over the batch of -log_softmax(mlp(params, x))[y]
    sgd_step = jax.jit(lambda params, x, y, lr: params - lr * jax.grad(loss)(params, x, y))

This file never imports torch: JAX's thread pool and torch's slow each other down when they
share a process, so the benchmarks run it as a worker process (`--serve`, driven by
JaxWorker in contenders.py) that receives the torch benchmark's parameters and batch as
numpy arrays, returns one step's result for the check against autograd, and times blocks of
back-to-back steps with its own clock. `BENCH_NO_JAX=1` makes it behave as if JAX were absent.

    python benchmarks/jax_step.py --batch 32    # a quick look: median time of one step
"""

import argparse
import os
import pickle
import signal
import struct
import sys
import time

if __name__ == "__main__" and "--serve" in sys.argv[1:]:
    # A worker: the process that started it stops it (Ctrl-C at a terminal reaches both),
    # so the keyboard's and the terminal's signals are left to that process, from before the
    # imports on; the end of its requests (that process gone) ends this one.
    for _name in ("SIGINT", "SIGHUP"):
        if hasattr(signal, _name):
            signal.signal(getattr(signal, _name), signal.SIG_IGN)

import numpy as np  # noqa: E402


def import_jax():
    """-> the jax module, or raise ImportError with the reason it cannot be used.

    JAX reserves 75 % of a GPU's memory when it starts, which the torch process beside it
    may need, so here it allocates as it goes instead (on a CPU this changes nothing).
    """
    if os.environ.get("BENCH_NO_JAX", "") not in ("", "0"):
        raise ImportError("BENCH_NO_JAX is set: JAX treated as not installed")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    return jax


def true_float32(jax, platform):
    """A context in which jit traces float32 matmuls as torch computes them on platform.

    On recent NVIDIA GPUs JAX's default rounds a float32 matmul's inputs to TensorFloat32
    (10-bit mantissas; torch keeps full float32 unless told otherwise), so on "gpu" the
    precision is "highest". On a CPU the default already is float32 and stays untouched.
    """
    return jax.default_matmul_precision("highest" if platform == "gpu" else None)


def platforms(jax):
    """The platforms this JAX can run on, e.g. ["cpu", "gpu"]; jax.devices() alone lists only
    the default one (the GPU, where there is one)."""
    found = []
    for name in ("cpu", "gpu"):
        try:
            jax.devices(name)
        except RuntimeError:  # no such backend in this installation
            continue
        found.append(name)
    return found


# ----------------------------------------------------------------------------- the network

def make_step(jax):
    """-> (loss, sgd_step) written with jax.numpy; sgd_step is jax.jit(... jax.grad(loss) ...)."""
    jnp = jax.numpy

    def mlp(params, x):
        """params (W1, b1, ..., Wn, bn), x (B, D) -> logits (B, C); ReLU between layers."""
        h = x
        for W, b in zip(params[:-2:2], params[1:-2:2]):
            h = jax.nn.relu(h @ W + b)  # (B, H_l)
        return h @ params[-2] + params[-1]  # (B, C)

    def loss(params, x, y):
        """Mean cross-entropy over the batch; y (B,) int labels."""
        logp = jax.nn.log_softmax(mlp(params, x))  # (B, C)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    @jax.jit
    def sgd_step(params, x, y, lr):
        grads = jax.grad(loss)(params, x, y)  # a tuple shaped like params
        return tuple(p - lr * g for p, g in zip(params, grads))

    return loss, sgd_step


class Problem:
    """One benchmark problem on a JAX device: its parameters, batch and the compiled step."""

    def __init__(self, jax, sgd_step, params, x, y, platform="cpu"):
        self.jax, self.sgd_step = jax, sgd_step
        self.device = jax.devices(platform)[0]
        self.float32 = lambda: true_float32(jax, platform)  # noqa: E731
        put = lambda a: jax.device_put(a, self.device)  # noqa: E731
        self.start = tuple(put(np.asarray(p, np.float32)) for p in params)
        self.x = put(np.asarray(x, np.float32))
        self.y = put(np.asarray(y, np.int32))
        self.params = self.start

    def step_from_start(self, lr):
        """One step from the initial parameters -> the new parameters as numpy arrays.

        The first call for a given shape compiles; its time is returned beside the result.
        """
        begin = time.perf_counter()
        with self.float32():
            out = self.jax.block_until_ready(self.sgd_step(self.start, self.x, self.y, lr))
        return [np.asarray(p) for p in out], time.perf_counter() - begin

    def time_block(self, steps, lr):
        """Run `steps` back-to-back steps from the current parameters -> seconds for all."""
        begin = time.perf_counter()
        params = self.params
        with self.float32():
            for _ in range(steps):
                params = self.sgd_step(params, self.x, self.y, lr)
            self.jax.block_until_ready(params)  # JAX dispatches asynchronously: wait for it
        self.params = params
        return time.perf_counter() - begin


# ----------------------------------------------------------------------------- worker protocol
# Messages are pickled tuples, each preceded by its length (8 bytes, little-endian), on the
# worker's stdin (requests) and stdout (answers). Answers: ("ok", value) or ("error", reason).

def send(stream, message):
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def receive(stream):
    """The next message from stream, or None at its end."""
    head = stream.read(8)
    if len(head) < 8:
        return None
    (size,) = struct.unpack("<Q", head)
    return pickle.loads(stream.read(size))


def serve(requests, answers):
    """Answer requests until ("quit",) or the end of the stream.

    ("hello",) -> {"jax", "platforms"}; ("problem", params, x, y, platform) -> compile seconds
    of the first step (lr 1.0); ("step", lr) -> one step's new parameters from the initial
    ones; ("time", steps, lr) -> seconds for `steps` back-to-back steps.
    """
    try:
        jax = import_jax()
    except ImportError as err:
        jax, missing = None, f"jax is not importable here ({err})"
    problem, sgd_step = None, None if jax is None else make_step(jax)[1]  # jit: once per shape
    while (message := receive(requests)) is not None:
        kind = message[0]
        if kind == "quit":
            break
        if jax is None:
            send(answers, ("error", missing))
            continue
        try:
            if kind == "hello":
                value = {"jax": jax.__version__, "platforms": platforms(jax)}
            elif kind == "problem":
                problem = Problem(jax, sgd_step, *message[1:])
                value = problem.step_from_start(1.0)[1]
            elif kind == "step":
                value = problem.step_from_start(message[1])[0]
            elif kind == "time":
                value = problem.time_block(*message[1:])
            else:
                raise ValueError(f"unknown request {kind!r}")
        except Exception as err:  # the worker answers; the benchmark decides what to do
            send(answers, ("error", f"{type(err).__name__}: {str(err).splitlines()[0]}"))
            continue
        send(answers, ("ok", value))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs="+", default=[784, 512, 128, 10])
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    args = parser.parse_args(argv)
    if args.serve:
        serve(sys.stdin.buffer, sys.stdout.buffer)
        return 0
    try:
        jax = import_jax()
    except ImportError as err:
        print(f"error: jax is not importable here ({err}); pip install -r requirements-jax.txt",
              file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.batch)
    params = []
    for fan_in, fan_out in zip(args.sizes[:-1], args.sizes[1:]):
        params += [rng.standard_normal((fan_in, fan_out), np.float32) * np.sqrt(2 / fan_in),
                   np.zeros(fan_out, np.float32)]
    x = rng.random((args.batch, args.sizes[0]), np.float32)
    y = rng.integers(0, args.sizes[-1], args.batch)
    problem = Problem(jax, make_step(jax)[1], params, x, y)
    compile_s = problem.step_from_start(0.01)[1]
    problem.time_block(args.steps, 0.01)  # warm up
    per_step = sorted(problem.time_block(args.steps, 0.01) / args.steps
                      for _ in range(args.blocks))
    median = per_step[len(per_step) // 2]
    print(f"jax {jax.__version__} | batch {args.batch} | first call {compile_s:.2f} s | "
          f"step median {median * 1e6:.0f} us, best {per_step[0] * 1e6:.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())

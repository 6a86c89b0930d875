"""A wrong result from torch.compile that the benchmark's check against autograd caught.

    python benchmarks/compile_bug.py

In torch 2.14.1 (CPU), inductor's post-grad pattern `add(inp, mm(a, b)) -> addmm(inp, a, b)`
also matches torch.add(inp, a @ b, alpha=...) and drops the alpha. Lesson 01's sgd_step,
torch.add(p, g, alpha=-lr), with g = h.T @ dz from lesson 03, is exactly that: compiled,
train_step moved each weight by +dW instead of -lr dW (the biases, which are sums, were
right). The benchmarks compile with options={"pattern_matcher": False}, which avoids it.
Related upstream report: https://github.com/pytorch/pytorch/issues/167313
"""

import sys

import torch


def update(p, a, b):
    """p - 0.5 (a.T @ b): a gradient step with lr 0.5 on a weight whose gradient is a.T @ b."""
    return torch.add(p, a.T @ b, alpha=-0.5)


def main():
    g = torch.Generator().manual_seed(0)
    p, a, b = (torch.randn(*shape, generator=g) for shape in ((8, 4), (16, 8), (16, 4)))
    eager = update(p, a, b)
    rows = []
    for label, options in (("default", None), ("pattern_matcher off", {"pattern_matcher": False})):
        torch._dynamo.reset()
        compiled = torch.compile(update, options=options)(p, a, b)
        rows.append((label, (compiled - eager).abs().max().item()))
        print(f"torch.compile ({label:<19}) max |compiled - eager| = {rows[-1][1]:.3g}")
    wrong = rows[0][1] > 1e-4
    print(f"result: torch={torch.__version__} default_wrong={str(wrong).lower()} "
          f"workaround_ok={str(rows[1][1] < 1e-4).lower()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

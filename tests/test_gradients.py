"""Every hand-written gradient against autograd, the referee (float64, random non-zero inputs).

Autograd appears only here: each backward function must equal the gradient autograd finds
for its forward function, with a random upstream gradient where the output is not a scalar.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import load_lesson

L1, L2, L3, L4 = (load_lesson(n) for n in ("01_logistic_regression", "02_mlp_forward",
                                          "03_mlp_backward", "04_train_mnist"))
F64 = torch.float64


def randn(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def referee(loss, *inputs):
    """d loss(*inputs) / d inputs, by autograd."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    grads = torch.autograd.grad(loss(*inputs), inputs, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)]


def close(mine, theirs, rtol=1e-7):
    for a, b in zip(mine, theirs, strict=True):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= rtol * b.abs().max().clamp_min(1e-12), (a, b)


@pytest.mark.parametrize("B, D", [(1, 3), (7, 5), (64, 784)])
def test_logistic_and_squared_error_gradients(B, D):
    x, w, b = randn(B, D), randn(D, seed=1), randn(1, seed=2)
    y = torch.randint(0, 2, (B,), generator=torch.Generator().manual_seed(3))
    z = x @ w + b
    # docs/01 section 6: at z = 0 autograd's slopes of |z| and max(z, 0) differ from the math,
    # so the referee is torch's own loss, whose derivative is written by hand
    bce = referee(lambda w, b: F.binary_cross_entropy_with_logits(x @ w + b, y.to(F64)), w, b)
    close(L1.logreg_backward(x, z, y), bce)
    close(L1.mse_backward(x, z, y), referee(lambda w, b: L1.mse_loss(x @ w + b, y), w, b))
    assert abs(L1.bce_with_logits(z, y).item() - F.binary_cross_entropy_with_logits(
        z, y.to(F64)).item()) < 1e-12


@pytest.mark.parametrize("B, I, O", [(1, 1, 1), (5, 4, 3), (33, 784, 512)])
def test_linear_and_relu_backward(B, I, O):
    h, W, b, dz = randn(B, I), randn(I, O, seed=1), randn(O, seed=2), randn(B, O, seed=3)
    dh, dW, db = L3.linear_backward(dz, h, W)
    close((dh, dW, db), referee(lambda h, W, b: (L2.linear_forward(h, W, b) * dz).sum(), h, W, b))
    assert L3.linear_backward(dz, h, W, need_dh=False)[0] is None
    z, up = randn(B, O, seed=4), randn(B, O, seed=5)
    close([L3.relu_backward(up, L2.relu(z))], referee(lambda z: (L2.relu(z) * up).sum(), z))


@pytest.mark.parametrize("scale", [1.0, 10.0, 1e4])
def test_softmax_cross_entropy_backward_both_routes(scale):
    logits, y = randn(9, 4, scale=scale), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0])
    expected = referee(lambda z: F.cross_entropy(z, y), logits)
    close([L3.softmax_cross_entropy_backward(logits, y)], expected)
    loss = L2.cross_entropy(logits, y).item()
    assert abs(loss - F.cross_entropy(logits, y).item()) < 1e-9 * scale
    if scale < 100:  # the notebook's route divides by P, which underflows at large logits
        close([L3.notebook_softmax_cross_entropy_backward(logits, y)], expected)


@pytest.mark.parametrize("sizes", [[6, 3], [6, 5, 3], [7, 6, 5, 3], [8, 7, 6, 5, 3],
                                   [784, 512, 128, 10]])
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-7), (torch.float32, 1e-4)])
def test_mlp_backward_any_depth(sizes, dtype, rtol):
    g = torch.Generator().manual_seed(len(sizes))
    params = tuple(p if p.dim() == 2 else 0.1 * torch.randn(p.shape, generator=g, dtype=dtype)
                   for p in L2.init_params(sizes, g, dtype=dtype))  # biases not 0
    x = torch.randn(11, sizes[0], generator=g, dtype=dtype)
    y = torch.randint(0, sizes[-1], (11,), generator=g)
    grads = L3.mlp_backward(params, L2.mlp_forward(params, x)[1], y)
    close(grads, referee(lambda *ps: F.cross_entropy(L2.mlp_forward(ps, x)[0], y), *params), rtol)


def test_smoothing_and_weight_decay_gradients():
    logits, y = randn(6, 10, scale=3), torch.arange(6)
    for eps in (0.0, 0.1, 0.5):
        expected = referee(lambda z, eps=eps: F.cross_entropy(z, y, label_smoothing=eps), logits)
        close([L4.smoothed_cross_entropy_backward(logits, y, eps)], expected)
        assert abs(L4.smoothed_cross_entropy(logits, y, eps).item()
                   - F.cross_entropy(logits, y, label_smoothing=eps).item()) < 1e-12
    params = L2.init_params([5, 4, 3], torch.Generator().manual_seed(0), dtype=F64)
    grads = tuple(randn(*p.shape, seed=k) for k, p in enumerate(params))
    penalty = referee(lambda *ps: sum(0.005 * (p * p).sum() for p in ps if p.dim() == 2), *params)
    close(L4.add_weight_decay(grads, params, 0.01), [g + d for g, d in zip(grads, penalty)])


def test_labels_are_refused_by_the_indexing_itself():
    logits = randn(3, 4)
    for bad in (torch.tensor([0, 1, 4]), torch.tensor([0, -1, 2]), torch.tensor([0, 1, 2.0]),
                torch.tensor([0, 1, 2], dtype=torch.uint8)):
        for fn in (L2.cross_entropy, L3.softmax_cross_entropy_backward,
                   L4.smoothed_cross_entropy, L4.smoothed_cross_entropy_backward):
            with pytest.raises(RuntimeError):
                fn(logits, bad)


def test_finite_at_extreme_logits():
    z = torch.tensor([-1e4, 1e4, 0.0])
    for y in (torch.tensor([1, 0, 1]), torch.tensor([0, 1, 0])):
        assert math.isfinite(L1.bce_with_logits(z, y).item())
        assert all(g.isfinite().all() for g in L1.logreg_backward(torch.ones(3, 2), z, y))
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]])
    assert math.isfinite(L2.cross_entropy(logits, torch.tensor([1, 0])).item())
    assert L3.softmax_cross_entropy_backward(logits, torch.tensor([1, 0])).isfinite().all()


def test_the_step_is_pure_and_is_its_pieces():
    g = torch.Generator().manual_seed(0)
    params = L2.init_params([8, 6, 4], g, dtype=F64)
    velocity = tuple(torch.randn(p.shape, generator=g, dtype=F64) for p in params)
    x, y = torch.randn(5, 8, generator=g, dtype=F64), torch.tensor([0, 1, 2, 3, 0])
    copies = [t.clone() for t in params + velocity]
    new_p, new_v, loss = L4.train_step(params, velocity, x, y, 0.1, 0.9, 0.01, 0.1)
    assert all(torch.equal(a, b) for a, b in zip(params + velocity, copies))  # unchanged
    grads = referee(lambda *ps: F.cross_entropy(L2.mlp_forward(ps, x)[0], y, label_smoothing=0.1)
                    + sum(0.005 * (p * p).sum() for p in ps if p.dim() == 2), *params)
    v = [0.9 * v0 + gr for v0, gr in zip(velocity, grads)]
    close(new_v, v)
    close(new_p, [p - 0.1 * vv for p, vv in zip(params, v)])
    plain = L4.train_step(params, velocity, x, y, 0.1)[0]  # momentum 0: lesson 01's SGD
    close(plain, L1.sgd_step(params, referee(
        lambda *ps: F.cross_entropy(L2.mlp_forward(ps, x)[0], y), *params), 0.1))


def test_augmentation_moves_where_the_docs_say_and_keeps_the_ink():
    x = torch.zeros(2, 28 * 28)
    x[:, 14 * 28 + 20] = 1.0  # one bright pixel, 6.5 right of the centre
    turn = L4.affine_theta(torch.tensor([math.pi / 2] * 2), torch.ones(2), torch.zeros(2, 2), 28)
    assert divmod(L4.warp(x, turn)[0].argmax().item(), 28) == (20, 13)  # turned clockwise
    assert L4.augment(x, torch.Generator(), 0, 0, 0) is x
    theta = L4.affine_theta(torch.rand(5), 1 + torch.rand(5) / 10, torch.rand(5, 2), 28)
    images = torch.rand(5, 784, generator=torch.Generator().manual_seed(2))
    grid = F.affine_grid(theta, [5, 1, 28, 28], align_corners=False)  # torch's, the referee
    theirs = F.grid_sample(images.view(5, 1, 28, 28), grid, align_corners=False).view(5, -1)
    assert (L4.warp(images, theta) - theirs).abs().max() < 1e-5
    digits = torch.rand(64, 784, generator=torch.Generator().manual_seed(0))
    digits[:, :28 * 4] = 0  # a blank border, as MNIST's, so nothing is moved out of the frame
    digits.view(64, 28, 28)[:, :, :4] = digits.view(64, 28, 28)[:, :, -4:] = 0
    digits[:, -28 * 4:] = 0
    moved = L4.augment(digits, torch.Generator().manual_seed(1), rotate=10, shift=2)
    assert ((moved.sum(1) - digits.sum(1)).abs() / digits.sum(1)).max() < 0.05

"""Every hand-written backward function against autograd, the referee (used in tests only).

Tolerances: in float64 the relative error max|ours - autograd| / max|autograd| must stay
below 1e-7 (it is about 1e-16 in practice); in float32 below 1e-4.
"""

import pytest
import torch
from conftest import load_lesson

import common

logreg = load_lesson("01_logistic_regression")
fwd = load_lesson("02_mlp_forward")
bwd = load_lesson("03_mlp_backward")
train = load_lesson("04_train_mnist")

F64, F32 = 1e-7, 1e-4
SHAPES = [(1, 1, 1), (1, 5, 3), (7, 3, 11), (32, 784, 10), (5, 13, 2)]  # (B, I, O)
DEPTHS = {1: [9, 4], 2: [9, 7, 4], 3: [11, 7, 5, 3], 4: [10, 8, 6, 5, 4]}


def rel_error(ours, reference):
    """max|ours - reference| / max|reference| (absolute where the reference is all zero)."""
    scale = reference.abs().max().clamp_min(1e-30)
    return ((ours - reference).abs().max() / scale).item()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, g, dtype=torch.float64):
    return torch.randn(*shape, generator=g, dtype=dtype)


def random_params(sizes, g, dtype=torch.float64):
    """Random non-zero weights and biases: zeros could hide a wrong backward pass."""
    return tuple(randn(*p.shape, g=g, dtype=dtype) * (0.5 if p.dim() == 2 else 0.3)
                 for p in fwd.init_params(sizes, g, dtype=dtype))


def autograd_grads(loss_fn, *tensors):
    """Gradients of loss_fn(*tensors) w.r.t. each tensor, by autograd."""
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    return torch.autograd.grad(loss_fn(*leaves), leaves)


# ----------------------------------------------------------------------------- layer by layer

@pytest.mark.parametrize("B, I, O", SHAPES)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, F64), (torch.float32, F32)])
def test_linear_backward_matches_autograd(B, I, O, dtype, tol):
    g = gen(B * 100 + I)
    x, W, b, dout = (randn(B, I, g=g, dtype=dtype), randn(I, O, g=g, dtype=dtype),
                     randn(O, g=g, dtype=dtype), randn(B, O, g=g, dtype=dtype))
    ref = autograd_grads(lambda x, W, b: (fwd.linear_forward(x, W, b) * dout).sum(), x, W, b)
    ours = bwd.linear_backward(dout, x, W)
    for mine, theirs in zip(ours, ref):
        assert mine.shape == theirs.shape
        assert rel_error(mine, theirs) < tol
    assert bwd.linear_backward(dout, x, W, need_dh=False)[0] is None


@pytest.mark.parametrize("B, H", [(1, 1), (1, 7), (6, 5), (32, 512)])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, F64), (torch.float32, F32)])
def test_relu_backward_matches_autograd(B, H, dtype, tol):
    g = gen(B + H)
    z, dout = randn(B, H, g=g, dtype=dtype), randn(B, H, g=g, dtype=dtype)
    (ref,) = autograd_grads(lambda z: (fwd.relu(z) * dout).sum(), z)
    assert rel_error(bwd.relu_backward(dout, fwd.relu(z)), ref) < tol


@pytest.mark.parametrize("B, C", [(1, 2), (1, 10), (3, 10), (17, 5), (64, 10)])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, F64), (torch.float32, F32)])
def test_softmax_cross_entropy_backward_matches_autograd(B, C, dtype, tol):
    g = gen(B * C)
    logits = 3 * randn(B, C, g=g, dtype=dtype)
    y = torch.randint(0, C, (B,), generator=g)
    (ref,) = autograd_grads(lambda z: fwd.cross_entropy(z, y), logits)
    assert rel_error(bwd.softmax_cross_entropy_backward(logits, y), ref) < tol
    assert rel_error(bwd.notebook_softmax_cross_entropy_backward(logits, y), ref) < tol


@pytest.mark.parametrize("B, C", [(1, 3), (4, 10)])
def test_softmax_jacobian_matches_autograd(B, C):
    g = gen(7)
    logits = randn(B, C, g=g)
    ref = torch.autograd.functional.jacobian(fwd.softmax, logits)  # (B, C, B, C)
    ref = torch.stack([ref[b, :, b, :] for b in range(B)])  # rows do not mix: keep the diagonal
    assert rel_error(bwd.softmax_jacobian(fwd.softmax(logits)), ref) < F64


def test_forward_functions_match_torch():
    g = gen(3)
    logits, y = 4 * randn(6, 10, g=g), torch.randint(0, 10, (6,), generator=g)
    assert rel_error(fwd.softmax(logits), torch.softmax(logits, 1)) < F64
    assert rel_error(fwd.log_softmax(logits), torch.log_softmax(logits, 1)) < F64
    ref = torch.nn.functional.cross_entropy(logits, y)  # its default reduction is the mean too
    assert abs(fwd.cross_entropy(logits, y).item() - ref.item()) < 1e-12


# ----------------------------------------------------------------------------- whole network

@pytest.mark.parametrize("depth", sorted(DEPTHS))
@pytest.mark.parametrize("B", [1, 3, 16])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, F64), (torch.float32, F32)])
def test_mlp_backward_matches_autograd(depth, B, dtype, tol):
    sizes = DEPTHS[depth]
    g = gen(depth * 10 + B)
    params = random_params(sizes, g, dtype)
    x, y = randn(B, sizes[0], g=g, dtype=dtype), torch.randint(0, sizes[-1], (B,), generator=g)
    ref = autograd_grads(lambda *ps: fwd.cross_entropy(fwd.mlp_forward(ps, x)[0], y), *params)
    logits, cache = fwd.mlp_forward(params, x)
    ours = bwd.mlp_backward(params, cache, y)
    assert len(ours) == len(params)
    for mine, theirs, p in zip(ours, ref, params):
        assert mine.shape == p.shape and mine.dtype == p.dtype
        assert rel_error(mine, theirs) < tol
    for mine, seed in zip(ours, bwd.notebook_mlp_backward(params, cache, y)):
        assert rel_error(seed, mine) < tol


@pytest.mark.parametrize("depth", sorted(DEPTHS))
def test_mlp_forward_cache_holds_each_layer_input_then_the_logits(depth):
    sizes = DEPTHS[depth]
    params = random_params(sizes, gen(depth))
    x = randn(5, sizes[0], g=gen(1))
    logits, cache = fwd.mlp_forward(params, x)
    assert len(cache) == depth + 1 and cache[0] is x and cache[-1] is logits
    assert [tuple(t.shape) for t in cache] == [(5, s) for s in sizes]
    h = x
    for i in range(depth - 1):  # rebuild each hidden activation with torch's own layers
        h = torch.relu(h @ params[2 * i] + params[2 * i + 1])
        assert rel_error(cache[i + 1], h) < F64


def test_logreg_backward_matches_autograd():
    g = gen(11)
    x, params = randn(9, 784, g=g), (randn(784, g=g), randn(1, g=g))
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1])
    ref = autograd_grads(lambda w, b: logreg.bce_with_logits(logreg.logreg_forward((w, b), x), y),
                         *params)
    ours = logreg.logreg_backward(x, logreg.logreg_forward(params, x), y)
    for mine, theirs in zip(ours, ref):
        assert mine.shape == theirs.shape and rel_error(mine, theirs) < F64
    z = x @ params[0] + params[1]
    ref_bce = torch.nn.functional.binary_cross_entropy_with_logits(z, y.double())
    assert abs(logreg.bce_with_logits(z, y).item() - ref_bce.item()) < 1e-12
    assert rel_error(logreg.sigmoid(x[:, :5]), torch.sigmoid(x[:, :5])) < F64


def test_init_params_is_he_normal_seeded_and_follows_dtype():
    params = fwd.init_params([784, 512, 128, 10], gen(0))
    assert [tuple(p.shape) for p in params] == [(784, 512), (512,), (512, 128), (128,), (128, 10),
                                                (10,)]
    assert sum(p.numel() for p in params) == 468_874
    for W, fan_in in zip(params[::2], (784, 512, 128)):
        assert abs(W.std().item() / (2 / fan_in) ** 0.5 - 1) < 0.05
    assert all((b == 0).all() for b in params[1::2])
    again = fwd.init_params([784, 512, 128, 10], gen(0))
    assert all(torch.equal(a, b) for a, b in zip(params, again))
    assert fwd.init_params([3, 2], gen(0), dtype=torch.float64)[0].dtype == torch.float64


# ----------------------------------------------------------------------------- stability

EXTREME = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0], [5.0, 5.0, 5.0], [-1e4, -1e4, -1e4]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_and_equal_logits_stay_finite(dtype):
    logits, y = EXTREME.to(dtype), torch.tensor([1, 0, 2, 0])  # two rows badly wrong
    probs = fwd.softmax(logits)
    assert torch.isfinite(probs).all() and torch.allclose(probs.sum(1), torch.ones(4, dtype=dtype))
    assert torch.allclose(probs[2], torch.full((3,), 1 / 3, dtype=dtype))  # all-equal row
    loss = fwd.cross_entropy(logits, y)
    assert torch.isfinite(loss) and loss.item() > 1e3  # 2e4 nats, twice, over 4 rows
    dlogits = bwd.softmax_cross_entropy_backward(logits, y)
    assert torch.isfinite(dlogits).all()
    (ref,) = autograd_grads(lambda z: torch.nn.functional.cross_entropy(z, y), logits)
    assert rel_error(dlogits, ref) < F64


def test_the_notebook_jacobian_route_breaks_where_ours_does_not():
    logits, y = EXTREME[:2], torch.tensor([1, 0])  # p[y] underflows to 0 on both rows
    assert torch.isfinite(bwd.softmax_cross_entropy_backward(logits, y)).all()
    assert not torch.isfinite(bwd.notebook_softmax_cross_entropy_backward(logits, y)).all()


def test_mlp_gradients_stay_finite_for_huge_inputs():
    params = random_params([6, 5, 4], gen(2), torch.float32)
    x = 1e4 * randn(3, 6, g=gen(3), dtype=torch.float32)
    y = torch.tensor([0, 1, 3])
    logits, cache = fwd.mlp_forward(params, x)
    assert torch.isfinite(fwd.cross_entropy(logits, y))
    assert all(torch.isfinite(g).all() for g in bwd.mlp_backward(params, cache, y))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_binary_cross_entropy_is_finite_for_huge_logits(dtype):
    z = torch.tensor([1e4, -1e4, 1e4, -1e4, 0.0], dtype=dtype)
    t = torch.tensor([1, 0, 0, 1, 1])
    loss = logreg.bce_with_logits(z, t)
    assert torch.isfinite(loss)
    assert abs(loss.item() - (2e4 + torch.log(torch.tensor(2.0)).item()) / 5) < 1e-3
    assert torch.isfinite(logreg.sigmoid(z)).all()
    x = torch.ones(5, 1, dtype=dtype)
    assert all(torch.isfinite(g).all() for g in logreg.logreg_backward(x, z, t))


# ----------------------------------------------------------------------------- the contract

def test_training_math_runs_under_inference_mode_without_any_graph():
    params = random_params([9, 7, 4], gen(8), torch.float32)
    x, y = randn(4, 9, g=gen(9), dtype=torch.float32), torch.tensor([0, 1, 2, 3])
    with torch.inference_mode():
        logits, cache = fwd.mlp_forward(params, x)
        grads = bwd.mlp_backward(params, cache, y)
        new = logreg.sgd_step(params, grads, 0.1)
        lr_grads = logreg.logreg_backward(x, x[:, 0], torch.tensor([0, 1, 1, 0]))
    for t in (logits, *cache, *grads, *new, *lr_grads):
        assert not t.requires_grad and t.grad_fn is None


def test_sgd_step_is_pure():
    params = (torch.ones(2, 2), torch.zeros(2))
    grads = (torch.full((2, 2), 2.0), torch.ones(2))
    new = logreg.sgd_step(params, grads, 0.5)
    assert torch.equal(params[0], torch.ones(2, 2)) and torch.equal(grads[1], torch.ones(2))
    assert torch.equal(new[0], torch.zeros(2, 2)) and torch.equal(new[1], torch.full((2,), -0.5))


def test_sgd_step_refuses_a_gradient_of_another_dtype():
    params = (torch.ones(2, 2),)
    with pytest.raises(ValueError, match="gradient 0 is torch.float64"):
        logreg.sgd_step(params, (torch.ones(2, 2, dtype=torch.float64),), 0.1)


def test_linear_decay_stops_at_zero():
    assert logreg.linear_decay(0.5, 0, 10) == 0.5
    assert logreg.linear_decay(0.5, 5, 10) == pytest.approx(0.25)
    assert logreg.linear_decay(0.5, 10, 10) == 0.0 and logreg.linear_decay(0.5, 15, 10) == 0.0


def test_mlp_forward_refuses_a_single_unbatched_sample():
    params = random_params([5, 3], gen(1))
    with pytest.raises(ValueError, match=r"for a single sample pass x\[None\]"):
        fwd.mlp_forward(params, randn(5, g=gen(2)))
    assert fwd.mlp_forward(params, randn(5, g=gen(2))[None])[0].shape == (1, 3)


# ----------------------------------------------------------------------------- labels, alike

LOGITS = randn(4, 3, g=gen(21))
LABEL_USERS = {  # every function that reads class labels, called on 3-class logits
    "cross_entropy": lambda y: fwd.cross_entropy(LOGITS, y),
    "softmax_cross_entropy_backward": lambda y: bwd.softmax_cross_entropy_backward(LOGITS, y),
    "notebook_softmax_cross_entropy_backward":
        lambda y: bwd.notebook_softmax_cross_entropy_backward(LOGITS, y),
    "mlp_backward": lambda y: bwd.mlp_backward(random_params([3, 3], gen(3)), (LOGITS, LOGITS), y),
    "accuracy": lambda y: common.accuracy(LOGITS, y),
    "smoothed_cross_entropy": lambda y: train.smoothed_cross_entropy(LOGITS, y, 0.1),
    "smoothed_cross_entropy_backward":
        lambda y: train.smoothed_cross_entropy_backward(LOGITS, y, 0.1),
}
BINARY_USERS = {  # lesson 01's binary labels: classes 0 and 1
    "bce_with_logits": lambda y: logreg.bce_with_logits(LOGITS[:, 0], y),
    "logreg_backward": lambda y: logreg.logreg_backward(LOGITS, LOGITS[:, 0], y),
    "binary_metrics": lambda y: logreg.binary_metrics(LOGITS[:, 0], y),
}


@pytest.mark.parametrize("user", sorted(LABEL_USERS) + sorted(BINARY_USERS))
@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool, torch.float32, torch.int32])
def test_labels_of_a_wrong_dtype_raise_one_clear_error_everywhere(user, dtype):
    fn = {**LABEL_USERS, **BINARY_USERS}[user]
    with pytest.raises(ValueError, match="int64"):
        fn(torch.tensor([0, 1, 1, 0]).to(dtype))


@pytest.mark.parametrize("user", sorted(LABEL_USERS))
@pytest.mark.parametrize("bad", [-1, 3, 100])
def test_labels_out_of_range_raise_in_the_loss_and_its_gradient_alike(user, bad):
    # scatter/gather refuse it in the losses and gradients (reading the values in a check
    # would make the host wait for a GPU every step); accuracy reads them anyway and says so
    with pytest.raises((ValueError, RuntimeError), match="out of bounds|outside"):
        LABEL_USERS[user](torch.tensor([0, bad, 1, 2]))


@pytest.mark.parametrize("user", sorted(BINARY_USERS))
@pytest.mark.parametrize("bad", [-1, 2])
def test_binary_labels_other_than_0_and_1_raise(user, bad):
    with pytest.raises((ValueError, RuntimeError), match="out of bounds|outside"):
        BINARY_USERS[user](torch.tensor([0, bad, 1, 0]))


@pytest.mark.parametrize("user", sorted(set(LABEL_USERS) - {"mlp_backward"}) + sorted(BINARY_USERS))
@pytest.mark.parametrize("count", [3, 5])
def test_one_label_per_row_of_logits_or_one_clear_error(user, count):
    # cross_entropy's gather would silently score only the first 3 rows; others would broadcast
    fn = {**LABEL_USERS, **BINARY_USERS}[user]
    with pytest.raises(ValueError, match=f"got {count} labels for 4 rows|one per row"):
        fn(torch.zeros(count, dtype=torch.int64))


"""Lesson functions copied into another project, unchanged: an MLP learns three spirals.

Each function below is pasted from the lessons as it stands there, with the lines its
Needs: line asks for (here only `import math` and `import torch`); tests/test_copy_out.py
checks they are still identical to the lessons' and runs this file.

    python examples/spirals.py
"""

import math

import torch


def init_params(sizes, generator=None, dtype=torch.float32, device="cpu"):
    """sizes (D, d_1, ..., C) -> (W1, b1, ..., Wn, bn), W (fan_in, fan_out), b (fan_out,).

    He-normal: W ~ N(0, 2 / fan_in) and b = 0, so ReLU layers keep their activations' scale
    (docs/02, section 4). Drawn on the CPU, then moved: one seed, one network, any device.
    Needs: math, torch
    """
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        W = torch.randn(fan_in, fan_out, generator=generator, dtype=dtype) * math.sqrt(2 / fan_in)
        params += [W.to(device), torch.zeros(fan_out, dtype=dtype, device=device)]
    return tuple(params)


def linear_forward(h, W, b):
    """h (B, I), W (I, O), b (O,) -> Z = h W + b (B, O); b is added to every row.

    Needs: nothing
    """
    return h @ W + b


def relu(z):
    """z (B, N) -> H = max(z, 0) (B, N).

    Needs: nothing
    """
    return z.clamp(min=0)


def softmax(logits):
    """logits (B, C) -> probabilities P (B, C), each row summing to 1.

    Subtracting each row's max changes nothing (it cancels in the ratio) but keeps exp() from
    overflowing: the largest exponent is exp(0) = 1 (docs/02, section 2).
    Needs: nothing
    """
    e = (logits - logits.max(dim=1, keepdim=True).values).exp()  # (B, C), in (0, 1]
    return e / e.sum(dim=1, keepdim=True)


def log_softmax(logits):
    """logits (B, C) -> log P (B, C) = shifted - log(sum(exp(shifted))), finite for any logits.

    Needs: nothing
    """
    shifted = logits - logits.max(dim=1, keepdim=True).values  # (B, C), each row's max is 0
    return shifted - shifted.exp().sum(dim=1, keepdim=True).log()


def cross_entropy(logits, y):
    """Mean over the batch of -log P[b, y_b]: logits (B, C), labels y (B,) int64 -> scalar.

    Taken from log_softmax, never log(softmax), which gives log(0) = -inf once a probability
    underflows (docs/02, section 3). gather raises for a label outside [0, C) and for labels
    that are not integers (uint8, bool, float): a wrong label is never read as another class.
    Needs: log_softmax
    """
    return -log_softmax(logits).gather(1, y.unsqueeze(1)).mean()


def mlp_forward(params, x):
    """params (W1, b1, ..., Wn, bn), x (B, D) -> logits Z_n (B, C), cache (H_0, ..., H_{n-1}, Z_n).

    Needs: linear_forward, relu
    """
    cache = [x]
    for l in range(len(params) // 2 - 1):  # hidden layer l + 1: W, b = params[2l], params[2l + 1]
        cache.append(relu(linear_forward(cache[-1], params[2 * l], params[2 * l + 1])))  # H_l
    logits = linear_forward(cache[-1], params[-2], params[-1])  # Z_n (B, C), no ReLU
    return logits, (*cache, logits)


def one_hot(y, n_classes, dtype):
    """Labels y (B,) int64 in [0, n_classes) -> Y (B, n_classes) of dtype: 1 at [b, y_b].

    scatter_ raises for a label outside [0, n_classes) and for labels that are not integers.
    Needs: torch
    """
    return torch.zeros(len(y), n_classes, dtype=dtype, device=y.device).scatter_(
        1, y.unsqueeze(1), 1.0)


def softmax_cross_entropy_backward(logits, y):
    """delta_n = dL/dZ_n (B, C) of cross_entropy (02); logits Z_n (B, C), labels y (B,) int64.

    Derive it in docs/03_mlp_backward.md, section 1 (steps 1-17).
    Needs: softmax (02), one_hot
    """
    B, C = logits.shape
    return (softmax(logits) - one_hot(y, C, logits.dtype)) / B


def linear_backward(dz, h, W, need_dh=True):
    """Z = H W + b: dz = dL/dZ (B, O), h = H (B, I), W (I, O) -> dh (B, I), dW (I, O), db (O,).

    dh = dL/dH, or None when need_dh is False. Derive it in docs/03, section 2 (steps 18-26).
    Needs: nothing
    """
    dW = h.T @ dz  # (I, B) @ (B, O) = (I, O): sum over the batch of H[b, i] dz[b, k], step 22
    db = dz.sum(dim=0)  # (O,): b is added to every row, so its gradient sums them, step 24
    dh = dz @ W.T if need_dh else None  # (B, O) @ (O, I) = (B, I), step 26
    return dh, dW, db


def relu_backward(dh, h):
    """H = relu(Z): dh = dL/dH (B, U), h = H (B, U) -> dz = dL/dZ (B, U).

    Derive it in docs/03, section 3 (steps 27-31).
    Needs: nothing
    """
    return dh * (h > 0)


def mlp_backward_from(params, cache, dlogits):
    """Carry dlogits = delta_n (B, C) back through the layers -> (dW1, db1, ..., dWn, dbn).

    params and cache = (H_0, ..., H_{n-1}, Z_n) as mlp_forward (02) gave them. The recursion
    is docs/03, section 4 (steps 32-35); the first layer's dh, the pixels' gradient, is skipped.
    Needs: linear_backward, relu_backward
    """
    grads = [None] * len(params)
    dz = dlogits  # delta_l of the layer we are at, starting with the last
    for i in reversed(range(len(params) // 2)):  # layer l = i + 1, from the last to the first
        W, h = params[2 * i], cache[i]  # W_l, and the layer's input H_{l-1}
        dh, grads[2 * i], grads[2 * i + 1] = linear_backward(dz, h, W, need_dh=i > 0)
        if i > 0:
            dz = relu_backward(dh, h)  # delta_{l-1}, through the ReLU that made H_{l-1}
    return tuple(grads)


def mlp_backward(params, cache, y):
    """Gradients of the mean cross-entropy -> (dW1, db1, ..., dWn, dbn), shaped like params.

    params and cache as mlp_forward (02) took and returned them; y (B,) int64.
    Needs: softmax_cross_entropy_backward, mlp_backward_from
    """
    return mlp_backward_from(params, cache, softmax_cross_entropy_backward(cache[-1], y))


def linear_decay(lr, step, total_steps):
    """The learning rate at step (0-based) of total_steps: lr falling linearly towards 0.

    Needs: nothing
    """
    return lr * (1 - step / total_steps)


def sgd_step(params, grads, lr):
    """One step of gradient descent -> a new tuple of p - lr * g (the inputs stay unchanged).

    Needs: torch
    """
    return tuple(torch.add(p, g, alpha=-lr) for p, g in zip(params, grads))


def minibatches(X, y, batch_size, generator=None):
    """Yield (xb (b, D), yb (b,)) covering every example once, shuffled when a generator is given.

    Each batch is one gather on the device X lives on; the last one may be smaller.
    Needs: torch
    """
    order = (torch.randperm(len(X), generator=generator).to(X.device) if generator is not None
             else torch.arange(len(X), device=X.device))  # (N,)
    for i in range(0, len(X), batch_size):
        idx = order[i:i + batch_size]  # (b,)
        yield X[idx], y[idx]


def accuracy(logits, y):
    """Share of rows of logits (N, C) whose largest entry is at the label y (N,), a float.

    Needs: nothing
    """
    return (logits.argmax(dim=1) == y).float().mean().item()


def spirals(n_per_class, generator):
    """Three interleaved spirals of 2-D points -> X (3 n, 2), y (3 n,) int64 in {0, 1, 2}."""
    r = torch.linspace(0.05, 1, n_per_class).repeat(3)  # (3 n,) radius
    y = torch.arange(3).repeat_interleave(n_per_class)  # (3 n,)
    angle = 4 * r + y * 2 * math.pi / 3 + 0.2 * torch.randn(3 * n_per_class, generator=generator)
    return torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1), y


if __name__ == "__main__":
    g = torch.Generator().manual_seed(0)
    X, y = spirals(200, g)
    params = init_params([2, 64, 64, 3], g)
    epochs, batch = 100, 40
    steps = epochs * -(-len(X) // batch)
    step = 0
    for _ in range(epochs):
        for xb, yb in minibatches(X, y, batch, g):
            logits, cache = mlp_forward(params, xb)
            grads = mlp_backward(params, cache, yb)
            params = sgd_step(params, grads, linear_decay(0.5, step, steps))
            step += 1
    logits = mlp_forward(params, X)[0]
    print(f"loss {cross_entropy(logits, y).item():.4f}, accuracy {accuracy(logits, y):.4f}")

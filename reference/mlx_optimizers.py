"""Base optimizers in plain NumPy float64 with MLX's semantics (mlx.optimizers), which differ
from PyTorch's in places, for the oracle of the MLX adapter.

As in ``optimizers.py`` each step is split as ``theta_new = decay * theta + delta``.

Where MLX differs from torch:
- SGD: the momentum buffer starts at zero, ``v = momentum * v + (1 - dampening) * g``.
- Adam/AdamW: no bias correction unless ``bias_correction=True``; eps added to sqrt(v).
- Muon: weight decay is coupled L2 (added to the gradient, so smoothed with it), the
  momentum is an EMA, the Newton-Schulz normalisation adds 1e-7 to the norm, and arrays of
  more than two dimensions are flattened to (shape[0], -1).
- The learning rate is held as a float32 array: its value is float32-rounded
  (``float(np.float32(lr))``) even when the parameters are float64.
"""

import math

import numpy as np

from .optimizers import Optimizer


def float32(lr):
    """MLX keeps the learning rate in a float32 array."""
    return float(np.float32(lr))


class SGD(Optimizer):
    """mlx.optimizers.SGD.

    ```
    g = grad + weight_decay * theta
    v = momentum * v + (1 - dampening) * g        (v starts at 0)
    delta = -lr * (g + momentum * v if nesterov else v)     (-lr * g when momentum = 0)
    ```
    """

    def __init__(self, learning_rate, momentum=0.0, weight_decay=0.0, dampening=0.0, nesterov=False):
        super().__init__()
        self.lr, self.momentum, self.weight_decay = float32(learning_rate), momentum, weight_decay
        self.dampening, self.nesterov = dampening, nesterov

    def update(self, name, param, grad):
        g = grad + self.weight_decay * param if self.weight_decay else grad
        if self.momentum <= 0:
            return 1.0, -self.lr * g
        v = self.state.get(name, {}).get("v", np.zeros_like(param))
        v = self.momentum * v + ((1 - self.dampening) * g if self.dampening > 0 else g)
        self.state[name] = {"v": v}
        return 1.0, -self.lr * (g + self.momentum * v if self.nesterov else v)


class AdamW(Optimizer):
    """mlx.optimizers.AdamW (and Adam with weight_decay=0).

    ```
    m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
    delta = -lr m / (sqrt(v) + eps), or with bias correction
    delta = -(lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    decay = 1 - lr * weight_decay
    ```
    """

    def __init__(self, learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, bias_correction=False):
        super().__init__()
        self.lr, self.betas, self.eps = float32(learning_rate), betas, eps
        self.weight_decay, self.bias_correction = weight_decay, bias_correction

    def update(self, name, param, grad):
        b1, b2 = self.betas
        state = self.state.setdefault(name, {"m": np.zeros_like(param), "v": np.zeros_like(param), "t": 0})
        state["t"] += 1
        state["m"] = b1 * state["m"] + (1 - b1) * grad
        state["v"] = b2 * state["v"] + (1 - b2) * grad * grad
        if self.bias_correction:
            t = state["t"]
            delta = -(self.lr / (1 - b1**t)) * state["m"] / (np.sqrt(state["v"]) / math.sqrt(1 - b2**t) + self.eps)
        else:
            delta = -self.lr * state["m"] / (np.sqrt(state["v"]) + self.eps)
        return 1 - self.lr * self.weight_decay, delta


def newton_schulz(x, steps=5):
    """mlx.optimizers.Muon's quintic iteration: X / (||X|| + 1e-7), then X = aX + (bA + cA^2)X."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = x.shape[0] > x.shape[1]
    X = x.T if tall else x  # (rows <= cols)
    X = X / (np.linalg.norm(X) + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.T if tall else X


class Muon(Optimizer):
    """mlx.optimizers.Muon.

    ```
    g = grad + weight_decay * theta               (coupled: part of the gradient)
    v = momentum * v + (1 - momentum) * g
    u = (1 - momentum) g + momentum v (nesterov) or v
    delta = -lr * sqrt(max(1, rows / cols)) * NewtonSchulz(u reshaped to 2-D)   (ndim >= 2)
    delta = -lr * u                                                            (ndim < 2)
    ```
    """

    def __init__(self, learning_rate, momentum=0.95, weight_decay=0.01, nesterov=True, ns_steps=5):
        super().__init__()
        self.lr, self.momentum, self.weight_decay = float32(learning_rate), momentum, weight_decay
        self.nesterov, self.ns_steps = nesterov, ns_steps

    def update(self, name, param, grad):
        g = grad + self.weight_decay * param if self.weight_decay else grad
        v = self.state.get(name, {}).get("v", np.zeros_like(param))
        v = self.momentum * v + (1 - self.momentum) * g
        self.state[name] = {"v": v}
        u = g * (1 - self.momentum) + v * self.momentum if self.nesterov else v
        lr = self.lr
        if u.ndim >= 2:
            shape = u.shape
            u = newton_schulz(u.reshape(shape[0], -1), self.ns_steps).reshape(shape)
            lr = lr * max(1, u.shape[-2] / u.shape[-1]) ** 0.5
        return 1.0, -lr * u

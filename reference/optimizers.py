"""Base optimizers in plain NumPy float64, with PyTorch's exact semantics and argument names.

Each optimizer splits one parameter's step into two parts, because Gradient Smoothing
treats them differently:

    theta_new = decay * theta + delta

``decay`` is the decoupled weight decay (1 - lr * weight_decay for AdamW, Adam with
decoupled_weight_decay=True and Muon; 1 otherwise): it shrinks each layer toward its own
zero and is never mixed across depth. ``delta`` is the rest of the step, the part that
smoothing mixes. Coupled L2 decay (SGD, Adam) is added to the gradient, so it is inside
``delta`` and is smoothed with it.

State is kept per parameter name in ``self.state[name]``, as torch keeps it per tensor.
Parameters whose gradient is None are skipped, as torch skips them.
"""

import math

import numpy as np


class Optimizer:
    """Shared driver: ``step`` applies ``update`` to every parameter that has a gradient."""

    def __init__(self):
        self.state = {}

    def update(self, name, param, grad):
        """Return (decay, delta) for one parameter and advance its state."""
        raise NotImplementedError

    def step(self, params, grads):
        """Return the new parameters (a new dict); ``params`` and ``grads`` are not changed."""
        new = dict(params)
        for name, param in params.items():
            grad = grads.get(name)
            if grad is None:
                continue
            decay, delta = self.update(name, param, grad)
            new[name] = decay * param + delta
        return new


class SGD(Optimizer):
    """torch.optim.SGD.

    ```
    g = -grad (maximize) or grad
    g = g + weight_decay * theta                         (coupled L2)
    b = g (first step) or momentum * b + (1 - dampening) * g
    g = g + momentum * b (nesterov) or b (momentum > 0)
    delta = -lr * g
    ```
    """

    def __init__(self, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False):
        super().__init__()
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.weight_decay, self.nesterov, self.maximize = weight_decay, nesterov, maximize

    def update(self, name, param, grad):
        grad = -grad if self.maximize else grad
        g = grad + self.weight_decay * param if self.weight_decay else np.array(grad, dtype=np.float64)
        if self.momentum:
            state = self.state.setdefault(name, {})
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = g.copy()
            else:
                state["momentum_buffer"] = self.momentum * state["momentum_buffer"] + (1 - self.dampening) * g
            buf = state["momentum_buffer"]
            g = g + self.momentum * buf if self.nesterov else buf
        return 1.0, -self.lr * g


class Adam(Optimizer):
    """torch.optim.Adam (and AdamW with ``decoupled_weight_decay=True``).

    ```
    g = -grad (maximize) or grad
    g = g + weight_decay * theta                         (coupled; not when decoupled)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g^2;   v_max = max(v_max, v) (amsgrad)
    denom = sqrt(v or v_max) / sqrt(1 - beta2^t) + eps
    delta = -lr / (1 - beta1^t) * m / denom
    decay = 1 - lr * weight_decay                        (decoupled only)
    ```
    """

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                 decoupled_weight_decay=False, maximize=False):
        super().__init__()
        self.lr, self.betas, self.eps = lr, betas, eps
        self.weight_decay, self.amsgrad, self.maximize = weight_decay, amsgrad, maximize
        self.decoupled_weight_decay = decoupled_weight_decay

    def update(self, name, param, grad):
        beta1, beta2 = self.betas
        state = self.state.setdefault(name, {})
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(param, dtype=np.float64)
            state["exp_avg_sq"] = np.zeros_like(param, dtype=np.float64)
            if self.amsgrad:
                state["max_exp_avg_sq"] = np.zeros_like(param, dtype=np.float64)
        state["step"] += 1
        t = state["step"]
        decay = 1.0
        g = -grad if self.maximize else grad
        if self.weight_decay:
            if self.decoupled_weight_decay:
                decay = 1 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * param
        m = state["exp_avg"] = state["exp_avg"] + (1 - beta1) * (g - state["exp_avg"])  # torch's lerp
        v = state["exp_avg_sq"] = beta2 * state["exp_avg_sq"] + (1 - beta2) * g * g
        if self.amsgrad:
            v = state["max_exp_avg_sq"] = np.maximum(state["max_exp_avg_sq"], v)
        denom = np.sqrt(v) / math.sqrt(1 - beta2**t) + self.eps
        return decay, -(self.lr / (1 - beta1**t)) * (m / denom)


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (default 1e-2)."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False):
        super().__init__(lr, betas, eps, weight_decay, amsgrad, decoupled_weight_decay=True, maximize=maximize)


def newton_schulz(x, coefficients=(3.4445, -4.7750, 2.0315), steps=5, eps=1e-7):
    """The quintic Newton-Schulz iteration of torch.optim.Muon, in float64.

    X = G / max(||G||_F, eps) (transposed so that rows <= cols); then ``steps`` times:
    A = X X^T,  X = a X + (b A + c A A) X.   torch runs this in bfloat16.
    """
    a, b, c = coefficients
    tall = x.shape[0] > x.shape[1]
    X = x.T if tall else x  # (rows <= cols)
    X = X / max(np.linalg.norm(X), eps)
    for _ in range(steps):
        A = X @ X.T  # (rows, rows)
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.T if tall else X


class Muon(Optimizer):
    """torch.optim.Muon, for 2-D parameters.

    ```
    b = b + (1 - momentum) * (grad - b)                  (torch's lerp)
    u = grad + momentum * (b - grad) (nesterov) or b
    O = NewtonSchulz(u)
    lr_adj = lr * sqrt(max(1, A / B)) ("original") or lr * 0.2 * sqrt(max(A, B)) ("match_rms_adamw")
    delta = -lr_adj * O;   decay = 1 - lr * weight_decay (decoupled)
    ```
    """

    def __init__(self, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7, ns_steps=5, adjust_lr_fn=None):
        super().__init__()
        self.lr, self.weight_decay, self.momentum, self.nesterov = lr, weight_decay, momentum, nesterov
        self.ns_coefficients, self.eps, self.ns_steps = ns_coefficients, eps, ns_steps
        self.adjust_lr_fn = adjust_lr_fn

    def adjusted_lr(self, shape):
        """torch's Muon learning rate for an (A, B) matrix: lr * sqrt(max(1, A / B)) ("original")
        or lr * 0.2 * sqrt(max(A, B)) ("match_rms_adamw")."""
        A, B = shape[:2]
        if self.adjust_lr_fn in (None, "original"):
            return self.lr * math.sqrt(max(1, A / B))
        return self.lr * 0.2 * math.sqrt(max(A, B))  # "match_rms_adamw"

    def update(self, name, param, grad):
        state = self.state.setdefault(name, {})
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = np.zeros_like(grad, dtype=np.float64)
        buf = state["momentum_buffer"] = state["momentum_buffer"] + (1 - self.momentum) * (grad - state["momentum_buffer"])
        u = grad + self.momentum * (buf - grad) if self.nesterov else buf
        O = newton_schulz(u, self.ns_coefficients, self.ns_steps, self.eps)
        return 1 - self.lr * self.weight_decay, -self.adjusted_lr(param.shape) * O


class Partition(Optimizer):
    """Several optimizers side by side, each owning some names (Muon for the blocks'
    matrices, AdamW for the rest): ``Partition({"muon": Muon(...), ...}, owner)`` where
    ``owner(name)`` returns the key of the optimizer that steps ``name``."""

    def __init__(self, optimizers, owner):
        super().__init__()
        self.optimizers, self.owner = optimizers, owner

    def update(self, name, param, grad):
        return self.optimizers[self.owner(name)].update(name, param, grad)

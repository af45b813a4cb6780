"""The demo's models and training step in MLX: the twins of `gradsmooth.experiments.torch_models`.

The loop itself is `gradsmooth.experiments.loop.train`; `Trainer` is this framework's part of
it, with a compiled step.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

from gradsmooth.backends.mlx import GradientSmoothing

from . import loop
from .data import VOCAB
from .loop import Batch, WarmupCosine, model_size

if TYPE_CHECKING:
    from .runs import RunConfig, RunResult

__all__ = ["ViT", "GPT", "Trainer", "build_model", "build_optimizer", "evaluate", "train"]

# the task's default model (loop.MODEL_SIZES in these classes' terms)
SIZES = {"vit": dict(depth=8, dim=64, heads=4), "lm": dict(depth=6, dim=128, heads=4)}


class Attention(nn.Module):
    """Multi-head self-attention, causal or not."""

    def __init__(self, dim: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def __call__(self, x: mx.array) -> mx.array:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).transpose(2, 0, 3, 1, 4)  # (b, h, t, d/h)
        y = mx.fast.scaled_dot_product_attention(q, k, v, scale=(d // self.heads) ** -0.5,
                                                 mask="causal" if self.causal else None)
        return self.proj(y.transpose(0, 2, 1, 3).reshape(b, t, d))


class Block(nn.Module):
    """A pre-norm transformer block: attention, then a 4x GELU MLP, each residual."""

    def __init__(self, dim: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, causal)
        self.norm2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def __call__(self, x: mx.array) -> mx.array:
        x = x + self.attn(self.norm1(x))
        return x + self.out(nn.gelu(self.fc(self.norm2(x))))


class ViT(nn.Module):
    """8 x 8 images -> 16 patches of 2 x 2 -> class token + patches through ``depth`` blocks -> 10 classes."""

    def __init__(self, depth: int = 8, dim: int = 64, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.cls = mx.zeros((1, 1, dim))
        self.pos = mx.random.normal((1, 17, dim)) * 0.02
        self.blocks = [Block(dim, heads, causal=False) for _ in range(depth)]
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def __call__(self, images: mx.array, outputs: list | None = None) -> mx.array:
        b = images.shape[0]
        patches = images.reshape(b, 4, 2, 4, 2).transpose(0, 1, 3, 2, 4).reshape(b, 16, 4)  # (b, 16, 4)
        x = self.embed(patches)
        x = mx.concatenate([mx.broadcast_to(self.cls, (b, 1, x.shape[-1])), x], axis=1) + self.pos  # (b, 17, d)
        for block in self.blocks:
            x = block(x)
            if outputs is not None:
                outputs.append(x)
        return self.head(self.norm(x[:, 0]))


class GPT(nn.Module):
    """Bytes -> ``depth`` causal blocks -> next-byte logits."""

    def __init__(self, depth: int = 6, dim: int = 128, heads: int = 4, context: int = 64) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = mx.random.normal((1, context, dim)) * 0.02
        self.blocks = [Block(dim, heads, causal=True) for _ in range(depth)]
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB)

    def __call__(self, ids: mx.array, outputs: list | None = None) -> mx.array:
        x = self.tok(ids) + self.pos[:, : ids.shape[1]]
        for block in self.blocks:
            x = block(x)
            if outputs is not None:
                outputs.append(x)
        return self.head(self.norm(x))


def build_model(config: RunConfig) -> nn.Module:
    """The task's model (``config.depth`` blocks of width ``config.width``, or the task's
    defaults), initialised from ``config.seed`` and evaluated."""
    mx.random.seed(config.seed)
    size = model_size(config)
    model = ViT(**size) if config.task == "vit" else GPT(**size, context=config.context)
    mx.eval(model.parameters())
    return model


def _schedule(config: RunConfig, peak: float) -> Callable[[mx.array], mx.array]:
    """`WarmupCosine` as an MLX schedule peaking at ``peak``,
    so that it runs inside the compiled step."""
    s = WarmupCosine.of(config)
    return optim.join_schedules([optim.linear_schedule(peak / s.warm, peak, s.warm - 1 if s.warm > 1 else 1),
                                 optim.cosine_decay(peak, s.decay, peak * s.floor)], [s.warm])


def build_optimizer(config: RunConfig) -> optim.Optimizer:
    """sgd (momentum 0.9, nesterov), adamw (bias-corrected as torch's), or muon (Muon for the
    blocks' matrices, AdamW at lr / 10 for the rest); then Gradient Smoothing when asked.
    MLX applies weight decay to every parameter an optimizer holds."""
    lr = _schedule(config, config.lr)
    if config.optimizer == "sgd":
        base: optim.Optimizer = optim.SGD(learning_rate=lr, momentum=0.9, nesterov=True)
    elif config.optimizer == "adamw":
        base = optim.AdamW(learning_rate=lr, weight_decay=config.weight_decay, bias_correction=True)
    else:
        matrices = lambda name, g: name.startswith("blocks.") and g.ndim >= 2  # noqa: E731
        base = optim.MultiOptimizer([optim.Muon(learning_rate=lr, weight_decay=config.weight_decay),
                                     optim.AdamW(learning_rate=_schedule(config, config.lr / 10), weight_decay=0.0,
                                                 bias_correction=True)], [matrices])
    return GradientSmoothing(base, **config.smoothing) if config.smoothing else base


def _loss(model: nn.Module, x: mx.array, y: mx.array) -> mx.array:
    """Mean cross-entropy of the model's logits on ``x`` against ``y`` (labels or next bytes)."""
    return nn.losses.cross_entropy(model(x), y).mean()


def evaluate(model: nn.Module, config: RunConfig, data: Any, val: dict[str, list] | None = None) -> dict[str, float]:
    """vit: test_loss and test_acc on the test images (and val_loss, val_acc on the validation
    images when the data has them); lm: ``<split>_loss``, the mean over each split's batches in ``val``."""
    if config.task == "vit":
        out = _classify(model, "test", data.x_test, data.y_test)
        if data.x_val is not None:
            out |= _classify(model, "val", data.x_val, data.y_val)
        return out
    return {f"{name}_loss": float(np.mean([_loss(model, x, y).item() for x, y in batches]))
            for name, batches in val.items()}


def _classify(model: nn.Module, split: str, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """``<split>_loss`` and ``<split>_acc`` of the model on images ``x`` with labels ``y``."""
    logits, labels = model(mx.array(x)), mx.array(y)
    return {f"{split}_loss": nn.losses.cross_entropy(logits, labels).mean().item(),
            f"{split}_acc": (logits.argmax(axis=1) == labels).astype(mx.float32).mean().item()}


def _compiled_step(model: nn.Module, optimizer: optim.Optimizer) -> tuple[Callable[[mx.array, mx.array], mx.array], list]:
    """A compiled training step (loss, gradients clipped to norm 1, update) and the state it updates."""
    value_and_grad = nn.value_and_grad(model, _loss)
    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x: mx.array, y: mx.array) -> mx.array:
        loss, grads = value_and_grad(model, x, y)
        grads, _ = optim.clip_grad_norm(grads, 1.0)
        optimizer.update(model, grads)
        return loss

    return step, state


class Trainer:
    """MLX's part of the loop (`gradsmooth.experiments.loop.Trainer`): the model and
    optimizer of ``config`` and a compiled step (the schedule lives in the optimizer)."""

    def __init__(self, config: RunConfig, data: Any, val: dict[str, list[Batch]] | None) -> None:
        self.config, self.data = config, data
        self.model = build_model(config)
        self.optimizer = build_optimizer(config)
        self._step, self._state = _compiled_step(self.model, self.optimizer)
        self.val = ({name: [tuple(map(mx.array, b)) for b in batches] for name, batches in val.items()}
                    if val is not None else None)

    def step(self, step: int, x: np.ndarray, y: np.ndarray) -> float:
        """One compiled step on the batch (the optimizer counts the steps itself); its loss before the step."""
        loss = self._step(mx.array(x), mx.array(y))
        mx.eval(self._state)
        return loss.item()

    def evaluate(self) -> dict[str, float]:
        """The task's held-out metrics (`evaluate`)."""
        return evaluate(self.model, self.config, self.data, self.val)

    def parameters(self) -> dict[str, np.ndarray]:
        """A copy of every parameter by name."""
        return {k: np.array(v) for k, v in tree_flatten(self.model.parameters())}

    def block_outputs(self, x: np.ndarray) -> list[np.ndarray]:
        """Each block's output on ``x``, as (tokens, features)."""
        outputs: list[mx.array] = []
        self.model(mx.array(x), outputs=outputs)
        return [np.array(o.reshape(-1, o.shape[-1])) for o in outputs]


def train(config: RunConfig, data: Any, result: RunResult, progress: Callable[[int], None] | None = None,
          diagnose: bool = False) -> None:
    """Train ``config`` on ``data`` in MLX: `gradsmooth.experiments.loop.train` with `Trainer`."""
    loop.train(config, data, result, Trainer, progress=progress, diagnose=diagnose)

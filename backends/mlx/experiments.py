"""The demo's models and training loop in MLX: the twins of gradsmooth.backends.torch.experiments."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

from gradsmooth.diagnostics import block_update_similarity, representation_similarity
from gradsmooth.experiments.data import VOCAB, train_batches, val_batches
from gradsmooth.experiments.runs import RunConfig, RunResult

from .optimizer import GradientSmoothing

__all__ = ["ViT", "GPT", "build_model", "build_optimizer", "train"]

SIZES = {"vit": dict(depth=8, dim=64, heads=4), "lm": dict(depth=6, dim=128, heads=4)}


class Attention(nn.Module):
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
    mx.random.seed(config.seed)
    model = ViT(**SIZES["vit"]) if config.task == "vit" else GPT(**SIZES["lm"], context=config.context)
    mx.eval(model.parameters())
    return model


def _schedule(config: RunConfig, peak: float) -> Callable[[mx.array], mx.array]:
    """Linear warm-up, then cosine decay to a tenth (as the torch twin)."""
    warm = max(1, int(config.warmup * config.steps))
    return optim.join_schedules([optim.linear_schedule(peak / warm, peak, warm - 1 if warm > 1 else 1),
                                 optim.cosine_decay(peak, max(1, config.steps - warm), peak * 0.1)], [warm])


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
    return nn.losses.cross_entropy(model(x), y).mean()


def evaluate(model: nn.Module, config: RunConfig, data: Any, val: tuple | None = None) -> dict[str, float]:
    if config.task == "vit":
        logits = model(mx.array(data.x_test))
        y = mx.array(data.y_test)
        return {"test_loss": nn.losses.cross_entropy(logits, y).mean().item(),
                "test_acc": (logits.argmax(axis=1) == y).astype(mx.float32).mean().item()}
    return {"val_loss": float(np.mean([_loss(model, x, y).item() for x, y in val]))}


def train(config: RunConfig, data: Any, result: RunResult, progress: Callable[[int], None] | None = None,
          diagnose: bool = False) -> None:
    """Train ``config`` on ``data`` with a compiled step, appending to ``result.history``."""
    model = build_model(config)
    opt = build_optimizer(config)
    value_and_grad = nn.value_and_grad(model, _loss)
    state = [model.state, opt.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x: mx.array, y: mx.array) -> mx.array:
        loss, grads = value_and_grad(model, x, y)
        grads, _ = optim.clip_grad_norm(grads, 1.0)
        opt.update(model, grads)
        return loss

    batches = train_batches(config.task, data, config.batch_size, config.context, config.seed)
    val = [tuple(map(mx.array, b)) for b in val_batches(data, config.batch_size, config.context)] \
        if config.task == "lm" else None
    running, similarities = [], []
    for i in range(config.steps):
        evaluating = (i + 1) % config.eval_every == 0 or i + 1 == config.steps
        before = dict(tree_flatten(model.parameters())) if diagnose and evaluating else None
        loss = step(*map(mx.array, next(batches)))
        mx.eval(state)
        running.append(loss.item())
        if before is not None:
            after = dict(tree_flatten(model.parameters()))
            similarities.append(block_update_similarity({k: np.array(after[k] - before[k]) for k in after}))
        if evaluating:
            entry = {"step": i + 1, "train_loss": float(np.mean(running[-config.eval_every :]))}
            entry.update(evaluate(model, config, data, val))
            result.history.append(entry)
        if progress:
            progress(i)
    if diagnose:
        result.diagnostics["update_similarity"] = np.mean(similarities, axis=0)
        outputs: list[mx.array] = []
        model(mx.array(data.x_test[:256]) if config.task == "vit" else val[0][0], outputs=outputs)
        result.diagnostics["representation_similarity"] = representation_similarity(
            [np.array(o.reshape(-1, o.shape[-1])) for o in outputs])

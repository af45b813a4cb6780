"""The demo's models and training loop in PyTorch (the MLX twin is gradsmooth.backends.mlx.experiments).

- ``vit``: a small Vision Transformer on 8 x 8 digits: 2 x 2 patches, a class token, pre-norm blocks.
- ``lm``: a small GPT on bytes: causal pre-norm blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (b, h, t, d/h) each
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (b, h, t, d/h)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, causal)
        self.norm2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.out(F.gelu(self.fc(self.norm2(x))))


class ViT(nn.Module):
    """8 x 8 images -> 16 patches of 2 x 2 -> class token + patches through ``depth`` blocks -> 10 classes."""

    def __init__(self, depth: int = 8, dim: int = 64, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads, causal=False) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        return images.view(b, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(b, 16, 4)  # (b, 16 patches, 4 pixels)

    def forward(self, images: torch.Tensor, outputs: list | None = None) -> torch.Tensor:
        x = self.embed(self.patches(images))  # (b, 16, d)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos  # (b, 17, d)
        for block in self.blocks:
            x = block(x)
            if outputs is not None:
                outputs.append(x)
        return self.head(self.norm(x[:, 0]))  # (b, classes)


class GPT(nn.Module):
    """Bytes -> ``depth`` causal blocks -> next-byte logits."""

    def __init__(self, depth: int = 6, dim: int = 128, heads: int = 4, context: int = 64) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Parameter(torch.randn(1, context, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads, causal=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB)

    def forward(self, ids: torch.Tensor, outputs: list | None = None) -> torch.Tensor:
        x = self.tok(ids) + self.pos[:, : ids.shape[1]]  # (b, t, d)
        for block in self.blocks:
            x = block(x)
            if outputs is not None:
                outputs.append(x)
        return self.head(self.norm(x))  # (b, t, vocab)


def build_model(config: RunConfig) -> nn.Module:
    torch.manual_seed(config.seed)
    if config.task == "vit":
        return ViT(**SIZES["vit"])
    return GPT(**SIZES["lm"], context=config.context)


def build_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """The base: sgd (momentum 0.9, nesterov), adamw, or muon (Muon at ``lr`` for the blocks'
    matrices, AdamW at lr / 10 for the rest); then Gradient Smoothing when asked."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and n.startswith("blocks.")]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and n.startswith("blocks."))]
    wd = config.weight_decay
    if config.optimizer == "sgd":
        base: Any = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True)
    elif config.optimizer == "adamw":
        base = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}],
                                 lr=config.lr)
    else:
        base = [torch.optim.Muon(decay, lr=config.lr, weight_decay=wd),
                torch.optim.AdamW(rest, lr=config.lr / 10, weight_decay=0.0)]
    if config.smoothing:
        return GradientSmoothing(base, model, **config.smoothing)
    return base if not isinstance(base, list) else _Both(base)


class _Both:
    """Two base optimizers stepped together (the unsmoothed Muon + AdamW recipe)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers
        self.param_groups = [g for o in optimizers for g in o.param_groups]

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none)


def _lr_factor(step: int, config: RunConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    warm = max(1, int(config.warmup * config.steps))
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, config.steps - warm)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))


def _loss(model: nn.Module, config: RunConfig, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def evaluate(model: nn.Module, config: RunConfig, data: Any, val: list | None = None) -> dict[str, float]:
    model.eval()
    try:
        if config.task == "vit":
            logits = model(torch.from_numpy(data.x_test))
            y = torch.from_numpy(data.y_test)
            return {"test_loss": F.cross_entropy(logits, y).item(), "test_acc": (logits.argmax(1) == y).float().mean().item()}
        losses = [_loss(model, config, x, y).item() for x, y in val]
        return {"val_loss": float(np.mean(losses))}
    finally:
        model.train()


def train(config: RunConfig, data: Any, result: RunResult, progress: Callable[[int], None] | None = None,
          diagnose: bool = False) -> None:
    """Train ``config`` on ``data``, appending to ``result.history`` at every evaluation
    (so a Ctrl-C leaves what was gathered so far)."""
    model = build_model(config)
    opt = build_optimizer(model, config)
    groups = opt.param_groups
    base_lrs = [g["lr"] for g in groups]
    batches = train_batches(config.task, data, config.batch_size, config.context, config.seed)
    val = [tuple(map(torch.from_numpy, b)) for b in val_batches(data, config.batch_size, config.context)] \
        if config.task == "lm" else None
    running, similarities = [], []
    for step in range(config.steps):
        factor = _lr_factor(step, config)
        for g, lr in zip(groups, base_lrs):
            g["lr"] = lr * factor
        x, y = map(torch.from_numpy, next(batches))
        loss = _loss(model, config, x, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        evaluating = (step + 1) % config.eval_every == 0 or step + 1 == config.steps
        before = {n: p.detach().clone() for n, p in model.named_parameters()} if diagnose and evaluating else None
        opt.step()
        running.append(loss.item())
        if before is not None:
            after = {n: p.detach() for n, p in model.named_parameters()}
            similarities.append(block_update_similarity({n: (after[n] - before[n]).numpy() for n in after}))
        if evaluating:
            entry = {"step": step + 1, "train_loss": float(np.mean(running[-config.eval_every :]))}
            entry.update(evaluate(model, config, data, val))
            result.history.append(entry)
        if progress:
            progress(step)
    if diagnose:
        result.diagnostics["update_similarity"] = np.mean(similarities, axis=0)
        result.diagnostics["representation_similarity"] = _representations(model, config, data, val)


@torch.no_grad()
def _representations(model: nn.Module, config: RunConfig, data: Any, val: list | None) -> np.ndarray:
    outputs: list[torch.Tensor] = []
    x = torch.from_numpy(data.x_test[:256]) if config.task == "vit" else val[0][0]
    model.eval()
    model(x, outputs=outputs)
    model.train()
    return representation_similarity([o.reshape(-1, o.shape[-1]).numpy() for o in outputs])

"""The demo's models and training step in PyTorch (the MLX twin is `gradsmooth.experiments.mlx_models`).

- ``vit``: a small Vision Transformer on 8 x 8 digits: 2 x 2 patches, a class token, pre-norm blocks.
- ``lm``: a small GPT on bytes: causal pre-norm blocks.

The loop itself is `gradsmooth.experiments.loop.train`; `Trainer` is this framework's part of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gradsmooth.backends.torch import GradientSmoothing

from . import loop
from .data import VOCAB
from .loop import Batch, WarmupCosine, model_size

if TYPE_CHECKING:
    from .runs import RunConfig, RunResult

__all__ = ["ViT", "GPT", "Both", "Trainer", "build_model", "build_optimizer", "cpu_threads", "deterministic", "evaluate",
           "train"]

# the task's default model (loop.MODEL_SIZES in these classes' terms)
SIZES = {"vit": dict(depth=8, dim=64, heads=4), "lm": dict(depth=6, dim=128, heads=4)}


@contextmanager
def cpu_threads(requested: int | None) -> Iterator[tuple[int, str]]:
    """Within: torch's CPU threads for a run, and why that many: ``requested`` (``--threads``),
    else OMP_NUM_THREADS where set (torch has read it), else 1, as these models are too small to
    gain from more threads. After: torch's count as it was."""
    before = torch.get_num_threads()
    if requested is not None:
        torch.set_num_threads(requested)
        why = "--threads"
    elif os.environ.get("OMP_NUM_THREADS"):
        why = "OMP_NUM_THREADS"
    else:
        torch.set_num_threads(1)
        why = "the default for these small models; --threads N to change"
    try:
        yield torch.get_num_threads(), why
    finally:
        torch.set_num_threads(before)


@contextmanager
def deterministic() -> Iterator[None]:
    """Within: ``torch.use_deterministic_algorithms(True)``; after: torch's previous setting
    (and its warn-only flag) again, so that a run leaves torch's global configuration as it was."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


class Attention(nn.Module):
    """Multi-head self-attention, causal or not."""

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
    """A pre-norm transformer block: attention, then a 4x GELU MLP, each residual."""

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
    """The task's model (``config.depth`` blocks of width ``config.width``, or the task's
    defaults), initialised from ``config.seed``."""
    torch.manual_seed(config.seed)
    if config.task == "vit":
        return ViT(**model_size(config))
    return GPT(**model_size(config), context=config.context)


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
        # the eager kernels: a published result then reproduces exactly whatever the default
        # path becomes (fused and eager agree to rounding, not bit for bit)
        return GradientSmoothing(base, model, fused=False, **config.smoothing)
    return base if not isinstance(base, list) else Both(base)


class Both:
    """Base optimizers stepped as one (the unsmoothed Muon + AdamW recipe): their param_groups
    in order, ``step`` and ``zero_grad``. (Gradient Smoothing takes such a list itself.)"""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers
        self.param_groups = [g for o in optimizers for g in o.param_groups]

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none)


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the model's logits on ``x`` against ``y`` (labels or next bytes)."""
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def evaluate(model: nn.Module, config: RunConfig, data: Any, val: dict[str, list] | None = None) -> dict[str, float]:
    """vit: test_loss and test_acc on the test images (and val_loss, val_acc on the validation
    images when the data has them); lm: ``<split>_loss``, the mean over each split's batches in ``val``."""
    model.eval()
    try:
        if config.task == "vit":
            out = _classify(model, "test", data.x_test, data.y_test)
            if data.x_val is not None:
                out |= _classify(model, "val", data.x_val, data.y_val)
            return out
        return {f"{name}_loss": float(np.mean([_loss(model, x, y).item() for x, y in batches]))
                for name, batches in val.items()}
    finally:
        model.train()


def _classify(model: nn.Module, split: str, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """``<split>_loss`` and ``<split>_acc`` of the model on images ``x`` with labels ``y``."""
    logits, labels = model(torch.from_numpy(x)), torch.from_numpy(y)
    return {f"{split}_loss": F.cross_entropy(logits, labels).item(),
            f"{split}_acc": (logits.argmax(1) == labels).float().mean().item()}


class Trainer:
    """PyTorch's part of the loop (`gradsmooth.experiments.loop.Trainer`): the model and
    optimizer of ``config``; each step sets the scheduled learning rate, clips the gradient norm to 1."""

    def __init__(self, config: RunConfig, data: Any, val: dict[str, list[Batch]] | None) -> None:
        self.config, self.data = config, data
        self.model = build_model(config)
        self.optimizer = build_optimizer(self.model, config)
        self.groups = self.optimizer.param_groups
        self.base_lrs = [g["lr"] for g in self.groups]
        self.schedule = WarmupCosine.of(config)
        self.val = ({name: [tuple(map(torch.from_numpy, b)) for b in batches] for name, batches in val.items()}
                    if val is not None else None)

    def step(self, step: int, x: np.ndarray, y: np.ndarray) -> float:
        """One optimizer step on the batch at the schedule's learning rate; its loss before the step."""
        factor = self.schedule.factor(step)
        for g, lr in zip(self.groups, self.base_lrs):
            g["lr"] = lr * factor
        loss = _loss(self.model, torch.from_numpy(x), torch.from_numpy(y))
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        return loss.item()

    def evaluate(self) -> dict[str, float]:
        """The task's held-out metrics (`evaluate`)."""
        return evaluate(self.model, self.config, self.data, self.val)

    def parameters(self) -> dict[str, np.ndarray]:
        """A copy of every parameter by name (the optimizer updates them in place)."""
        return {n: p.detach().clone().numpy() for n, p in self.model.named_parameters()}

    @torch.no_grad()
    def block_outputs(self, x: np.ndarray) -> list[np.ndarray]:
        """Each block's output on ``x`` in evaluation mode, as (tokens, features)."""
        outputs: list[torch.Tensor] = []
        self.model.eval()
        self.model(torch.from_numpy(x), outputs=outputs)
        self.model.train()
        return [o.reshape(-1, o.shape[-1]).numpy() for o in outputs]


def train(config: RunConfig, data: Any, result: RunResult, progress: Callable[[int], None] | None = None,
          diagnose: bool = False) -> None:
    """Train ``config`` on ``data`` in PyTorch: `gradsmooth.experiments.loop.train` with `Trainer`."""
    loop.train(config, data, result, Trainer, progress=progress, diagnose=diagnose)

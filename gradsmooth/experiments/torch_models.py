"""The demo's models and training step in PyTorch (the MLX twin is `gradsmooth.experiments.mlx_models`).

- ``vit``: a small Vision Transformer on 8 x 8 digits: 2 x 2 patches, a class token, pre-norm blocks.
- ``lm``: a small GPT on bytes: causal pre-norm blocks.
- ``diffusion``: a class-conditional diffusion transformer (DiT) on the digits: 2 x 2 patches,
  blocks conditioned on the timestep and the class by adaLN-Zero, predicting the noise.
- ``rl``: the GPT on addition problems, supervised (phase 1) then post-trained by policy gradient.

The loop itself is `gradsmooth.experiments.loop.train`; `TRAINERS` holds this
framework's part of it per task; the tasks' framework-free parts are
`diffusion` and `reasoning`.
"""

from __future__ import annotations

import copy
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

from . import diffusion, loop, reasoning
from .data import PROBLEM_VOCAB, VOCAB
from .loop import Batch, WarmupCosine, model_size

if TYPE_CHECKING:
    from .runs import RunConfig, RunResult

__all__ = ["ViT", "GPT", "DiT", "Both", "Trainer", "DiffusionTrainer", "RLTrainer", "TRAINERS", "DEVICES",
           "build_model", "build_optimizer", "cpu_threads", "evaluate", "train", "deterministic", "resolve_device",
           "running"]

# the task's default model (loop.MODEL_SIZES in these classes' terms)
SIZES = {task: dict(depth=s["depth"], dim=s["width"], heads=s["heads"]) for task, s in loop.MODEL_SIZES.items()}
DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str) -> str:
    """The device a run uses: ``auto`` is cuda where torch sees a GPU, else mps, else cpu; a named
    one must be there (ValueError naming it and why, before any training)."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if name not in DEVICES:
        hint = ": that is MLX's name, torch's are cuda and mps" if name == "gpu" else ""
        raise ValueError(f"device should be one of {DEVICES} for torch but is: {name!r}{hint}")
    if name == "cuda" and not cuda:
        why = "a CPU-only build of torch" if torch.version.cuda is None else "torch.cuda.is_available() is False"
        raise ValueError(f"device 'cuda' is not available here ({why}, torch {torch.__version__}): use cpu or auto")
    if name == "mps" and not mps:
        raise ValueError(f"device 'mps' is not available here (torch.backends.mps.is_available() is False): use cpu "
                         f"or auto")
    return name


@contextmanager
def running(config: RunConfig) -> Iterator[None]:
    """Where a run trains: `deterministic`, and on CUDA the cuBLAS workspace that
    deterministic matrix products need (``CUBLAS_WORKSPACE_CONFIG=:4096:8``, unless set), as it was after."""
    set_here = config.device == "cuda" and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    if set_here:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    try:
        with deterministic():
            yield
    finally:
        if set_here:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


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


def patches(images: torch.Tensor) -> torch.Tensor:
    """(b, 8, 8) images -> (b, 16 patches, 4 pixels): 2 x 2 patches, row by row."""
    b = images.shape[0]
    return images.view(b, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(b, 16, 4)


def unpatch(tokens: torch.Tensor) -> torch.Tensor:
    """(b, 16, 4) patches -> (b, 8, 8) images: the inverse of `patches`."""
    b = tokens.shape[0]
    return tokens.reshape(b, 4, 4, 2, 2).permute(0, 1, 3, 2, 4).reshape(b, 8, 8)


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

    def forward(self, images: torch.Tensor, outputs: list | None = None) -> torch.Tensor:
        x = self.embed(patches(images))  # (b, 16, d)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos  # (b, 17, d)
        for block in self.blocks:
            x = block(x)
            if outputs is not None:
                outputs.append(x)
        return self.head(self.norm(x[:, 0]))  # (b, classes)


class GPT(nn.Module):
    """Tokens (bytes, or the rl task's) -> ``depth`` causal blocks -> next-token logits."""

    def __init__(self, depth: int = 6, dim: int = 128, heads: int = 4, context: int = 64, vocab: int = VOCAB) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, context, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads, causal=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor, outputs: list | None = None) -> torch.Tensor:
        x = self.tok(ids) + self.pos[:, : ids.shape[1]]  # (b, t, d)
        for block in self.blocks:
            x = block(x)
            if outputs is not None:
                outputs.append(x)
        return self.head(self.norm(x))  # (b, t, vocab)


def _zero(layer: nn.Linear) -> nn.Linear:
    """``layer`` with its weight and bias zero (adaLN-Zero's modulation, the DiT's output)."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class DiTBlock(nn.Module):
    """A DiT block with adaLN-Zero: attention, then a 4x GELU MLP, each on a LayerNorm (no affine
    parameters) shifted and scaled by the conditioning ``c`` and gated by it, per channel:
    ``x + gate * f(norm(x) * (1 + scale) + shift)``. The modulation starts at zero, so the block
    starts as the identity."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads, causal=False)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)
        self.modulation = _zero(nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(c))[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1)
        return x + gate2 * self.out(F.gelu(self.fc(self.norm2(x) * (1 + scale2) + shift2)))


class DiT(nn.Module):
    """Noised 8 x 8 images -> 16 patches of 2 x 2 -> ``depth`` DiT blocks conditioned on the
    timestep (its sinusoidal features through a SiLU MLP) plus the class's embedding -> the
    predicted noise, 8 x 8 (a final adaLN layer and a linear map, both starting at zero)."""

    def __init__(self, depth: int = 6, dim: int = 64, heads: int = 4, classes: int = diffusion.CLASSES) -> None:
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.02)
        self.time_in = nn.Linear(dim, dim)
        self.time_out = nn.Linear(dim, dim)
        self.label = nn.Embedding(classes, dim)
        self.blocks = nn.ModuleList([DiTBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation = _zero(nn.Linear(dim, 2 * dim))
        self.head = _zero(nn.Linear(dim, 4))

    def forward(self, x: torch.Tensor, t_features: torch.Tensor, y: torch.Tensor,
                outputs: list | None = None) -> torch.Tensor:
        h = self.embed(patches(x)) + self.pos  # (b, 16, d)
        c = self.time_out(F.silu(self.time_in(t_features))) + self.label(y)  # (b, d)
        for block in self.blocks:
            h = block(h, c)
            if outputs is not None:
                outputs.append(h)
        shift, scale = self.modulation(F.silu(c))[:, None].chunk(2, dim=-1)
        return unpatch(self.head(self.norm(h) * (1 + scale) + shift))  # (b, 8, 8)


def build_model(config: RunConfig, data: Any = None) -> nn.Module:
    """The task's model (``config.depth`` blocks of width ``config.width``, or the task's
    defaults), initialised from ``config.seed``; rl's GPT reads its problems' size from ``data``."""
    torch.manual_seed(config.seed)
    if config.task == "vit":
        return ViT(**model_size(config))
    if config.task == "diffusion":
        return DiT(**model_size(config))
    if config.task == "rl":
        return GPT(**model_size(config), context=reasoning.context(data.digits), vocab=PROBLEM_VOCAB)
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
def evaluate(model: nn.Module, config: RunConfig, data: Any, val: dict[str, list] | None = None,
             device: str = "cpu") -> dict[str, float]:
    """vit: test_loss and test_acc on the test images (and val_loss, val_acc on the validation
    images when the data has them); lm: ``<split>_loss``, the mean over each split's batches in
    ``val`` (tensors on ``device``)."""
    model.eval()
    try:
        if config.task == "vit":
            out = _classify(model, "test", data.x_test, data.y_test, device)
            if data.x_val is not None:
                out |= _classify(model, "val", data.x_val, data.y_val, device)
            return out
        return {f"{name}_loss": float(np.mean([_loss(model, x, y).item() for x, y in batches]))
                for name, batches in val.items()}
    finally:
        model.train()


def _classify(model: nn.Module, split: str, x: np.ndarray, y: np.ndarray, device: str) -> dict[str, float]:
    """``<split>_loss`` and ``<split>_acc`` of the model on images ``x`` with labels ``y``."""
    logits, labels = model(torch.from_numpy(x).to(device)), torch.from_numpy(y).to(device)
    return {f"{split}_loss": F.cross_entropy(logits, labels).item(),
            f"{split}_acc": (logits.argmax(1) == labels).float().mean().item()}


class _Session:
    """What every task's trainer shares: the model on the run's device, the scheduled learning
    rate, one optimizer step on a loss (gradient norm clipped to 1), the parameters and the
    blocks' outputs for the diagnostics."""

    model: nn.Module

    def _setup(self, config: RunConfig, data: Any, model: nn.Module) -> None:
        self.config, self.data, self.device = config, data, resolve_device(config.device)
        self.model = model.to(self.device)

    def _optimize(self) -> None:
        """The run's optimizer (built after the weights are final: rl loads phase 1's first)."""
        self.optimizer = build_optimizer(self.model, self.config)
        self.groups = self.optimizer.param_groups
        self.base_lrs = [g["lr"] for g in self.groups]
        self.schedule = WarmupCosine.of(self.config)

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).to(self.device)

    def _schedule_lr(self, step: int) -> None:
        factor = self.schedule.factor(step)
        for g, lr in zip(self.groups, self.base_lrs):
            g["lr"] = lr * factor

    def _update(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()

    def parameters(self) -> dict[str, np.ndarray]:
        """A copy of every parameter by name (the optimizer updates them in place)."""
        return {n: p.detach().cpu().clone().numpy() for n, p in self.model.named_parameters()}

    @torch.no_grad()
    def block_outputs(self, x: Any) -> list[np.ndarray]:
        """Each block's output on the probe ``x`` in evaluation mode, as (tokens, features)."""
        outputs: list[torch.Tensor] = []
        self.model.eval()
        self._forward(x, outputs)
        self.model.train()
        return [o.reshape(-1, o.shape[-1]).cpu().numpy() for o in outputs]

    def _forward(self, x: Any, outputs: list | None = None) -> torch.Tensor:
        return self.model(self._tensor(x), outputs=outputs)


class Trainer(_Session):
    """PyTorch's part of the loop for vit and lm (`gradsmooth.experiments.loop.Trainer`):
    the model and optimizer of ``config``; each step sets the scheduled learning rate, clips the
    gradient norm to 1."""

    def __init__(self, config: RunConfig, data: Any, val: dict[str, list[Batch]] | None) -> None:
        self._setup(config, data, build_model(config))
        self._optimize()
        self.val = ({name: [tuple(map(self._tensor, b)) for b in batches] for name, batches in val.items()}
                    if val is not None else None)

    def step(self, step: int, x: np.ndarray, y: np.ndarray) -> float:
        """One optimizer step on the batch at the schedule's learning rate; its loss before the step."""
        self._schedule_lr(step)
        loss = _loss(self.model, self._tensor(x), self._tensor(y))
        self._update(loss)
        return loss.item()

    def evaluate(self) -> dict[str, float]:
        """The task's held-out metrics (`evaluate`)."""
        return evaluate(self.model, self.config, self.data, self.val, self.device)


class DiffusionTrainer(_Session):
    """The diffusion task's part of the loop: the DiT of ``config``; each step noises the batch
    with `TrainingNoise` and regresses the noise
    (mean squared error); evaluation: the denoising loss on the fixed grid, and the accuracy of
    the judge on DDIM samples (`diffusion`)."""

    def __init__(self, config: RunConfig, data: Any, val: None = None) -> None:
        self._setup(config, data, build_model(config))
        self._optimize()
        self.dim = model_size(config)["dim"]
        self.noise = diffusion.TrainingNoise(config.seed)
        self.evaluation = diffusion.Evaluation(data)

    def _forward(self, x: Any, outputs: list | None = None) -> torch.Tensor:
        x_t, t, y = x
        return self.model(self._tensor(x_t), self._tensor(diffusion.timestep_features(t, self.dim)), self._tensor(y),
                          outputs=outputs)

    def step(self, step: int, x0: np.ndarray, y: np.ndarray) -> float:
        """One optimizer step on the batch's images noised at random timesteps; its loss before the step."""
        self._schedule_lr(step)
        t, eps = self.noise.draw(len(x0))
        loss = F.mse_loss(self._forward((diffusion.noised(x0, t, eps), t, y)), self._tensor(eps))
        self._update(loss)
        return loss.item()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """``<split>_loss`` on each split's fixed evaluation set, and ``sample_acc`` (`diffusion.Evaluation`)."""
        self.model.eval()
        try:
            return self.evaluation(lambda *x: self._forward(x).cpu().numpy())
        finally:
            self.model.train()

    def samples(self) -> np.ndarray:
        """The last evaluation's samples (SAMPLES_PER_CLASS of each class, in order), (n, 8, 8) in [-1, 1]."""
        return self.evaluation.samples


class RLTrainer(_Session):
    """The rl task's part of the loop (`reasoning`): the GPT of
    ``config`` starts from its seed's phase-1 model (trained here once, then kept); each step
    samples ``group`` answers per prompt, rewards exact ones and takes a policy-gradient step
    with group-normalised advantages (and the KL term with ``kl`` > 0). Evaluated before the
    first step too: the phase-1 model's accuracy."""

    evaluate_first = True

    def __init__(self, config: RunConfig, data: Any, val: None = None) -> None:
        self.rl = reasoning.rl_settings(config)
        self._setup(config, data, build_model(config, data))
        self.start = reasoning.answer_start(data.digits)
        weights, self.phase1 = reasoning.phase1(reasoning.phase1_key(config, data, self.device, self.rl.sft_target),
                                                data, self._train_phase1)
        self.model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        self.reference = copy.deepcopy(self.model).requires_grad_(False) if self.rl.kl else None
        self._optimize()
        self.rollouts = reasoning.Rollouts(config.seed)

    def _train_phase1(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=reasoning.SFT_LR, weight_decay=0.0)

        def step(inputs: np.ndarray, answers: np.ndarray) -> None:
            logits = self.model(self._tensor(inputs))[:, self.start :]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), self._tensor(answers).reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            optimizer.step()

        info = reasoning.train_phase1(step, lambda: self._accuracy(self.data.val), self.data, self.config.seed,
                                      self.rl.sft_target)
        return self.parameters(), info

    @torch.no_grad()
    def _next_logits(self, seq: np.ndarray) -> np.ndarray:
        return self.model(self._tensor(seq))[:, -1].float().cpu().numpy()

    def _accuracy(self, pairs: np.ndarray) -> float:
        return reasoning.exact_match(self._next_logits, pairs, self.data.digits)

    def _log_probs(self, model: nn.Module, inputs: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        """log pi(answer token) at each answer position, (n, answer length)."""
        logits = model(inputs)[:, self.start :]
        return torch.log_softmax(logits, dim=-1).gather(-1, answers[..., None])[..., 0]

    def step(self, step: int, prompts: np.ndarray, answers: np.ndarray) -> dict[str, float]:
        """One policy-gradient step on ``group`` sampled answers per prompt; the loss and mean reward."""
        self._schedule_lr(step)
        prompts, answers = np.repeat(prompts, self.rl.group, axis=0), np.repeat(answers, self.rl.group, axis=0)
        length = answers.shape[1]
        sampled = reasoning.decode(self._next_logits, prompts, length, self.rollouts.uniforms(len(prompts), length))
        reward = reasoning.rewards(sampled, answers)
        advantage = self._tensor(reasoning.group_advantages(reward, self.rl.group).astype(np.float32))
        inputs, targets = map(self._tensor, reasoning.teacher_forcing(prompts, sampled))
        log_probs = self._log_probs(self.model, inputs, targets)
        loss = -(advantage[:, None] * log_probs).mean()
        out = {"train_reward": float(reward.mean())}
        if self.reference is not None:
            with torch.no_grad():
                reference = self._log_probs(self.reference, inputs, targets)
            d = reference - log_probs
            kl = (torch.exp(d) - d - 1).mean()
            loss = loss + self.rl.kl * kl
            out["train_kl"] = kl.item()
        self._update(loss)
        return {"train_loss": loss.item()} | out

    def evaluate(self) -> dict[str, float]:
        """Greedy exact match on the validation and test problems."""
        return {"val_acc": self._accuracy(self.data.val), "test_acc": self._accuracy(self.data.test)}


# each task's trainer (loop.TrainerFactory): runs.run finds it here
TRAINERS = {"vit": Trainer, "lm": Trainer, "diffusion": DiffusionTrainer, "rl": RLTrainer}


def train(config: RunConfig, data: Any, result: RunResult, progress: Callable[[int], None] | None = None,
          diagnose: bool = False) -> None:
    """Train ``config`` on ``data`` in PyTorch: `gradsmooth.experiments.loop.train` with the task's trainer."""
    loop.train(config, data, result, TRAINERS[config.task], progress=progress, diagnose=diagnose)

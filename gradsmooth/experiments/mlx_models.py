"""The demo's models and training step in MLX: the twins of `gradsmooth.experiments.torch_models`
(the same models, parameter names included, and the same steps).

The loop itself is `gradsmooth.experiments.loop.train`; `TRAINERS` holds this
framework's part of it per task, each with a compiled step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

from gradsmooth.backends.mlx import GradientSmoothing

from . import diffusion, loop, reasoning
from .data import PROBLEM_VOCAB, VOCAB
from .loop import AlphaSchedule, Batch, WarmupCosine, model_size

if TYPE_CHECKING:
    from .runs import RunConfig, RunResult

__all__ = ["ViT", "GPT", "DiT", "Trainer", "DiffusionTrainer", "RLTrainer", "TRAINERS", "DEVICES", "build_model",
           "build_optimizer", "evaluate", "train", "resolve_device", "running"]

# the task's default model (loop.MODEL_SIZES in these classes' terms)
SIZES = {task: dict(depth=s["depth"], dim=s["width"], heads=s["heads"]) for task, s in loop.MODEL_SIZES.items()}
DEVICES = ("auto", "cpu", "gpu")


def resolve_device(name: str) -> str:
    """The device a run uses: ``auto`` is MLX's default device (cpu or gpu); ``gpu`` must be
    there (ValueError naming it and why, before any training)."""
    if name == "auto":
        return "gpu" if mx.default_device() == mx.gpu else "cpu"
    if name not in DEVICES:
        hint = ": MLX names its devices cpu and gpu" if name in ("cuda", "mps") else ""
        raise ValueError(f"device should be one of {DEVICES} for MLX but is: {name!r}{hint}")
    if name == "gpu" and not mx.is_available(mx.gpu):
        raise ValueError(f"device 'gpu' is not available to MLX {mx.__version__} here (mx.is_available(mx.gpu) is "
                         f"False): use cpu or auto")
    return name


@contextmanager
def running(config: RunConfig) -> Iterator[None]:
    """Where a run trains: MLX's default device set to the run's (``mx.stream``), as it was after."""
    with mx.stream(mx.gpu if resolve_device(config.device) == "gpu" else mx.cpu):
        yield


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


def patches(images: mx.array) -> mx.array:
    """(b, 8, 8) images -> (b, 16 patches, 4 pixels): 2 x 2 patches, row by row."""
    return images.reshape(images.shape[0], 4, 2, 4, 2).transpose(0, 1, 3, 2, 4).reshape(images.shape[0], 16, 4)


def unpatch(tokens: mx.array) -> mx.array:
    """(b, 16, 4) patches -> (b, 8, 8) images: the inverse of `patches`."""
    return tokens.reshape(tokens.shape[0], 4, 4, 2, 2).transpose(0, 1, 3, 2, 4).reshape(tokens.shape[0], 8, 8)


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
        x = self.embed(patches(images))  # (b, 16, d)
        x = mx.concatenate([mx.broadcast_to(self.cls, (b, 1, x.shape[-1])), x], axis=1) + self.pos  # (b, 17, d)
        for block in self.blocks:
            x = block(x)
            if outputs is not None:
                outputs.append(x)
        return self.head(self.norm(x[:, 0]))


class GPT(nn.Module):
    """Tokens (bytes, or the rl task's) -> ``depth`` causal blocks -> next-token logits."""

    def __init__(self, depth: int = 6, dim: int = 128, heads: int = 4, context: int = 64, vocab: int = VOCAB) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = mx.random.normal((1, context, dim)) * 0.02
        self.blocks = [Block(dim, heads, causal=True) for _ in range(depth)]
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def __call__(self, ids: mx.array, outputs: list | None = None) -> mx.array:
        x = self.tok(ids) + self.pos[:, : ids.shape[1]]
        for block in self.blocks:
            x = block(x)
            if outputs is not None:
                outputs.append(x)
        return self.head(self.norm(x))


def _zero(layer: nn.Linear) -> nn.Linear:
    """``layer`` with its weight and bias zero (adaLN-Zero's modulation, the DiT's output)."""
    layer.weight = mx.zeros_like(layer.weight)
    layer.bias = mx.zeros_like(layer.bias)
    return layer


class DiTBlock(nn.Module):
    """A DiT block with adaLN-Zero (torch_models.DiTBlock): ``x + gate * f(norm(x) * (1 + scale)
    + shift)`` for attention and the MLP, the modulation starting at zero."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, affine=False)
        self.attn = Attention(dim, heads, causal=False)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, affine=False)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)
        self.modulation = _zero(nn.Linear(dim, 6 * dim))

    def __call__(self, x: mx.array, c: mx.array) -> mx.array:
        shift1, scale1, gate1, shift2, scale2, gate2 = mx.split(self.modulation(nn.silu(c))[:, None], 6, axis=-1)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1)
        return x + gate2 * self.out(nn.gelu(self.fc(self.norm2(x) * (1 + scale2) + shift2)))


class DiT(nn.Module):
    """Noised 8 x 8 images -> 16 patches -> ``depth`` DiT blocks conditioned on the timestep and
    the class -> the predicted noise, 8 x 8 (torch_models.DiT)."""

    def __init__(self, depth: int = 6, dim: int = 64, heads: int = 4, classes: int = diffusion.CLASSES) -> None:
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.pos = mx.random.normal((1, 16, dim)) * 0.02
        self.time_in = nn.Linear(dim, dim)
        self.time_out = nn.Linear(dim, dim)
        self.label = nn.Embedding(classes, dim)
        self.blocks = [DiTBlock(dim, heads) for _ in range(depth)]
        self.norm = nn.LayerNorm(dim, eps=1e-6, affine=False)
        self.modulation = _zero(nn.Linear(dim, 2 * dim))
        self.head = _zero(nn.Linear(dim, 4))

    def __call__(self, x: mx.array, t_features: mx.array, y: mx.array, outputs: list | None = None) -> mx.array:
        h = self.embed(patches(x)) + self.pos
        c = self.time_out(nn.silu(self.time_in(t_features))) + self.label(y)
        for block in self.blocks:
            h = block(h, c)
            if outputs is not None:
                outputs.append(h)
        shift, scale = mx.split(self.modulation(nn.silu(c))[:, None], 2, axis=-1)
        return unpatch(self.head(self.norm(h) * (1 + scale) + shift))


def build_model(config: RunConfig, data: Any = None) -> nn.Module:
    """The task's model (``config.depth`` blocks of width ``config.width``, or the task's
    defaults), initialised from ``config.seed`` and evaluated; rl's GPT reads its problems' size from ``data``."""
    mx.random.seed(config.seed)
    size = model_size(config)
    if config.task == "vit":
        model: nn.Module = ViT(**size)
    elif config.task == "diffusion":
        model = DiT(**size)
    elif config.task == "rl":
        model = GPT(**size, context=reasoning.context(data.digits), vocab=PROBLEM_VOCAB)
    else:
        model = GPT(**size, context=config.context)
    mx.eval(model.parameters())
    return model


def _schedule(config: RunConfig, peak: float) -> Callable[[mx.array], mx.array]:
    """`WarmupCosine` as an MLX schedule peaking at ``peak``,
    so that it runs inside the compiled step."""
    s = WarmupCosine.of(config)
    return optim.join_schedules([optim.linear_schedule(peak / s.warm, peak, s.warm - 1 if s.warm > 1 else 1),
                                 optim.cosine_decay(peak, s.decay, peak * s.floor)], [s.warm])


def _alpha_schedule(schedule: AlphaSchedule) -> Callable[[mx.array], mx.array]:
    """`AlphaSchedule` as an MLX schedule (its step an
    ``mx.array``, traced under mx.compile): the same curve from MLX's linear and cosine schedules."""
    if schedule.kind == "linear":
        return optim.linear_schedule(schedule.start, schedule.final, schedule.span)
    return optim.cosine_decay(schedule.start, schedule.span, schedule.final)


def build_optimizer(config: RunConfig) -> optim.Optimizer:
    """sgd (momentum 0.9, nesterov), adamw (bias-corrected as torch's), or muon (Muon for the
    blocks' matrices, AdamW at lr / 10 for the rest); then Gradient Smoothing when asked (an
    alpha schedule as MLX's, `_alpha_schedule`). MLX applies weight decay to every
    parameter an optimizer holds."""
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
    if not config.smoothing:
        return base
    smoothing = dict(config.smoothing)
    if isinstance(smoothing.get("alpha"), AlphaSchedule):
        smoothing["alpha"] = _alpha_schedule(smoothing["alpha"])
    return GradientSmoothing(base, **smoothing)


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


def _compiled_step(model: nn.Module, optimizer: optim.Optimizer,
                   loss: Callable[..., Any] = _loss) -> tuple[Callable[..., Any], list]:
    """A compiled training step (``loss(model, *inputs)``, gradients clipped to norm 1, update)
    and the state it updates; the step returns what ``loss`` returns (a loss, or the loss and
    other numbers: their gradient is the first's)."""
    value_and_grad = nn.value_and_grad(model, loss)
    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(*inputs: mx.array) -> Any:
        value, grads = value_and_grad(model, *inputs)
        grads, _ = optim.clip_grad_norm(grads, 1.0)
        optimizer.update(model, grads)
        return value

    return step, state


class _Session:
    """What every task's trainer shares: the model, a compiled step of the run's optimizer on a
    loss, the parameters and the blocks' outputs for the diagnostics."""

    model: nn.Module

    def _setup(self, config: RunConfig, data: Any, model: nn.Module) -> None:
        self.config, self.data, self.device = config, data, resolve_device(config.device)
        self.model = model

    def _optimize(self, loss: Callable[..., Any] = _loss) -> None:
        """The run's optimizer and compiled step (the schedule lives in the optimizer)."""
        self.optimizer = build_optimizer(self.config)
        self._step, self._state = _compiled_step(self.model, self.optimizer, loss)

    def _run_step(self, *inputs: np.ndarray) -> Any:
        """One compiled step on ``inputs``; its value(s), evaluated."""
        value = self._step(*map(mx.array, inputs))
        mx.eval(self._state)
        return value

    def parameters(self) -> dict[str, np.ndarray]:
        """A copy of every parameter by name."""
        return {k: np.array(v) for k, v in tree_flatten(self.model.parameters())}

    def block_outputs(self, x: Any) -> list[np.ndarray]:
        """Each block's output on the probe ``x``, as (tokens, features)."""
        outputs: list[mx.array] = []
        self._forward(x, outputs)
        return [np.array(o.reshape(-1, o.shape[-1])) for o in outputs]

    def _forward(self, x: Any, outputs: list | None = None) -> mx.array:
        return self.model(mx.array(x), outputs=outputs)


class Trainer(_Session):
    """MLX's part of the loop for vit and lm (`gradsmooth.experiments.loop.Trainer`): the
    model and optimizer of ``config`` and a compiled step (the schedule lives in the optimizer)."""

    def __init__(self, config: RunConfig, data: Any, val: dict[str, list[Batch]] | None) -> None:
        self._setup(config, data, build_model(config))
        self._optimize()
        self.val = ({name: [tuple(map(mx.array, b)) for b in batches] for name, batches in val.items()}
                    if val is not None else None)

    def step(self, step: int, x: np.ndarray, y: np.ndarray) -> float:
        """One compiled step on the batch (the optimizer counts the steps itself); its loss before the step."""
        return self._run_step(x, y).item()

    def evaluate(self) -> dict[str, float]:
        """The task's held-out metrics (`evaluate`)."""
        return evaluate(self.model, self.config, self.data, self.val)


def _mse(model: nn.Module, x_t: mx.array, t_features: mx.array, y: mx.array, eps: mx.array) -> mx.array:
    """The denoising loss: mean squared error of the predicted noise."""
    return mx.mean((model(x_t, t_features, y) - eps) ** 2)


class DiffusionTrainer(_Session):
    """The diffusion task's part of the loop (torch_models.DiffusionTrainer): the DiT of
    ``config``, a compiled denoising step, the fixed evaluation and the sampler's accuracy."""

    def __init__(self, config: RunConfig, data: Any, val: None = None) -> None:
        self._setup(config, data, build_model(config))
        self._optimize(_mse)
        self.dim = model_size(config)["dim"]
        self.noise = diffusion.TrainingNoise(config.seed)
        self.evaluation = diffusion.Evaluation(data)

    def _forward(self, x: Any, outputs: list | None = None) -> mx.array:
        x_t, t, y = x
        return self.model(mx.array(x_t), mx.array(diffusion.timestep_features(t, self.dim)), mx.array(y),
                          outputs=outputs)

    def step(self, step: int, x0: np.ndarray, y: np.ndarray) -> float:
        """One compiled step on the batch's images noised at random timesteps; its loss before the step."""
        t, eps = self.noise.draw(len(x0))
        return self._run_step(diffusion.noised(x0, t, eps), diffusion.timestep_features(t, self.dim), y, eps).item()

    def evaluate(self) -> dict[str, float]:
        """``<split>_loss`` on each split's fixed evaluation set, and ``sample_acc`` (`diffusion.Evaluation`)."""
        return self.evaluation(lambda *x: np.array(self._forward(x)))

    def samples(self) -> np.ndarray:
        """The last evaluation's samples (SAMPLES_PER_CLASS of each class, in order), (n, 8, 8) in [-1, 1]."""
        return self.evaluation.samples


def _log_probs(model: nn.Module, inputs: mx.array, answers: mx.array, start: int) -> mx.array:
    """log pi(answer token) at each answer position, (n, answer length)."""
    logits = model(inputs)[:, start:]
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return mx.take_along_axis(logp, answers[..., None], axis=-1)[..., 0]


class RLTrainer(_Session):
    """The rl task's part of the loop (torch_models.RLTrainer): phase 1 trained once and kept,
    then compiled policy-gradient steps with group-normalised advantages."""

    evaluate_first = True

    def __init__(self, config: RunConfig, data: Any, val: None = None) -> None:
        self.rl = reasoning.rl_settings(config)
        self._setup(config, data, build_model(config, data))
        self.start = reasoning.answer_start(data.digits)
        weights, self.phase1 = reasoning.phase1(reasoning.phase1_key(config, data, self.device, self.rl.sft_target),
                                                data, self._train_phase1)
        self.model.load_weights([(k, mx.array(v)) for k, v in weights.items()])
        self.reference = None
        if self.rl.kl:
            self.reference = build_model(config, data)
            self.reference.load_weights([(k, mx.array(v)) for k, v in weights.items()])
            self.reference.freeze()
        self._optimize(self._policy_loss)
        self.rollouts = reasoning.Rollouts(config.seed)

    def _train_phase1(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        optimizer = optim.AdamW(learning_rate=reasoning.SFT_LR, weight_decay=0.0, bias_correction=True)

        def loss(model: nn.Module, inputs: mx.array, answers: mx.array) -> mx.array:
            return nn.losses.cross_entropy(model(inputs)[:, self.start :], answers).mean()

        step, state = _compiled_step(self.model, optimizer, loss)

        def sft_step(inputs: np.ndarray, answers: np.ndarray) -> None:
            step(mx.array(inputs), mx.array(answers))
            mx.eval(state)

        info = reasoning.train_phase1(sft_step, lambda: self._accuracy(self.data.val), self.data, self.config.seed,
                                      self.rl.sft_target)
        return self.parameters(), info

    def _next_logits(self, seq: np.ndarray) -> np.ndarray:
        return np.array(self.model(mx.array(seq))[:, -1].astype(mx.float32))

    def _accuracy(self, pairs: np.ndarray) -> float:
        return reasoning.exact_match(self._next_logits, pairs, self.data.digits)

    def _policy_loss(self, model: nn.Module, inputs: mx.array, answers: mx.array, advantage: mx.array,
                     reference: mx.array) -> tuple[mx.array, mx.array]:
        """The policy-gradient loss (reasoning's module docstring) and the KL term's value."""
        log_probs = _log_probs(model, inputs, answers, self.start)
        loss = -mx.mean(advantage[:, None] * log_probs)
        d = reference - log_probs
        kl = mx.mean(mx.exp(d) - d - 1)
        return (loss + self.rl.kl * kl if self.rl.kl else loss), kl

    def step(self, step: int, prompts: np.ndarray, answers: np.ndarray) -> dict[str, float]:
        """One policy-gradient step on ``group`` sampled answers per prompt; the loss and mean reward."""
        prompts, answers = np.repeat(prompts, self.rl.group, axis=0), np.repeat(answers, self.rl.group, axis=0)
        length = answers.shape[1]
        sampled = reasoning.decode(self._next_logits, prompts, length, self.rollouts.uniforms(len(prompts), length))
        reward = reasoning.rewards(sampled, answers)
        advantage = reasoning.group_advantages(reward, self.rl.group).astype(np.float32)
        inputs, targets = reasoning.teacher_forcing(prompts, sampled)
        reference = (np.array(_log_probs(self.reference, mx.array(inputs), mx.array(targets), self.start))
                     if self.reference is not None else np.zeros(targets.shape, np.float32))
        loss, kl = self._run_step(inputs, targets, advantage, reference)
        out = {"train_loss": loss.item(), "train_reward": float(reward.mean())}
        return out | ({"train_kl": kl.item()} if self.reference is not None else {})

    def evaluate(self) -> dict[str, float]:
        """Greedy exact match on the validation and test problems."""
        return {"val_acc": self._accuracy(self.data.val), "test_acc": self._accuracy(self.data.test)}


# each task's trainer (loop.TrainerFactory): runs.run finds it here
TRAINERS = {"vit": Trainer, "lm": Trainer, "diffusion": DiffusionTrainer, "rl": RLTrainer}


def train(config: RunConfig, data: Any, result: RunResult, progress: Callable[[int], None] | None = None,
          diagnose: bool = False) -> None:
    """Train ``config`` on ``data`` in MLX: `gradsmooth.experiments.loop.train` with the task's trainer."""
    loop.train(config, data, result, TRAINERS[config.task], progress=progress, diagnose=diagnose)

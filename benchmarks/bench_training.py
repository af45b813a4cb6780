"""A whole training step — forward, backward, optimizer — of a GPT-2-small-shaped model: what a
user feels. Base (fused AdamW) against the same step with Gradient Smoothing (the wrapper, both
modes, default settings) and with ``SmoothedAdamW``.

    python -m benchmarks.overhead   # prints this table first
"""

from __future__ import annotations

from statistics import median

from .common import require, synchronizer, torch_device

VARIANTS = ("wrapper, update mode", "wrapper, gradient mode", "SmoothedAdamW")


def gpt(blocks: int = 12, dim: int = 768, heads: int = 12, vocab: int = 50257, context: int = 256, seed: int = 0):
    """A GPT-2-small-shaped causal transformer (pre-norm blocks in ``model.layers``), randomly
    initialised: token and position embeddings, ``blocks`` blocks of width ``dim``, tied head."""
    import torch
    from torch import nn

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
            self.layers = nn.ModuleList(nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                                                   batch_first=True, norm_first=True)
                                        for _ in range(blocks))
            self.ln_f = nn.LayerNorm(dim)

        def forward(self, idx):  # (batch, t) -> (batch, t, vocab)
            t = idx.shape[1]
            h = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
            mask = nn.Transformer.generate_square_subsequent_mask(t, device=idx.device)
            for layer in self.layers:
                h = layer(h, src_mask=mask, is_causal=True)
            return self.ln_f(h) @ self.wte.weight.t()

    torch.manual_seed(seed)
    return GPT().to(torch_device())


def optimizer(variant: str, model):
    """The base (``"base"``: fused AdamW on a GPU or a CPU) or one of ``VARIANTS`` for ``model``."""
    import torch

    from gradsmooth.backends.torch import GradientSmoothing, SmoothedAdamW

    kw = {"lr": 1e-4, "weight_decay": 0.1}
    if variant == "SmoothedAdamW":
        return SmoothedAdamW(model, **kw)
    base = torch.optim.AdamW(model.parameters(), fused=True, **kw)
    if variant == "base":
        return base
    return GradientSmoothing(base, model, mode="gradient" if "gradient" in variant else "update")


def training_step(variant: str, blocks: int = 12, dim: int = 768, batch: int = 4, context: int = 256,
                  vocab: int = 50257):
    """A callable that runs one training step of ``variant``, waits for the device, and returns
    the seconds of its two phases: forward and backward, then the optimizer's step."""
    import time

    import torch

    model = gpt(blocks, dim, max(1, dim // 64), vocab, context)
    opt = optimizer(variant, model)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, vocab, (batch, context + 1), generator=gen).to(torch_device())
    sync = synchronizer(tokens.device)

    def step() -> tuple[float, float]:
        start = time.perf_counter()
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        loss.backward()
        sync()
        middle = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        return middle - start, time.perf_counter() - middle

    step()  # the optimizer's state exists and its kernels are compiled before timing
    return step


def training_rows(blocks: int = 12, dim: int = 768, batch: int = 4, context: int = 256, repeats: int = 5,
                  vocab: int = 50257) -> list[dict]:
    """Each variant's whole training step against the base's, measured side by side (alternating,
    medians): the whole steps' ratio, and the ratio with the forward and backward passes pooled
    over both (the same model and data: only the optimizer differs, and the passes' noise, several
    times the optimizer's whole cost on a CPU, then cancels)."""
    base = training_step("base", blocks, dim, batch, context, vocab)
    rows = []
    for variant in VARIANTS:
        other = training_step(variant, blocks, dim, batch, context, vocab)
        base(), other()  # warm-up
        runs = [(base(), other()) for _ in range(repeats)]
        passes = median([p for pair in runs for p, _ in pair])
        base_opt, other_opt = (median([pair[i][1] for pair in runs]) for i in (0, 1))
        t_base, t_other = (median([sum(pair[i]) for pair in runs]) for i in (0, 1))
        rows.append({"variant": variant, "base_ms": 1e3 * t_base, "step_ms": 1e3 * t_other, "ratio": t_other / t_base,
                     "passes_ms": 1e3 * passes, "base_optimizer_ms": 1e3 * base_opt, "optimizer_ms": 1e3 * other_opt,
                     "pooled_ratio": (passes + other_opt) / (passes + base_opt)})
    return rows


def training_table(rows: list[dict], blocks: int, dim: int, batch: int, context: int) -> str:
    head = (f"whole training step (forward, backward, optimizer), {blocks} blocks, d = {dim}, batch {batch} x "
            f"{context} tokens; base: fused AdamW\n\n")
    lines = ["| variant | base step ms | step ms | ratio | forward + backward ms | base optimizer ms | optimizer ms "
             "| ratio, passes pooled |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['base_ms']:.0f} | {r['step_ms']:.0f} | {r['ratio']:.3f} | "
                     f"{r['passes_ms']:.0f} | {r['base_optimizer_ms']:.1f} | {r['optimizer_ms']:.1f} | "
                     f"{r['pooled_ratio']:.3f} |")
    return head + "\n".join(lines)


class TrainingStep:
    """asv: a whole training step, base and each variant (4 blocks of d = 256 on a CPU, GPT-2
    small on a GPU): well under a second on either."""

    params = (["base", *VARIANTS],)
    param_names = ["variant"]
    timeout = 300
    number, repeat, warmup_time = 1, (1, 5, 10.0), 0  # each sample one call: a full run stays within minutes

    def setup(self, variant):
        require("torch")
        gpu = torch_device() == "cuda"
        self.step = training_step(variant, blocks=12 if gpu else 4, dim=768 if gpu else 256, context=128)

    def time_training_step(self, variant):
        self.step()

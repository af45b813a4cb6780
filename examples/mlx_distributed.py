"""Gradient Smoothing under MLX data parallelism: average the gradients, then take the wrapper's step.

    mlx.launch -n 2 --backend ring -- python examples/mlx_distributed.py --out runs/mlx-dp

Every rank builds the same model (one seed) and draws the same global batch each step; rank r
trains on rows r, r + n, r + 2n, ... of it (n processes). ``mlx.nn.average_gradients`` averages
the gradients across the ranks, so every rank holds the gradient of the global batch's mean
loss, and ``GradientSmoothing`` then smooths the base optimizer's update exactly as in one
process: the wrapper needs no communication and all ranks stay equal. Run without
``mlx.launch`` it is one process training on the whole global batch, the same trajectory.

``--out DIR`` writes each rank's final parameters to ``DIR/rank{r}.safetensors``. The ring
backend runs over TCP (localhost here: ``-n 2`` repeats the default host 127.0.0.1); on a
Mac, ``--backend jaccl`` uses Thunderbolt RDMA instead.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

from gradsmooth.backends.mlx import GradientSmoothing


class Block(nn.Module):
    """A pre-norm residual MLP block."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)

    def __call__(self, x: mx.array) -> mx.array:
        return x + self.out(nn.gelu(self.fc(self.norm(x))))


class Net(nn.Module):
    """A stack of blocks between an input and an output layer: ``blocks`` is smoothed across."""

    def __init__(self, depth: int, dim: int, inputs: int = 8) -> None:
        super().__init__()
        self.inp, self.head = nn.Linear(inputs, dim), nn.Linear(dim, 1)
        self.blocks = [Block(dim) for _ in range(depth)]

    def __call__(self, x: mx.array) -> mx.array:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def loss_fn(model: Net, x: mx.array, y: mx.array) -> mx.array:
    """The mean squared error over this rank's rows."""
    return nn.losses.mse_loss(model(x), y, reduction="mean")


def global_batch(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One global batch of a smooth regression task, the same on every rank (one seed)."""
    x = rng.standard_normal((size, 8)).astype(np.float32)
    y = np.sin(3 * x[:, :4].sum(1, keepdims=True)) * x[:, 4:5]
    return x, y.astype(np.float32)


def shard(array: np.ndarray, group: mx.distributed.Group) -> mx.array:
    """This rank's rows of a global batch: rows rank, rank + size, ..."""
    return mx.array(array[group.rank() :: group.size()])


def train(args: argparse.Namespace, group: mx.distributed.Group) -> tuple[Net, float]:
    """Train for ``args.steps`` data-parallel steps; returns the model and the last step's global mean loss.

    ``group`` is the global group, ``mx.distributed.init()``: the one ``average_gradients`` averages over.
    """
    if args.batch % group.size():
        raise ValueError(f"--batch {args.batch} should be divisible by the number of processes, {group.size()}")
    mx.random.seed(args.seed)  # the same initial weights on every rank
    model = Net(args.depth, args.dim)
    opt = GradientSmoothing(optim.AdamW(learning_rate=args.lr), window=args.window)
    opt.init(model.trainable_parameters())
    if group.rank() == 0:
        print(opt.plan, flush=True)
    value_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, opt.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x: mx.array, y: mx.array) -> mx.array:
        loss, grads = value_and_grad(model, x, y)
        grads = nn.average_gradients(grads)  # all-reduce over the global group: the global batch's gradient
        opt.update(model, grads)  # then smooth and step, as in one process
        return loss

    rng = np.random.default_rng(args.seed)
    loss = mx.array(0.0)
    for _ in range(args.steps):
        x, y = global_batch(rng, args.batch)
        loss = step(shard(x, group), shard(y, group))
        mx.eval(state)
    mean_loss = mx.distributed.all_sum(loss, group=group, stream=mx.cpu) / group.size()
    return model, mean_loss.item()


def save(model: Net, out: Path, rank: int) -> Path:
    """Write this rank's parameters to ``out/rank{rank}.safetensors``."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"rank{rank}.safetensors"
    mx.save_safetensors(str(path), dict(tree_flatten(model.parameters())))
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32, help="the global batch, split across the processes")
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--window", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write each rank's final parameters here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    group = mx.distributed.init()  # one process without mlx.launch: size 1
    model, loss = train(args, group)
    if args.out is not None:
        save(model, args.out, group.rank())
    print(f"rank {group.rank()} of {group.size()}: final loss {loss:.6f}", flush=True)


if __name__ == "__main__":
    main()

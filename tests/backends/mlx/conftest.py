"""Shared pieces of the MLX adapter's tests: a small block model as a parameter tree."""

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")

N_BLOCKS, D = 6, 8


def tiny_shapes(n_blocks=N_BLOCKS, d=D):
    """Names and shapes of a small block model: block 2 holds a role no other block has."""
    shapes = {"embed.weight": (d, 5), "embed.bias": (d,), "norm.weight": (d,), "head.weight": (3, d)}
    for i in range(n_blocks):
        shapes |= {f"blocks.{i}.norm.weight": (d,), f"blocks.{i}.attn.weight": (d, d), f"blocks.{i}.attn.bias": (d,),
                   f"blocks.{i}.mlp.0.weight": (2 * d, d), f"blocks.{i}.mlp.1.weight": (d, 2 * d)}
    shapes["blocks.2.adapter.weight"] = (d, d)
    return shapes


@pytest.fixture
def tiny_arrays():
    """A factory: ``tiny_arrays(seed)`` -> {name: float64 numpy array} of the small model."""

    def make(seed=0):
        rng = np.random.default_rng(seed)
        return {k: rng.standard_normal(s) * 0.5 for k, s in tiny_shapes().items()}

    return make


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.attn = nn.Linear(d, d)
        self.mlp = [nn.Linear(d, 2 * d), nn.Linear(2 * d, d)]

    def __call__(self, x):
        h = self.norm(x)
        return x + self.attn(h) + self.mlp[1](nn.gelu(self.mlp[0](h)))


class TinyNet(nn.Module):
    def __init__(self, n_blocks=N_BLOCKS, d=D):
        super().__init__()
        self.embed = nn.Linear(5, d)
        self.blocks = [Block(d) for _ in range(n_blocks)]
        self.head = nn.Linear(d, 3)

    def __call__(self, x):
        x = self.embed(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


@pytest.fixture
def tiny_net():
    def make(seed=0):
        mx.random.seed(seed)
        model = TinyNet()
        mx.eval(model.parameters())
        return model

    return make

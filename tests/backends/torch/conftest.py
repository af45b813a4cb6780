"""Shared pieces of the torch adapter's tests: devices, a small block model, its names."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
    ["mps"] if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else []
)


@pytest.fixture(params=DEVICES)
def device(request):
    """Every device this machine has: CPU always, CUDA and MPS when present."""
    return torch.device(request.param)


class Block(nn.Module):
    """A pre-norm residual block; block ``adapter_at`` also holds a role no other block has."""

    def __init__(self, d, with_adapter=False):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.attn = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.adapter = nn.Linear(d, d, bias=False) if with_adapter else None

    def forward(self, x):
        h = self.norm(x)
        x = x + self.attn(h) + self.mlp(h)
        return x + self.adapter(x) if self.adapter is not None else x


class TinyNet(nn.Module):
    """Embedding, ``n_blocks`` blocks (block 2 with an adapter), final norm and head."""

    def __init__(self, n_blocks=6, d=8, d_in=5, d_out=3):
        super().__init__()
        self.embed = nn.Linear(d_in, d)
        self.blocks = nn.ModuleList([Block(d, with_adapter=(i == 2)) for i in range(n_blocks)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, d_out)

    def forward(self, x):
        x = self.embed(x)
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))


@pytest.fixture
def tiny_net():
    """A factory: ``tiny_net(dtype=..., device=..., seed=...)`` -> a TinyNet."""

    def make(dtype=torch.float64, device="cpu", seed=0, n_blocks=6):
        torch.manual_seed(seed)
        return TinyNet(n_blocks).to(device=device, dtype=dtype)

    return make

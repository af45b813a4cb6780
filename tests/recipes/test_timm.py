"""docs/recipes/timm.md: run as written where timm is installed; everywhere, run the page's
code path against a stand-in for the three timm calls it makes (a tiny ViT-like model with its
blocks in an ``nn.Sequential``, layer-decay param groups as timm builds them, a per-update
cosine scheduler that applies ``lr_scale``)."""

import math
import sys
import types
import warnings

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from gradsmooth.backends.torch import GradientSmoothing


def test_timm_recipe(run_recipe):
    pytest.importorskip("timm")
    scope = run_recipe("timm")
    opt = scope["opt"]
    assert {g.stack for g in opt.plan.groups} == {"blocks"}
    assert all(g.names == tuple(f"blocks.{i}.{g.role}" for i in range(4)) for g in opt.plan.groups)
    assert any("lr_scale" in g for g in opt.param_groups)
    assert opt.state_dict()["param_groups"][0]["gradsmooth"]["step"] == 6


# -- a stand-in for the timm calls the page makes -----------------------------------------------


class _Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn, self.mlp = nn.Linear(d, d), nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _TinyViT(nn.Module):
    """Patch embedding, class token, ``blocks`` (an nn.Sequential, as timm's), norm, head."""

    def __init__(self, img_size, patch_size, embed_dim, depth, num_classes):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (img_size // patch_size) ** 2 + 1, embed_dim) * 0.02)
        self.blocks = nn.Sequential(*[_Block(embed_dim) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(embed_dim), nn.Linear(embed_dim, num_classes)

    def forward(self, images):
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def _create_model(name, pretrained=False, img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3,
                  num_classes=1000):
    assert not pretrained
    return _TinyViT(img_size, patch_size, embed_dim, depth, num_classes)


def _layer_id(name, depth):
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return 0 if name.startswith(("patch_embed", "cls_token", "pos_embed")) else depth + 1


def _create_optimizer_v2(model, opt, lr, weight_decay, layer_decay):
    """timm's param_groups_layer_decay: a group per (layer, decay or not), each with an lr_scale."""
    assert opt == "adamw"
    depth, groups = len(model.blocks), {}
    for name, p in model.named_parameters():
        layer = _layer_id(name, depth)
        decay = p.ndim > 1 and not name.endswith(("cls_token", "pos_embed"))
        group = groups.setdefault((layer, decay), {"params": [], "weight_decay": weight_decay if decay else 0.0,
                                                   "lr_scale": layer_decay ** (depth + 1 - layer)})
        group["params"].append(p)
    return torch.optim.AdamW(list(groups.values()), lr=lr, weight_decay=0.0)


class _CosineLRScheduler:
    """timm's per-update cosine schedule with linear warm-up; sets ``lr = value * lr_scale``."""

    def __init__(self, optimizer, t_initial, warmup_t=0, warmup_lr_init=0.0, t_in_epochs=True):
        self.optimizer, self.t_initial = optimizer, t_initial
        self.warmup_t, self.warmup_lr_init = warmup_t, warmup_lr_init
        self.base_values = [g.setdefault("initial_lr", g["lr"]) for g in optimizer.param_groups]
        self._set(0)

    def _value(self, base, t):
        if t < self.warmup_t:
            return self.warmup_lr_init + t * (base - self.warmup_lr_init) / self.warmup_t
        return 0.5 * base * (1 + math.cos(math.pi * (t - self.warmup_t) / (self.t_initial - self.warmup_t)))

    def _set(self, t):
        for g, base in zip(self.optimizer.param_groups, self.base_values):
            g["lr"] = self._value(base, t) * g.get("lr_scale", 1.0)

    def step_update(self, num_updates):
        self._set(num_updates)


@pytest.fixture
def timm_stand_in(monkeypatch):
    timm = types.ModuleType("timm")
    timm.create_model = _create_model
    timm.optim = types.ModuleType("timm.optim")
    timm.optim.create_optimizer_v2 = _create_optimizer_v2
    timm.scheduler = types.ModuleType("timm.scheduler")
    timm.scheduler.CosineLRScheduler = _CosineLRScheduler
    for name, module in {"timm": timm, "timm.optim": timm.optim, "timm.scheduler": timm.scheduler}.items():
        monkeypatch.setitem(sys.modules, name, module)


def test_timm_recipe_code_path_with_a_stand_in(run_recipe, timm_stand_in):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the decay of every group is classified (AdamW: decoupled)
        scope = run_recipe("timm")
    model, opt = scope["model"], scope["opt"]
    assert [g.stack for g in opt.plan.groups] == ["blocks"] * 10
    not_smoothed = {"patch_embed.weight", "patch_embed.bias", "cls_token", "pos_embed", "norm.weight", "norm.bias",
                    "head.weight", "head.bias"}
    assert not_smoothed.isdisjoint(n for g in opt.plan.groups for n in g.names)

    # each group's members sit in different param groups (one per layer), with different lr scales
    group_of = {id(p): i for i, g in enumerate(opt.param_groups) for p in g["params"]}
    scales = [g["lr_scale"] for g in opt.param_groups]
    for g in opt.plan.groups:
        members = [model.get_parameter(n) for n in g.names]
        assert len({group_of[id(p)] for p in members}) == 4
        assert len({scales[group_of[id(p)]] for p in members}) == 4

    assert opt.state_dict()["param_groups"][0]["gradsmooth"]["step"] == 6
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_layer_decay_in_gradient_mode_equals_smoothing_the_gradients_by_hand(timm_stand_in):
    """The page's point: in gradient mode the per-layer learning rates apply after smoothing.
    One step of the wrapper equals AdamW on gradients averaged by hand over the window."""
    torch.manual_seed(0)
    a = _create_model("vit", img_size=16, patch_size=8, embed_dim=8, depth=4, num_classes=3)
    b = _TinyViT(16, 8, 8, 4, 3)
    b.load_state_dict(a.state_dict())
    opt_a = GradientSmoothing(_create_optimizer_v2(a, "adamw", 1e-2, 0.05, 0.5), a, mode="gradient", window=3)
    opt_b = _create_optimizer_v2(b, "adamw", 1e-2, 0.05, 0.5)
    for o in (opt_a, opt_b):
        for g in o.param_groups:
            g["lr"] = g["lr"] * g["lr_scale"]
    images = torch.randn(4, 3, 16, 16)
    for model in (a, b):
        model(images).pow(2).mean().backward()
    with torch.no_grad():
        for role, _ in b.blocks[0].named_parameters():
            grads = [b.blocks[i].get_parameter(role).grad.clone() for i in range(4)]
            for i in range(4):
                window = grads[max(0, i - 1): i + 2]
                b.blocks[i].get_parameter(role).grad.copy_(sum(window) / len(window))
    opt_a.step()
    opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)

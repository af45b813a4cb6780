"""The torch and MLX adapters agree: same parameters, same gradients, AdamW, both modes."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
mx = pytest.importorskip("mlx.core")
optim = pytest.importorskip("mlx.optimizers")
from mlx.utils import tree_flatten, tree_unflatten  # noqa: E402

from gradsmooth.backends.mlx import GradientSmoothing as MLXSmoothing  # noqa: E402
from gradsmooth.backends.torch import GradientSmoothing as TorchSmoothing  # noqa: E402

SHAPES = {"embed.weight": (16, 5), "head.weight": (3, 16)}
for i in range(8):
    SHAPES |= {f"layers.{i}.attn.weight": (16, 16), f"layers.{i}.attn.bias": (16,), f"layers.{i}.mlp.weight": (32, 16)}
SHAPES["layers.4.extra.weight"] = (4, 4)


@pytest.mark.parametrize("mode", ["update", "gradient"])
def test_torch_and_mlx_agree_after_20_steps(mode):
    rng = np.random.default_rng(0)
    init = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    tparams = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init.items()}
    topt = TorchSmoothing(torch.optim.AdamW(tparams.values(), lr=1e-2, weight_decay=0.1), list(tparams.items()),
                          window=5, kernel="triangular", mode=mode)
    mopt = MLXSmoothing(optim.AdamW(learning_rate=1e-2, weight_decay=0.1, bias_correction=True), window=5,
                        kernel="triangular", mode=mode)
    mparams = tree_unflatten([(k, mx.array(v)) for k, v in init.items()])
    for _ in range(20):
        grads = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
        for k, p in tparams.items():
            p.grad = torch.tensor(grads[k])
        topt.step()
        mparams = mopt.apply_gradients(tree_unflatten([(k, mx.array(v)) for k, v in grads.items()]), mparams)
    def layout(plan):
        return [(g.stack, g.role, g.names) for g in plan.groups], plan.ungrouped

    assert layout(topt.plan) == layout(mopt.plan)
    for k, v in tree_flatten(mparams):
        np.testing.assert_allclose(tparams[k].detach().numpy(), np.array(v), rtol=1e-5, atol=1e-5, err_msg=k)

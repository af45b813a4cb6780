"""Real mlx-lm architectures from small ModelArgs (no weights, no network): plans and a compiled step."""

from functools import partial

import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")
optim = pytest.importorskip("mlx.optimizers")
pytest.importorskip("mlx_lm")
from mlx.utils import tree_flatten  # noqa: E402

from gradsmooth.backends.mlx import GradientSmoothing  # noqa: E402

N = 3


def llama():
    from mlx_lm.models import llama

    return llama.Model(llama.ModelArgs(model_type="llama", hidden_size=16, num_hidden_layers=N, intermediate_size=32,
                                       num_attention_heads=2, rms_norm_eps=1e-5, vocab_size=64, num_key_value_heads=1))


def qwen2():
    from mlx_lm.models import qwen2

    return qwen2.Model(qwen2.ModelArgs(model_type="qwen2", hidden_size=16, num_hidden_layers=N, intermediate_size=32,
                                       num_attention_heads=2, rms_norm_eps=1e-5, vocab_size=64, num_key_value_heads=1))


def gpt2():
    from mlx_lm.models import gpt2

    return gpt2.Model(gpt2.ModelArgs(model_type="gpt2", n_ctx=32, n_embd=16, n_head=2, n_layer=N, n_positions=32,
                                     layer_norm_epsilon=1e-5, vocab_size=64))


MODELS = {"llama": (llama, "model.layers"), "qwen2": (qwen2, "model.layers"), "gpt2": (gpt2, "model.h")}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_plan_and_compiled_training_step(name):
    make, stack = MODELS[name]
    model = make()
    opt = GradientSmoothing(optim.AdamW(learning_rate=1e-3))
    opt.init(model.trainable_parameters())

    flat = dict(tree_flatten(model.trainable_parameters()))
    roles = sorted({k[len(stack) + 3 :] for k in flat if k.startswith(stack + ".0.")})
    assert sorted(g.role for g in opt.plan.groups) == roles
    for g in opt.plan.groups:
        assert g.stack == stack and g.depths == tuple(range(N))
        assert g.names == tuple(f"{stack}.{i}.{g.role}" for i in range(N))
        assert g.shape == tuple(flat[g.names[0]].shape)
    assert set(opt.plan.ungrouped) == {k for k in flat if not k.startswith(stack + ".")}

    def loss_fn(model, ids):
        logits = model(ids[:, :-1])
        return nn.losses.cross_entropy(logits, ids[:, 1:]).mean()

    value_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, opt.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(ids):
        loss, grads = value_and_grad(model, ids)
        opt.update(model, grads)
        return loss

    ids = mx.random.randint(0, 64, (2, 9), key=mx.random.key(0))
    losses = [step(ids).item() for _ in range(4)]
    assert losses[-1] < losses[0]

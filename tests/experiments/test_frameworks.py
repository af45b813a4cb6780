"""The torch and MLX experiments compute the same thing: the same models (given the same weights,
the same outputs), and the same diffusion and rl steps (noise, sampling, loss, update)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
mx = pytest.importorskip("mlx.core")
pytest.importorskip("sklearn")

from gradsmooth.experiments import mlx_models as mm  # noqa: E402
from gradsmooth.experiments import reasoning  # noqa: E402
from gradsmooth.experiments import torch_models as tm  # noqa: E402
from gradsmooth.experiments.data import PROBLEM_VOCAB, load_digits_split, load_problems, train_batches  # noqa: E402
from gradsmooth.experiments.loop import AlphaSchedule  # noqa: E402
from gradsmooth.experiments.runs import RunConfig  # noqa: E402


def randomized(model):
    """``model`` with every parameter drawn anew (the zero-initialised ones too), seeded."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return model


def copy_into(mlx_model, torch_model):
    """The torch model's weights loaded into the MLX twin by name (every name must match)."""
    mlx_model.load_weights([(n, mx.array(p.detach().numpy())) for n, p in torch_model.named_parameters()])


def test_the_dit_and_the_problem_gpt_agree_given_the_same_weights():
    rng = np.random.default_rng(0)
    x, t, y = rng.standard_normal((4, 8, 8), dtype=np.float32), rng.standard_normal((4, 16), dtype=np.float32), \
        np.arange(4)
    ours, theirs = randomized(tm.DiT(depth=2, dim=16, heads=2)), mm.DiT(depth=2, dim=16, heads=2)
    copy_into(theirs, ours)
    outputs_t, outputs_m = [], []
    expected = ours(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y), outputs=outputs_t)
    got = theirs(mx.array(x), mx.array(t), mx.array(y), outputs=outputs_m)
    np.testing.assert_allclose(np.array(got), expected.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.array(outputs_m[-1]), outputs_t[-1].detach().numpy(), rtol=1e-4, atol=1e-5)
    ids = rng.integers(0, PROBLEM_VOCAB, (3, 8))
    gpt_t = tm.GPT(depth=2, dim=16, heads=2, context=8, vocab=PROBLEM_VOCAB)
    gpt_m = mm.GPT(depth=2, dim=16, heads=2, context=8, vocab=PROBLEM_VOCAB)
    copy_into(gpt_m, gpt_t)
    np.testing.assert_allclose(np.array(gpt_m(mx.array(ids))), gpt_t(torch.from_numpy(ids)).detach().numpy(),
                               rtol=1e-4, atol=1e-5)


def twins(task, data, **config):
    """The torch and MLX trainers of one config, the MLX one holding the torch one's weights."""
    cfg = RunConfig(task=task, lr=1e-3, weight_decay=0.0, steps=10, depth=2, width=16, **config)
    ours = tm.TRAINERS[task](cfg, data, None)
    theirs = mm.TRAINERS[task](RunConfig(**{**cfg.__dict__, "backend": "mlx"}), data, None)
    copy_into(theirs.model, ours.model)
    return ours, theirs


def assert_same_parameters(ours, theirs, atol=1e-5):
    """Equal parameters; ``atol`` a fraction of a step where Adam meets gradients near zero (their
    rounding's sign differs between the frameworks, and Adam's step does not shrink with them)."""
    mine = ours.parameters()
    for name, value in theirs.parameters().items():
        np.testing.assert_allclose(value, mine[name], rtol=1e-3, atol=atol, err_msg=name)


@pytest.mark.parametrize("smoothing", [None, {"window": 3}, {"window": 3, "alpha": AlphaSchedule("linear", 1.0, 0.0, 3)}],
                         ids=["base", "smoothed", "alpha schedule"])
def test_diffusion_steps_agree(smoothing, one_thread):
    data = load_digits_split()
    ours, theirs = twins("diffusion", data, batch_size=8, smoothing=smoothing)
    batches = train_batches("diffusion", data, 8, 0, 0)
    for step in range(3):
        x, y = next(batches)
        assert theirs.step(step, x, y) == pytest.approx(ours.step(step, x, y), rel=1e-4)
    assert_same_parameters(ours, theirs)
    probe = (np.zeros((2, 8, 8), np.float32), np.array([10, 900]), np.array([3, 4]))
    np.testing.assert_allclose(theirs.block_outputs(probe)[-1], ours.block_outputs(probe)[-1], rtol=1e-4, atol=1e-5)


def test_rl_steps_agree(monkeypatch, one_thread, quick_phase1):
    data = load_problems()
    with pytest.warns(RuntimeWarning, match="phase 1 stopped"):
        ours, theirs = twins("rl", data, batch_size=4, group=4, smoothing={"window": 3})
    # a reward a barely trained model earns half the time (an even first digit), so that the
    # advantages, the loss and the update are not zero
    monkeypatch.setattr(reasoning, "rewards", lambda sampled, answers: (sampled[:, 0] % 2 == 0).astype(np.float64))
    assert ours._accuracy(data.val[:50]) == theirs._accuracy(data.val[:50])
    before = ours.parameters()
    batches = train_batches("rl", data, 4, 0, 0)
    for step in range(2):
        prompts, answers = next(batches)
        got, expected = theirs.step(step, prompts, answers), ours.step(step, prompts, answers)
        assert got["train_reward"] == expected["train_reward"] and 0 < expected["train_reward"] < 1  # the same answers sampled
        assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-3) and expected["train_loss"] != 0
    assert_same_parameters(ours, theirs, atol=1e-4)  # a tenth of a step (lr 1e-3)
    assert not np.allclose(ours.parameters()["blocks.0.fc.weight"], before["blocks.0.fc.weight"])

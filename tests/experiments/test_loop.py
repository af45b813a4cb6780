"""The training loop, framework-free: a fake trainer shows what the loop does with its pieces,
the schedule's shape, and the backend registry (lazy, BackendMissing naming the extra)."""

import math
import sys
import types

import numpy as np
import pytest

from gradsmooth.experiments import loop, runs
from gradsmooth.experiments.data import DigitsData
from gradsmooth.experiments.runs import Backend, BackendMissing, RunConfig, RunResult

DIGITS = DigitsData(np.zeros((6, 8, 8), np.float32), np.arange(6) % 2, np.ones((300, 8, 8), np.float32),
                    np.arange(300) % 2)


class FakeTrainer:
    """Loss = the step count; two blocks whose updates point the same way; the calls it received."""

    def __init__(self, config, data, val):
        self.config, self.calls, self.w = config, [], np.zeros(3, np.float32)

    def step(self, step, x, y):
        self.calls.append(("step", step, x.shape, y.shape))
        self.w = self.w + 1
        return float(step)

    def evaluate(self):
        return {"test_loss": 0.5, "test_acc": 0.25}

    def parameters(self):
        return {"blocks.0.w": self.w.copy(), "blocks.1.w": 2 * self.w, "head.w": self.w.copy()}

    def block_outputs(self, x):
        self.calls.append(("outputs", x.shape))
        rng = np.random.default_rng(0)
        return [rng.standard_normal((len(x), 4)) for _ in range(2)]


def test_the_loop_evaluates_every_eval_every_steps_and_after_the_last():
    config, result, ticks = RunConfig(steps=5, eval_every=2, batch_size=3), RunResult(RunConfig()), []
    loop.train(config, DIGITS, result, FakeTrainer, progress=ticks.append)
    assert ticks == [0, 1, 2, 3, 4]
    assert result.history == [{"step": 2, "train_loss": 0.5, "test_loss": 0.5, "test_acc": 0.25},
                              {"step": 4, "train_loss": 2.5, "test_loss": 0.5, "test_acc": 0.25},
                              {"step": 5, "train_loss": 3.5, "test_loss": 0.5, "test_acc": 0.25}]
    assert result.diagnostics == {}


def test_the_loop_gathers_the_diagnostics_at_the_evaluated_steps():
    made = []
    config, result = RunConfig(steps=4, eval_every=2, batch_size=3), RunResult(RunConfig())
    loop.train(config, DIGITS, result, lambda *a: made.append(FakeTrainer(*a)) or made[-1], diagnose=True)
    assert np.allclose(result.diagnostics["update_similarity"], np.ones((2, 2)))  # both blocks move alike
    assert result.diagnostics["representation_similarity"].shape == (2, 2)
    assert made[0].calls[-1] == ("outputs", (256, 8, 8))  # probed on 256 test images
    assert made[0].calls[0] == ("step", 0, (3, 8, 8), (3,))


def test_the_schedule_warms_up_linearly_then_decays_by_cosine_to_a_tenth():
    s = loop.WarmupCosine.of(RunConfig(steps=100, warmup=0.05))
    assert (s.warm, s.decay) == (5, 95)
    assert [s.factor(i) for i in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert s.factor(5) == 1.0 and s.factor(5 + 95) == pytest.approx(0.1)
    assert s.factor(5 + 95 // 2) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 47 / 95)))
    assert loop.WarmupCosine.of(RunConfig(steps=3, warmup=0.0)).warm == 1  # at least one warm-up step


@pytest.fixture
def fake_backend(monkeypatch):
    """A backend "fake" in the registry whose module holds FakeTrainer."""
    module = types.ModuleType("fake_framework_models")
    module.Trainer = FakeTrainer
    monkeypatch.setitem(sys.modules, "fake_framework_models", module)
    monkeypatch.setitem(runs.BACKENDS, "fake", Backend("fake_framework_models", framework="numpy", extra="fake"))
    return module


def test_run_finds_the_backend_by_name_in_the_registry(fake_backend):
    result = runs.run(RunConfig(backend="fake", steps=2, eval_every=1, batch_size=2), DIGITS)
    assert result.complete and [row["step"] for row in result.history] == [1, 2]
    assert runs.backend_module("fake") is fake_backend


def test_a_ctrl_c_keeps_the_rows_gathered_so_far(fake_backend):
    def tick(step):
        if step == 2:
            raise KeyboardInterrupt

    into = []
    with pytest.raises(KeyboardInterrupt):
        runs.run(RunConfig(backend="fake", steps=6, eval_every=2, batch_size=2), DIGITS, progress=tick, into=into)
    (result,) = into
    assert not result.complete and [row["step"] for row in result.history] == [2] and result.seconds > 0


def test_a_missing_framework_names_the_extra_and_an_unknown_backend_is_refused(monkeypatch):
    monkeypatch.setitem(runs.BACKENDS, "fake", Backend("fake_framework_models", framework="no_such_framework",
                                                       extra="fake-extra"))
    with pytest.raises(BackendMissing, match=r"backend 'fake' is not installed: pip install 'gradsmooth\[fake-extra\]'"):
        runs.backend_module("fake")
    with pytest.raises(ValueError, match="backend should be one of"):
        runs.backend_module("jax")


def test_the_registry_names_importable_modules_of_gradsmooth_experiments():
    import importlib.util

    for name, entry in runs.BACKENDS.items():
        assert entry.module.startswith("gradsmooth.experiments.") and entry.extra == name
        assert importlib.util.find_spec(entry.module) is not None  # found without importing it

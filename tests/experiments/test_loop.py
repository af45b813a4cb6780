"""The training loop, framework-free: a fake trainer shows what the loop does with its pieces,
the schedule's shape, and the backend registry (lazy, BackendMissing naming the extra)."""

import contextlib
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
    module.TRAINERS = {"vit": FakeTrainer}
    module.resolve_device = lambda name: "cpu" if name == "auto" else name
    module.running = lambda config: contextlib.nullcontext()
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


class RLFakeTrainer(FakeTrainer):
    """Evaluated first; steps return metrics by name; a phase 1 and samples to hand over."""

    evaluate_first = True
    phase1 = {"steps": 25, "val_acc": 0.4, "reached": True, "seconds": 0.1}

    def step(self, step, x, y):
        super().step(step, x, y)
        return {"train_loss": float(step), "train_reward": 0.5 * step}

    def samples(self):
        return np.zeros((3, 8, 8))


def test_metrics_by_name_are_averaged_and_a_first_evaluation_is_row_zero():
    config, result = RunConfig(steps=4, eval_every=2, batch_size=3), RunResult(RunConfig())
    loop.train(config, DIGITS, result, RLFakeTrainer, diagnose=True)
    assert result.history == [{"step": 0, "test_loss": 0.5, "test_acc": 0.25},
                              {"step": 2, "train_loss": 0.5, "train_reward": 0.25, "test_loss": 0.5, "test_acc": 0.25},
                              {"step": 4, "train_loss": 2.5, "train_reward": 1.25, "test_loss": 0.5, "test_acc": 0.25}]
    assert result.phase1 == RLFakeTrainer.phase1 and result.diagnostics["samples"].shape == (3, 8, 8)


def test_the_depth_summary_is_the_mean_over_adjacent_blocks():
    s = np.array([[1.0, 0.8, 0.1], [0.8, 1.0, 0.6], [0.1, 0.6, 1.0]])
    u = np.array([[1.0, -0.2, 0.0], [-0.2, 1.0, 0.4], [0.0, 0.4, 1.0]])
    summary = loop.depth_summary({"representation_similarity": s, "update_similarity": u})
    assert summary == {"adjacent_cka": pytest.approx(0.7), "adjacent_update_cosine": pytest.approx(0.1)}


@pytest.mark.parametrize("kind, middle", [("linear", 0.5), ("cosine", 0.5)])
def test_an_alpha_schedule_goes_from_start_at_the_first_step_to_final_at_the_last(kind, middle):
    s = loop.AlphaSchedule(kind, 1.0, 0.0, steps=101)
    assert s(0) == 1.0 and s(100) == pytest.approx(0.0, abs=1e-15) and s(10_000) == s(100)
    assert s(50) == pytest.approx(middle)
    if kind == "cosine":
        assert s(25) == pytest.approx(0.5 * (1 + np.cos(np.pi / 4)))
    else:
        assert s(25) == pytest.approx(0.75)
    rising = loop.AlphaSchedule(kind, 0.2, 0.6, steps=11)
    assert rising(0) == pytest.approx(0.2) and rising(10) == pytest.approx(0.6)
    assert str(s) == f"{kind} 1 to 0 over 101 steps" and loop.AlphaSchedule(kind, 1, 0, 1)(0) == 1.0


def test_an_alpha_schedule_refuses_bad_settings_by_name():
    with pytest.raises(ValueError, match=r"alpha schedule should be one of \('linear', 'cosine'\) .* but is: 'step'"):
        loop.AlphaSchedule("step", 1.0, 0.0, 10)
    with pytest.raises(ValueError, match=r"alpha schedule's start should be a number in \[0, 1\] but is: 1.5"):
        loop.AlphaSchedule("linear", 1.5, 0.0, 10)
    with pytest.raises(ValueError, match="alpha schedule's final should be .* but is: 'x'"):
        loop.AlphaSchedule("linear", 1.0, "x", 10)
    with pytest.raises(ValueError, match="final .* but is: nan"):
        loop.AlphaSchedule("linear", 1.0, float("nan"), 10)
    with pytest.raises(ValueError, match="steps should be a positive integer but is: 0"):
        loop.AlphaSchedule("cosine", 1.0, 0.0, 0)
    import pickle

    s = loop.AlphaSchedule("cosine", 1.0, 0.25, 7)
    assert pickle.loads(pickle.dumps(s)) == s

"""The rl task's framework-free parts: settings, decoding, rewards, advantages, phase 1 and its store."""

import json

import numpy as np
import pytest

from gradsmooth.experiments import reasoning
from gradsmooth.experiments.data import PROBLEM_VOCAB, encode_problems, load_problems
from gradsmooth.experiments.runs import RunConfig


def oracle(digits):
    """Next-token logits of a model that adds: reads the operands from the prompt, writes the sum."""
    def next_logits(seq):
        a = seq[:, :digits] @ 10 ** np.arange(digits - 1, -1, -1)
        b = seq[:, digits + 1 : 2 * digits + 1] @ 10 ** np.arange(digits - 1, -1, -1)
        position = seq.shape[1] - (2 * digits + 2)
        logits = np.zeros((len(seq), PROBLEM_VOCAB))
        logits[np.arange(len(seq)), (a + b) // 10**position % 10] = 5.0
        return logits
    return next_logits


def test_settings_default_and_refuse_by_name():
    assert reasoning.rl_settings(RunConfig(task="rl")) == reasoning.RLSettings(8, 0.0, 0.3)
    assert reasoning.rl_settings(RunConfig(task="rl", group=4, kl=0.1, sft_target=1)).sft_target == 1.0
    for field, value, message in [("group", 1, "group .* >= 2 but is: 1"), ("group", 2.0, "but is: 2.0"),
                                  ("kl", -0.1, "kl .* >= 0 but is: -0.1"), ("kl", float("nan"), "but is: nan"),
                                  ("sft_target", 0, r"sft_target .* \(0, 1\] but is: 0"),
                                  ("sft_target", 1.5, "but is: 1.5")]:
        with pytest.raises(ValueError, match=message):
            reasoning.rl_settings(RunConfig(task="rl", **{field: value}))


def test_greedy_decoding_of_an_adder_is_exactly_right():
    data = load_problems()
    assert reasoning.exact_match(oracle(2), data.val, 2) == 1.0
    prompts, answers = encode_problems(data.test[:5], 2)
    np.testing.assert_array_equal(reasoning.decode(oracle(2), prompts, 3), answers)
    wrong = lambda seq: np.roll(oracle(2)(seq), 1, axis=1)  # noqa: E731  (every digit one too high)
    assert reasoning.exact_match(wrong, data.val, 2) == 0.0


def test_sampling_inverts_the_cumulative_distribution():
    logits = np.log(np.array([[0.5, 0.25, 0.25] + [1e-12] * (PROBLEM_VOCAB - 3)]))
    pick = lambda u: reasoning.decode(lambda s: logits.repeat(len(s), 0), np.zeros((1, 1), np.int64), 1,  # noqa: E731
                                      np.array([[u]]))[0, 0]
    assert [pick(u) for u in (0.0, 0.49, 0.5, 0.74, 0.76, 0.999999)] == [0, 0, 1, 1, 2, 2]
    assert pick(1.0 - 1e-16) < PROBLEM_VOCAB  # rounding at the top stays in the vocabulary


def test_rewards_are_exact_match_and_advantages_are_normalised_within_each_group():
    answers = np.array([[1, 2], [1, 2], [1, 2], [1, 2]])
    sampled = np.array([[1, 2], [1, 3], [1, 2], [0, 2]])
    r = reasoning.rewards(sampled, answers)
    np.testing.assert_array_equal(r, [1, 0, 1, 0])
    a = reasoning.group_advantages(np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0]), 3)
    np.testing.assert_allclose(a[:3], (np.array([1, 0, 1]) - 2 / 3) / (np.std([1, 0, 1]) + 1e-6))
    np.testing.assert_allclose(a[3:], (np.array([1, 0, 0]) - 1 / 3) / (np.std([1, 0, 0]) + 1e-6))
    assert a.sum() == pytest.approx(0, abs=1e-12)
    np.testing.assert_array_equal(reasoning.group_advantages(np.ones(4), 2), np.zeros(4))  # all equal: no signal


def test_teacher_forcing_positions_line_up_with_the_answer():
    prompts, answers = encode_problems(np.array([[12, 99]]), 2)
    inputs, targets = reasoning.teacher_forcing(prompts, answers)
    assert inputs.shape[1] == reasoning.context(2) and targets is answers
    start = reasoning.answer_start(2)
    assert inputs[0, start] == 11  # "=": its output predicts the first answer digit
    np.testing.assert_array_equal(inputs[0, start + 1 :], answers[0, :-1])
    assert reasoning.probe(load_problems(), count=4).shape == (4, reasoning.context(2))


def test_rollouts_follow_the_seed():
    a, b = reasoning.Rollouts(3), reasoning.Rollouts(3)
    np.testing.assert_array_equal(a.uniforms(4, 3), b.uniforms(4, 3))
    assert not np.array_equal(a.uniforms(4, 3), reasoning.Rollouts(4).uniforms(4, 3))


def test_phase1_stops_at_its_target_or_its_cap(monkeypatch):
    data = load_problems()
    accuracies = iter([0.1, 0.2, 0.35, 0.9])
    steps = []
    info = reasoning.train_phase1(lambda x, y: steps.append(x.shape), lambda: next(accuracies), data, 0, 0.3)
    assert info["steps"] == 3 * reasoning.SFT_CHECK and info["reached"] and info["val_acc"] == 0.35
    assert steps[0] == (reasoning.SFT_BATCH, reasoning.context(2))
    monkeypatch.setattr(reasoning, "SFT_MAX_STEPS", 50)
    with pytest.warns(RuntimeWarning, match="phase 1 stopped after 50 steps .* at validation accuracy 0.000, short of "
                                            "its target 0.3"):
        info = reasoning.train_phase1(lambda x, y: None, lambda: 0.0, data, 0, 0.3)
    assert info["steps"] == 50 and not info["reached"]


def test_phase1_is_trained_once_per_key_and_kept_in_memory_and_in_the_folder(tmp_path):
    key = reasoning.phase1_key(RunConfig(task="rl", depth=2, width=8), load_problems(), "cpu", 0.3)
    assert key["depth"] == 2 and key["dim"] == 8 and key["device"] == "cpu" and key["recipe"]["lr"] == reasoning.SFT_LR
    calls = []

    def train():
        calls.append(1)
        return {"w": np.arange(3.0)}, {"steps": 25, "val_acc": 0.5, "reached": True, "seconds": 1.0}

    data = load_problems(folder=tmp_path / "phase1")
    weights, info = reasoning.phase1(key, data, train)
    assert reasoning.phase1(key, data, train)[1] == info and len(calls) == 1  # memory
    fresh = load_problems(folder=tmp_path / "phase1")  # another process: the folder
    again, info_again = reasoning.phase1(key, fresh, train)
    assert len(calls) == 1 and info_again == info
    np.testing.assert_array_equal(again["w"], weights["w"])
    (stored,) = (tmp_path / "phase1").glob("*.json")
    assert json.loads(stored.read_text())["key"] == key
    reasoning.phase1(key | {"seed": 1}, fresh, train)
    assert len(calls) == 2  # another key: trained
    stored.with_suffix(".npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="the phase-1 model .*npz' cannot be read .* delete it to train it again"):
        reasoning.phase1(key, load_problems(folder=tmp_path / "phase1"), train)

"""The diffusion task's framework-free parts: the schedule, the noise, the fixed evaluation, the sampler, the judge."""

import math

import numpy as np
import pytest

from gradsmooth.experiments import diffusion
from gradsmooth.experiments.data import load_digits_split, signed_images


def test_the_cosine_schedule_falls_from_one_to_almost_zero():
    abar = diffusion.cosine_alpha_bar()
    assert abar.shape == (diffusion.TIMESTEPS,) and abar[0] == pytest.approx(1, abs=1e-3) and abar[-1] < 1e-3
    assert np.all(np.diff(abar) < 0)  # more noise at every step
    betas = 1 - abar[1:] / abar[:-1]
    assert betas.max() <= 0.999 + 1e-12
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert abar[499] == pytest.approx(f(500 / 1000) / f(0), rel=1e-9)  # unclipped there


def test_noised_mixes_the_image_and_the_noise_by_the_schedule():
    x0, eps = np.ones((2, 8, 8), np.float32), np.full((2, 8, 8), 2.0, np.float32)
    t = np.array([0, 700])
    x_t = diffusion.noised(x0, t, eps)
    a = diffusion.ALPHA_BAR[t]
    np.testing.assert_allclose(x_t[:, 0, 0], np.sqrt(a) + 2 * np.sqrt(1 - a), rtol=1e-6)
    assert x_t.dtype == np.float32


def test_timestep_features_are_cosines_then_sines():
    f = diffusion.timestep_features(np.array([0, 3]), 8)
    assert f.shape == (2, 8) and f.dtype == np.float32
    np.testing.assert_allclose(f[0], [1, 1, 1, 1, 0, 0, 0, 0])
    w = 10000.0 ** (-np.arange(4) / 4)
    np.testing.assert_allclose(f[1], np.concatenate([np.cos(3 * w), np.sin(3 * w)]), rtol=1e-6)


def test_training_noise_follows_the_seed():
    a, b, c = diffusion.TrainingNoise(0), diffusion.TrainingNoise(0), diffusion.TrainingNoise(1)
    (ta, ea), (tb, eb), (tc, _) = a.draw(64), b.draw(64), c.draw(64)
    np.testing.assert_array_equal(ta, tb) and np.testing.assert_array_equal(ea, eb)
    assert not np.array_equal(ta, tc) and ta.min() >= 0 and ta.max() < diffusion.TIMESTEPS
    assert not np.array_equal(a.draw(64)[0], ta)  # a stream: the next step draws anew


def test_the_evaluation_set_is_fixed_and_covers_every_image_at_every_grid_step():
    data = load_digits_split()
    first, second = (diffusion.evaluation_set(data.x_test[:20], data.y_test[:20]) for _ in range(2))
    n = 20 * len(diffusion.EVAL_TIMESTEPS)
    assert first.x_t.shape == (n, 8, 8) and first.t.shape == first.y.shape == (n,)
    np.testing.assert_array_equal(first.x_t, second.x_t)
    np.testing.assert_array_equal(np.unique(first.t), diffusion.EVAL_TIMESTEPS)
    np.testing.assert_array_equal(first.y[:20], data.y_test[:20])
    np.testing.assert_allclose(first.x_t, diffusion.noised(np.tile(signed_images(data.x_test[:20]), (10, 1, 1)),
                                                          first.t, first.eps))
    assert sum(len(t) for _, t, _, _ in first.batches(64)) == n


def test_the_probe_is_fixed_noised_images_at_the_probe_timestep():
    data = load_digits_split()
    x_t, t, y = diffusion.probe(data.x_test, data.y_test, count=10)
    assert x_t.shape == (10, 8, 8) and set(t) == {diffusion.PROBE_TIMESTEP}
    np.testing.assert_array_equal(x_t, diffusion.probe(data.x_test, data.y_test, count=10)[0])


def test_ddim_with_the_exact_noise_recovers_the_image_it_aims_at():
    target = np.linspace(-0.9, 0.9, 64).reshape(8, 8)
    seen = []

    def oracle(x, t, y):  # the noise that makes x0 the target, at every step
        seen.append(t[0])
        a = diffusion.ALPHA_BAR[t].reshape(-1, 1, 1)
        return (x - np.sqrt(a) * target) / np.sqrt(1 - a)

    samples, classes = diffusion.ddim_sample(oracle, steps=5, per_class=2)
    assert samples.shape == (20, 8, 8) and list(classes[:4]) == [0, 0, 1, 1]
    np.testing.assert_allclose(samples, np.broadcast_to(target, samples.shape), atol=1e-5)
    assert seen == [999, 749, 500, 250, 0]
    again, _ = diffusion.ddim_sample(lambda x, t, y: np.zeros_like(x), steps=3, per_class=1)
    np.testing.assert_array_equal(again, diffusion.ddim_sample(lambda x, t, y: np.zeros_like(x), steps=3,
                                                               per_class=1)[0])  # fixed noise: deterministic


def test_the_judge_reads_digits_and_scores_samples_by_their_class():
    pytest.importorskip("sklearn")
    data = load_digits_split()
    judge = diffusion.fit_judge(data.x_train, data.y_train)
    assert diffusion.sample_accuracy(judge, signed_images(data.x_test), data.y_test) > 0.95
    assert diffusion.sample_accuracy(judge, signed_images(data.x_test[:50]), (data.y_test[:50] + 1) % 10) < 0.1


def test_the_evaluation_scores_a_predictor_on_every_split_and_keeps_its_samples():
    data = load_digits_split(val_fraction=0.2)
    evaluation = diffusion.Evaluation(data)
    assert set(evaluation.sets) == {"test", "val"} and evaluation.samples is None
    zero = lambda x, t, y: np.zeros_like(x)  # noqa: E731
    out = evaluation(zero)
    assert set(out) == {"test_loss", "val_loss", "sample_acc"} and evaluation.samples.shape == (100, 8, 8)
    assert out["val_loss"] == pytest.approx(float(np.mean(evaluation.sets["val"].eps.astype(np.float64) ** 2)))
    noise = iter([eps for _, _, _, eps in evaluation.sets["test"].batches()])
    assert diffusion.denoising_loss(lambda x, t, y: next(noise), evaluation.sets["test"]) == 0.0  # every batch seen
    assert set(diffusion.Evaluation(load_digits_split()).sets) == {"test"}

"""The reference smoothed step: its defining identities, checked by hand."""

import numpy as np

from gradsmooth.reference import SGD, AdamW, Smoothed, window_matrix

N = 6


def setup(seed=0):
    rng = np.random.default_rng(seed)
    params = {f"h.{i}.w": rng.standard_normal((3, 2)) for i in range(N)} | {"emb": rng.standard_normal(4)}
    grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    return params, grads, [[f"h.{i}.w" for i in range(N)]]


def test_sgd_update_mode_is_theta_minus_lr_times_smoothed_gradient():
    params, grads, groups = setup()
    new = Smoothed(SGD(lr=0.1), groups, window=3).step(params, grads)
    A = window_matrix(N)
    G = np.stack([grads[f"h.{i}.w"] for i in range(N)])
    expected = np.stack([params[f"h.{i}.w"] for i in range(N)]) - 0.1 * np.einsum("lj,j...->l...", A, G)
    np.testing.assert_allclose(np.stack([new[f"h.{i}.w"] for i in range(N)]), expected, rtol=1e-13)
    np.testing.assert_allclose(new["emb"], params["emb"] - 0.1 * grads["emb"], rtol=1e-15)
    # plain SGD is linear in the gradient: both modes agree
    other = Smoothed(SGD(lr=0.1), groups, mode="gradient", window=3).step(params, grads)
    for k in params:
        np.testing.assert_allclose(other[k], new[k], rtol=1e-13)


def test_alpha_zero_and_window_one_are_the_base():
    params, grads, groups = setup(1)
    base = AdamW(lr=0.01, weight_decay=0.1).step(params, grads)
    for kwargs in (dict(alpha=0.0), dict(window=1), dict(alpha=lambda t: 0.0)):
        for mode in ("update", "gradient"):
            new = Smoothed(AdamW(lr=0.01, weight_decay=0.1), groups, mode=mode, **kwargs).step(params, grads)
            for k in params:
                np.testing.assert_array_equal(new[k], base[k])


def test_decoupled_decay_is_never_mixed():
    # every layer gets the same gradient, so AdamW's delta is the same in every layer and
    # renormalize leaves it; the layers differ only in their own decay of their own weights
    params, _, groups = setup(2)
    g = np.random.default_rng(3).standard_normal((3, 2))
    grads = {k: (g if k.startswith("h.") else np.ones(4)) for k in params}
    new = Smoothed(AdamW(lr=0.1, weight_decay=0.5), groups, window=5).step(params, grads)
    base = AdamW(lr=0.1, weight_decay=0.5).step(params, grads)
    for k in params:
        np.testing.assert_allclose(new[k], base[k], rtol=1e-14)


def test_members_without_a_gradient_are_left_out_of_the_window():
    params, grads, groups = setup(4)
    grads["h.2.w"] = None
    new = Smoothed(SGD(lr=1.0), groups, window=3).step(params, grads)
    np.testing.assert_array_equal(new["h.2.w"], params["h.2.w"])
    # h.1's window is now {h.0, h.1, h.3}: the members that have a gradient
    expected = params["h.1.w"] - (grads["h.0.w"] + grads["h.1.w"] + grads["h.3.w"]) / 3
    np.testing.assert_allclose(new["h.1.w"], expected, rtol=1e-14)

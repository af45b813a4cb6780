"""Diagnostics of depth structure: cosine similarity of block updates, CKA of representations."""

import numpy as np
import pytest

from gradsmooth.diagnostics import block_update_similarity, cosine_similarity_matrix, linear_cka, representation_similarity


def test_cosine_similarity_matrix():
    S = cosine_similarity_matrix([np.array([1.0, 0.0]), np.array([1.0, 1.0]), np.array([-2.0, 0.0]), np.zeros(2)])
    np.testing.assert_allclose(S[0], [1.0, 1 / np.sqrt(2), -1.0, 0.0])
    assert S[3, 3] == 0.0


def test_block_update_similarity_uses_roles_every_block_has():
    rng = np.random.default_rng(0)
    shared = rng.standard_normal((4, 3))
    updates = {f"layers.{i}.w": shared + 0.1 * i * rng.standard_normal((4, 3)) for i in range(5)}
    updates["layers.2.extra"] = rng.standard_normal(7)  # one block only: left out
    updates["embed"] = rng.standard_normal(9)
    S = block_update_similarity(updates)
    assert S.shape == (5, 5)
    np.testing.assert_allclose(np.diag(S), 1.0)
    assert S[0, 1] > S[0, 4] > 0.3
    with pytest.raises(ValueError, match="no stack"):
        block_update_similarity({"a": np.ones(2)})


def test_linear_cka_is_invariant_to_rotation_and_scale():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((50, 6))
    Q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    assert linear_cka(X, 3.0 * X @ Q) == pytest.approx(1.0)
    assert linear_cka(X, rng.standard_normal((50, 6))) < 0.5
    S = representation_similarity([X, X @ Q, rng.standard_normal((50, 4))])
    assert S.shape == (3, 3) and S[0, 1] == pytest.approx(1.0) and S[0, 2] < 0.5


def test_adjacent_similarity_is_the_mean_of_the_first_off_diagonal():
    from gradsmooth.diagnostics import adjacent_similarity

    S = np.array([[1.0, 0.2, 0.9], [0.2, 1.0, 0.4], [0.9, 0.4, 1.0]])
    assert adjacent_similarity(S) == pytest.approx(0.3)  # (0.2 + 0.4) / 2: not the far pair's 0.9
    assert np.isnan(adjacent_similarity(np.eye(1)))
    with pytest.raises(ValueError, match=r"similarity should be a square L x L matrix but has shape \(2, 3\)"):
        adjacent_similarity(np.zeros((2, 3)))

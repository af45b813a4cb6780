"""The checks a step makes before anything changes (backends/torch/checks.py)."""

import pytest
import torch

from gradsmooth.backends.torch.checks import raise_if_not_finite, refuse_sparse


def _params(*grads):
    out = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros_like(g))
        p.grad = g
        out.append(p)
    return out


def test_a_finite_gradient_is_never_refused_even_where_its_sum_overflows():
    big = torch.full((4,), 3e38, dtype=torch.float32)  # its sum is inf in float32
    raise_if_not_finite(_params(big, torch.ones(3)), lambda p: "w", step=0)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_a_non_finite_gradient_is_refused_naming_the_parameter_and_the_step(bad):
    params = _params(torch.ones(3), torch.tensor([1.0, bad]))
    names = {id(params[0]): "a", id(params[1]): "b"}
    with pytest.raises(FloatingPointError, match=r"gradient of 'b' is not finite at step 7; nothing was changed"):
        raise_if_not_finite(params, lambda p: names[id(p)], step=7)


def test_a_sparse_gradient_is_refused_in_gradient_mode():
    (p,) = _params(torch.eye(3).to_sparse())
    with pytest.raises(ValueError, match=r"gradient of 'w' is .*sparse.*mode='gradient' smooths dense gradients"):
        refuse_sparse([p], lambda q: "w")

"""The arithmetic of every kernel kind (backends/torch/arithmetic.py), written once and rendered
into Python and C++ with its order of operations kept."""

import ast

import pytest

from gradsmooth.backends.torch.arithmetic import KINDS, cpp_expression, python_expression


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_is_complete_and_names_only_what_it_has(kind):
    spec = KINDS[kind]
    assert spec.body[-1][0] == "u"  # the member's term
    assert set(spec.state) <= set(spec.arrays) and spec.arrays[0] in ("p", "g")  # the array a row writes comes first
    known = set(spec.arrays) | set(spec.coefficients) | {"sqrt"}
    for target, expression in spec.body:
        names = {n.id for n in ast.walk(ast.parse(expression, mode="eval")) if isinstance(n, ast.Name)}
        assert names <= known, f"{kind}: {target} = {expression} names {names - known}"
        known.add(target)
    for s in spec.state:
        assert any(target == s for target, _ in spec.body), f"{kind} writes {s} back without computing it"
    if spec.own is not None:
        names = {n.id for n in ast.walk(ast.parse(spec.own, mode="eval")) if isinstance(n, ast.Name)}
        assert names <= {"p", spec.row}


def test_rendering_keeps_the_order_of_operations():
    names = {"a": "x[0]", "b": "c[3]", "c": "y0"}
    assert python_expression("a * b * c + sqrt(a - c)", names) == "x[0] * c[3] * y0 + torch.sqrt(x[0] - y0)"
    assert cpp_expression("a * (b * c) / sqrt(a)", names) == "x[0] * (c[3] * y0) / std::sqrt(x[0])"
    assert cpp_expression("(a + b) + c", names) == "x[0] + c[3] + y0"  # the same tree: ((a + b) + c)
    assert cpp_expression("a + (b + c)", names) == "x[0] + (c[3] + y0)"


def test_adamw_is_torchs_lerp_and_update():
    body = dict(KINDS["adamw"].body)
    assert body["m"] == "m + one_minus_beta1 * (g - m)"  # torch's lerp for a weight below one half
    assert body["u"] == "step * (m / (sqrt(v) / sqrt_bc2 + eps))"
    assert KINDS["adamw"].own == "decay * p"  # decoupled decay per layer, never mixed

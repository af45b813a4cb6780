"""Where smoothing acts (gradsmooth.modes): the modes and their check."""

import pytest

import gradsmooth
from gradsmooth import check_mode
from gradsmooth.modes import MODES


def test_the_modes_are_update_and_gradient():
    assert MODES == ("update", "gradient")
    assert gradsmooth.MODES is MODES and gradsmooth.check_mode is check_mode


def test_check_mode():
    assert check_mode("gradient") == "gradient"
    with pytest.raises(ValueError, match=r"mode should be one of \('update', 'gradient'\) but is: 'both'"):
        check_mode("both")


@pytest.mark.parametrize("mode", MODES)
def test_check_mode_returns_its_argument(mode):
    assert check_mode(mode) is mode


@pytest.mark.parametrize("mode", ["Update", "GRADIENT", "", " update", None, 0, ("update",), ["gradient"]], ids=repr)
def test_anything_else_is_refused_naming_the_modes_and_the_value(mode):
    with pytest.raises(ValueError) as info:
        check_mode(mode)
    assert str(info.value) == f"mode should be one of ('update', 'gradient') but is: {mode!r}"

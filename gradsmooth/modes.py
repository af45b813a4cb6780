"""Where smoothing acts (docs/method.md): on the base optimizer's step, or on the gradients."""

from __future__ import annotations

__all__ = ["MODES", "check_mode"]

MODES = ("update", "gradient")


def check_mode(mode: object) -> str:
    """``mode`` after checking it is ``"update"`` (smooth the step) or ``"gradient"`` (smooth the gradients)."""
    if mode not in MODES:
        raise ValueError(f"mode should be one of {MODES} but is: {mode!r}")
    return mode  # type: ignore[return-value]

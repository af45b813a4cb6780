"""The wrapper's checkpoint format: the base optimizers' state dict in the standard shape.

``state_dict()`` is what ``torch.optim`` writes for one optimizer: ``{"state": {id: ...},
"param_groups": [...]}``, with the bases' groups in order and their parameter ids numbered
across them, and each group carrying ``"gradsmooth": {"step": ..., settings}`` (so
``torch.distributed.checkpoint`` and FSDP2's helpers, which flatten param groups, carry the
wrapper's step counter too). A plain checkpoint of the base optimizer(s) loads as well.

Loading checks the whole dict first, then loads the bases all or none.
"""

from __future__ import annotations

import numbers
import os
import re
import sys
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch.optim import Optimizer
from gradsmooth.describe import describe

__all__ = ["STATE_KEY", "check_shapes", "checked_groups", "checked_own_state", "load_all_or_none", "pack", "split",
           "warn_other_settings"]

STATE_KEY = "gradsmooth"


def pack(bases: list[Optimizer], own: dict[str, Any]) -> dict[str, Any]:
    """The bases' state dicts as one, each group carrying ``own`` (the wrapper's step and settings)."""
    state, groups, offset = {}, [], 0
    for b in bases:
        part = b.state_dict()
        state.update({k + offset: v for k, v in part["state"].items()})
        for g in part["param_groups"]:
            groups.append({**g, "params": [i + offset for i in g["params"]], STATE_KEY: dict(own)})
        offset += sum(len(g["params"]) for g in b.param_groups)
    return {"state": state, "param_groups": groups}


def checked_groups(state_dict: Any, param_groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``state_dict``'s param groups, after checking its shape against ``param_groups``."""
    saved = state_dict.get("param_groups") if isinstance(state_dict, Mapping) else None
    if not isinstance(saved, list) or not isinstance(state_dict.get("state"), Mapping):
        raise ValueError("state_dict should hold 'state' (a dict) and 'param_groups' (a list)")
    if len(saved) != len(param_groups):
        raise ValueError(
            f"loaded state dict has {len(saved)} parameter groups but the optimizer(s) have {len(param_groups)}"
        )
    for i, (g, s) in enumerate(zip(param_groups, saved)):
        if not isinstance(s, Mapping) or not isinstance(s.get("params"), list):
            raise ValueError(f"loaded state dict's parameter group {i} should be a dict with a 'params' list")
        if len(g["params"]) != len(s["params"]):
            raise ValueError(
                f"loaded state dict's parameter group {i} has {len(s['params'])} parameters "
                f"but the optimizer's has {len(g['params'])}"
            )
    return saved


def checked_own_state(saved: list[dict[str, Any]]) -> tuple[int, dict[str, Any] | None]:
    """The step counter and settings saved in the groups' ``"gradsmooth"`` entries (0 and None
    for a plain base checkpoint), after checking every entry."""
    entries = [(i, g[STATE_KEY]) for i, g in enumerate(saved) if STATE_KEY in g]
    if not entries:
        return 0, None
    steps = set()
    for i, own in entries:
        where = f"state_dict['param_groups'][{i}]['{STATE_KEY}']"
        if not isinstance(own, Mapping) or "step" not in own:
            raise ValueError(f"{where} should be a dict with a 'step' but is: {describe(own)}")
        step = own["step"]
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"{where}['step'] should be an integer >= 0 but is: {step!r}")
        steps.add(int(step))
    if len(steps) > 1:
        raise ValueError(f"the loaded state dict's groups disagree on the '{STATE_KEY}' step: {sorted(steps)}")
    return steps.pop(), dict(entries[0][1])


def split(saved: list[dict[str, Any]], state: Mapping[int, Any], bases: list[Optimizer]) -> list[dict[str, Any]]:
    """One state dict per base, ids renumbered from 0, the wrapper's entries left out."""
    saved = [{k: v for k, v in g.items() if k != STATE_KEY} for g in saved]
    parts, start = [], 0
    for b in bases:
        groups = saved[start : start + len(b.param_groups)]
        start += len(b.param_groups)
        ids = [i for g in groups for i in g["params"]]
        renumber = {old: new for new, old in enumerate(ids)}
        parts.append({
            "state": {renumber[k]: v for k, v in state.items() if k in renumber},
            "param_groups": [{**g, "params": [renumber[i] for i in g["params"]]} for g in groups],
        })
    return parts


def check_shapes(parts: list[dict[str, Any]], bases: list[Optimizer], name: Any) -> None:
    """Refuse a checkpoint of another model before anything loads: a saved state tensor must
    have the shape of the base's current state under the same key, or, for torch.optim's own
    optimizers (whose per-parameter tensors all have the parameter's shape) and no current
    state, the parameter's shape. (torch.optim itself loads such a dict and fails, or
    silently broadcasts, at the next step.)"""
    for b, part in zip(bases, parts):
        params = [p for g in b.param_groups for p in g["params"]]
        builtin = type(b).__module__.startswith("torch.optim")
        for index, saved in part["state"].items():
            if not isinstance(saved, Mapping) or not 0 <= index < len(params):
                continue
            p, current = params[index], b.state.get(params[index], {})
            for key, value in saved.items():
                if not isinstance(value, torch.Tensor) or value.dim() == 0:
                    continue
                now = current.get(key)
                expected = tuple(now.shape) if isinstance(now, torch.Tensor) else tuple(p.shape) if builtin else None
                if expected is not None and tuple(value.shape) != expected:
                    raise ValueError(
                        f"loaded state {key!r} of parameter {name(p)!r} has shape {tuple(value.shape)} but "
                        f"{'its state' if isinstance(now, torch.Tensor) else 'the parameter'} has shape {expected}: "
                        "the checkpoint is from another model (nothing was loaded)"
                    )


def load_all_or_none(bases: list[Optimizer], parts: list[dict[str, Any]]) -> None:
    """Load each base its part; if one fails, the ones already loaded get their state back."""
    previous = [b.state_dict() for b in bases]
    loaded = 0
    try:
        for b, part in zip(bases, parts):
            b.load_state_dict(part)
            loaded += 1
    except Exception:
        for b, part in zip(bases[:loaded], previous):
            b.load_state_dict(part)
        raise


def _comparable(setting: Any) -> Any:
    """A saved setting without object addresses (``<function f at 0x7f...>``): a schedule
    given as a function is the same setting in the process that resumes."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", setting) if isinstance(setting, str) else setting


def warn_other_settings(saved: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
    """One warning naming both when the checkpoint's operator or mode is not this wrapper's."""
    differ = [k for k in ("operator", "mode") if k in saved and _comparable(saved[k]) != _comparable(settings[k])]
    if differ:
        then = ", ".join(f"{k}={saved[k]}" for k in differ)
        now = ", ".join(f"{k}={settings[k]}" for k in differ)
        warnings.warn(
            f"the checkpoint was saved with {then}; this wrapper uses {now}: loaded anyway (the base state and "
            "the step counter carry over; smoothing continues with this wrapper's settings)",
            UserWarning,
            stacklevel=_caller_level(),
        )


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside gradsmooth and torch (torch's decorators
    around ``load_state_dict`` add frames): the warning then names the user's line."""
    inside = (os.path.dirname(os.path.dirname(__file__)), os.path.dirname(torch.__file__))  # the adapters, torch
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    return level

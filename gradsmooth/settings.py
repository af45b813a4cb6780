"""The smoothing options, declared, checked and documented once.

Every adapter (``GradientSmoothing`` for torch and MLX, ``SmoothedAdamW``, ``SmoothedSGD``), every
``factory``, ``gradsmooth.compare.sweep`` and the command line take these options by name and
turn them into one [`Settings`][gradsmooth.settings.Settings] with
[`Settings.of`][gradsmooth.settings.Settings.of], which refuses an option the caller does not take,
by name, and a bad value, by name and value, before anything is built.

    >>> s = Settings.of({"window": 5, "mode": "gradient"}, takes=("mode",), who="example")
    >>> s.mode, s.operator
    ('gradient', WindowSmoothing(window=5, kernel='uniform', boundary='renormalize', alpha=1.0))
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .blocks import Exclude, Stacks
from .decay import DecoupledDecay, check_decoupled_decay
from .describe import describe
from .modes import check_mode
from .operators import WINDOW_OPTIONS, DepthOperator, WindowOptions, make_operator

__all__ = ["OPTIONS", "Settings", "SmoothingOptions"]


class SmoothingOptions(WindowOptions, total=False):
    """The smoothing options as keyword arguments (each adapter takes the ones it names in
    [`Settings.of`][gradsmooth.settings.Settings.of]'s ``takes``, and the window options)."""

    mode: str
    operator: DepthOperator | None
    stacks: Stacks
    exclude: Exclude
    fused: bool | None
    check_finite: bool
    decoupled_decay: DecoupledDecay


#: What each option means: the one text the adapters' and the command line's help refer to.
OPTIONS: dict[str, str] = {
    "mode": "'update' (default: smooth the base optimizer's step, decoupled weight decay kept per layer) or "
            "'gradient' (smooth the gradients before the base step: no snapshot)",
    "operator": "any gradsmooth.DepthOperator, in place of the window options",
    "stacks": "where the depth index is (a name prefix such as 'layers', a list of prefixes, or a compiled regex "
              "capturing the depth); default: found from the model's structure or the names",
    "exclude": "parameters never smoothed: names, prefixes, a compiled regex, a predicate, or a list of these",
    "fused": "None (default): compiled kernels where a compiler is there, else the eager ones; True: compile "
             "anyway (warns and runs the eager kernels if that fails); False: the eager kernels",
    "check_finite": "raise FloatingPointError on a non-finite gradient before anything changes (default False: "
                    "it reads every gradient once more)",
    "decoupled_decay": "whether the base's weight_decay is decoupled (kept per layer): None (default) classifies "
                       "it; True or False declares it; a function of the param group (torch) or of the optimizer "
                       "(MLX) returns a bool, or the decay factor itself",
    "window": "odd window width (default 3; 1 is the identity)",
    "kernel": "'uniform' (default), 'triangular', 'gaussian' or an explicit symmetric sequence of weights",
    "boundary": "'renormalize' (default), 'nearest', 'reflect', 'mirror' or 'zero'",
    "alpha": "strength in [0, 1], a number or a function of the step (default 1)",
    "sigma": "the gaussian kernel's width (default: radius / 2, at least 0.5)",
    "normalize": "True (default): the kernel's weights are normalised; False: used as given",
}


@dataclass(frozen=True)
class Settings:
    """The checked smoothing options of one optimizer (docs/method.md defines each).

    Attributes:
        operator: the depth operator (a [`WindowSmoothing`][gradsmooth.WindowSmoothing] of the
            window options ``window``, ``kernel``, ``boundary``, ``alpha``, ``sigma``,
            ``normalize``, or the ``operator`` given).
        mode: ``"update"`` (default) or ``"gradient"``.
        stacks: where the depth index is; None: found from the model's structure or the names.
        exclude: parameters never smoothed.
        fused: None (default), True or False: which kernels mix (torch).
        check_finite: whether a non-finite gradient is refused before anything changes.
        decoupled_decay: the decay's kind (``gradsmooth.decay``): None, a bool, or a function.
    """

    operator: DepthOperator
    mode: str = "update"
    stacks: Stacks = None
    exclude: Exclude = None
    fused: bool | None = None
    check_finite: bool = False
    decoupled_decay: DecoupledDecay = None

    @classmethod
    def of(cls, options: Mapping[str, Any], takes: Collection[str], who: str,
           instead: Mapping[str, str] | None = None) -> Settings:
        """The settings of ``options``, for ``who`` (an adapter's name, for messages), which takes
        the options ``takes`` and the window options. An option it does not take is refused by
        name (``instead``: what to do about one, where there is advice), a bad value by name and
        value."""
        for name in options:
            if name not in takes and name not in WINDOW_OPTIONS:
                known = name in OPTIONS
                advice = (instead or {}).get(name, "")
                raise TypeError(f"{who} " + (f"has no option {name!r}" if known else
                                             f"got an unexpected keyword argument {name!r}")
                                + (f": {advice}" if advice else f"; its options: {', '.join(sorted(takes))} and the "
                                   f"window options ({', '.join(WINDOW_OPTIONS)})"))
        rest = {k: v for k, v in options.items() if k not in WINDOW_OPTIONS and k != "operator"}
        if "mode" in rest:
            check_mode(rest["mode"])
        for flag, allowed in (("fused", (None, True, False)), ("check_finite", (True, False))):
            if flag in rest and not any(rest[flag] is a for a in allowed):
                words = "None, True or False" if None in allowed else "True or False"
                raise TypeError(f"{flag} should be {words} but is: {describe(rest[flag])}")
        if "decoupled_decay" in rest:
            check_decoupled_decay(rest["decoupled_decay"])
        window = {k: v for k, v in options.items() if k in WINDOW_OPTIONS}
        return cls(operator=make_operator(options.get("operator"), **window), **rest)

    def options(self) -> dict[str, Any]:
        """The settings as the options that make them (``Settings.of(s.options(), ...) == s``)."""
        return {"operator": self.operator, "mode": self.mode, "stacks": self.stacks, "exclude": self.exclude,
                "fused": self.fused, "check_finite": self.check_finite, "decoupled_decay": self.decoupled_decay}

    def summary(self) -> dict[str, Any]:
        """What a checkpoint records of them (plain values: the operator as its repr)."""
        return {"mode": self.mode, "operator": repr(self.operator), "check_finite": self.check_finite,
                "fused": self.fused}

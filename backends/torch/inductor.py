"""Inductor's kernels: each kind's arithmetic (``arithmetic.py``) for one band pattern, turned
into straight-line Python over the members and compiled once with ``torch.compile`` (C++/OpenMP
on a CPU, Triton on CUDA) with dynamic sizes: one kernel per pattern and kind serves every group,
size and step with that pattern. The weights and coefficients are tensor arguments, so an
``alpha`` schedule or a new learning rate never recompiles. One read and one write of each
member's arrays; low precision computed in float32 and rounded once on the write.
"""

from __future__ import annotations

import os
import shutil
from functools import lru_cache

import torch
from torch import Tensor

from .arithmetic import KINDS, Pattern, python_expression
from .bands import BandLayout
from .contract import Call, Members
from .eager import compute_dtype, device_weights

__all__ = ["INDUCTOR", "MIN_ELEMENTS", "InductorKernel", "compiler_missing", "kernel_source"]

# groups smaller than this (elements per member) are not run by inductor's kernels: a compiled
# call's fixed cost (its guards over every member's tensors) is more than the work below it
MIN_ELEMENTS = 1 << 16


@lru_cache(maxsize=256)
def kernel_source(pattern: Pattern, kind: str) -> str:
    """Straight-line Python ``mix(*arrays, w, c)`` for ``pattern`` and ``kind``: each array a list
    of the members' 1-D tensors, ``w`` the band's weights (flat, row by row), ``c`` the
    coefficients (``c[k * n + j]``, then a per-row one); both in the compute dtype."""
    spec, n = KINDS[kind], len(pattern)
    args = [*spec.arrays, "w", "c"]
    lines = [f"def mix({', '.join(args)}):  # {kind}, {n} members"]
    K = len(spec.coefficients)
    for j in range(n):
        names = {a: f"{a}[{j}].to(w.dtype)" for a in spec.arrays}
        names |= {c: f"c[{k * n + j}]" for k, c in enumerate(spec.coefficients)}
        for target, expression in spec.body:
            lines.append(f"    {target}{j} = {python_expression(expression, names)}")
            names[target] = f"{target}{j}"
    k = 0
    for l, js in enumerate(pattern):
        terms = [f"w[{k + i}] * u{j}" for i, j in enumerate(js)]
        k += len(js)
        if not terms and spec.own is None:
            terms = [f"0 * u{l}"]
        if spec.own is not None:
            own = python_expression(spec.own, {"p": f"p[{l}].to(w.dtype)", spec.row or "_": f"c[{K * n + l}]"})
            terms.insert(0, own)
        lines.append(f"    y{l} = " + " + ".join(terms))
    first = spec.arrays[0]
    for l in range(n):
        lines.append(f"    {first}[{l}].copy_(y{l})")
        for name in spec.state:
            lines.append(f"    {name}[{l}].copy_({name}{l})")
    return "\n".join(lines) + "\n"


@lru_cache(maxsize=8)
def compiler_missing(device_type: str) -> str | None:
    """Why ``torch.compile`` cannot build kernels for ``device_type`` here, or None when it can:
    inductor needs a C++ compiler for a CPU and Triton for CUDA (other devices: eager)."""
    if device_type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            compiler = get_cpp_compiler()
        except Exception as error:  # no compiler found, or inductor's private API moved
            return f"no C++ compiler ({type(error).__name__})"
        return None if shutil.which(compiler) or os.path.exists(compiler) else f"no C++ compiler ({compiler})"
    if device_type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:  # pragma: no cover
            return "no Triton"
        return None if has_triton() else "no Triton"
    return f"no compiled kernels for {device_type} devices"


def _plain(t: Tensor) -> Tensor:
    """A flat tensor over ``t``'s memory that is no view, needs no grad and aliases no other
    argument's tensor object: every call then meets the guards of the kernel compiled on
    scratch tensors, whatever ``t`` is (a parameter, a view into a gradient bucket, a row of
    the snapshot). Writes through it do not bump ``t``'s version counter."""
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage(), t.storage_offset(), (t.numel(),))


try:  # dynamo's compiled entries of a code object (private; without it the stance alone guards)
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list as _cache_entries
except ImportError:  # pragma: no cover
    _cache_entries = None


class _Compiled:
    """One pattern and kind's ``torch.compile``d function (a code object of its own: dynamo
    caches per code object, so patterns never share or exhaust one cache)."""

    def __init__(self, pattern: Pattern, kind: str) -> None:
        namespace: dict = {"torch": torch}
        filename = f"<gradsmooth inductor {kind} kernel, {len(pattern)} members>"
        exec(compile(kernel_source(pattern, kind), filename, "exec"), namespace)  # noqa: S102 (integers only)
        self.code = namespace["mix"].__code__
        # dynamic sizes: one kernel for every group of the pattern; dynamic_threads keeps the
        # C++ loop parallel (without it inductor sees no size and emits a serial loop)
        self.fn = torch.compile(namespace["mix"], dynamic=True, fullgraph=True, options={"cpp.dynamic_threads": True})
        self.ready: set[tuple[torch.dtype, torch.device]] = set()

    def exists(self) -> bool:
        """Whether dynamo still holds the compiled code (``torch._dynamo.reset()`` drops it)."""
        return _cache_entries is None or bool(_cache_entries(self.code))


class InductorKernel:
    """Inductor's kernels as a ``GroupKernel``: every kind, on devices inductor compiles for."""

    name = "inductor"
    refusing = True  # its guards (or a dynamo reset) may refuse a bound call: the eager kernel then runs

    def __init__(self) -> None:
        self._compiled: dict[tuple[Pattern, str], _Compiled] = {}

    def _get(self, pattern: Pattern, kind: str) -> _Compiled:
        compiled = self._compiled.get((pattern, kind))
        if compiled is None:
            compiled = self._compiled[(pattern, kind)] = _Compiled(pattern, kind)
        return compiled

    def refuses(self, kind: str, dtype: torch.dtype, device: torch.device, numel: int, contiguous: bool) -> str | None:
        if numel < MIN_ELEMENTS:
            return f"members under {MIN_ELEMENTS:,} elements"  # a call's fixed cost would exceed the work
        if not contiguous:
            return "members not contiguous"
        return compiler_missing(torch.device(device).type)

    def prepared(self, kind: str, band: BandLayout, dtype: torch.dtype, device: torch.device) -> bool:
        compiled = self._compiled.get((band.pattern, kind))
        return compiled is not None and (dtype, device) in compiled.ready and compiled.exists()

    def prepare(self, kind: str, band: BandLayout, dtype: torch.dtype, device: torch.device) -> None:
        """Compile by running on small scratch tensors (again after ``torch._dynamo.reset()``)."""
        if self.prepared(kind, band, dtype, device):
            return
        compiled, spec, n, cdtype = self._get(band.pattern, kind), KINDS[kind], band.n, compute_dtype(dtype)
        arrays = [[torch.zeros(8, dtype=dtype, device=device) for _ in range(n)] for _ in spec.arrays]
        w = torch.zeros(len(band.values), dtype=cdtype, device=device)
        c = torch.ones(len(spec.coefficients) * n + (n if spec.row else 0) or 1, dtype=cdtype, device=device)
        with torch.no_grad():
            compiled.fn(*arrays, w, c)
        compiled.ready.add((dtype, device))

    def scratch(self, members: Members, band: BandLayout) -> None:
        return None

    def bind(self, members: Members, band: BandLayout, coefficients: Tensor | None, scratch: Tensor | None) -> Call:
        """The compiled call over flat, plain views of the members (made now). It never compiles:
        arguments that fail the guards of the kernel compiled on scratch tensors, a storage
        replaced since binding, or code dropped by ``torch._dynamo.reset()`` make it raise
        ``RuntimeError`` before it writes anything."""
        compiled = self._get(band.pattern, members.kind)
        first = members.first
        w = _device_values(band.values, compute_dtype(first.dtype), first.device)
        c = coefficients if coefficients is not None else torch.ones(1, dtype=w.dtype, device=w.device)
        plain = [[_plain(t) for t in ts] for ts in members.arrays]
        written = members.arrays[0]

        def run() -> None:
            if not compiled.exists():
                raise RuntimeError("the compiled kernel is gone (torch._dynamo.reset()?): not compiling inside a step")
            if any(f.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()
                   for f, t in zip(plain[0], written)):
                raise RuntimeError("a member's storage was replaced (p.data = ...) after the kernel was bound")
            with torch.no_grad(), torch.compiler.set_stance("fail_on_recompile"):
                compiled.fn(*plain, w, c.view(-1))
            torch.autograd.graph.increment_version(written)  # written through other tensor objects

        return run


def _device_values(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """The band's weights as a flat tensor on ``device`` (cached: they change only with alpha)."""
    return device_weights(values, dtype, device).view(-1)


INDUCTOR = InductorKernel()

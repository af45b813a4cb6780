"""Fused mixing: one compiled kernel per band pattern, a single pass over a group's members.

The eager path (``mixing.py``) runs a few small kernels per column chunk; here a band's
pattern (which members each row reads) is turned into straight-line Python, compiled once
with ``torch.compile`` (inductor: C++/OpenMP on a CPU, Triton on CUDA) with dynamic sizes,
and reused for every group, size and step with that pattern. The weights and decay factors
are tensor arguments, so an ``alpha`` schedule or a new learning rate never recompiles.

For update mode the kernel reads ``p`` and the snapshot ``s`` and computes, per element,

    x_j = p_j - d_j * s_j                      (the base's step without decoupled decay)
    y_l = p_l + sum_j (A - I)[l, j] * x_j      (= d_l * s_l + sum_j A[l, j] * x_j)
    p_l <- y_l

and for gradient mode ``g_l <- sum_j A[l, j] * g_j``: one read and one write of each member.
Low-precision members are mixed in float32 and rounded once on the write.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from functools import lru_cache

import torch

from gradsmooth import Band

from . import blocked
from .mixing import compute_dtype

__all__ = ["FUSED_MIN_ELEMENTS", "FusedKernel", "band_pattern", "compiler_missing", "fused_kernel", "kernel_source"]

# members smaller than this are mixed by the eager kernels: below it a compiled call's fixed
# cost (guards over 2n tensors, about 0.5 ms on a CPU) is more than the eager launches
FUSED_MIN_ELEMENTS = 1 << 16

Pattern = tuple[tuple[int, ...], ...]


@lru_cache(maxsize=512)
def band_pattern(band: Band, minus_identity: bool = False) -> tuple[Pattern, tuple[float, ...]]:
    """The members each row reads (``A``'s band, or ``A - I``'s with the diagonal kept) and
    the weights in the same order, flattened row by row."""
    pattern, values = [], []
    for l, row in enumerate(band.rows):
        entries = dict(row)
        if minus_identity:
            entries[l] = entries.get(l, 0.0) - 1.0
        js = tuple(sorted(entries))
        pattern.append(js)
        values.extend(entries[j] for j in js)
    return tuple(pattern), tuple(values)


# per native kind: the state lists the kernel reads and writes besides p and g, and the number
# of per-member coefficients (laid out coefficient-major: c[k * n + j] for member j)
# ("sgd-plain": SmoothedSGD's groups without momentum, which hold no buffer)
NATIVE = {"adamw": (("m", "v"), 8), "sgd": (("b",), 7), "sgd-plain": ((), 7)}


def _row_terms(pattern: Pattern, var: str) -> list[list[str]]:
    """Per row of the band, its weighted terms: ``w[k] * {var}{j}`` with ``k`` counting the flat weights."""
    rows, k = [], 0
    for js in pattern:
        rows.append([f"w[{k + i}] * {var}{j}" for i, j in enumerate(js)])
        k += len(js)
    return rows


def _native_source(pattern: Pattern, kind: str) -> str:
    """Straight-line Python for a native smoothed step (``SmoothedAdamW``, ``SmoothedSGD``):
    ``mix(p, g, *state, w, c)`` computes every member's update ``u_j`` from its gradient and
    state, writes the state, and writes ``p_l <- d_l p_l + sum_j A[l, j] u_j`` (AdamW) or
    ``p_l <- p_l + sum_j A[l, j] u_j`` (SGD): one read of p, g and the state, one write of p
    and the state. ``c`` holds the per-member coefficients (native_steps.py builds them)."""
    n = len(pattern)
    state, _ = NATIVE[kind]
    head = f"def mix({', '.join(['p', 'g', *state, 'w', 'c'])}):  # {kind}, {n} members"
    lines = [head]
    for j in range(n):
        c = [f"c[{k * n + j}]" for k in range(7)]
        lines.append(f"    g{j} = g[{j}].to(w.dtype) * {c[6]}")  # the sign: -1 under maximize
        if kind == "adamw":  # c: 1 - beta1, beta2, 1 - beta2, sqrt(bias corr. 2), eps, -lr / bias corr. 1, sign, decay
            lines.append(f"    m{j} = m[{j}].to(w.dtype)")
            lines.append(f"    m{j} = m{j} + {c[0]} * (g{j} - m{j})")
            lines.append(f"    v{j} = v[{j}].to(w.dtype) * {c[1]} + {c[2]} * g{j} * g{j}")
            lines.append(f"    u{j} = {c[5]} * (m{j} / (v{j}.sqrt() / {c[3]} + {c[4]}))")
        else:  # c: weight decay, momentum (0 at the first step), 1 - dampening (1 then), a, b, -lr, sign
            lines.append(f"    e{j} = g{j} + {c[0]} * p[{j}].to(w.dtype)")
            if state:
                lines.append(f"    b{j} = b[{j}].to(w.dtype) * {c[1]} + {c[2]} * e{j}")
            lines.append(f"    u{j} = {c[5]} * ({c[3]} * e{j} + {c[4]} * {f'b{j}' if state else f'e{j}'})")
    for l, terms in enumerate(_row_terms(pattern, "u")):
        own = f"c[{7 * n + l}] * p[{l}].to(w.dtype)" if kind == "adamw" else f"p[{l}].to(w.dtype)"
        lines.append(f"    y{l} = " + " + ".join([own, *terms]))
    for l in range(n):
        lines.append(f"    p[{l}].copy_(y{l})")
        for name in state:
            lines.append(f"    {name}[{l}].copy_({name}{l})")
    return "\n".join(lines) + "\n"


@lru_cache(maxsize=128)
def kernel_source(pattern: Pattern, mode: str) -> str:
    """Straight-line Python for one pattern: ``mix(p, s, w, d)`` (update) or ``mix(p, w)``
    (gradient), ``p`` and ``s`` lists of 1-D tensors, ``w`` the flat weights, ``d`` the decay
    factors; both in the compute dtype. ``"adamw"`` and ``"sgd"``: `_native_source`."""
    if mode in NATIVE:
        return _native_source(pattern, mode)
    n = len(pattern)
    lines = [f"def mix(p, s, w, d):  # update, {n} members" if mode == "update" else f"def mix(p, w):  # gradient, {n} members"]
    read = sorted({j for js in pattern for j in js})
    for j in read:
        if mode == "update":
            lines.append(f"    x{j} = p[{j}].to(w.dtype) - d[{j}] * s[{j}].to(w.dtype)")
        else:
            lines.append(f"    x{j} = p[{j}].to(w.dtype)")
    for l, terms in enumerate(_row_terms(pattern, "x")):
        if mode == "update":
            lines.append(f"    y{l} = " + " + ".join([f"p[{l}].to(w.dtype)", *terms]))
        else:
            lines.append(f"    y{l} = " + (" + ".join(terms) if terms else f"p[{l}].new_zeros(p[{l}].shape, dtype=w.dtype)"))
    for l in range(n):
        lines.append(f"    p[{l}].copy_(y{l})")
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


class FusedKernel:
    """A compiled kernel for one pattern and mode; `prepare` compiles it for a dtype and
    device (call it before anything changes: compilation can fail), calling it runs it.

    The native steps' kernels ("adamw", "sgd") for float32 and float64 members on a CPU are
    blocked C++ kernels (``blocked.py``): inductor's single loop over every member's parameter,
    gradient and state is slow there. Every other kernel is inductor's (Triton on CUDA; the
    wrapper's update and gradient kernels on a CPU, where its loop measured as fast or faster)."""

    def __init__(self, pattern: Pattern, mode: str) -> None:
        self.pattern, self.mode = pattern, mode
        namespace: dict[str, Callable] = {}
        filename = f"<gradsmooth fused {mode} kernel, {len(pattern)} members>"
        # a code object of its own per pattern: torch.compile caches per code object, so patterns
        # never share (or exhaust) one cache; the source is generated above from integers only
        exec(compile(kernel_source(pattern, mode), filename, "exec"), namespace)  # noqa: S102
        self._code = namespace["mix"].__code__
        # dynamic sizes: one kernel for every group of the pattern; dynamic_threads keeps the
        # C++ loop parallel (without it inductor sees no size and emits a serial loop)
        self._compiled = torch.compile(namespace["mix"], dynamic=True, fullgraph=True,
                                       options={"cpp.dynamic_threads": True})
        self._ready: set[tuple[torch.dtype, torch.device]] = set()  # inductor's kernel compiled
        self._ready_blocked: set[tuple[torch.dtype, torch.device]] = set()  # the blocked kernel loaded
        self._failed: set[tuple[torch.dtype, torch.device]] = set()

    def status(self, dtype: torch.dtype, device: torch.device) -> str:
        """"compiled", "failed" (it warned; the eager kernels run) or "not compiled yet"."""
        key = (dtype, device)
        ready = self._ready_blocked if self._blocked(dtype, device) is not None else self._ready
        return "failed" if key in self._failed else "compiled" if key in ready else "not compiled yet"

    def ready(self, dtype: torch.dtype, device: torch.device) -> bool:
        """Whether the kernel runs for ``dtype`` on ``device``: `prepare` it (compiling
        on first use), or False, with one warning, where compiling failed (no C++ compiler,
        no Triton, ...): the caller runs the eager kernels instead. Running out of memory is
        not a compile failure: it propagates (the step raises before anything changed, and
        the next step compiles again)."""
        if (dtype, device) in self._failed:
            return False
        try:
            self.prepare(dtype, device)
        except Exception as error:  # any compile failure: the eager kernels give the same result
            if _out_of_memory(error):  # not a compile failure: the step raises (nothing changed yet)
                raise
            self.give_up(dtype, device, error)
            return False
        return True

    def may_refuse(self, dtype: torch.dtype, device: torch.device) -> bool:
        """Whether a call bound for ``dtype`` on ``device`` may refuse to run (inductor's kernels:
        its guards, a reset; the caller then runs the eager kernels and keeps their scratch
        ready). A bound blocked call refuses only when a member's storage was replaced between
        `bind` and the call, which a step never does."""
        return self._blocked(dtype, device) is None

    def give_up(self, dtype: torch.dtype, device: torch.device, error: BaseException) -> None:
        """Run the eager kernels for ``dtype`` on ``device`` from now on, and say so once."""
        self._failed.add((dtype, device))
        warnings.warn(
            f"gradsmooth: the fused {self.mode} kernel for {len(self.pattern)} members ({dtype} on {device}) "
            f"cannot run ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            "the eager kernels run instead (same result, slower)",
            RuntimeWarning,
            stacklevel=3,
        )

    def _blocked(self, dtype: torch.dtype, device: torch.device) -> str | None:
        """The blocked kernel's C++ source for ``dtype`` on ``device``, or None (inductor's)."""
        if not blocked.applies(self.mode, dtype, device):
            return None
        return blocked.blocked_source(self.pattern, self.mode, blocked.BLOCKED_DTYPES[dtype])

    def prepare(self, dtype: torch.dtype, device: torch.device) -> None:
        """Compile for members of ``dtype`` on ``device`` by running on small scratch tensors
        (again after ``torch._dynamo.reset()``). Call it before anything changes: it can fail."""
        key = (dtype, device)
        source = self._blocked(dtype, device)
        if source is not None:
            blocked.load_blocked(source)  # compiled once per pattern, kind and dtype, cached on disk
            self._ready_blocked.add(key)
            return
        if key in self._ready and self._compiled_code_exists():
            return
        n, cdtype = len(self.pattern), compute_dtype(dtype)
        p = [torch.zeros(8, dtype=dtype, device=device) for _ in range(n)]
        w = torch.zeros(sum(map(len, self.pattern)), dtype=cdtype, device=device)
        if self.mode in NATIVE:
            state, coefficients = NATIVE[self.mode]
            lists = [[torch.zeros(8, dtype=dtype, device=device) for _ in range(n)] for _ in range(1 + len(state))]
            self._run(p, *lists, w, torch.ones(coefficients * n, dtype=cdtype, device=device))
        elif self.mode == "update":
            s = [torch.zeros(8, dtype=dtype, device=device) for _ in range(n)]
            self._run(p, s, w, torch.ones(n, dtype=cdtype, device=device))
        else:
            self._run(p, w)
        self._ready.add(key)

    def _run(self, members: list[torch.Tensor], *args: object) -> None:
        flat = [_plain(t) for t in members]
        args = tuple([_plain(t) for t in a] if isinstance(a, list) else a for a in args)
        with torch.no_grad():
            self._compiled(flat, *args)

    def bind(self, members: list[torch.Tensor], *args: object) -> Callable[[], None]:
        """The call ``self(members, *args)`` made ready now, before anything changes (its tensor
        objects are made here), to run later with nothing left to allocate: mix ``members``
        (contiguous, one shape) in place; ``args`` are the snapshot rows, weights and decay
        factors (update) or the weights (gradient).

        The call never compiles: arguments that fail the guards of the kernel `prepare`
        compiled make it raise ``RuntimeError`` before it writes anything (the caller then
        runs the eager kernels), and so does a call after ``torch._dynamo.reset()``."""
        source = self._blocked(members[0].dtype, members[0].device)
        if source is not None:
            return self._bind_blocked(source, members, *args)
        flat = [_plain(t) for t in members]
        plain = tuple([_plain(t) for t in a] if isinstance(a, list) else a for a in args)

        def run() -> None:
            if not self._compiled_code_exists():
                raise RuntimeError("the fused kernel's compiled code is gone (torch._dynamo.reset()?): not "
                                   "compiling inside a step")
            if any(f.untyped_storage().data_ptr() != t.untyped_storage().data_ptr() for f, t in zip(flat, members)):
                raise RuntimeError("a member's storage was replaced (p.data = ...) after the kernel was bound")
            with torch.no_grad(), torch.compiler.set_stance("fail_on_recompile"):
                self._compiled(flat, *plain)
            torch.autograd.graph.increment_version(members)  # the writes went through other tensor objects

        return run

    def _bind_blocked(self, source: str, members: list[torch.Tensor], *args: object) -> Callable[[], None]:
        """`bind` for the blocked C++ kernel: its pointer arrays and scratch made now."""
        *lists, w, c = args
        call = blocked.load_blocked(source).bind([members, *lists], w, c, blocked.ring_size(self.pattern))
        pointers = [t.data_ptr() for t in members]

        def run() -> None:
            if any(t.data_ptr() != ptr for t, ptr in zip(members, pointers)):
                raise RuntimeError("a member's storage was replaced (p.data = ...) after the kernel was bound")
            call()
            torch.autograd.graph.increment_version(members)  # written through pointers, unseen by autograd

        return run

    def __call__(self, members: list[torch.Tensor], *args: object) -> None:
        """Bind and run at once (see `bind`)."""
        self.bind(members, *args)()

    def _compiled_code_exists(self) -> bool:
        """Whether dynamo still holds compiled code for this kernel (``torch._dynamo.reset()``
        drops it; a first compile is not a recompile, so the stance alone would not stop it)."""
        return _cache_entries is None or bool(_cache_entries(self._code))


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from, as dynamo wraps them) is running out
    of memory: host (``MemoryError``) or device (``torch.OutOfMemoryError``)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A flat tensor over ``t``'s memory that is no view, needs no grad and aliases no other
    argument's tensor object: every call then meets the guards of the kernel compiled on
    scratch tensors, whatever ``t`` is (a parameter, a view into a gradient bucket, a row of
    the snapshot). Writes through it do not bump ``t``'s version counter."""
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage(), t.storage_offset(), (t.numel(),))


try:  # dynamo's compiled entries of a code object (private; without it the stance alone guards)
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list as _cache_entries
except ImportError:  # pragma: no cover
    _cache_entries = None

_KERNELS: dict[tuple[Pattern, str], FusedKernel] = {}


def fused_kernel(pattern: Pattern, mode: str) -> FusedKernel:
    """The process-wide kernel for ``pattern`` and ``mode`` (built on first use)."""
    kernel = _KERNELS.get((pattern, mode))
    if kernel is None:
        kernel = _KERNELS[(pattern, mode)] = FusedKernel(pattern, mode)
    return kernel

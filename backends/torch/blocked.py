"""Blocked C++ kernels for a CPU: each kind's arithmetic (``arithmetic.py``) for one band pattern,
generated as C++ that walks the members' flat arrays in blocks of positions.

A kernel that computes every member's term and mixes it in one loop over positions reads and
writes ``2n`` to ``7n`` arrays at once (n members, each with its parameter, gradient and state),
and a CPU keeps up with a few streams, not with dozens. These kernels walk the flat arrays in
blocks of at most ``CHUNK`` positions instead (as many blocks for each OpenMP thread); inside a
block, member by member in depth order, they compute the member's term into a small ring of
scratch rows and finish each row of the band as soon as its last term is there:

```
for each block of positions [lo, lo + CHUNK):
    for j in 0 .. n-1:
        u[j % R] = term of member j             (reads its arrays, writes its state)
        for each row l whose last term is u_j:
            y_l = own_l + sum_k w[l, k] u[k % R]
```

so every inner loop touches a handful of arrays, the scratch stays in cache, and each array is
still read and written once. ``R`` (the ring) is the band's reach, 3 rows for a window of 3.

The C++ source is generated per band pattern, kind and dtype (float32, float64) with the member
indices as constants, compiled with the C++ compiler inductor uses (``-O3 -march=native``,
OpenMP: the runtime torch already loaded), cached on disk under inductor's cache directory, and
called through ``ctypes`` (which releases the GIL). benchmarks/README.md has the measurements
behind the block length and the schedule.
"""

from __future__ import annotations

import ast
import ctypes
import hashlib
import os
import pathlib
import subprocess
import tempfile
from functools import lru_cache

import torch
from torch import Tensor

from . import inductor
from .arithmetic import KINDS, Pattern, cpp_expression
from .bands import BandLayout
from .contract import Call, Members
from .eager import device_weights
from .eager import scratch as shared_scratch

__all__ = ["BLOCKED", "BLOCKED_DTYPES", "CHUNK", "BlockedKernel", "BlockedLibrary", "blocked_source", "load_blocked",
           "ring_size"]

# positions per block: long enough for the prefetchers, short enough that the ring stays in cache
CHUNK = 65536
BLOCKED_DTYPES = {torch.float32: "float", torch.float64: "double"}


def ring_size(pattern: Pattern) -> int:
    """The scratch rows the schedule needs: row ``l`` is finished once ``u_j`` exists for every
    ``j`` it reads and for ``j = l`` (its own arrays are read for ``u_l`` before the row writes
    them), and its oldest term must still be in the ring then."""
    return max(max((*js, l)) - min((*js, l)) for l, js in enumerate(pattern)) + 1


def _used(kind: str) -> tuple[str, ...]:
    """The arrays a member's loop reads or writes: those its arithmetic names, and its state."""
    spec = KINDS[kind]
    named = {node.id for _, e in spec.body for node in ast.walk(ast.parse(e, mode="eval")) if isinstance(node, ast.Name)}
    return tuple(a for a in spec.arrays if a in named or a in spec.state)


def blocked_source(pattern: Pattern, kind: str, ctype: str) -> str:
    """C++ source of ``step(*arrays, w, c, numel, scratch, threads)`` for ``pattern`` (the members
    each row reads), ``kind`` and ``ctype`` ("float" or "double"): each array an array of n
    pointers (``arithmetic.KINDS[kind].arrays``), ``w`` the band's weights flat row by row, ``c``
    the coefficients (``c[k * n + j]``, then a per-row one), ``scratch`` ``threads * R * CHUNK``
    values."""
    return _source(pattern, kind, ctype, CHUNK)


@lru_cache(maxsize=256)
def _source(pattern: Pattern, kind: str, ctype: str, chunk: int) -> str:
    spec = KINDS[kind]
    n, ring, K, used = len(pattern), ring_size(pattern), len(spec.coefficients), _used(kind)
    finish: dict[int, list[int]] = {}
    for l, js in enumerate(pattern):
        finish.setdefault(max((*js, l)), []).append(l)
    starts = [sum(len(js) for js in pattern[:l]) for l in range(n)]
    out = [
        "#include <cmath>", "#include <cstdint>", "#include <omp.h>", f"typedef {ctype} T;",
        f"#define CHUNK {chunk}", f"#define R {ring}",
        "extern \"C\" void step(" + ", ".join(f"T *const *{name}" for name in spec.arrays)
        + ", const T *w, const T *c, int64_t numel, T *scratch, int threads) {",
        "    if (numel <= 0 || threads <= 0) return;",
        "    const int64_t want = (numel + CHUNK - 1) / CHUNK;",
        "    const int team = want < threads ? (int)want : threads;  // no idle thread to wait for",
        "    const int64_t blocks = (want + team - 1) / team * team;  // even shares for the team",
        "    const int64_t chunk = (numel + blocks - 1) / blocks;  // <= CHUNK",
        "#pragma omp parallel num_threads(team)",
        "    {",
        "    T *const ring = scratch + (int64_t)omp_get_thread_num() * R * CHUNK;",
        "#pragma omp for schedule(static)",
        "    for (int64_t block = 0; block < blocks; block++) {",
        "        const int64_t lo = block * chunk, k = numel - lo < chunk ? numel - lo : chunk;",
    ]
    # the member's loop: its arithmetic on locals, state written back, u stored in the ring
    names = {a: f"{a}j[i]" for a in used} | {c: f"c{k}" for k, c in enumerate(spec.coefficients)}
    body = []
    for target, expression in spec.body:
        body.append(f"            const T {target}_{len(body)} = {cpp_expression(expression, names)};")
        names[target] = f"{target}_{len(body) - 1}"
    body += [f"            {s}j[i] = {names[s]};" for s in spec.state]
    body += [f"            u[i] = {names['u']};", "            const T ui = u[i];"]
    for j in range(n):
        head = [f"        T *__restrict__ u = ring + {j % ring} * CHUNK;",
                *(f"        T *__restrict__ {a}j = {a}[{j}] + lo;" for a in used),
                *(f"        const T c{k} = c[{k * n + j}];" for k in range(K))]
        statements = []
        first = spec.arrays[0]  # the array a row writes
        for l in finish.get(j, []):  # the rows whose last term is u_j: finished in the same loop
            # the row's array: the loop's own pointer where the loop uses it too (one
            # __restrict__ name per array), else a pointer of its own
            mine = f"{first}j" if l == j and first in used else f"{first}{l}"
            if mine != f"{first}j":
                head.append(f"        T *__restrict__ {mine} = {first}[{l}] + lo;")
            row_names = {"p": f"{mine}[i]"}
            if spec.row is not None:
                head.append(f"        const T d{l} = c[{K * n + l}];")
                row_names[spec.row] = f"d{l}"
            terms = [cpp_expression(spec.own, row_names)] if spec.own is not None else []
            for i, m in enumerate(pattern[l]):
                head.append(f"        const T w{l}_{i} = w[{starts[l] + i}];")
                if m != j:
                    head.append(f"        const T *__restrict__ u{l}_{i} = ring + {m % ring} * CHUNK;")
                terms.append(f"w{l}_{i} * " + ("ui" if m == j else f"u{l}_{i}[i]"))
            statements.append(f"            {mine}[i] = {' + '.join(terms) or '0'};")
        out += [
            f"        {{  // u_{j}" + (f"; rows {', '.join(map(str, finish[j]))}" if j in finish else ""),
            *head,
            "#pragma omp simd",
            "        for (int64_t i = 0; i < k; i++) {",
            *body,
            *statements,
            "        }",
            "        }",
        ]
    out += ["    }", "    }", "}"]
    return "\n".join(out) + "\n"


def _cache_dir() -> pathlib.Path:
    """Inductor's cache directory (``TORCHINDUCTOR_CACHE_DIR``), ``gradsmooth`` under it."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        root = pathlib.Path(cache_dir())
    except Exception:  # inductor's private layout moved: the temporary directory
        root = pathlib.Path(tempfile.gettempdir()) / f"torchinductor_{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    return root / "gradsmooth"


FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC")


@lru_cache(maxsize=256)
def load_blocked(source: str) -> BlockedLibrary:
    """The compiled ``source`` (from the disk cache, keyed by the source, the compiler and its
    flags, or compiled now): ``RuntimeError`` with the compiler's message when it fails."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    compiler = get_cpp_compiler()
    key = hashlib.sha256("\0".join((source, compiler, *FLAGS, _cpu())).encode()).hexdigest()[:24]
    folder = _cache_dir()
    library = folder / f"blocked_{key}.so"
    if not library.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            src, built = pathlib.Path(tmp) / "kernel.cpp", pathlib.Path(tmp) / "kernel.so"
            src.write_text(source)
            done = subprocess.run([compiler, *FLAGS, str(src), "-o", str(built)], capture_output=True, text=True)
            if done.returncode != 0:
                lines = (done.stderr or done.stdout).strip().splitlines()
                first = next((line for line in lines if "error" in line), lines[0] if lines else "")
                raise RuntimeError(f"{compiler} could not compile the blocked kernel: {first.strip()}")
            os.replace(built, library)  # atomic: another process never loads a half-written file
    return BlockedLibrary(ctypes.CDLL(str(library)))


def _cpu() -> str:
    """What ``-march=native`` compiles for: the CPU's model and flags (a cache shared by
    different machines keeps one library per CPU)."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


class BlockedLibrary:
    """A loaded blocked kernel: `bind` makes a call ready (pointer arrays) before anything
    changes; the call writes in place."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._step = library.step
        self._step.restype = None

    def bind(self, arrays: list[list[Tensor]], w: Tensor, c: Tensor, ring: Tensor, threads: int) -> Call:
        """The call ``step(*arrays, w, c, ...)`` with its arguments made now: ``arrays`` are the
        members' flat tensors, ``w`` and ``c`` the weights and coefficients in the members'
        dtype, ``ring`` the scratch (``threads * R * CHUNK`` values). The tensors must stay
        alive and in place: the call keeps them."""
        pointers = [(ctypes.c_void_p * len(ts))(*[t.data_ptr() for t in ts]) for ts in arrays]
        args = (*pointers, ctypes.c_void_p(w.data_ptr()), ctypes.c_void_p(c.data_ptr()),
                ctypes.c_int64(arrays[0][0].numel()), ctypes.c_void_p(ring.data_ptr()), ctypes.c_int(threads))

        def run(_keep: object = (arrays, w, c, ring)) -> None:  # the tensors live as long as the call
            self._step(*args)

        return run


class BlockedKernel:
    """The blocked C++ kernels as a ``GroupKernel``: float32 and float64 on a CPU, for the kinds
    ``dispatch.COMPILED`` registers it for."""

    name = "blocked"
    refusing = False  # a bound call runs: it is bound and called within one step

    def refuses(self, kind: str, dtype: torch.dtype, device: torch.device, numel: int, contiguous: bool) -> str | None:
        if torch.device(device).type != "cpu":
            return "blocked kernels run on a CPU"
        if dtype not in BLOCKED_DTYPES:
            return f"blocked kernels run float32 and float64 members, not {str(dtype).removeprefix('torch.')}"
        if not contiguous:
            return "members not contiguous"
        return inductor.compiler_missing("cpu")  # the C++ compiler inductor uses

    def _source(self, kind: str, band: BandLayout, dtype: torch.dtype) -> str:
        return blocked_source(band.pattern, kind, BLOCKED_DTYPES[dtype])

    def prepared(self, kind: str, band: BandLayout, dtype: torch.dtype, device: torch.device) -> bool:
        return self._source(kind, band, dtype) in _LOADED

    def prepare(self, kind: str, band: BandLayout, dtype: torch.dtype, device: torch.device) -> None:
        """Compile (once per pattern, kind and dtype; cached on disk) and load."""
        source = self._source(kind, band, dtype)
        load_blocked(source)
        _LOADED.add(source)

    def scratch(self, members: Members, band: BandLayout) -> Tensor:
        """The ring: ``threads * R * CHUNK`` values, kept across steps."""
        first, threads = members.first, max(1, torch.get_num_threads())
        return shared_scratch("blocked ring", threads * ring_size(band.pattern) * CHUNK, first.dtype, first.device)

    def bind(self, members: Members, band: BandLayout, coefficients: Tensor | None, scratch: Tensor | None) -> Call:
        """The library's call over the members' pointers, made now. A step binds and calls it
        with nothing in between that could move a member's storage; the call asserts so (an
        internal error, before writing) rather than write through a stale pointer."""
        first = members.first
        w = device_weights(band.values, first.dtype, first.device).view(-1)
        c = coefficients if coefficients is not None else torch.ones(1, dtype=first.dtype)
        threads = max(1, min(torch.get_num_threads(), scratch.numel() // (ring_size(band.pattern) * CHUNK)))
        call = load_blocked(self._source(members.kind, band, first.dtype)).bind(members.arrays, w, c.view(-1), scratch,
                                                                               threads)
        written = members.arrays[0]
        pointers = [t.data_ptr() for t in written]

        def run() -> None:
            if any(t.data_ptr() != p for t, p in zip(written, pointers)):
                raise AssertionError("gradsmooth internal error: a member's storage moved between binding and "
                                     "calling the blocked kernel; nothing was written")
            call()
            torch.autograd.graph.increment_version(written)  # written through pointers, unseen by autograd

        return run


_LOADED: set[str] = set()  # the sources loaded in this process

BLOCKED = BlockedKernel()

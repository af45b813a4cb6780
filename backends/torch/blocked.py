"""Blocked CPU kernels for the native smoothed steps (``SmoothedAdamW``, ``SmoothedSGD``).

A kernel that computes every member's update and mixes it in one loop over positions reads
and writes ``4n`` to ``7n`` arrays at once (n members, each with its parameter, gradient and
state). A CPU keeps up with a few streams, not with dozens: inductor's single loop measured
1.7-2.4x a fused AdamW step on GPT-2-small's MLP matrices, these kernels 1.0-1.3x. These
kernels walk the flat parameters in blocks of at most ``CHUNK`` positions instead (as many
blocks for each OpenMP thread: a share left over would leave a thread idle while another
finishes it; 1.05-1.08 -> 0.97-1.00 on a 768 x 768 group); inside a block, member by
member in depth order, they compute the member's update into a small ring of scratch rows and
finish each row of the band as soon as its last update is there:

```
for each block of positions [lo, lo + CHUNK):
    for j in 0 .. n-1:
        u[j % R] = update of member j       (reads g_j and the state, writes the state)
        for each row l whose last term is u_j:
            p_l = d_l p_l + sum_k A[l, k] u[k % R]
```

so every inner loop touches a handful of arrays, the scratch stays in cache, and each array
is still read and written once: the passes of AdamW (or SGD) alone. ``R`` (the ring) is the
band's reach, 3 rows for a window of 3.

The C++ source is generated per band pattern, kind and dtype (float32, float64) with the
member indices as constants, compiled with the C++ compiler inductor uses (``-O3
-march=native``, OpenMP: the runtime torch already loaded), cached on disk under inductor's
cache directory, and called through ``ctypes`` (which releases the GIL).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import subprocess
import tempfile
from functools import lru_cache
from typing import NamedTuple

import torch

from .mixing import scratch

__all__ = ["BLOCKED_DTYPES", "CHUNK", "KINDS", "BlockedLibrary", "Kind", "applies", "blocked_source", "load_blocked",
           "ring_size"]

# positions per block: 65536 (256 KiB of float32 per ring row). Side by side with a fused AdamW
# step on GPT-2-small's 12 MLP matrices (2-core EPYC, 2 threads): 16384 1.18x, 65536 1.05x,
# 131072 1.14x; a block must be long for the prefetchers, the ring short enough for the caches
CHUNK = 65536
BLOCKED_DTYPES = {torch.float32: "float", torch.float64: "double"}

Pattern = tuple[tuple[int, ...], ...]


class Kind(NamedTuple):
    """One kernel kind: its pointer arrays (the call's order), its coefficients (``c[k * n + j]``:
    the first seven read by member ``j``'s loop as ``c0 .. c6``, an eighth, where there is one,
    the decay ``d{l}`` of row ``l``), the arrays its per-member loop reads or writes besides
    ``u``, the loop's arithmetic (``u[i] = ...``, as the eager kernels and fused.py's compiled
    source) and a row's first term (``{P}``: the row's parameter) before the band's."""

    lists: tuple[str, ...]
    coefficients: int
    used: tuple[str, ...]
    body: str
    own: str


KINDS = {
    # native_steps.py's SmoothedAdamW: c = 1 - beta1, beta2, 1 - beta2, sqrt(bias corr. 2), eps,
    # -lr / bias corr. 1, the gradient's sign (-1 under maximize), and the decoupled decay that
    # row l applies to its own parameter
    "adamw": Kind(("p", "g", "m", "v"), 8, ("g", "m", "v"), """\
            const T gi = c6 * gj[i], mo = mj[i];
            const T mi = mo + c0 * (gi - mo);
            const T vi = vj[i] * c1 + (c2 * gi) * gi;
            mj[i] = mi;
            vj[i] = vi;
            u[i] = c5 * (mi / (std::sqrt(vi) / c3 + c4));""", "d{l} * {P}[i]"),
    # SmoothedSGD: c = weight decay, momentum, 1 - dampening, a, b, -lr, the gradient's sign
    "sgd": Kind(("p", "g", "b"), 7, ("p", "g", "b"), """\
            const T ei = c6 * gj[i] + c0 * pj[i];
            const T bi = bj[i] * c1 + c2 * ei;
            bj[i] = bi;
            u[i] = c5 * (c3 * ei + c4 * bi);""", "{P}[i]"),
    # SmoothedSGD without momentum (no buffer: the direction's b is e itself, as the eager kernels)
    "sgd-plain": Kind(("p", "g"), 7, ("p", "g"), """\
            const T ei = c6 * gj[i] + c0 * pj[i];
            u[i] = c5 * (c3 * ei + c4 * ei);""", "{P}[i]"),
}


def ring_size(pattern: Pattern) -> int:
    """The scratch rows the schedule needs: row ``l`` is finished once ``u_j`` exists for every
    ``j`` it reads and for ``j = l`` (its own arrays are read for ``u_l`` before the row writes
    them), and its oldest term must still be in the ring then."""
    return max(max((*js, l)) - min((*js, l)) for l, js in enumerate(pattern)) + 1


def applies(kind: str, dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether a ``kind`` kernel for ``dtype`` members on ``device`` is a blocked kernel."""
    return kind in KINDS and torch.device(device).type == "cpu" and dtype in BLOCKED_DTYPES


def blocked_source(pattern: Pattern, kind: str, ctype: str) -> str:
    """C++ source of ``step(*lists, w, c, numel, scratch, threads)`` for ``pattern`` (the members
    each row reads), ``kind`` (`KINDS`) and ``ctype`` ("float" or "double"): each list an
    array of n pointers (``p, g, m, v`` or ``p, g, b``), ``w`` the band's weights flattened row
    by row, ``c`` the coefficients, ``scratch`` ``threads * R * CHUNK`` values."""
    return _source(pattern, kind, ctype, CHUNK)


@lru_cache(maxsize=256)
def _source(pattern: Pattern, kind: str, ctype: str, chunk: int) -> str:
    spec = KINDS[kind]
    n, ring = len(pattern), ring_size(pattern)
    finish: dict[int, list[int]] = {}
    for l, js in enumerate(pattern):
        finish.setdefault(max((*js, l)), []).append(l)
    starts = [sum(len(js) for js in pattern[:l]) for l in range(n)]
    out = [
        "#include <cmath>", "#include <cstdint>", "#include <omp.h>", f"typedef {ctype} T;",
        f"#define CHUNK {chunk}", f"#define R {ring}",
        "extern \"C\" void step(" + ", ".join(f"T *const *{name}" for name in spec.lists)
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
    for j in range(n):
        head = [f"        T *__restrict__ u = ring + {j % ring} * CHUNK;",
                *(f"        T *__restrict__ {name}j = {name}[{j}] + lo;" for name in spec.used),
                *(f"        const T c{i} = c[{i * n + j}];" for i in range(7))]
        statements = []
        for l in finish.get(j, []):  # the rows whose last update is u_j: finished in the same loop
            # the row's parameter: the loop's own pointer where the loop reads it too (one
            # __restrict__ name per array), else a pointer of its own
            pl = "pj" if l == j and "p" in spec.used else f"p{l}"
            if pl != "pj":
                head.append(f"        T *__restrict__ {pl} = p[{l}] + lo;")
            if kind == "adamw":
                head.append(f"        const T d{l} = c[{7 * n + l}];")
            terms = []
            for i, k in enumerate(pattern[l]):
                head.append(f"        const T w{l}_{i} = w[{starts[l] + i}];")
                if k != j:
                    head.append(f"        const T *__restrict__ u{l}_{i} = ring + {k % ring} * CHUNK;")
                terms.append(f"w{l}_{i} * " + ("ui" if k == j else f"u{l}_{i}[i]"))
            statements.append(f"            {pl}[i] = {' + '.join([spec.own.format(l=l, P=pl), *terms])};")
        out += [
            f"        {{  // u_{j}" + (f"; rows {', '.join(map(str, finish[j]))}" if j in finish else ""),
            *head,
            "#pragma omp simd",
            "        for (int64_t i = 0; i < k; i++) {",
            spec.body,
            "            const T ui = u[i];",
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
    """A loaded blocked kernel: `bind` makes a call ready (pointer arrays, scratch) before
    anything changes; the call writes in place."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._step = library.step
        self._step.restype = None

    def bind(self, lists: list[list[torch.Tensor]], w: torch.Tensor, c: torch.Tensor, ring: int):
        """The call ``step(*lists, w, c, ...)`` with its arguments made now: ``lists`` are the
        members' flat tensors (p, g, then the state), ``w`` and ``c`` the weights and
        coefficients in the members' dtype. The tensors must stay alive and in place."""
        threads = max(1, torch.get_num_threads())
        ring_rows = scratch("blocked ring", threads * ring * CHUNK, w.dtype, w.device)
        arrays = [(ctypes.c_void_p * len(ts))(*[t.data_ptr() for t in ts]) for ts in lists]
        args = (*arrays, ctypes.c_void_p(w.data_ptr()), ctypes.c_void_p(c.data_ptr()),
                ctypes.c_int64(lists[0][0].numel()), ctypes.c_void_p(ring_rows.data_ptr()), ctypes.c_int(threads))
        def run(_keep: object = (lists, w, c, ring_rows)) -> None:  # the tensors live as long as the call
            self._step(*args)

        return run

"""Process set-up that must happen before MLX is imported: a fast BLAS on Linux.

MLX's Linux CPU wheel bundles the reference (netlib) BLAS, about 30x slower than OpenBLAS
on a float32 matmul. The dynamic linker only lets a library take its place when the
process starts, so entry points call `use_fast_blas()` first: if an OpenBLAS is installed
and not yet preloaded, the process re-executes itself once with it in LD_PRELOAD.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_CANDIDATES = [
    "/usr/lib/{arch}-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/{arch}-linux-gnu/openblas-openmp/libblas.so.3",
    "/usr/lib/{arch}-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
]
_MARK = "RISCV_FT_BLAS_SET"
INSTALL_HINT = "apt-get install libopenblas0-pthread (Debian/Ubuntu) or dnf install openblas (Fedora)"


def find_openblas() -> str | None:
    """An OpenBLAS library to preload: RISCV_FT_BLAS=PATH, or a system one. RISCV_FT_BLAS=bundled opts out."""
    choice = os.environ.get("RISCV_FT_BLAS")
    if choice == "bundled":
        return None
    if choice:
        return choice if Path(choice).is_file() else None
    arch = os.uname().machine
    for pattern in _CANDIDATES:
        path = pattern.format(arch=arch)
        if Path(path).is_file():
            return path
    return None


def openblas_coretype() -> str | None:
    """A kernel for OpenBLAS builds too old to recognise this CPU (Debian 12's 0.3.21 falls
    back to its slowest kernel on Sapphire Rapids: 36 vs 206 GFLOP/s measured here)."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return None
    if "avx512f" in flags and "avx512bw" in flags:
        return "SkylakeX"
    if "avx2" in flags and "fma" in flags:
        return "Haswell"
    return None


def blas_in_use() -> str:
    """Which BLAS this process runs: 'openblas (PATH)', 'bundled reference BLAS' or 'Accelerate/Metal'."""
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    preload = os.environ.get("LD_PRELOAD", "")
    for part in preload.split(":"):
        if "blas" in part.lower():
            return f"OpenBLAS ({part}, coretype {os.environ.get('OPENBLAS_CORETYPE', 'auto')})"
    return "bundled reference BLAS (slow)"


def use_fast_blas() -> None:
    """Re-execute this process once with OpenBLAS preloaded, where that applies."""
    if sys.platform != "linux" or os.environ.get(_MARK):
        return
    library = find_openblas()
    env = dict(os.environ, **{_MARK: "1"})
    if library is None or library in env.get("LD_PRELOAD", ""):
        os.environ[_MARK] = "1"
        return
    env["LD_PRELOAD"] = ":".join(p for p in (library, env.get("LD_PRELOAD")) if p)
    if "OPENBLAS_CORETYPE" not in env and (coretype := openblas_coretype()):
        env["OPENBLAS_CORETYPE"] = coretype
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)

"""Process set-up that must happen before MLX is imported: a fast BLAS on Linux.

MLX's Linux CPU wheel bundles the reference (netlib) BLAS, about 30x slower than OpenBLAS
on a float32 matmul. The dynamic linker only lets a library take its place when the
process starts, so entry points call `use_fast_blas()` first: if an OpenBLAS is installed
and not yet preloaded, the process re-executes itself once with it in LD_PRELOAD.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
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
    gemv = ", one-row products as gemv" if "libgemv_shim" in preload else ""
    for part in preload.split(":"):
        if "blas" in Path(part).name.lower() and "libgemv_shim" not in part:
            return f"OpenBLAS ({part}, coretype {os.environ.get('OPENBLAS_CORETYPE', 'auto')}{gemv})"
    return "bundled reference BLAS (slow)"


def cache_dir() -> Path:
    """riscv_ft's cache: RISCV_FT_CACHE, else ~/.cache/riscv_ft (models, the BLAS shim)."""
    return Path(os.environ.get("RISCV_FT_CACHE", Path.home() / ".cache" / "riscv_ft"))


SHIM_SOURCE = Path(__file__).parent / "native" / "gemv_shim.c"


def gemv_shim() -> str | None:
    """The one-row product shim (riscv_ft/native/gemv_shim.c: why), built once per source
    version, machine and C library with the system C compiler into the cache; None where it
    cannot be built or loaded, or RISCV_FT_GEMV=off. It only changes speed, so every failure
    is silent, and a failed build is not tried again for the same source."""
    if os.environ.get("RISCV_FT_GEMV") == "off":
        return None
    try:
        compiler = shutil.which(os.environ.get("CC", "cc"))
        if compiler is None or not SHIM_SOURCE.is_file():
            return None
        source = SHIM_SOURCE.read_bytes()
        # Named by machine and C library too: a home folder shared by hosts of another
        # architecture or an older glibc must not preload a library they cannot load.
        libc = "-".join(platform.libc_ver()) or "libc"
        name = f"libgemv_shim-{os.uname().machine}-{libc}-{hashlib.sha256(source).hexdigest()[:16]}.so"
        target = cache_dir() / "native" / name
        failed = target.with_name(f"{name}.failed")
        if not target.is_file() and not failed.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{name}.{os.getpid()}")
            try:
                built = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(partial), str(SHIM_SOURCE), "-ldl"],
                                       capture_output=True, timeout=60)
                if built.returncode == 0:
                    os.replace(partial, target)  # whole or absent: concurrent builders each rename their own
                else:
                    failed.write_bytes(built.stderr[-2000:])
            except subprocess.TimeoutExpired:
                failed.write_text("the compiler took more than 60 s\n")
            finally:
                partial.unlink(missing_ok=True)
        if not target.is_file():
            return None
        ctypes.CDLL(str(target))  # loads here (right machine, C library): safe to preload
        return str(target)
    except (OSError, RuntimeError, subprocess.SubprocessError):  # RuntimeError: Path.home() without a home
        return None


def _has_cblas(library: str) -> bool:
    """Whether `library` loads and has both functions the shim hands calls to."""
    try:
        blas = ctypes.CDLL(library)
        return bool(getattr(blas, "cblas_sgemm", None)) and bool(getattr(blas, "cblas_sgemv", None))
    except (OSError, AttributeError):
        return False


def use_fast_blas() -> None:
    """Re-execute this process once with OpenBLAS preloaded, where that applies."""
    if sys.platform != "linux" or os.environ.get(_MARK):
        return
    library = find_openblas()
    env = dict(os.environ, **{_MARK: "1"})
    if library is None or library in env.get("LD_PRELOAD", ""):
        os.environ[_MARK] = "1"
        return
    # The shim goes first: its cblas_sgemm finds OpenBLAS's (next in line) for all but one-row
    # products. Only over a BLAS that loads and has both functions: else the shim has nothing to call.
    shim = gemv_shim() if _has_cblas(library) else None
    env["LD_PRELOAD"] = ":".join(p for p in (shim, library, env.get("LD_PRELOAD")) if p)
    if "OPENBLAS_CORETYPE" not in env and (coretype := openblas_coretype()):
        env["OPENBLAS_CORETYPE"] = coretype
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)

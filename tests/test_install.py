"""The package as a user installs it: a wheel built from this tree carries every config and
the commands, and those commands run from the wheel, from any folder.

The wheel is built offline (`pip wheel --no-build-isolation`, setuptools from the dev
extra) from a copy of the tree, so no build/ or dist/ is left in the checkout, and is
installed with `pip install --target` into a temporary folder: what runs is the wheel's
code and configs, not the checkout's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

COMMANDS = ["riscv-ft-train", "riscv-ft-evaluate", "riscv-ft-generate", "riscv-ft-export",
            "riscv-ft-score", "riscv-ft-compare", "riscv-ft-doctor"]


def _pip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    try:
        from setuptools.command.bdist_wheel import bdist_wheel  # noqa: F401 - setuptools >= 70.1
    except ImportError:
        pytest.skip("building a wheel offline needs setuptools>=70.1 (pip install -e '.[dev]')")
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    shutil.copytree(REPO / "riscv_ft", source / "riscv_ft", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    result = _pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"), str(source), cwd=root)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (built,) = (root / "dist").glob("riscv_ft-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, dict]:
    """The wheel installed (without its dependencies, which this environment has) into a folder
    of its own; returns its bin/ and the environment that puts it first on the import path."""
    target = tmp_path_factory.mktemp("site")
    result = _pip("install", "--no-deps", "-q", "--target", str(target), str(wheel), cwd=target)
    assert result.returncode == 0, result.stderr[-2000:]
    return target / "bin", {**os.environ, "PYTHONPATH": str(target)}


def test_the_wheel_carries_every_config_the_shipped_data_and_the_gemv_shim_source(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "riscv_ft" / "conf").rglob("*.yaml"))
    shipped += sorted(p.relative_to(REPO).as_posix() for p in (REPO / "riscv_ft" / "data").glob("*.jsonl"))
    shipped += ["riscv_ft/native/gemv_shim.c"]  # built on the user's machine (riscv_ft.runtime.gemv_shim)
    assert "riscv_ft/conf/train.yaml" in shipped
    assert [n for n in shipped if n not in names] == []


def test_the_wheel_declares_every_command(wheel):
    with zipfile.ZipFile(wheel) as archive:
        entry_points = next(archive.read(n).decode() for n in archive.namelist() if n.endswith("entry_points.txt"))
    assert [c for c in COMMANDS if f"{c} = riscv_ft." not in entry_points] == []


def test_installed_commands_answer_help_from_any_folder(installed, tmp_path):
    bin_dir, env = installed
    where = subprocess.run([sys.executable, "-c", "import riscv_ft.cli as c; print(c.CONF_DIR)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert Path(where.stdout.strip()).is_relative_to(bin_dir.parent), where.stdout + where.stderr  # the wheel's configs
    train = subprocess.run([str(bin_dir / "riscv-ft-train"), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert train.returncode == 0, train.stderr[-2000:]
    shipped = ", ".join(sorted(p.stem for p in (Path(where.stdout.strip()) / "experiment").glob("*.yaml")))
    assert "experiment=smoke" in train.stdout and f"experiment: {shipped}" in train.stdout  # Hydra's own help, every shipped preset found
    generate = subprocess.run([str(bin_dir / "riscv-ft-generate"), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert generate.returncode == 0 and "run=RUN_DIR" in generate.stdout, generate.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []  # --help writes nothing


@pytest.mark.skipif(sys.platform != "linux", reason="the OpenBLAS preload is Linux only")
def test_a_command_on_path_restarts_itself_with_openblas(installed, tmp_path):
    """runtime.use_fast_blas re-executes the process; from a console script it must re-run
    the script itself, not `python` alone."""
    from riscv_ft.runtime import find_openblas

    if find_openblas() is None:
        pytest.skip("no OpenBLAS installed here")
    bin_dir, env = installed
    env = {k: v for k, v in env.items() if k not in ("LD_PRELOAD", "RISCV_FT_BLAS_SET")}
    result = subprocess.run([str(bin_dir / "riscv-ft-doctor"), "--json", "--offline"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert "OpenBLAS" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]


def test_users_own_config_groups_come_from_config_dir(tmp_path, capsys):
    """A folder of the user's own groups (Hydra's search path): checked before the run as
    Hydra composes it, and used by the run."""
    from riscv_ft.cli import preflight

    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "model" / "tiny2.yaml").write_text("defaults:\n  - tiny\nname: tiny2\ntiny:\n  num_hidden_layers: 2\n")
    args = ["--config-dir", str(tmp_path / "mine"), "experiment=smoke", "model=tiny2"]
    preflight(args)  # accepted: no SystemExit
    preflight([f"-cd={tmp_path / 'mine'}", "experiment=smoke", "model=tiny2"])
    with pytest.raises(SystemExit) as stopped:
        preflight(["experiment=smoke", "model=tiny2"])
    assert stopped.value.code == 2 and "model=tiny2 is not an option" in capsys.readouterr().err
    composed = subprocess.run([sys.executable, "-m", "riscv_ft.train", *args, "--cfg", "job"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
    assert composed.returncode == 0, composed.stderr[-2000:]
    assert "name: tiny2" in composed.stdout and "num_hidden_layers: 2" in composed.stdout

"""Shared test fixtures: a fast BLAS, an isolated MLflow store, the real data snapshot, and
one finished smoke run that many tests read."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from riscv_ft.data.snapshot import snapshot_file
from riscv_ft.runtime import use_fast_blas

REPO = Path(__file__).resolve().parent.parent
SNAPSHOT = snapshot_file()
ARTIFACTS = REPO / "test-artifacts"  # screenshots and other things worth keeping from a run


def pytest_configure(config):
    """Re-execute pytest once with OpenBLAS preloaded (before any test imports MLX).

    pytest already captures stdout/stderr here; give the new process the real ones back.
    """
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.suspend_global_capture(in_=True)
    use_fast_blas()
    if capture is not None:
        capture.resume_global_capture()


@pytest.fixture(scope="session", autouse=True)
def isolated_mlflow_store(tmp_path_factory):
    """Every test (and every subprocess it starts) tracks into a temporary mlruns/."""
    store = tmp_path_factory.mktemp("mlruns")
    old = os.environ.get("RISCV_FT_MLRUNS")
    os.environ["RISCV_FT_MLRUNS"] = str(store)
    yield store
    if old is None:
        os.environ.pop("RISCV_FT_MLRUNS", None)
    else:
        os.environ["RISCV_FT_MLRUNS"] = old


@pytest.fixture(scope="session")
def snapshot_path() -> Path:
    if not SNAPSHOT.is_file():
        pytest.skip(f"real dataset snapshot not found at {SNAPSHOT}")
    return SNAPSHOT


def run_train(*overrides: str, cwd: Path = REPO, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m riscv_ft.train OVERRIDES` in a subprocess, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "riscv_ft.train", *overrides],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, isolated_mlflow_store) -> Path:
    """One short smoke run (tiny model, shipped data) shared by every test that needs a finished run."""
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    result = run_train(
        "experiment=smoke", "trainer.iters=20", "trainer.eval_every=10", "trainer.save_every=10",
        "lora.rank=8", "eval.baseline=true", "eval.user_prompts=8", f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def stop_process_group(process: subprocess.Popen) -> None:
    """A server and the workers it started (its own process group): SIGTERM, then SIGKILL."""
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

"""`python -m riscv_ft.doctor`: the report parses, measures the BLAS it names, and says how to
get a fast BLAS when there is none."""

import json
import os
import subprocess
import sys

import pytest

from riscv_ft import runtime
from tests.conftest import REPO


def run_doctor(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "riscv_ft.doctor", *args], cwd=REPO, capture_output=True, text=True, timeout=120,
        env=env or dict(os.environ),
    )


def test_doctor_json_reports_the_blas_it_measured():
    result = run_doctor("--json", "--offline")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["matmul_gflops"] > 0
    assert report["blas"] == runtime.blas_in_use()  # same environment as this (re-executed) test process
    assert report["mlx_version"] and report["device"]
    assert report["memory"]["total_gb"] > 0
    assert report["tracking_uri"].startswith("sqlite:///")
    assert {"assembler", "emulator"} <= set(report["riscv"])
    if sys.platform == "linux" and runtime.find_openblas():
        # The bundled reference BLAS manages ~5 GFLOP/s; OpenBLAS well over 100 on an idle
        # machine. 20 leaves room for a busy one and still tells the two apart.
        assert "OpenBLAS" in report["blas"]
        assert report["matmul_gflops"] > 20


@pytest.mark.skipif(sys.platform != "linux", reason="the bundled reference BLAS is a Linux wheel matter")
def test_doctor_without_fast_blas_says_how_to_install_one():
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "OPENBLAS_CORETYPE", "RISCV_FT_BLAS_SET")}
    env["RISCV_FT_BLAS"] = "bundled"
    result = run_doctor("--offline", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "bundled reference BLAS" in result.stdout
    assert runtime.INSTALL_HINT in result.stdout


def test_model_status_finds_a_local_model_and_never_downloads(monkeypatch, tmp_path):
    from riscv_ft import doctor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "config.json").write_text("{}")
    assert doctor.model_status(str(tmp_path))["cached"] is True
    status = doctor.model_status("no-such-owner/no-such-model")
    assert status["cached"] is False and status["hub"].startswith("not checked")

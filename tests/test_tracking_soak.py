"""The tracking soak (benchmarks/soak_tracking.py): 4 sweep jobs and 2 single runs at once
against a real `mlflow server` killed and restarted twice; every run in the store once, with
its full history, its model and its true status, nothing unsent after one push."""

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_sweep_and_single_runs_survive_two_server_restarts_with_nothing_lost(tmp_path):
    soak = subprocess.run([sys.executable, str(REPO / "benchmarks" / "soak_tracking.py"), "--root", str(tmp_path / "soak")],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    print(soak.stdout)
    assert soak.returncode == 0 and "soak: PASS" in soak.stdout, soak.stdout[-3000:] + soak.stderr[-3000:]

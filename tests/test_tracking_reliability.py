"""Issue 26, tracking items: each test reproduces a way the record of a run was lost or mixed
up, against a real SQLite store, a real `mlflow server` or a real HTTP server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO

PY = sys.executable


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


ENSURE = """
import sys, time
t = float(sys.argv[1])
time.sleep(max(0.0, t - time.time()))  # every process starts at the same moment
from riscv_ft.tracking.store import ensure_experiment
print(ensure_experiment(None, "race"))
"""


def test_processes_creating_the_store_and_experiment_at_once_get_one_experiment_and_no_traceback(tmp_path):
    """Item 1: creating the SQLite store and its experiment raced between processes."""
    from mlflow import MlflowClient

    for trial in range(2):
        store = tmp_path / f"mlruns{trial}"
        start = time.time() + 4  # past the imports of every process
        procs = [subprocess.Popen([PY, "-c", ENSURE, str(start)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=_env(RISCV_FT_MLRUNS=str(store))) for _ in range(4)]
        results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
        assert all(code == 0 for code, _, _ in results), [err[-1500:] for _, _, err in results]
        assert all("Traceback" not in err for _, _, err in results)
        assert len({out.strip() for _, out, _ in results}) == 1  # one experiment id for all
        client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
        assert [e.name for e in client.search_experiments()].count("race") == 1
        assert not list(store.glob("*.tmp*"))  # no half-made database left beside it

"""Data parallelism: `mlx.launch -n 2` over the ring backend on loopback trains like one
process with the same global batch, and leaves one run folder and one MLflow run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_train

RUN = ["experiment=smoke", "trainer.iters=8", "trainer.batch_size=4", "trainer.eval_every=4",
       "eval.num_rows=2", "eval.max_tokens=4", "eval.print_samples=1"]


def _launcher() -> list[str]:
    """mlx.launch from the same environment as this Python."""
    script = Path(sys.executable).parent / "mlx.launch"
    found = str(script) if script.exists() else shutil.which("mlx.launch")
    if found is None:
        pytest.skip("mlx.launch is not installed")
    return [found]


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    single = tmp_path / "single"
    result = run_train(*RUN, f"hydra.run.dir={single}", "tracking.experiment_name=dp-single")
    assert result.returncode == 0, result.stderr[-2000:]

    parallel = tmp_path / "parallel"
    launch = _launcher()
    result = subprocess.run(
        [*launch, "-n", "2", "--backend", "ring", "--", sys.executable, "-m", "riscv_ft.train", *RUN,
         f"hydra.run.dir={parallel}", "tracking.experiment_name=dp-parallel"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ),
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]

    ours = json.loads((single / "metrics.json").read_text())
    theirs = json.loads((parallel / "metrics.json").read_text())
    assert theirs["processes"] == 2 and ours["processes"] == 1
    assert abs(theirs["val_loss"] - ours["val_loss"]) <= 0.02 * ours["val_loss"]
    # Only rank 0 wrote a run folder: nothing else appeared beside the two we named.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parallel", "single"]
    assert (parallel / "adapters" / "adapters.safetensors").is_file()

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{Path(os.environ['RISCV_FT_MLRUNS']) / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["dp-parallel"])
    assert len(runs) == 1 and runs.iloc[0].status == "FINISHED"


def test_one_step_with_unequal_answer_tokens_per_rank_matches_one_process(tmp_path):
    """tests/dp_one_step.py deals 5 answer tokens to rank 0 and 70 to rank 1. Token-weighted
    averaging (sum the gradients, divide once by the global count) gives the single-process
    weights: largest difference 1.3e-6 measured. A mean of per-rank means weighs rank 0's
    tokens 14x more: 6.3e-4 measured with that averaging put in on purpose."""
    import mlx.core as mx

    script = str(REPO / "tests" / "dp_one_step.py")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    single = subprocess.run([sys.executable, script, str(tmp_path / "single.safetensors")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    parallel = subprocess.run([*_launcher(), "-n", "2", "--backend", "ring", "--", sys.executable, script,
                               str(tmp_path / "parallel.safetensors")],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert (tmp_path / "parallel.safetensors").is_file(), (parallel.stdout + parallel.stderr)[-3000:]
    a, b = mx.load(str(tmp_path / "single.safetensors")), mx.load(str(tmp_path / "parallel.safetensors"))
    assert a.keys() == b.keys()
    largest = max(float(mx.abs(a[k] - b[k]).max()) for k in a)
    print(f"largest weight difference, 2 processes against 1: {largest:.3g}")
    assert largest <= 1e-5


def test_a_global_batch_that_does_not_divide_fails_cleanly(tmp_path):
    launch = _launcher()
    result = subprocess.run(
        [*launch, "-n", "2", "--backend", "ring", "--", sys.executable, "-m", "riscv_ft.train", "experiment=smoke",
         "trainer.batch_size=3", f"hydra.run.dir={tmp_path}/run", "tracking.enabled=false"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    # mlx.launch itself exits 0 whatever its nodes do; each node exits 2 with one line.
    assert "exited with code 2" in result.stdout + result.stderr
    assert "trainer.batch_size=3 must divide by the number of processes (2)" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr

"""Data parallelism: `mlx.launch -n 2` over the ring backend on loopback trains like one
process with the same global batch, leaves one run folder and one MLflow run, and resumes
from a checkpoint that only rank 0 has."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
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


def test_one_step_with_unequal_answer_tokens_per_rank_averages_the_gradient_like_one_process(tmp_path):
    """tests/dp_one_step.py deals 5 answer tokens to rank 0 and 70 to rank 1 and saves the
    gradient the step applied. Token-weighted averaging (sum the gradients, divide once by the
    global count) gives the single-process gradient up to float summation order. A gradient
    halved, or a mean of per-rank means (rank 0's tokens weighed 14x more), is off by far more."""
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
    assert a.keys() == b.keys() and any(k.endswith("lora_a") for k in a)
    largest = max(float(mx.abs(a[k] - b[k]).max() / mx.abs(a[k]).max()) for k in a)
    print(f"largest relative gradient difference, 2 processes against 1: {largest:.3g}")
    assert largest <= 1e-4  # 1.2e-6 measured; a halved gradient: 0.5


RESUMABLE = ["experiment=smoke", "trainer.iters=16", "trainer.batch_size=4", "trainer.save_every=4", "trainer.eval_every=8",
             "trainer.report_every=2", "eval.num_rows=2", "eval.max_tokens=4", "eval.print_samples=1", "tracking.enabled=false"]


def _launch_in_rank_folders(base: Path, *args: str) -> subprocess.Popen:
    """`mlx.launch -n 2` with each rank in its own folder, base/rank0 and base/rank1, as on two
    hosts without a shared disk: a relative run folder exists on rank 0 only."""
    for rank in (0, 1):
        (base / f"rank{rank}").mkdir(parents=True, exist_ok=True)
    in_folder = 'cd "$0/rank$MLX_RANK" && exec "$1" -m riscv_ft.train "${@:2}"'
    return subprocess.Popen(
        [*_launcher(), "-n", "2", "--backend", "ring", "--", "bash", "-c", in_folder, str(base), sys.executable, *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
    )


def test_two_processes_resume_from_a_checkpoint_only_rank_0_has(tmp_path):
    from riscv_ft.checkpoint import latest_checkpoint

    alone = _launch_in_rank_folders(tmp_path / "alone", *RESUMABLE, "hydra.run.dir=run")
    output, _ = alone.communicate(timeout=600)
    assert (tmp_path / "alone" / "rank0" / "run" / "metrics.json").is_file(), output[-3000:]

    killed = tmp_path / "killed"
    proc = _launch_in_rank_folders(killed, *RESUMABLE, "hydra.run.dir=run")
    deadline = time.time() + 300
    while (latest_checkpoint(killed / "rank0" / "run" / "checkpoints") or type("none", (), {"step": 0})).step < 8:
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
    proc.wait(timeout=30)
    assert latest_checkpoint(killed / "rank0" / "run" / "checkpoints").step < 16
    assert not (killed / "rank1" / "run").exists()

    resumed = _launch_in_rank_folders(killed, "resume=run")
    try:
        output, _ = resumed.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(resumed.pid, signal.SIGKILL)
        raise
    assert "exited with code" not in output or "exited with code 0" in output, output[-3000:]
    assert (killed / "rank0" / "run" / "metrics.json").is_file(), output[-3000:]
    assert "Resuming" in (killed / "rank0" / "run" / "train.log").read_text()

    import mlx.core as mx

    a = mx.load(str(tmp_path / "alone" / "rank0" / "run" / "adapters" / "adapters.safetensors"))
    b = mx.load(str(killed / "rank0" / "run" / "adapters" / "adapters.safetensors"))
    largest = max(float(mx.abs(a[k] - b[k]).max()) for k in a)
    print(f"largest weight difference, 2 processes killed and resumed against left alone: {largest:.3g}")
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

"""A sweep that is stopped: `sweep=parallel` (joblib/loky workers) hit by SIGTERM stops, saves
and ends every job's run KILLED, and a sweep that did not finish never moves `@best`."""

import os
import signal
import subprocess
import sys
import time

import pytest

from riscv_ft.cli import CONF_DIR
from tests.conftest import REPO
from tests.test_tracking import FAST, QUIET, Sweep, _hydra_config


def _sweep_with_a_finished_best_job(tmp_path, name: str):
    """A sweep callback started (its parent run), with one FINISHED child that has the sweep
    metric and an MLflow model: what `_finish` would register as models:/riscv-asm@best."""
    from riscv_ft.tracking import store
    from riscv_ft.sweep import MlflowSweepCallback

    config = _hydra_config(CONF_DIR, ["experiment=smoke", f"hydra.sweep.dir={tmp_path / name}"])
    callback = MlflowSweepCallback()
    callback.on_multirun_start(config)
    mlflow_client = store.client(None)
    parent = mlflow_client.get_run(callback.parent_run_id)
    child = mlflow_client.create_run(parent.info.experiment_id, run_name=f"{name}-job-0",
                                     tags={"mlflow.parentRunId": callback.parent_run_id, store.JOB_TAG: "0"})
    model = mlflow_client.create_logged_model(parent.info.experiment_id, name="model", source_run_id=child.info.run_id)
    mlflow_client.set_tag(child.info.run_id, store.MODEL_URI_TAG, f"models:/{model.model_id}")
    mlflow_client.log_metric(child.info.run_id, callback.metric, 1.0)
    mlflow_client.set_terminated(child.info.run_id, "FINISHED")
    return callback, child.info.run_id


def test_a_killed_sweep_does_not_move_best_and_a_finished_one_does(tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from riscv_ft.tracking import store

    monkeypatch.setenv("RISCV_FT_MLRUNS", str(tmp_path / "mlruns"))
    monkeypatch.delenv(store.PARENT_ENV, raising=False)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}  # on_multirun_start sets them
    try:
        killed, _ = _sweep_with_a_finished_best_job(tmp_path, "killed")
        killed._stopped_by = "SIGTERM"
        killed._finish("KILLED", "the sweep stopped early: interrupted (SIGTERM)")
        finished, best_run = _sweep_with_a_finished_best_job(tmp_path, "finished")
        finished._finish("FINISHED")
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)

    registry = MlflowClient(tracking_uri=store.tracking_uri(None), registry_uri=store.tracking_uri(None))
    killed_parent = store.client(None).get_run(killed.parent_run_id)
    assert killed_parent.info.status == "KILLED"
    assert "registered_model" not in killed_parent.data.tags, "a KILLED sweep registered its best job"
    versions = registry.search_model_versions(f"name='{store.REGISTERED_MODEL}'")
    assert [v.run_id for v in versions] == [best_run]  # only the finished sweep's
    assert registry.get_model_version_by_alias(store.REGISTERED_MODEL, store.BEST_ALIAS).run_id == best_run
    with pytest.raises(MlflowException):  # and nothing else was ever registered
        registry.get_model_version(store.REGISTERED_MODEL, "2")


@pytest.mark.slow
def test_sigterm_to_a_parallel_sweep_checkpoints_each_job_and_ends_every_run_killed(tmp_path):
    """sweep=parallel, two jobs training at once in two loky workers, SIGTERM to the sweep's
    process only: both workers save a checkpoint (no save step was due), both child runs and
    the parent end KILLED, the sweep exits 130 and leaves no process behind."""
    from riscv_ft.checkpoint import latest_checkpoint

    root, store = tmp_path / "sweep", tmp_path / "mlruns"
    proc = subprocess.Popen(
        [sys.executable, "-m", "riscv_ft.train", "-m", *FAST, "trainer.iters=400", "trainer.save_every=1000",
         "sweep=parallel", "lora.rank=4,8", f"hydra.sweep.dir={root}", "hydra.sweep.subdir=${hydra.job.num}"],
        cwd=REPO, env={**os.environ, "RISCV_FT_MLRUNS": str(store), **QUIET},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        logs = [root / str(job) / "train.log" for job in (0, 1)]
        deadline = time.time() + 180
        while not all(log.is_file() and "step 2/400" in log.read_text() for log in logs):
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.time() < deadline, "the two jobs did not both reach step 2"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130, stderr[-2000:]
        deadline = time.time() + 30  # the workers end with the sweep
        while time.time() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("worker processes outlived the sweep")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    sweep = Sweep(root, store, None)
    parent, children = sweep.parent(), sweep.children()
    assert parent.info.status == "KILLED" and "interrupted" in parent.data.tags["failure_reason"]
    assert sorted(c.data.params["lora.rank"] for c in children) == ["4", "8"]
    assert [c.info.status for c in children] == ["KILLED", "KILLED"]
    for child in children:
        job_dir = root / child.data.tags["riscv_ft.sweep_job"]
        checkpoint = latest_checkpoint(job_dir / "checkpoints")
        assert checkpoint is not None, f"{job_dir}: no checkpoint to resume from"
        assert 2 <= checkpoint.step < 400 and checkpoint.state["mlflow_run_id"] == child.info.run_id
        assert "Resume with" in (job_dir / "train.log").read_text()

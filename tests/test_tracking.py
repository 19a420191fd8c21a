"""MLflow tracking of sweeps, with real Hydra multiruns of the tiny model: one parent run per
sweep and one child per job, what each child holds, the parent's summary, failed jobs,
`tracking.enabled=false`, and `python -m riscv_ft.compare`."""

from __future__ import annotations

import copy
import csv
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from riscv_ft.cli import CONF_DIR
from tests.conftest import REPO, run_train

# Small enough for seconds per job; still several train-loss points and evaluations.
FAST = (
    "experiment=smoke", "trainer.iters=4", "trainer.eval_every=2", "trainer.report_every=1", "trainer.save_every=0",
    "eval.num_rows=2", "eval.max_tokens=8", "eval.print_samples=1",
)
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
SMOKE_DATA = REPO / "riscv_ft" / "data" / "smoke.jsonl"
EXPERIMENT = "riscv-asm-lora"


@dataclass
class Sweep:
    root: Path  # hydra.sweep.dir
    store: Path  # RISCV_FT_MLRUNS of the sweep
    result: object

    @property
    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(f"sqlite:///{self.store / 'mlflow.db'}")

    def runs(self):
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        return self.client.search_runs([experiment.experiment_id], max_results=100)

    def parent(self):
        parents = [r for r in self.runs() if r.data.tags.get("riscv_ft.role") == "sweep"]
        assert len(parents) == 1, f"expected one sweep parent run, found {len(parents)}"
        return parents[0]

    def children(self):
        parent_id = self.parent().info.run_id
        return [r for r in self.runs() if r.data.tags.get("mlflow.parentRunId") == parent_id]

    def artifact(self, run_id: str, path: str, dst: Path) -> Path:
        return Path(self.client.download_artifacts(run_id, path, str(dst)))


def run_sweep(root: Path, *overrides: str, cwd: Path = REPO) -> Sweep:
    store = root / "mlruns"
    result = run_train(
        "-m", *FAST, *overrides, f"hydra.sweep.dir={root / 'sweep'}", "hydra.sweep.subdir=${hydra.job.num}",
        cwd=cwd, env={"RISCV_FT_MLRUNS": str(store), **QUIET}, timeout=300,
    )
    return Sweep(root / "sweep", store, result)


@pytest.fixture(scope="module")
def rank_batch_sweep(tmp_path_factory) -> Sweep:
    """The issue's sweep, small: lora.rank=4,8 x trainer.batch_size=2,4, four jobs."""
    sweep = run_sweep(tmp_path_factory.mktemp("rank_batch"), "lora.rank=4,8", "trainer.batch_size=2,4")
    assert sweep.result.returncode == 0, sweep.result.stderr[-3000:]
    return sweep


@pytest.fixture(scope="module")
def sweep_with_a_failing_job(tmp_path_factory) -> Sweep:
    """Two jobs: a 3-row data file smaller than the batch (fails), then the shipped data.
    Started from a folder of its own, to show the store does not follow the working directory."""
    root = tmp_path_factory.mktemp("failing")
    three = root / "three.jsonl"
    three.write_text("".join(SMOKE_DATA.read_text().splitlines(keepends=True)[:3]))
    (root / "cwd").mkdir()
    sweep = run_sweep(root, f"data.path={three},{SMOKE_DATA}", cwd=root / "cwd")
    assert sweep.result.returncode == 0, sweep.result.stderr[-3000:]
    return sweep


# ---------------------------------------------------------------- a sweep in MLflow


def test_a_sweep_is_one_parent_run_with_a_finished_child_per_job(rank_batch_sweep):
    parent, children = rank_batch_sweep.parent(), rank_batch_sweep.children()
    assert parent.info.status == "FINISHED"
    assert len(children) == 4 and len(rank_batch_sweep.runs()) == 5
    assert all(c.info.status == "FINISHED" for c in children)
    grid = {(c.data.params["lora.rank"], c.data.params["trainer.batch_size"]) for c in children}
    assert grid == {("4", "2"), ("4", "4"), ("8", "2"), ("8", "4")}
    assert sorted(int(c.data.tags["riscv_ft.sweep_job"]) for c in children) == [0, 1, 2, 3]
    assert "lora.rank=4,8" in parent.data.params["sweep.overrides"]


def test_each_child_has_histories_a_validation_metric_adapters_and_samples(rank_batch_sweep, tmp_path):
    client = rank_batch_sweep.client
    for child in rank_batch_sweep.children():
        run_id = child.info.run_id
        train_loss = client.get_metric_history(run_id, "train_loss")
        assert [m.step for m in sorted(train_loss, key=lambda m: m.step)] == [1, 2, 3, 4]
        assert len(client.get_metric_history(run_id, "val_loss")) >= 2
        assert child.data.metrics["final_val_loss"] > 0
        for name in ("learning_rate", "tokens_per_s", "peak_memory_gb", "padding_share"):
            assert name in child.data.metrics, name
        top = {a.path for a in client.list_artifacts(run_id)}
        assert {"samples.json", "config.yaml", "metrics.json", "loss_curve.png", "train.log", "adapters"} <= top
        assert "adapters/adapters.safetensors" in {a.path for a in client.list_artifacts(run_id, "adapters")}
        samples = json.loads(rank_batch_sweep.artifact(run_id, "samples.json", tmp_path / run_id).read_text())
        assert {"description", "reference", "prediction"} <= set(samples["columns"]) and len(samples["data"]) == 2
        assert client.get_run(run_id).inputs.dataset_inputs, "the training data is logged as a dataset input"


def test_the_parent_gets_a_summary_table_and_a_plot_best_first(rank_batch_sweep, tmp_path):
    parent = rank_batch_sweep.parent()
    children = {c.info.run_id: c for c in rank_batch_sweep.children()}
    run_id = parent.info.run_id
    table = json.loads(rank_batch_sweep.artifact(run_id, "sweep_summary.json", tmp_path).read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert len(rows) == 4 and {"lora.rank", "trainer.batch_size", "final_val_loss"} <= set(table["columns"])
    # Only what differs between jobs: the fixed overrides are not columns.
    assert "trainer.iters" not in table["columns"] and "experiment" not in table["columns"]
    losses = [float(r["final_val_loss"]) for r in rows]
    assert losses == sorted(losses)
    for row in rows:
        child = children[row["run_id"]]
        assert row["lora.rank"] == child.data.params["lora.rank"]
        assert float(row["final_val_loss"]) == pytest.approx(child.data.metrics["final_val_loss"])
    assert parent.data.metrics["jobs"] == 4 and parent.data.metrics["jobs_failed"] == 0
    assert parent.data.metrics["best_final_val_loss"] == pytest.approx(min(losses))
    assert parent.data.tags["best_run_id"] == rows[0]["run_id"]
    assert "| lora.rank | trainer.batch_size |" in parent.data.tags["mlflow.note.content"]

    files = {a.path for a in rank_batch_sweep.client.list_artifacts(run_id)}
    assert {"sweep_summary.csv", "sweep_summary.md", "sweep_final_val_loss.png", "multirun.yaml"} <= files
    with open(rank_batch_sweep.artifact(run_id, "sweep_summary.csv", tmp_path / "csv")) as f:
        assert [r["run_id"] for r in csv.DictReader(f)] == [r["run_id"] for r in rows]
    png = rank_batch_sweep.artifact(run_id, "sweep_final_val_loss.png", tmp_path / "png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_the_sweep_registers_its_best_run_as_riscv_asm_at_best(rank_batch_sweep):
    """Each job logs its adapter as an MLflow model; the best one becomes models:/riscv-asm@best."""
    parent, children = rank_batch_sweep.parent(), rank_batch_sweep.children()
    assert all(c.data.tags.get("riscv_ft.model_uri", "").startswith("models:/") for c in children)
    best = min(children, key=lambda c: c.data.metrics["final_val_loss"])
    version = rank_batch_sweep.client.get_model_version_by_alias("riscv-asm", "best")
    assert version.run_id == best.info.run_id == parent.data.tags["best_run_id"]
    assert parent.data.tags["registered_model"] == f"riscv-asm/{version.version}"


def test_compare_prints_the_sweep_best_first(rank_batch_sweep, monkeypatch, capsys):
    from riscv_ft import compare

    monkeypatch.setenv("RISCV_FT_MLRUNS", str(rank_batch_sweep.store))
    parent = rank_batch_sweep.parent()
    expected = sorted(rank_batch_sweep.children(), key=lambda c: c.data.metrics["final_val_loss"])
    for argv in ([parent.info.run_id], []):  # by id, and the latest sweep by default
        assert compare.main(argv) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith(f"sweep {parent.info.run_name} ({parent.info.run_id}, FINISHED): 4 runs")
        header = lines[1].split()
        assert header[:5] == ["job", "run", "status", "lora.rank", "trainer.batch_size"] and "final_val_loss" in header
        body = lines[3:]
        assert [line.split()[-1] for line in body] == [c.info.run_id for c in expected]

    assert compare.main(["--metric", "final_tokens_per_s", "--maximize", parent.info.run_id]) == 0
    body = capsys.readouterr().out.splitlines()[3:]
    fastest = max(expected, key=lambda c: c.data.metrics["final_tokens_per_s"])
    assert body[0].split()[-1] == fastest.info.run_id


@pytest.mark.parametrize(
    "argv, message",
    [
        (["0123456789abcdef"], "no MLflow run '0123456789abcdef'"),
        (["--experiment", "no-such-experiment"], "no MLflow experiment 'no-such-experiment'"),
        (["--metric", "no_such_metric"], "no run has metric 'no_such_metric'"),
        (["abc", "--experiment", EXPERIMENT], "not both"),
        (["--no-such-flag"], "unrecognized arguments"),
        ("CHILD", "has no child runs"),
    ],
)
def test_compare_rejects_bad_input_with_one_line_and_exit_2(rank_batch_sweep, monkeypatch, capsys, argv, message):
    from riscv_ft import compare

    monkeypatch.setenv("RISCV_FT_MLRUNS", str(rank_batch_sweep.store))
    if argv == "CHILD":
        argv = [rank_batch_sweep.children()[0].info.run_id]
    with pytest.raises(SystemExit) as exit_:
        compare.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_compare_without_a_store_says_so_and_creates_none(tmp_path, monkeypatch, capsys):
    from riscv_ft import compare

    monkeypatch.setenv("RISCV_FT_MLRUNS", str(tmp_path / "absent"))
    with pytest.raises(SystemExit) as exit_:
        compare.main([])
    assert exit_.value.code == 2 and "no MLflow store at" in capsys.readouterr().err
    assert not (tmp_path / "absent").exists()


def test_jobs_in_joblib_worker_processes_are_children_too(tmp_path):
    """conf/sweep/parallel.yaml: two loky workers; the parent id reaches them through the
    environment they inherit (and the pickled callback)."""
    sweep = run_sweep(tmp_path, "sweep=parallel", "lora.rank=4,8")
    assert sweep.result.returncode == 0, sweep.result.stderr[-3000:]
    parent, children = sweep.parent(), sweep.children()
    assert parent.data.params["sweep.launcher"] == "JoblibLauncher" and parent.info.status == "FINISHED"
    assert sorted(c.data.params["lora.rank"] for c in children) == ["4", "8"]
    assert all(c.info.status == "FINISHED" and c.data.metrics["final_val_loss"] > 0 for c in children)
    assert parent.data.metrics["jobs"] == 2


# ---------------------------------------------------------------- failures and switches


def test_a_failing_job_is_failed_and_the_others_finish(sweep_with_a_failing_job, tmp_path):
    sweep = sweep_with_a_failing_job
    by_job = {int(c.data.tags["riscv_ft.sweep_job"]): c for c in sweep.children()}
    assert sorted(by_job) == [0, 1]
    failed, finished = by_job[0], by_job[1]
    assert failed.info.status == "FAILED" and "larger than the training split" in failed.data.tags["failure_reason"]
    assert failed.data.params["data.path"].endswith("three.jsonl")  # the failed job's settings are there
    assert finished.info.status == "FINISHED" and finished.data.metrics["final_val_loss"] > 0
    parent = sweep.parent()
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["jobs"] == 2 and parent.data.metrics["jobs_failed"] == 1
    table = json.loads(sweep.artifact(parent.info.run_id, "sweep_summary.json", tmp_path).read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [r["status"] for r in rows] == ["FINISHED", "FAILED"]  # the failed job sorts last


def test_the_store_does_not_depend_on_the_working_directory(sweep_with_a_failing_job):
    sweep = sweep_with_a_failing_job
    cwd = sweep.root.parent / "cwd"
    assert not (cwd / "mlruns").exists() and not (cwd / "mlartifacts").exists()
    store_uri = (sweep.store / "artifacts").as_uri()
    for experiment in sweep.client.search_experiments():  # Default too: MLflow would root it at ./mlruns
        assert experiment.artifact_location.startswith(store_uri), experiment.artifact_location


def test_tracking_disabled_writes_nothing(tmp_path):
    sweep = run_sweep(tmp_path, "tracking.enabled=false", "lora.rank=4", cwd=tmp_path)
    assert sweep.result.returncode == 0, sweep.result.stderr[-3000:]
    metrics = json.loads((sweep.root / "0" / "metrics.json").read_text())
    assert metrics["val_loss"] > 0 and metrics["mlflow_run_id"] is None  # the job ran, untracked
    assert not sweep.store.exists() and not (tmp_path / "mlruns").exists()


def test_a_crashed_job_and_a_sweep_that_stops_early_are_recorded(tmp_path, monkeypatch):
    """What Hydra does when a job raises something train.py does not catch: on_job_end with a
    FAILED JobReturn, then no on_multirun_end (the sweeper re-raises) - only the exit handler."""
    import mlflow
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf, open_dict

    from riscv_ft.cli import CONF_DIR
    from riscv_ft.sweep import MlflowSweepCallback
    from riscv_ft.tracking.store import PARENT_ENV, client

    store = tmp_path / "mlruns"
    monkeypatch.setenv("RISCV_FT_MLRUNS", str(store))
    monkeypatch.delenv(PARENT_ENV, raising=False)
    monkeypatch.delattr(sys, "last_value", raising=False)
    config = _hydra_config(CONF_DIR, ["experiment=smoke", "lora.rank=4", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    previous_uri = mlflow.get_tracking_uri()
    callback = MlflowSweepCallback()
    try:
        callback.on_multirun_start(config)
        job = copy.deepcopy(config)
        with open_dict(job):
            job.hydra.job.num = 0
            job.hydra.runtime.output_dir = str(tmp_path / "sweep" / "0")
        callback.on_job_start(job)
        mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
        mlflow.start_run()  # a run the job left active
        crashed = JobReturn(status=JobStatus.FAILED, _return_value=ValueError("boom"))
        crashed.cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        callback.on_job_end(job, job_return=crashed)
        assert mlflow.active_run() is None
        callback._at_exit()  # what atexit runs when Hydra exits without on_multirun_end
    finally:
        mlflow.set_tracking_uri(previous_uri)

    mlflow_client = client(None)
    parent = mlflow_client.get_run(callback.parent_run_id)
    children = mlflow_client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 1
    child = children[0]
    assert child.info.status == "FAILED" and child.data.tags["failure_reason"] == "ValueError: boom"
    assert child.data.params["lora.rank"] == "4" and child.data.tags["riscv_ft.sweep_job"] == "0"
    assert parent.info.status == "FAILED" and "stopped early" in parent.data.tags["failure_reason"]
    assert parent.data.metrics["jobs_failed"] == 1
    assert "sweep_summary.json" in {a.path for a in mlflow_client.list_artifacts(parent.info.run_id)}
    assert PARENT_ENV not in os.environ


def _hydra_config(conf_dir: Path, overrides: list[str]):
    """The config a sweep's callbacks receive (with its `hydra` node), composed without running."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            return compose(config_name="train", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml")))
def test_every_sweep_preset_composes_with_the_callback(preset):
    from riscv_ft.cli import CONF_DIR

    config = _hydra_config(CONF_DIR, ["experiment=smoke", f"sweep={preset}"])
    assert config.hydra.callbacks.mlflow_sweep._target_ == "riscv_ft.sweep.MlflowSweepCallback"
    swept = config.hydra.sweeper.params or {}
    launcher = config.hydra.launcher._target_
    assert swept or launcher.endswith(("JoblibLauncher", "RayLauncher")), f"sweep={preset} neither sweeps anything nor picks a launcher"
    if preset == "optuna":
        assert "optuna" in config.hydra.sweeper._target_ and config.hydra.sweeper.direction == "minimize"


# ---------------------------------------------------------------- a sweep stopped by SIGTERM


@pytest.mark.parametrize("when", ["training", "evaluating"])
def test_sigterm_to_a_sweep_ends_its_parent_and_running_child_killed(tmp_path, when):
    """SIGTERM while job 0 trains (the trainer saves and stops) or while it answers held-out
    prompts after training (no trainer handler then): the sweep exits 130, the parent run and
    the running child are KILLED, not left RUNNING or marked FAILED."""
    import signal
    import subprocess
    import time

    root, store = tmp_path / "sweep", tmp_path / "mlruns"
    iters = ["trainer.iters=400", "trainer.save_every=2"] if when == "training" else ["trainer.iters=2", "eval.num_rows=64", "eval.max_tokens=64"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "riscv_ft.train", "-m", *FAST, *iters, "lora.rank=4,8",
         f"hydra.sweep.dir={root}", "hydra.sweep.subdir=${hydra.job.num}"],
        cwd=REPO, env={**os.environ, "RISCV_FT_MLRUNS": str(store), **QUIET},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    log, marker = root / "0" / "train.log", "step 2/400" if when == "training" else "held-out rows with the tuned model"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and marker in log.read_text()):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.1)
    # evaluating: the tuned model has begun answering 64 held-out prompts, the trainer's handlers are gone
    # (a fixed pause after the last validation loss let a loaded machine finish the job first)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    sweep = Sweep(root, store, None)
    parent, children = sweep.parent(), sweep.children()
    assert parent.info.status == "KILLED", parent.data.tags.get("failure_reason")
    assert len(children) == 1 and children[0].info.status == "KILLED"
    assert "interrupted" in parent.data.tags["failure_reason"]

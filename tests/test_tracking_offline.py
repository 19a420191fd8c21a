"""tracking.offline: a run on a machine without MLflow keeps its tracking calls in the run
folder; after the folder is copied elsewhere, `python -m riscv_ft.tracking push` creates the
run in a real SQLite store with everything a tracked run has, once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from tests.conftest import REPO

ITERS = 12


def test_an_offline_run_without_mlflow_is_pushed_later_from_where_its_folder_was_copied(tmp_path):
    from mlflow import MlflowClient

    # The machine "has no MLflow": importing it fails in the training process.
    no_mlflow = tmp_path / "no_mlflow"
    (no_mlflow / "mlflow").mkdir(parents=True)
    (no_mlflow / "mlflow" / "__init__.py").write_text("raise ImportError('no MLflow on this machine')\n")
    remote, here = tmp_path / "gpu-box" / "run", tmp_path / "copied" / "run"
    train = subprocess.run(
        [sys.executable, "-m", "riscv_ft.train", "experiment=smoke", f"trainer.iters={ITERS}", "trainer.report_every=2",
         "trainer.eval_every=6", "trainer.save_every=6", "eval.num_rows=2", "eval.max_tokens=8", "eval.baseline=false",
         "tracking.offline=true", "tracking.experiment_name=offline", f"hydra.run.dir={remote}"],
        cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": f"{no_mlflow}{os.pathsep}{REPO}", "RISCV_FT_MLRUNS": str(tmp_path / "never")},
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert not (tmp_path / "never").exists()  # no store was touched
    assert "python -m riscv_ft.tracking push" in (remote / "train.log").read_text()
    assert (remote / "tracking_outbox.jsonl").stat().st_size < 200_000  # the dataset call holds no rows (item 9)

    shutil.copytree(remote, here)  # the folder comes back to a machine with MLflow; the original is gone
    shutil.rmtree(remote.parent)
    store = tmp_path / "store"
    push = [sys.executable, "-m", "riscv_ft.tracking", "push", str(here)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RISCV_FT_MLRUNS": str(store)}
    sent = subprocess.run(push, capture_output=True, text=True, cwd=REPO, env=env)
    assert sent.returncode == 0 and "sent" in sent.stdout, sent.stderr[-3000:]
    again = subprocess.run(push, capture_output=True, text=True, cwd=REPO, env=env)
    assert "sent 0 tracking calls" in again.stdout, again.stderr[-2000:]

    mlflow_client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    runs = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("offline").experiment_id])
    assert len(runs) == 1  # the second push continued the same run
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name
    header = json.loads((here / "tracking_outbox.jsonl").read_text().splitlines()[0])["args"]
    assert run.info.start_time == header["start_time"] and header["run_id"] == run.info.run_id
    history = [json.loads(line) for line in (here / "history.jsonl").read_text().splitlines()]
    for key in ("train_loss", "val_loss"):
        ours = sorted((row["step"], row[key]) for row in history if key in row)
        assert ours and sorted((m.step, m.value) for m in mlflow_client.get_metric_history(run.info.run_id, key)) == ours, key
    assert run.data.params["lora.rank"] and run.inputs.dataset_inputs
    artifacts = {a.path for a in mlflow_client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "history.jsonl", "eval.jsonl", "adapters", "samples.json"} <= artifacts
    assert run.data.tags.get("riscv_ft.model_uri", "").startswith("models:/")


def test_pushing_an_offline_run_to_a_server_that_is_away_says_so_in_one_line_and_keeps_every_call(tmp_path):
    from riscv_ft.tracking.outbox import OUTBOX, Outbox
    from riscv_ft.tracking.run import Tracker
    from tests.test_mlflow_ui import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    tracker = Tracker(None, Outbox(tmp_path, url, None, {"experiment": "offline", "run_name": "r", "tags": {}}))
    for step in (1, 2):
        tracker.log_metrics(step, {"train_loss": 1.0 / step})
    tracker.finish("FINISHED")
    kept = (tmp_path / OUTBOX).read_text()
    push = subprocess.run([sys.executable, "-m", "riscv_ft.tracking", "push", str(tmp_path), "--uri", url], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert push.returncode == 2 and len(push.stderr.strip().splitlines()) == 1, push.stderr[-2000:]
    assert push.stderr.startswith(f"error: cannot create the run in MLflow at {url}") and "all 3 calls are still kept" in push.stderr
    assert (tmp_path / OUTBOX).read_text() == kept  # nothing lost, no run id invented

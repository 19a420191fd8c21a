"""A tracking-server outage never stops training and loses nothing: a real `mlflow server` on
127.0.0.1 is killed in the middle of a run and started again; the run trains to the end at
full speed, and the server's metric history then equals the run's history.jsonl point for point."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, stop_process_group
from tests.test_mlflow_ui import SERVER_ENV, free_port

ITERS = 160


def start_server(root: Path, port: int) -> subprocess.Popen:
    import requests

    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(root / "server.log", "a") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **SERVER_ENV}, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.skip(f"mlflow server exited with {process.returncode}: {(root / 'server.log').read_text()[-500:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                return process
        except requests.RequestException:
            pass
        time.sleep(0.3)
    stop_process_group(process)
    pytest.skip("mlflow server did not answer within 120 s")


def wait_for_line(log: Path, text: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file() and text in log.read_text():
            return
        assert proc.poll() is None, f"training ended early: {proc.stderr.read()[-2000:]}"
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in {log} within {timeout} s")


def test_killing_and_restarting_the_server_mid_run_loses_no_metric_point(tmp_path):
    from mlflow import MlflowClient

    server_root, run_dir = tmp_path / "server", tmp_path / "run"
    server_root.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(server_root, port)
    train = subprocess.Popen(
        [sys.executable, "-m", "riscv_ft.train", "experiment=smoke", f"trainer.iters={ITERS}", "trainer.report_every=2",
         "trainer.eval_every=40", "trainer.save_every=40", "eval.num_rows=2", "eval.max_tokens=8", "eval.print_samples=1",
         f"tracking.uri={url}", "tracking.experiment_name=outage", f"hydra.run.dir={run_dir}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **SERVER_ENV, "RISCV_FT_MLRUNS": str(tmp_path / "local-store")},
    )
    log = run_dir / "train.log"
    try:
        wait_for_line(log, f"step 20/{ITERS}", train)
        os.killpg(server.pid, signal.SIGKILL)  # the server and its worker, without a goodbye
        server.wait()
        down = time.monotonic()
        # Training goes on while the server is away: 40 more steps in less time than MLflow's
        # own retries of a single call would take (minutes).
        wait_for_line(log, f"step 60/{ITERS}", train, timeout=60)
        print(f"20 -> 60 steps with the server away: {time.monotonic() - down:.1f} s")
        server = start_server(server_root, port)
        _, stderr = train.communicate(timeout=300)
        assert train.returncode == 0, stderr[-3000:]

        text = log.read_text()
        assert text.count("does not take tracking calls now") == 1 and text.count("takes calls again") >= 1, text[-3000:]
        assert "could not be sent" not in text
        history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
        run_id = json.loads((run_dir / "metrics.json").read_text())["mlflow_run_id"]
        mlflow_client = MlflowClient(url)
        run = mlflow_client.get_run(run_id)
        assert run.info.status == "FINISHED"
        keys = sorted({k for row in history for k in row if k != "step"})
        assert {"train_loss", "val_loss", "learning_rate"} <= set(keys)
        for key in keys:
            ours = sorted((row["step"], row[key]) for row in history if key in row)
            theirs = sorted((m.step, m.value) for m in mlflow_client.get_metric_history(run_id, key))
            assert theirs == ours, key
        steps = [m.step for m in mlflow_client.get_metric_history(run_id, "train_loss")]
        assert len(steps) == ITERS // 2 and any(20 < s < 60 for s in steps)  # the points logged while it was away
        artifacts = {a.path for a in mlflow_client.list_artifacts(run_id)}
        assert {"metrics.json", "history.jsonl", "adapters", "samples.json"} <= artifacts
        assert run.data.params["lora.rank"] and run.inputs.dataset_inputs
    finally:
        if train.poll() is None:
            train.kill()
        stop_process_group(server)


def test_push_sends_what_a_run_kept_and_says_so_in_one_line_when_the_server_is_away(tmp_path):
    """What an outbox still holds when a run ends (its server never came back) is sent by
    `python -m riscv_ft.tracking push RUN`, once."""
    from mlflow import MlflowClient

    from riscv_ft.tracking.outbox import Outbox
    from riscv_ft.tracking.run import Tracker

    server_root, run_dir = tmp_path / "server", tmp_path / "run"
    server_root.mkdir()
    run_dir.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(server_root, port)
    try:
        mlflow_client = MlflowClient(url)
        run_id = mlflow_client.create_run(mlflow_client.create_experiment("push")).info.run_id
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()

        class _Run:  # what Tracker reads of an mlflow Run
            info = type("info", (), {"run_id": run_id})

        tracker = Tracker(_Run(), Outbox(run_dir, url, run_id))
        for step in (1, 2, 3):
            tracker.log_metrics(step, {"train_loss": 1.0 / step})
        shutil.copy(__file__, run_dir)  # a call's paths lie inside its run folder
        tracker.log_artifact(run_dir / Path(__file__).name)
        tracker._send("end", status="FINISHED")
        assert tracker.outbox.close(timeout_s=1.0) == 5

        push = [sys.executable, "-m", "riscv_ft.tracking", "push", str(run_dir), "--uri", url]
        away = subprocess.run(push, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert away.returncode == 2 and away.stderr.startswith("error: cannot send to MLflow") and "5 calls are still kept" in away.stderr
        assert len(away.stderr.strip().splitlines()) == 1 and "Traceback" not in away.stderr

        server = start_server(server_root, port)
        sent = subprocess.run(push, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert sent.returncode == 0 and "sent 5 tracking calls" in sent.stdout, sent.stderr[-2000:]
        again = subprocess.run(push, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert "sent 0 tracking calls" in again.stdout
        assert sorted((m.step, m.value) for m in mlflow_client.get_metric_history(run_id, "train_loss")) == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
        assert mlflow_client.get_run(run_id).info.status == "FINISHED"
        assert Path(__file__).name in {a.path for a in mlflow_client.list_artifacts(run_id)}
    finally:
        stop_process_group(server)

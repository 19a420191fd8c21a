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


# ---------------------------------------------------------------- the outbox and push

OFFLINE = {"experiment": "reliability", "run_name": "r", "tags": {}}


class _Run:  # what Tracker reads of an mlflow Run
    def __init__(self, run_id: str):
        self.info = type("info", (), {"run_id": run_id})


def _push(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "riscv_ft.tracking", "push", str(run_dir), *extra], capture_output=True, text=True,
                          cwd=REPO, env=_env(), timeout=300)


def _store(tmp_path: Path) -> tuple[str, object]:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    from riscv_ft.tracking.store import ensure_experiment

    ensure_experiment(uri, "reliability")
    return uri, MlflowClient(uri)


def _forbidding_server():
    """A real HTTP server that answers every request 403 PERMISSION_DENIED (an expired token)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Forbid(BaseHTTPRequestHandler):
        def _answer(self):
            body = json.dumps({"error_code": "PERMISSION_DENIED", "message": "token expired"}).encode()
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = do_PUT = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Forbid)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_a_403_keeps_the_calls_for_push_and_a_true_refusal_is_kept_apart(tmp_path):
    """Item 2: a 403 moved the sent marker past the calls (close() said 0 left, push sent nothing)."""
    from riscv_ft.tracking.outbox import OUTBOX, Outbox, read_outbox
    from riscv_ft.tracking.run import Tracker

    uri, mlflow_client = _store(tmp_path)
    run_id = mlflow_client.create_run(mlflow_client.get_experiment_by_name("reliability").experiment_id).info.run_id
    server, url = _forbidding_server()
    try:
        tracker = Tracker(_Run(run_id), Outbox(tmp_path / "run", url, run_id))
        for step in (1, 2):
            tracker.log_metrics(step, {"loss": float(step)})
        tracker.log_params({"a": 1})
        tracker.log_params({"a": 2})  # can never succeed: a param changes value
        assert tracker.outbox.close(3.0) == 4
    finally:
        server.shutdown()
    assert len(read_outbox(tmp_path / "run" / OUTBOX)[1]) == 4
    pushed = _push(tmp_path / "run", "--uri", uri)
    assert pushed.returncode == 0 and "sent 3 tracking calls" in pushed.stdout, pushed.stderr[-2000:]
    assert "refused 1 calls for good" in pushed.stderr
    refused = [json.loads(line) for line in (tmp_path / "run" / "tracking_outbox.refused").read_text().splitlines()]
    assert [r["args"] for r in refused] == [{"params": {"a": "2"}}] and "INVALID_PARAMETER_VALUE" in refused[0]["error"] or refused
    assert sorted((m.step, m.value) for m in mlflow_client.get_metric_history(run_id, "loss")) == [(1, 1.0), (2, 2.0)]
    assert "sent 0 tracking calls" in _push(tmp_path / "run", "--uri", uri).stdout


def test_a_second_offline_run_in_the_same_folder_gets_its_own_outbox_and_push_sends_both(tmp_path):
    """Items 4 and 5: a second run appended to (offline) or rewrote (online) the first one's
    outbox; push to a local store then stopped forever at `Changing param values`."""
    from riscv_ft.tracking.outbox import Outbox
    from riscv_ft.tracking.run import Tracker

    uri, mlflow_client = _store(tmp_path)
    run_dir = tmp_path / "run"
    for rank in (4, 16):
        tracker = Tracker(None, Outbox(run_dir, None, None, {**OFFLINE, "run_name": f"rank{rank}"}))
        tracker.log_params({"lora.rank": rank})
        tracker.log_metrics(1, {"loss": rank / 10})
        tracker.finish("FINISHED")
    assert len(list(run_dir.glob("tracking_outbox.offline-*.jsonl"))) == 1  # the first run's, set aside
    pushed = _push(run_dir, "--uri", uri)
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    runs = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("reliability").experiment_id])
    assert sorted((r.info.run_name, r.data.params["lora.rank"], r.info.status) for r in runs) == [
        ("rank16", "16", "FINISHED"), ("rank4", "4", "FINISHED")]
    assert (run_dir / "mlflow_run_id").read_text().strip() in {r.info.run_id for r in runs if r.info.run_name == "rank16"}


def test_close_pauses_between_attempts_while_the_server_is_away(tmp_path):
    """Item 7: close() spun: 4,106 send attempts in 5 s."""
    from riscv_ft.tracking.outbox import Outbox
    from tests.test_mlflow_ui import free_port

    outbox = Outbox(tmp_path, f"http://127.0.0.1:{free_port()}", "0" * 32)
    outbox.put("metrics", step=1, timestamp=0, metrics={"loss": 1.0})
    started = time.monotonic()
    assert outbox.close(4.0) == 1
    assert time.monotonic() - started < 10
    assert outbox.attempts < 50, outbox.attempts


def test_the_dataset_call_holds_no_rows(tmp_path):
    """Item 9: 20,000 synthetic rows made a 1.88 MB dataset call in the outbox."""
    from riscv_ft.tracking.outbox import OUTBOX, Outbox
    from riscv_ft.tracking.run import Tracker

    rows = [{"description": f"Add a{i % 8} and a2 into a0, row {i}", "reference": "add a0, a1, a2"} for i in range(20000)]
    tracker = Tracker(None, Outbox(tmp_path, None, None, OFFLINE))
    tracker.log_dataset(rows, "synthetic rows (seed 0)", "abc123", "synthetic")
    assert (tmp_path / OUTBOX).stat().st_size < 5000
    uri, mlflow_client = _store(tmp_path)
    tracker.finish("FINISHED")
    assert _push(tmp_path, "--uri", uri).returncode == 0
    run = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("reliability").experiment_id])[0]
    dataset = run.inputs.dataset_inputs[0].dataset
    assert dataset.digest == "abc123" and json.loads(dataset.profile)["num_rows"] == 20000
    assert [c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]] == ["description", "reference"]


def test_a_torn_last_line_does_not_swallow_the_next_calls(tmp_path):
    """Item 10: after a kill mid-write, the next call was appended to the torn line and both
    were lost (push sent steps 1 and 4, not 2 and 3)."""
    from riscv_ft.tracking.outbox import OUTBOX, Outbox, encode, read_outbox

    first = Outbox(tmp_path, None, None, OFFLINE)
    first.put("metrics", step=1, timestamp=0, metrics={"loss": 1.0})
    torn = encode(first.key, 2, "metrics", {"step": 2, "timestamp": 0, "metrics": {"loss": 2.0}})
    with open(tmp_path / OUTBOX, "a") as f:
        f.write(torn[: len(torn) // 2])  # the process died here
    resumed = Outbox(tmp_path, None, None, OFFLINE, key=first.key)
    for step in (3, 4):
        resumed.put("metrics", step=step, timestamp=0, metrics={"loss": float(step)})
    header, pending, skipped = read_outbox(tmp_path / OUTBOX)
    assert [c["args"]["step"] for c in pending] == [1, 3, 4] and skipped == 1
    uri, mlflow_client = _store(tmp_path)
    assert _push(tmp_path, "--uri", uri).returncode == 0
    run = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("reliability").experiment_id])[0]
    assert sorted(m.step for m in mlflow_client.get_metric_history(run.info.run_id, "loss")) == [1, 3, 4]


def test_push_refuses_an_outbox_that_names_files_outside_its_run_folder(tmp_path):
    """Item 11: a hand-made outbox naming /etc/passwd copied it into the store."""
    from riscv_ft.tracking.outbox import OUTBOX, encode

    uri, mlflow_client = _store(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    header = {"key": "offline-x", "uri": None, "run_id": None, "offline": True, "start_time": 0, **OFFLINE,
              "run_dir": "/etc"}
    for path in ("/etc/passwd", "../../../../../../etc/passwd"):
        (run_dir / OUTBOX).write_text(encode("offline-x", 0, "run", header)
                                      + encode("offline-x", 1, "artifact", {"path": path, "artifact_path": None}))
        pushed = _push(run_dir, "--uri", uri)
        assert pushed.returncode == 2 and len(pushed.stderr.strip().splitlines()) == 1, pushed.stderr[-2000:]
        assert "outside the run folder" in pushed.stderr and "Traceback" not in pushed.stderr
    assert not list((tmp_path / "store").rglob("passwd"))
    assert mlflow_client.search_runs([mlflow_client.get_experiment_by_name("reliability").experiment_id]) == []


def test_the_model_goes_through_the_outbox_and_reaches_the_store_with_push(tmp_path):
    """Item 6: the MLflow model was logged directly; with the server away at the end, push sent
    the rest but no model and no riscv_ft.model_uri tag."""
    import mlflow.pyfunc

    from riscv_ft.tracking.outbox import Outbox
    from riscv_ft.tracking.run import Tracker
    from tests.test_mlflow_ui import free_port

    uri, mlflow_client = _store(tmp_path)
    run_id = mlflow_client.create_run(mlflow_client.get_experiment_by_name("reliability").experiment_id).info.run_id
    run_dir = tmp_path / "run"
    mlflow.pyfunc.save_model(str(run_dir / "mlflow_model"), python_model=_Echo(), pip_requirements=[])
    tracker = Tracker(_Run(run_id), Outbox(run_dir, f"http://127.0.0.1:{free_port()}", run_id))  # away
    tracker.log_model(run_dir / "mlflow_model")
    tracker._send("end", status="FINISHED")
    assert tracker.outbox.close(1.0) == 2
    pushed = _push(run_dir, "--uri", uri)
    assert pushed.returncode == 0 and "sent 2 tracking calls" in pushed.stdout, pushed.stderr[-2000:]
    model_uri = mlflow_client.get_run(run_id).data.tags["riscv_ft.model_uri"]
    logged = mlflow_client.get_logged_model(model_uri.removeprefix("models:/"))
    assert mlflow.pyfunc.load_model(logged.artifact_location).predict(["x"]) == ["x"]


class _Echo(__import__("mlflow").pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return list(model_input) if not hasattr(model_input, "iloc") else model_input.iloc[:, 0].tolist()


# ---------------------------------------------------------------- run start, run=<id>, the served model


def test_an_unreachable_server_at_run_start_is_one_line_before_the_model_loads(tmp_path):
    """Item 13c: 116 lines of MlflowException, printed after the model had loaded."""
    from tests.test_mlflow_ui import free_port

    url = f"http://127.0.0.1:{free_port()}"
    run_dir = tmp_path / "run"
    train = subprocess.run([PY, "-m", "riscv_ft.train", "experiment=smoke", "trainer.iters=2", f"tracking.uri={url}",
                            f"hydra.run.dir={run_dir}"], capture_output=True, text=True, cwd=REPO, env=_env(), timeout=300)
    assert train.returncode == 2 and "Traceback" not in train.stderr, train.stderr[-3000:]
    errors = [line for line in train.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and url in errors[0] and "tracking.offline=true" in errors[0]
    assert "trainable parameters" not in (run_dir / "train.log").read_text() if (run_dir / "train.log").exists() else True


def test_run_id_is_refused_in_one_line_when_its_folder_now_holds_another_run(tmp_path, monkeypatch):
    """Item 5: riscv-ft-generate run=<id> trusted the run_dir tag and loaded the adapter of
    another run that had reused the folder."""
    import pytest

    from riscv_ft.assistant import AssistantError, run_folder_from_mlflow

    uri, mlflow_client = _store(tmp_path)
    experiment_id = mlflow_client.get_experiment_by_name("reliability").experiment_id
    folder = tmp_path / "run"
    (folder / "adapters").mkdir(parents=True)
    (folder / "config.yaml").write_text("model: {}\n")
    (folder / "adapters" / "adapters.safetensors").write_bytes(b"")
    old, new = (mlflow_client.create_run(experiment_id, tags={"run_dir": str(folder)}).info.run_id for _ in range(2))
    (folder / "mlflow_run_id").write_text(new + "\n")  # the second run took the folder over
    assert run_folder_from_mlflow(new, uri) == folder
    with pytest.raises(AssistantError, match=f"now holds MLflow run {new}"):
        run_folder_from_mlflow(old, uri)


def test_the_served_model_pins_riscv_ft_to_this_source_and_bounds_a_request():
    """Also seen: the logged model required a bare riscv_ft==0.1.0 (dependency confusion), and
    predict bounded neither max_tokens nor the number of rows."""
    import pytest
    from mlflow.exceptions import MlflowException

    from riscv_ft.mlflow_model import MAX_ROWS, MAX_TOKENS, _check_bounds, _own_requirement

    assert _own_requirement() == f"riscv_ft @ {REPO.as_uri()}"
    _check_bounds(MAX_ROWS, {"max_tokens": MAX_TOKENS})
    for rows, tokens in ((MAX_ROWS + 1, 8), (1, MAX_TOKENS + 1), (1, 0), (1, "many")):
        with pytest.raises(MlflowException):
            _check_bounds(rows, {"max_tokens": tokens})

"""A trained run as an MLflow model: what it logs, registering it as `riscv-asm@best`, and a
real `mlflow models serve --env-manager local` process on 127.0.0.1 that answers REST
requests with the same assembly as riscv_ft's own Assistant."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from riscv_ft.tracking import store, sweep_runs
from riscv_ft.assistant import Assistant
from tests.conftest import stop_process_group

PROMPTS = ["Add a1 and a2 into a0", "Shifts t1 left by 2 bits into a1."]
MAX_TOKENS = 12


def _run_id(run_dir: Path) -> str:
    return json.loads((run_dir / "metrics.json").read_text())["mlflow_run_id"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def registered(smoke_run) -> str:
    """The smoke run registered as the sweep callback registers a sweep's best run."""
    version = sweep_runs.register_best_model(None, _run_id(smoke_run))
    assert version is not None, "the smoke run logged no MLflow model"
    return version


@pytest.fixture(scope="module")
def server(registered, tmp_path_factory):
    """`mlflow models serve -m models:/riscv-asm@best --env-manager local` on a free port."""
    import requests

    root = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.tracking_uri(None), "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # uvicorn beside python
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{store.REGISTERED_MODEL}@{store.BEST_ALIAS}",
               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    log = open(root / "serve.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, f"mlflow models serve exited with {process.returncode}: {(root / 'serve.log').read_text()[-3000:]}"
            try:
                if requests.get(f"{url}/ping", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"no answer within 180 s: {(root / 'serve.log').read_text()[-3000:]}"
            time.sleep(0.5)
        yield url
    finally:
        stop_process_group(process)
        log.close()


def test_the_served_model_answers_like_the_assistant(server, smoke_run):
    import requests

    body = {"dataframe_records": [{"description": p} for p in PROMPTS], "params": {"max_tokens": MAX_TOKENS}}
    response = requests.post(f"{server}/invocations", json=body, timeout=120)
    assert response.status_code == 200, response.text[-2000:]
    served = response.json()["predictions"]
    expected = Assistant.from_run(smoke_run).ask_many(PROMPTS, max_tokens=MAX_TOKENS)
    assert len(served) == 2 and served == expected
    # The other request shape MLflow documents: a list of strings.
    listed = requests.post(f"{server}/invocations", json={"inputs": PROMPTS, "params": {"max_tokens": MAX_TOKENS}}, timeout=120)
    assert listed.status_code == 200 and listed.json()["predictions"] == expected, listed.text[-2000:]


def test_a_bad_request_is_a_400_that_says_why(server):
    import requests

    response = requests.post(f"{server}/invocations", json={"inputs": ["Add a1 and a2 into a0", "  "]}, timeout=60)
    assert response.status_code == 400
    assert "expected non-empty description strings" in response.json()["message"]


def test_the_logged_model_holds_the_adapter_and_config_not_the_base(smoke_run, registered, tmp_path):
    from mlflow import MlflowClient
    from mlflow.models import Model

    client = MlflowClient(store.tracking_uri(None))
    version = client.get_model_version_by_alias(store.REGISTERED_MODEL, store.BEST_ALIAS)
    assert str(version.version) == registered and version.run_id == _run_id(smoke_run)
    model_uri = client.get_run(_run_id(smoke_run)).data.tags[store.MODEL_URI_TAG]
    import mlflow.artifacts

    location = client.get_logged_model(model_uri.removeprefix("models:/")).artifact_location
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(tmp_path)))
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    shipped = [f for f in files if f.startswith("artifacts/")]
    assert shipped == ["artifacts/run/adapters/adapter_config.json", "artifacts/run/adapters/adapters.safetensors", "artifacts/run/config.yaml"]
    assert not [f for f in files if f.endswith(("model.safetensors", ".gguf", "tokenizer.model"))]  # no base weights
    adapter_bytes = (smoke_run / "adapters" / "adapters.safetensors").stat().st_size
    assert sum((local / f).stat().st_size for f in files) < adapter_bytes + 200_000
    mlmodel = Model.load(str(local))
    assert [c["type"] for c in mlmodel.signature.inputs.to_dict()] == ["string"]
    assert {p.name for p in mlmodel.signature.params} == {"max_tokens", "temperature"}
    example = json.loads((local / "serving_input_example.json").read_text())
    assert example["dataframe_split"]["columns"] == ["description"] and len(example["dataframe_split"]["data"]) == 2

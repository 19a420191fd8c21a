"""The MLflow UI on a real sweep: a real `mlflow server` on 127.0.0.1, a small Hydra sweep that
tracks into it over HTTP (`tracking.uri=http://...`), its REST API, and the run-comparison
and metric pages in headless Chromium. Screenshots go to test-artifacts/.

Skipped where the server or Chromium + chromedriver (Debian: chromium, chromium-driver;
pip: selenium) cannot start.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, run_train, stop_process_group

CHROMIUM = Path(os.environ.get("RISCV_FT_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("RISCV_FT_CHROMEDRIVER", "/usr/bin/chromedriver"))
EXPERIMENT = "riscv-asm-lora"
# No telemetry calls out, and no job-executor processes: they double the server's start time.
SERVER_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@dataclass
class Server:
    url: str
    root: Path

    def api(self, method: str, endpoint: str, **kwargs) -> dict:
        import requests

        response = requests.request(method, f"{self.url}/api/2.0/mlflow/{endpoint}", timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on a free local port: SQLite metadata, artifacts proxied through it."""
    import requests

    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    log = open(root / "server.log", "w")
    command = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **SERVER_ENV}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.skip(f"mlflow server exited with {process.returncode}: {(root / 'server.log').read_text()[-500:]}")
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.skip(f"mlflow server did not answer within 120 s: {(root / 'server.log').read_text()[-500:]}")
            time.sleep(0.5)
        yield Server(url, root)
    finally:
        stop_process_group(process)
        log.close()


@pytest.fixture(scope="module")
def sweep(server, tmp_path_factory) -> dict:
    """`-m experiment=smoke lora.rank=4,8` tracking into the server; returns the runs it made."""
    root = tmp_path_factory.mktemp("ui_sweep")
    started = time.perf_counter()
    # A request the server never answers fails in about a minute instead of MLflow's
    # default 7 retries of 120 s each.
    http = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
    try:
        result = run_train(
            "-m", "experiment=smoke", "trainer.iters=6", "trainer.eval_every=3", "trainer.report_every=2", "trainer.save_every=0",
            "eval.num_rows=2", "eval.max_tokens=8", "eval.print_samples=1", "lora.rank=4,8", f"tracking.uri={server.url}",
            f"hydra.sweep.dir={root / 'sweep'}", "hydra.sweep.subdir=${hydra.job.num}",
            env={"RISCV_FT_MLRUNS": str(root / "local-store"), **SERVER_ENV, **http}, timeout=300,
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the sweep did not end within 300 s; its stderr ends: {(err.stderr or b'')[-2000:]!r}; "
                    f"the server's log ends: {(server.root / 'server.log').read_text()[-2000:]}")
    assert result.returncode == 0, result.stderr[-3000:] + (server.root / "server.log").read_text()[-2000:]
    experiment = server.api("GET", "experiments/get-by-name", params={"experiment_name": EXPERIMENT})["experiment"]
    runs = server.api("POST", "runs/search", json={"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
    return {
        "experiment_id": experiment["experiment_id"], "runs": runs, "seconds": time.perf_counter() - started,
        "local_store": root / "local-store",
    }


def _tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _params(run: dict) -> dict:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def _parent_and_children(runs: list[dict]) -> tuple[dict, list[dict]]:
    parents = [r for r in runs if _tags(r).get("riscv_ft.role") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if _tags(r).get("mlflow.parentRunId") == parent["info"]["run_id"]]
    return parent, sorted(children, key=lambda r: int(_tags(r)["riscv_ft.sweep_job"]))


def test_the_server_api_shows_the_sweep_with_params_histories_and_artifacts(server, sweep):
    import requests

    parent, children = _parent_and_children(sweep["runs"])
    assert len(sweep["runs"]) == 3 and parent["info"]["status"] == "FINISHED"
    assert [_params(c)["lora.rank"] for c in children] == ["4", "8"]
    assert all(c["info"]["status"] == "FINISHED" for c in children)
    assert not sweep["local_store"].exists(), "with tracking.uri set, nothing goes to the local store"
    for child in children:
        run_id = child["info"]["run_id"]
        history = server.api("GET", "metrics/get-history", params={"run_id": run_id, "metric_key": "train_loss"})["metrics"]
        assert sorted(m["step"] for m in history) == [2, 4, 6]
        val = server.api("GET", "metrics/get-history", params={"run_id": run_id, "metric_key": "val_loss"})["metrics"]
        assert {3, 6} <= {m["step"] for m in val}
        files = {f["path"] for f in server.api("GET", "artifacts/list", params={"run_id": run_id})["files"]}
        assert {"samples.json", "loss_curve.png", "config.yaml", "adapters"} <= files
        adapters = server.api("GET", "artifacts/list", params={"run_id": run_id, "path": "adapters"})["files"]
        assert any(f["path"] == "adapters/adapters.safetensors" and int(f["file_size"]) > 10_000 for f in adapters)
    # The summary, fetched the way the UI's artifact view fetches a file.
    csv_text = requests.get(f"{server.url}/get-artifact", params={"path": "sweep_summary.csv", "run_uuid": parent["info"]["run_id"]}, timeout=30).text
    assert csv_text.startswith("job,run,status,lora.rank,final_val_loss")
    assert all(c["info"]["run_id"] in csv_text for c in children)


def _browser(profile: Path):
    """Headless Chromium through chromedriver, in a fresh profile, unable to resolve any host
    but 127.0.0.1; skips the test where it cannot start."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip(f"Chromium or chromedriver missing ({CHROMIUM}, {CHROMEDRIVER}; Debian: chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1500,1200",
        f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):
        options.add_argument(argument)
    # Chromium crashes at start with the OpenBLAS that riscv_ft preloads into this process.
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "OPENBLAS_CORETYPE")}
    try:
        return webdriver.Chrome(service=Service(str(CHROMEDRIVER), env=env), options=options)
    except WebDriverException as err:
        pytest.skip(f"Chromium did not start: {str(err).splitlines()[0]}")


def _wait_for(driver, condition, what: str, timeout: float = 60):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout).until(condition)
    except TimeoutException:
        shot = ARTIFACTS / "mlflow_ui_timeout.png"
        driver.save_screenshot(str(shot))
        pytest.fail(f"the MLflow UI did not show {what} within {timeout:.0f} s (screenshot: {shot})")


def _choose(driver, select, names: list[str]) -> None:
    """Pick options by name in one of the UI's multi-select boxes."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    for name in names:
        select.click()
        box = select.find_element(By.CSS_SELECTOR, "input")
        box.send_keys(name)
        option = _wait_for(
            driver,
            lambda d: next((o for o in d.find_elements(By.CSS_SELECTOR, ".du-bois-light-select-item-option") if o.is_displayed() and o.text.strip() == name), None),
            f"the option {name}", timeout=10,
        )
        option.click()
        box.send_keys(Keys.ESCAPE)


def test_the_ui_compares_the_sweep_runs_in_chromium(server, sweep, tmp_path):
    from selenium.webdriver.common.by import By

    parent, children = _parent_and_children(sweep["runs"])
    names = [c["info"]["run_name"] for c in children]
    quoted = lambda value: urllib.parse.quote(json.dumps(value))  # noqa: E731
    ids, experiments = quoted([c["info"]["run_id"] for c in children]), quoted([sweep["experiment_id"]])
    ARTIFACTS.mkdir(exist_ok=True)
    driver = _browser(tmp_path / "chromium-profile")
    try:
        # The run-comparison page: runs side by side, a parallel-coordinates chart.
        driver.get(f"{server.url}/#/compare-runs?runs={ids}&experiments={experiments}")
        body = lambda d: d.find_element(By.TAG_NAME, "body").text  # noqa: E731
        _wait_for(driver, lambda d: "Comparing 2 Runs" in body(d) and all(n in body(d) for n in names), "both runs")
        _wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot svg.main-svg"), "the chart")
        for close in driver.find_elements(By.CSS_SELECTOR, "button[aria-label=Close]"):  # the assistant side panel
            close.click()
        driver.find_element(By.CSS_SELECTOR, "[data-testid=clear-button]").click()
        parameters, metrics = driver.find_elements(By.CSS_SELECTOR, ".du-bois-light-select")[:2]
        _choose(driver, parameters, ["lora.rank"])
        _choose(driver, metrics, ["final_val_loss"])
        chart = lambda d: d.find_element(By.CSS_SELECTOR, ".js-plotly-plot").text  # noqa: E731
        _wait_for(driver, lambda d: "lora.rank" in chart(d) and "final_val_loss" in chart(d), "lora.rank against final_val_loss")
        assert "lora.rank" in body(driver) and parent["info"]["run_name"] not in body(driver)
        compare_shot = ARTIFACTS / "mlflow_compare_runs.png"
        assert driver.save_screenshot(str(compare_shot)) and compare_shot.stat().st_size > 20_000

        # The metric page: both runs' train and validation loss by step.
        keys = quoted(["train_loss", "val_loss"])
        driver.get(f"{server.url}/#/metric?runs={ids}&metric={quoted('train_loss')}&experiments={experiments}&plot_metric_keys={keys}&x_axis=step&show_point=true")
        _wait_for(driver, lambda d: all(f"{n} (train_loss)" in body(d) and f"{n} (val_loss)" in body(d) for n in names), "the loss curves")
        assert driver.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer .trace")
        for close in driver.find_elements(By.CSS_SELECTOR, "button[aria-label=Close]"):
            close.click()
        history_shot = ARTIFACTS / "mlflow_metric_history.png"
        assert driver.save_screenshot(str(history_shot)) and history_shot.stat().st_size > 20_000
    finally:
        driver.quit()

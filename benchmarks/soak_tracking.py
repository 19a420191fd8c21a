"""Concurrency soak of the tracking layer (issue 26, "Done when").

A sweep of 4 jobs (a multirun of experiment=smoke) and 2 single runs start at once on a fresh
folder, against a real `mlflow server` that is killed (SIGKILL) and restarted twice while they
run. Afterwards every run folder is pushed once, and the store is checked and the counts
PRINTED: each run in the store exactly once, its metric history equal to its history.jsonl,
its model logged, its status as it truly ended, and no call left unsent after the one push.

    PYTHONPATH=$PWD python benchmarks/soak_tracking.py [--iters 30] [--root DIR]

Exit status 0 when every check holds, 1 otherwise (tests/test_tracking_soak.py runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(REPO), "GUNICORN_CMD_ARGS": "--timeout 120"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int) -> subprocess.Popen:
    command = [PY, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(root / "server.log", "a") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **QUIET}, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            return process
        except OSError:
            time.sleep(0.3)
    raise SystemExit("mlflow server did not answer within 120 s")


def kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def history_of(run_dir: Path, key: str) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line.strip()]
    return sorted((row["step"], round(row[key], 6)) for row in rows if row.get(key) is not None)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--root", type=Path, default=None)
    args = parser.parse_args()
    root = (args.root or Path(tempfile.mkdtemp(prefix="soak_tracking_"))).resolve()
    server_root = root / "server"
    server_root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    common = ["experiment=smoke", f"trainer.iters={args.iters}", "trainer.report_every=2", "trainer.eval_every=10",
              "trainer.save_every=10", "eval.num_rows=2", "eval.max_tokens=8", "eval.baseline=false", "eval.user_prompts=0",
              f"tracking.uri={url}", "tracking.experiment_name=soak", "tracking.flush_timeout_s=20"]
    env = {**os.environ, **QUIET, "RISCV_FT_MLRUNS": str(root / "never")}
    server = start_server(server_root, port)
    started = time.monotonic()
    jobs = {"sweep": subprocess.Popen([PY, "-m", "riscv_ft.train", "-m", *common, "lora.rank=2,4,8,16",
                                       f"hydra.sweep.dir={root / 'sweep'}", "hydra.sweep.subdir=${hydra.job.num}"],
                                      cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=open(root / "sweep.err", "w"))}
    for i in range(2):
        jobs[f"single{i}"] = subprocess.Popen([PY, "-m", "riscv_ft.train", *common, f"lora.rank={4 * (i + 1)}",
                                               f"hydra.run.dir={root / f'single{i}'}"],
                                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=open(root / f"single{i}.err", "w"))
    outages = 0
    for at in (25, 60):  # seconds after the start: kill, wait 10 s, restart
        while time.monotonic() - started < at and any(p.poll() is None for p in jobs.values()):
            time.sleep(0.5)
        kill(server)
        time.sleep(10)
        server = start_server(server_root, port)
        outages += 1
    codes = {name: p.wait() for name, p in jobs.items()}
    ended_s = time.monotonic() - started

    from mlflow import MlflowClient

    from riscv_ft.tracking.outbox import read_outbox
    from riscv_ft.tracking.push import outboxes, push

    folders = [root / "single0", root / "single1"] + sorted((root / "sweep").glob("[0-9]*"), key=lambda p: int(p.name))
    sent = {str(f): push(f, url) for f in folders if outboxes(f)}
    unsent = sum(len(read_outbox(p)[1]) for f in folders for p in outboxes(f))
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("soak")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    children = [r for r in runs if r.data.tags.get("riscv_ft.role") != "sweep"]
    parents = [r for r in runs if r.data.tags.get("riscv_ft.role") == "sweep"]
    ok = {"once": 0, "history": 0, "model": 0, "status": 0}
    problems = []
    for folder in folders:
        ran_to_end = (folder / "metrics.json").is_file()
        run_id = (folder / "mlflow_run_id").read_text().strip() if (folder / "mlflow_run_id").is_file() else None
        mine = [r for r in children if r.data.tags.get("run_dir") == str(folder)]
        failed_early = run_id is None and "job failed" in (folder / "train.log").read_text()  # recorded by the sweep
        if len(mine) == 1 and (mine[0].info.run_id == run_id or failed_early):
            ok["once"] += 1
        else:
            problems.append(f"{folder.name}: {len(mine)} runs in the store with its run_dir (folder names {run_id})")
            continue
        run = mine[0]
        same = failed_early or all(sorted((m.step, round(m.value, 6)) for m in client.get_metric_history(run.info.run_id, key)) == history_of(folder, key)
                   for key in ("train_loss", "val_loss"))
        ok["history"] += same
        if not same:
            problems.append(f"{folder.name}: metric history differs from history.jsonl")
        has_model = bool(run.data.tags.get("riscv_ft.model_uri"))
        ok["model"] += has_model or not ran_to_end
        if ran_to_end and not has_model:
            problems.append(f"{folder.name}: no logged model")
        truth = "FINISHED" if ran_to_end else "FAILED" if failed_early else "KILLED"
        if failed_early:
            problems.append(f"{folder.name}: the job failed before training (recorded FAILED)")
        ok["status"] += run.info.status == truth
        if run.info.status != truth:
            problems.append(f"{folder.name}: status {run.info.status}, but it ended {truth}")
    print(f"soak: {len(folders)} run folders (4 sweep jobs + 2 single runs), {outages} server outages, "
          f"training ended after {ended_s:.0f} s with exit codes {codes}")
    print(f"pushed once: {sum(sent.values())} calls sent; calls left unsent after that push: {unsent}")
    print(f"in the store exactly once: {ok['once']}/{len(folders)}; metric history == history.jsonl: {ok['history']}/{len(folders)}; "
          f"model logged: {ok['model']}/{len(folders)}; status as truly ended: {ok['status']}/{len(folders)}; "
          f"training runs in the store: {len(children)}; sweep parents: {len(parents)} "
          f"({', '.join(p.info.status for p in parents)})")
    for problem in problems:
        print("problem:", problem)
    kill(server)
    good = not problems and unsent == 0 and len(children) == len(folders) == 6
    print("soak:", "PASS" if good else "FAIL", f"(folder {root})")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())

"""The one place that talks to MLflow.

By default runs go to `mlruns/` under the working directory, beside `experiments/` (one
rule for a run's records; RISCV_FT_MLRUNS=DIR moves the store): metadata in
`mlruns/mlflow.db` (SQLite; recent MLflow refuses a plain file store) and artifacts in
`mlruns/artifacts/`, both recorded as absolute paths. `tracking.enabled=false` gives a
Tracker that does nothing; `tracking.uri` points at any other server.

A training run is one MLflow run (`tracked_run`). A Hydra sweep adds a parent run
(`start_sweep_run` ... `finish_sweep_run`, driven by riscv_ft.sweep); each job's run finds
its parent and its place in the sweep through environment variables, so the link holds
whichever launcher runs the jobs. `get_run`, `child_runs` and `experiment_runs` read runs
back for the sweep summary and `python -m riscv_ft.compare`.

Training never waits on a tracking server: with a remote `tracking.uri` every call of a
run goes through an outbox (`_Outbox`): appended to RUN/tracking_outbox.jsonl, then sent in
order by a background thread that retries while the server is away, saying so once in the
log when it goes and once when it is back. What is still unsent when the run ends (after
`tracking.flush_timeout_s`) stays in that file, and `python -m riscv_ft.track push RUN`
sends it later. A local SQLite store is written directly.

`tracking.offline=true` is for a machine that has no MLflow at all, or no way to a server (an
air-gapped GPU box): the run imports nothing of MLflow and journals every call into the same
outbox, naming the experiment and run instead of a run id. Copy the run folder back, and
`python -m riscv_ft.track push RUN...` creates each run (with its offline start time) in the
store named by tracking.uri (else ./mlruns) and sends the rest; artifact paths are read
relative to where the folder is now, and what is missing there is skipped with a warning.


Each run's adapter is also logged as an MLflow model (riscv_ft/mlflow_model.py), and a
sweep registers its best run's model as `riscv-asm` with the alias `best`.

To browse the store, from the folder the runs were started in:
    mlflow ui --backend-store-uri sqlite:///$PWD/mlruns/mlflow.db
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import threading
import time
import warnings
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig, OmegaConf

from riscv_ft.config import ConfigError

# MLflow's client and server report usage to an outside host by default; a training tool that
# runs offline should not try. Set MLFLOW_DISABLE_TELEMETRY=false to allow it.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow retries a failed HTTP request 7 times with growing pauses, each with a 120 s timeout:
# minutes of a stalled training loop per call when the server is away. The outbox retries on
# its own, in the background, so one attempt should fail within seconds.
for _name, _value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                      ("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")):
    os.environ.setdefault(_name, _value)
# ... and urllib3 would log each of its retries; the outbox says once that the server is away.
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Set by the sweep callback around each job; read by tracked_run when it creates the run.
PARENT_ENV = "RISCV_FT_PARENT_RUN_ID"
JOB_ENV = "RISCV_FT_SWEEP_JOB"
OVERRIDES_ENV = "RISCV_FT_SWEEP_OVERRIDES"
PARENT_TAG = "mlflow.parentRunId"
JOB_TAG = "riscv_ft.sweep_job"  # the Hydra job number
OVERRIDES_TAG = "riscv_ft.sweep_overrides"  # JSON list of the job's overrides, "key=value"
ROLE_TAG = "riscv_ft.role"  # "sweep" on a sweep's parent run
FAILURE_TAG = "failure_reason"
MODEL_URI_TAG = "riscv_ft.model_uri"  # the run's MLflow model (models:/m-...)
REGISTERED_MODEL = "riscv-asm"  # where a sweep registers its best run's model, alias BEST_ALIAS
BEST_ALIAS = "best"


class TrackingError(ConfigError):
    """MLflow cannot be used as configured. Its message is one line for the user."""


def default_store() -> Path:
    """`mlruns/` under the working directory (where `experiments/` goes too), or RISCV_FT_MLRUNS."""
    return Path(os.environ.get("RISCV_FT_MLRUNS") or Path.cwd() / "mlruns").resolve()


def tracking_uri(uri: str | None) -> str:
    return uri or f"sqlite:///{default_store() / 'mlflow.db'}"


def artifact_location() -> str:
    return (default_store() / "artifacts").as_uri()


def flatten(cfg: DictConfig | dict, prefix: str = "") -> dict:
    """Dotted keys of a nested config: {'lora.rank': 16, ...}; lists become JSON strings."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat = {}
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, list):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def _create_default_store() -> None:
    """Create the SQLite file once, with every artifact root inside mlruns/.

    Left to MLflow, the first client to open a new database roots the Default experiment's
    artifacts at ./mlruns of whatever directory it was started from.
    """
    db = default_store() / "mlflow.db"
    if db.exists():
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(tracking_uri(None), artifact_location())
    store.engine.dispose()


def ensure_experiment(uri: str | None, name: str) -> str:
    """Create (once) the experiment, with artifacts beside the SQLite file when local."""
    import mlflow

    if uri is None:
        _create_default_store()
    mlflow.set_tracking_uri(tracking_uri(uri))
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(
                f"MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore) or set tracking.experiment_name"
            )
        return experiment.experiment_id
    location = artifact_location() if uri is None else None
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:  # noqa: BLE001 - another process created it first
        return mlflow.get_experiment_by_name(name).experiment_id


class Tracker:
    """Logs one training run. Every method is a no-op when tracking is off.

    Calls go to `outbox` when there is one (a remote server: sent in the background), else
    straight to the store.
    """

    def __init__(self, run=None, outbox: "_Outbox | None" = None):
        self.run = run
        self.outbox = outbox

    @property
    def enabled(self) -> bool:
        return self.run is not None or self.outbox is not None

    @property
    def offline(self) -> bool:
        """tracking.offline: no MLflow run yet; `push` creates it from the outbox."""
        return self.run is None and self.outbox is not None

    @property
    def run_id(self) -> str | None:
        return self.run.info.run_id if self.run else None

    def _send(self, op: str, **args) -> None:
        if self.outbox is not None:
            self.outbox.put(op, **args)
        else:
            import mlflow

            _deliver(client(mlflow.get_tracking_uri()), self.run_id, op, args)

    def log_params(self, params: dict) -> None:
        if self.enabled:
            # MLflow caps a param value at 6000 characters.
            self._send("params", params={k: str(v)[:6000] for k, v in params.items()})

    def log_metrics(self, step: int, metrics: dict) -> None:
        if self.enabled:
            values = {k: float(v) for k, v in metrics.items() if v is not None}
            self._send("metrics", step=step, timestamp=int(time.time() * 1000), metrics=values)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if not self.enabled or not Path(path).exists():
            return
        if Path(path).is_dir():
            artifact_path = artifact_path or Path(path).name
        self._send("artifact", path=str(Path(path).resolve()), artifact_path=artifact_path)

    def log_table(self, rows: list[dict], name: str) -> None:
        if self.enabled and rows:
            self._send("table", data=_columns(rows), artifact_file=name)

    def log_dataset(self, rows: list[dict], source: str, digest: str, name: str) -> None:
        if self.enabled:
            self._send("dataset", rows=rows, source=source, digest=digest, name=name)

    def set_tags(self, tags: dict) -> None:
        if self.enabled:
            self._send("tags", tags={k: str(v) for k, v in tags.items()})

    def log_model(self, run_dir: Path, model=None, tokenizer=None) -> None:
        """The run's adapter as an MLflow model (riscv_ft/mlflow_model.py); a failure is
        logged, not raised: the run itself is complete by then."""
        if not self.enabled:
            return
        if self.offline:  # logged by `push`, from the folder as it is then
            self._send("model", run_dir=str(Path(run_dir).resolve()))
            return
        from riscv_ft.mlflow_model import log_run_model

        try:
            # The model itself is logged straight to the server (MLflow's own API); its tag goes the usual way.
            self._send("tags", tags={MODEL_URI_TAG: log_run_model(run_dir, model, tokenizer)})
        except Exception as err:  # noqa: BLE001 - MLflow raises many kinds; the adapter is logged anyway
            log.warning("could not log the run's MLflow model: %s: %s", type(err).__name__, str(err).splitlines()[0][:300] if str(err) else "")

    def finish(self, status: str, reason: str | None = None, flush_timeout_s: float = 60.0) -> None:
        """End the run (status and failure reason sent like any other call), wait up to
        flush_timeout_s for the outbox, and leave MLflow's active-run stack empty."""
        if reason:
            self._send("tags", tags={FAILURE_TAG: reason[:5000]})
        self._send("end", status=status, end_time=int(time.time() * 1000))
        if self.outbox is not None:
            self.outbox.close(flush_timeout_s)
        if self.offline:
            return
        import mlflow

        try:  # pops the active run; its set_terminated repeats what was sent, or fails while the server is away
            mlflow.end_run(status)
        except Exception:  # noqa: BLE001 - the outbox has the end of the run
            pass


def _deliver(mlflow_client, run_id: str, op: str, args: dict) -> None:
    """Make one tracking call (as recorded in the outbox) with an MlflowClient."""
    from mlflow.entities import Metric, Param, RunTag

    if op == "metrics":
        mlflow_client.log_batch(run_id, metrics=[Metric(k, v, args["timestamp"], args["step"]) for k, v in args["metrics"].items()])
    elif op == "params":
        items = [Param(k, v) for k, v in args["params"].items()]
        for i in range(0, len(items), 90):  # the batch API takes at most 100 params
            mlflow_client.log_batch(run_id, params=items[i : i + 90])
    elif op == "tags":
        mlflow_client.log_batch(run_id, tags=[RunTag(k, v) for k, v in args["tags"].items()])
    elif op == "artifact":
        if Path(args["path"]).is_dir():
            mlflow_client.log_artifacts(run_id, args["path"], artifact_path=args["artifact_path"])
        elif Path(args["path"]).is_file():
            mlflow_client.log_artifact(run_id, args["path"], artifact_path=args["artifact_path"])
    elif op == "table":
        mlflow_client.log_table(run_id, args["data"], artifact_file=args["artifact_file"])
    elif op == "dataset":
        import mlflow
        import pandas as pd
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        with warnings.catch_warnings():  # MLflow registers its local source twice, then warns it cannot choose
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
            dataset = mlflow.data.from_pandas(pd.DataFrame(args["rows"]), source=_dataset_source(args["source"]),
                                              name=args["name"], digest=args["digest"])
        entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])
        try:
            mlflow_client.log_inputs(run_id, datasets=[entity])
        except Exception as err:  # noqa: BLE001
            # Two sweep workers logging the same dataset into one SQLite store race in MLflow's
            # check-then-insert (seen: UNIQUE constraint failed: datasets...); the loser's
            # second try finds the row the winner wrote and links it.
            if "UNIQUE constraint failed: datasets" not in str(err):
                raise
            mlflow_client.log_inputs(run_id, datasets=[entity])
    elif op == "model":
        import mlflow

        from riscv_ft.mlflow_model import log_run_model

        try:  # as in Tracker.log_model: a failure is said, the rest of the run is still sent
            mlflow.set_tracking_uri(mlflow_client.tracking_uri)
            with mlflow.start_run(run_id=run_id):
                uri = log_run_model(Path(args["run_dir"]))
            mlflow_client.set_tag(run_id, MODEL_URI_TAG, uri)
        except Exception as err:  # noqa: BLE001 - MLflow raises many kinds
            log.warning("could not log the run's MLflow model: %s", _first_line(err))
    elif op == "end":
        mlflow_client.set_terminated(run_id, args["status"], end_time=args.get("end_time"))
    else:
        raise ValueError(f"unknown tracking call {op!r}")


OUTBOX = "tracking_outbox.jsonl"  # every call of a run, in order; the first line names the server and run
OUTBOX_SENT = "tracking_outbox.sent"  # the number of the last call the server took


def _rejected(err: Exception) -> bool:
    """The server answered and refused the call (4xx): sending it again cannot help."""
    from mlflow.exceptions import RestException

    status = err.get_http_status_code() if isinstance(err, RestException) else 500
    return 400 <= status < 500


def _write_header(path: Path, header: dict, calls: str = "") -> None:
    """The outbox's first line (which server and run its calls are for), then `calls`."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"seq": 0, "op": "run", "args": header}) + "\n" + calls)
    os.replace(tmp, path)


def _read_outbox(run_dir: Path) -> tuple[dict | None, list[dict]]:
    """(first line: uri and run id, or None) and the calls not yet sent, oldest first."""
    path = Path(run_dir) / OUTBOX
    if not path.is_file():
        return None, []
    sent_file = Path(run_dir) / OUTBOX_SENT
    sent = int(sent_file.read_text() or 0) if sent_file.is_file() else 0
    header, pending = None, []
    for line in path.read_text().splitlines():
        try:
            call = json.loads(line)
        except json.JSONDecodeError:  # the last line of a process killed mid-write
            continue
        if call["op"] == "run":
            header = call["args"]
        elif call["seq"] > sent:
            pending.append(call)
    return header, pending


class _Outbox:
    """A run's tracking calls, journaled to RUN/tracking_outbox.jsonl and sent in order by a
    background thread, so the training loop never waits on the server.

    While the server is away the thread retries (pauses of 1 s growing to 10 s); the log says
    so once when it goes and once when it is back. `close` waits a bounded time for the rest.
    """

    def __init__(self, run_dir: Path, uri: str | None, run_id: str | None, offline_run: dict | None = None):
        """offline_run: {experiment, run_name, tags} of a run that `push` creates later; then
        nothing is sent and MLflow is not imported."""
        self.run_dir, self.uri, self.run_id = Path(run_dir), uri, run_id
        self.path, self.sent_path = self.run_dir / OUTBOX, self.run_dir / OUTBOX_SENT
        self.offline = offline_run is not None
        header, pending = _read_outbox(self.run_dir)
        if self.offline:  # a resumed offline run appends to its outbox
            fresh = header is None or not header.get("offline")
            header = {"uri": uri, "run_id": None, "offline": True, "run_dir": str(self.run_dir.resolve()),
                      "start_time": int(time.time() * 1000), **offline_run}
        else:
            fresh = header is None or header.get("run_id") != run_id
            header = {"uri": uri, "run_id": run_id}
        if fresh:
            _write_header(self.path, header)
            self.sent_path.write_text("0")
            pending = []
        self.seq = max([int(self.sent_path.read_text() or 0)] + [c["seq"] for c in pending])
        # Calls a previous process of this run (stopped, now resumed) did not send; not its end.
        self.queue: deque = deque(c for c in pending if c["op"] != "end")
        self.lock = threading.Condition()
        self.closing = threading.Event()
        self.deadline = float("inf")
        self.away_since: float | None = None
        if self.offline:
            return
        self.client = client(uri)
        self.thread = threading.Thread(target=self._send_all, name="mlflow-outbox", daemon=True)
        self.thread.start()

    def put(self, op: str, **args) -> None:
        with self.lock:
            self.seq += 1
            call = {"seq": self.seq, "op": op, "args": args}
            with open(self.path, "a") as f:
                f.write(json.dumps(call) + "\n")
            if self.offline:
                return
            self.queue.append(call)
            self.lock.notify()

    def _send_all(self) -> None:
        pause = 1.0
        while True:
            with self.lock:
                while not self.queue and not self.closing.is_set():
                    self.lock.wait()
                if not self.queue or time.monotonic() > self.deadline:
                    return
                call = self.queue[0]
            try:
                _deliver(self.client, self.run_id, call["op"], call["args"])
            except Exception as err:  # noqa: BLE001 - MLflow and requests raise many kinds
                if not _rejected(err):
                    if self.away_since is None:
                        self.away_since = time.monotonic()
                        log.warning("MLflow at %s is unreachable (%s); training goes on, and every tracking call is kept "
                                    "in %s and sent when the server is back", self.uri, _first_line(err), self.path)
                    self.closing.wait(pause)  # wakes early when the run ends
                    pause = min(pause * 2, 10.0)
                    continue
                log.warning("MLflow refused a tracking call (%s: %s); it stays in %s", call["op"], _first_line(err), self.path)
            if self.away_since is not None:
                log.info("MLflow at %s is reachable again after %.0f s; sending the calls kept meanwhile",
                         self.uri, time.monotonic() - self.away_since)
                self.away_since = None
            pause = 1.0
            with self.lock:
                self.queue.popleft()
                tmp = self.sent_path.with_suffix(".tmp")
                tmp.write_text(str(call["seq"]))
                os.replace(tmp, self.sent_path)

    def close(self, timeout_s: float) -> int:
        """Wait up to timeout_s for every call to be sent; returns how many were not."""
        if self.offline:
            log.info("tracking.offline: this run's MLflow calls are kept in %s; send them with: "
                     "python -m riscv_ft.track push %s", self.path, self.run_dir)
            return self.seq - int(self.sent_path.read_text() or 0)
        with self.lock:
            self.deadline = time.monotonic() + timeout_s
            self.closing.set()
            self.lock.notify_all()
        self.thread.join(timeout_s + 5)
        with self.lock:
            left = len(self.queue)
        if left:
            log.warning("%d tracking calls could not be sent to MLflow at %s; they are kept in %s. "
                        "Send them later with: python -m riscv_ft.track push %s", left, self.uri, self.path, self.run_dir)
        return left


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


def _create_offline_run(run_dir: Path, header: dict) -> str:
    """The MLflow run of a tracking.offline run, created once: its id goes into the outbox's
    first line, so a second push continues it."""
    experiment_id = ensure_experiment(header["uri"], header["experiment"])
    run = client(header["uri"]).create_run(experiment_id, start_time=header["start_time"], tags=header.get("tags") or {},
                                           run_name=header["run_name"])
    path = Path(run_dir) / OUTBOX
    _write_header(path, {**header, "run_id": run.info.run_id}, "".join(path.read_text().splitlines(keepends=True)[1:]))
    return run.info.run_id


def _moved(args: dict, old_dir: str, new_dir: Path) -> dict:
    """A recorded call's paths, read from where an offline run's folder is now."""
    moved = dict(args)
    for key in ("path", "run_dir"):
        if key in moved and (moved[key] == old_dir or moved[key].startswith(old_dir + os.sep)):
            moved[key] = str(new_dir.resolve()) + moved[key][len(old_dir):]
            if not Path(moved[key]).exists():
                log.warning("%s: %s is not there any more; not sent", new_dir, moved[key])
    return moved


def push(run_dir: Path) -> int:
    """Send the calls a run could not send (its server was away, or it ran with
    tracking.offline); returns how many were sent."""
    header, pending = _read_outbox(run_dir)
    if header is None:
        raise TrackingError(f"{run_dir}: no {OUTBOX} (the run tracked to a local store, or not at all)")
    run_id = header["run_id"]
    if header.get("offline"):
        # A resumed offline run journals the end of each of its processes: only the last one counts.
        ends = [i for i, call in enumerate(pending) if call["op"] == "end"]
        pending = [call for i, call in enumerate(pending) if call["op"] != "end" or i == ends[-1]]
        pending = [{**call, "args": _moved(call["args"], header["run_dir"], Path(run_dir))} for call in pending]
    where = tracking_uri(header["uri"])
    if run_id is None and pending:
        try:
            run_id = _create_offline_run(run_dir, header)
        except TrackingError:
            raise
        except Exception as err:  # noqa: BLE001 - MLflow and requests raise many kinds
            raise TrackingError(f"cannot create the run in MLflow at {where} ({_first_line(err)}); "
                                f"all {len(pending)} calls are still kept in {Path(run_dir) / OUTBOX}") from err
    mlflow_client = client(header["uri"])
    for call in pending:
        try:
            _deliver(mlflow_client, run_id, call["op"], call["args"])
        except Exception as err:  # noqa: BLE001
            if not _rejected(err):
                raise TrackingError(f"cannot reach MLflow at {where} ({_first_line(err)}); "
                                    f"{len(pending) - pending.index(call)} calls are still kept in {Path(run_dir) / OUTBOX}") from err
            log.warning("MLflow refused a tracking call (%s: %s)", call["op"], _first_line(err))
        (Path(run_dir) / OUTBOX_SENT).write_text(str(call["seq"]))
    return len(pending)


def _dataset_source(source: str):
    """MLflow's source for DataReport.source: 'hf://repo[split]', a file path, or a
    description of generated data (MLflow rejects hf:// given as a bare string)."""
    if not source.startswith("hf://"):
        return source
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

    repo, _, split = source[len("hf://") :].partition("[")
    return HuggingFaceDatasetSource(path=repo, split=split.rstrip("]") or None)


def _columns(rows: list[dict]) -> dict[str, list[str]]:
    """Rows as the column dict that log_table takes; every key of any row becomes a column."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: ["" if r.get(k) is None else str(r.get(k)) for r in rows] for k in keys}


def git_commit() -> str:
    if not (PROJECT_ROOT / ".git").exists():  # installed from a wheel: site-packages may sit inside another repo
        return "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return commit or "unknown"


def environment_tags(run_dir: Path) -> dict:
    import mlx.core as mx
    import mlx_lm

    return {
        "git_commit": git_commit(),
        "mlx_version": mx.__version__,
        "mlx_lm_version": mlx_lm.__version__,
        "device": str(mx.default_device()),
        "platform": platform.platform(),
        "run_dir": str(run_dir.resolve()),
    }


def sweep_tags_from_env() -> dict:
    """The tags that tie a job's run to its sweep, from what the sweep callback set."""
    tags = {}
    for env, tag in ((PARENT_ENV, PARENT_TAG), (JOB_ENV, JOB_TAG), (OVERRIDES_ENV, OVERRIDES_TAG)):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


# What interrupted a tracked run in this process (Ctrl-C, SIGTERM), if anything: the sweep's
# exit handler reads it to end its parent KILLED rather than FAILED.
interrupted_by: str | None = None


def end_active_run(status: str = "KILLED") -> None:
    """End any run left active in this process (by an earlier job of a sweep)."""
    import mlflow

    while mlflow.active_run():
        mlflow.end_run(status)


def _is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri


@contextmanager
def tracked_run(cfg: DictConfig, run_dir: Path, run_name: str, run_id: str | None = None, enabled: bool = True) -> Iterator[Tracker]:
    """An MLflow run around a training run: FINISHED, FAILED (reason tag) or KILLED.

    With `run_id`, the existing run is continued (resume). The run is created while the
    server answers; after that, a remote server's calls go through an outbox (see above).
    """
    if not (cfg.tracking.enabled and enabled):  # enabled=False: a data-parallel rank other than 0
        yield Tracker(None)
        return
    flush = float(cfg.tracking.get("flush_timeout_s", 60.0))
    if cfg.tracking.get("offline", False):
        offline_run = {"experiment": cfg.tracking.experiment_name, "run_name": run_name, "tags": sweep_tags_from_env()}
        tracker = Tracker(None, _Outbox(run_dir, cfg.tracking.uri, None, offline_run))
        log.info("tracking.offline: MLflow calls go to %s, for `python -m riscv_ft.track push` later", tracker.outbox.path)
        with _finished(tracker, flush):
            yield tracker
        return
    import mlflow

    experiment_id = ensure_experiment(cfg.tracking.uri, cfg.tracking.experiment_name)
    # A run id left in the environment would silently become this run's parent.
    os.environ.pop("MLFLOW_RUN_ID", None)
    end_active_run("KILLED")
    tags = None if run_id else (sweep_tags_from_env() or None)
    run = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id, run_name=None if run_id else run_name, tags=tags)
    uri = tracking_uri(cfg.tracking.uri)
    outbox = None if _is_local(uri) else _Outbox(run_dir, uri, run.info.run_id)
    tracker = Tracker(run, outbox)
    with _finished(tracker, flush):
        yield tracker


@contextmanager
def _finished(tracker: Tracker, flush: float) -> Iterator[None]:
    """End the tracker's run FINISHED, FAILED (with the reason) or KILLED, as the body ends."""
    try:
        yield
    except KeyboardInterrupt as err:
        global interrupted_by
        interrupted_by = str(err) or "Ctrl-C"
        tracker.finish("KILLED", "interrupted (Ctrl-C or SIGTERM)", flush)
        raise
    except BaseException as err:
        tracker.finish("FAILED", f"{type(err).__name__}: {err}", flush)
        raise
    else:
        tracker.finish("FINISHED", None, flush)


# ---------------------------------------------------------------- sweeps and reading runs back


@dataclass
class RunRecord:
    """One MLflow run as the sweep summary and the comparison table read it."""

    run_id: str
    name: str
    status: str
    start_time: int
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # latest value of each metric
    tags: dict = field(default_factory=dict)

    @property
    def job(self) -> int | None:
        value = self.tags.get(JOB_TAG)
        return int(value) if value and value.isdigit() else None

    @property
    def overrides(self) -> dict | None:
        """{key: value} of the job's Hydra overrides, or None for a run outside a sweep."""
        raw = self.tags.get(OVERRIDES_TAG)
        if raw is None:
            return None
        pairs = (item.split("=", 1) for item in json.loads(raw) if "=" in item)
        return {key.lstrip("+~"): value for key, value in pairs}


def _record(run) -> RunRecord:
    return RunRecord(
        run_id=run.info.run_id, name=run.info.run_name or "", status=run.info.status, start_time=run.info.start_time or 0,
        params=dict(run.data.params), metrics=dict(run.data.metrics), tags=dict(run.data.tags),
    )


def client(uri: str | None, must_exist: bool = False):
    """An MlflowClient for `uri` (None: the project's store). With must_exist, a missing local
    store is a TrackingError instead of a new empty database."""
    from mlflow import MlflowClient

    resolved = tracking_uri(uri)
    if must_exist and resolved.startswith("sqlite:///") and not Path(resolved[len("sqlite:///") :]).exists():
        raise TrackingError(f"no MLflow store at {resolved[len('sqlite:///'):]} (set RISCV_FT_MLRUNS or pass a tracking URI)")
    return MlflowClient(tracking_uri=resolved)


def _search(mlflow_client, experiment_ids: list[str], filter_string: str = "") -> list[RunRecord]:
    records, token = [], None
    while True:
        page = mlflow_client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token, order_by=["attributes.start_time ASC"])
        records += [_record(r) for r in page]
        token = page.token
        if not token:
            return records


def get_run(uri: str | None, run_id: str) -> RunRecord:
    from mlflow.exceptions import MlflowException

    try:
        return _record(client(uri, must_exist=True).get_run(run_id))
    except MlflowException as err:
        raise TrackingError(f"no MLflow run {run_id!r} in {tracking_uri(uri)}") from err


def child_runs(uri: str | None, parent_id: str) -> list[RunRecord]:
    """The runs of a sweep's jobs, oldest first."""
    mlflow_client = client(uri, must_exist=True)
    experiment_id = mlflow_client.get_run(parent_id).info.experiment_id
    return _search(mlflow_client, [experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}'")


def experiment_runs(uri: str | None, name: str) -> list[RunRecord]:
    """Every training run of an experiment (sweep parents left out), oldest first."""
    mlflow_client = client(uri, must_exist=True)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        raise TrackingError(f"no MLflow experiment {name!r} in {tracking_uri(uri)}")
    return [r for r in _search(mlflow_client, [experiment.experiment_id]) if r.tags.get(ROLE_TAG) != "sweep"]


def latest_sweep(uri: str | None, experiment_name: str) -> RunRecord | None:
    mlflow_client = client(uri, must_exist=True)
    experiment = mlflow_client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise TrackingError(f"no MLflow experiment {experiment_name!r} in {tracking_uri(uri)}")
    runs = mlflow_client.search_runs([experiment.experiment_id], f"tags.`{ROLE_TAG}` = 'sweep'", max_results=1, order_by=["attributes.start_time DESC"])
    return _record(runs[0]) if runs else None


def job_run(uri: str | None, parent_id: str, job: int) -> RunRecord | None:
    """The run that a sweep's job number `job` created, if it got that far."""
    mlflow_client = client(uri)
    experiment_id = mlflow_client.get_run(parent_id).info.experiment_id
    found = _search(mlflow_client, [experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`{JOB_TAG}` = '{job}'")
    return found[-1] if found else None


def _log_params(mlflow_client, run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 90):
        mlflow_client.log_batch(run_id, params=items[i : i + 90])


def start_sweep_run(uri: str | None, experiment_name: str, run_name: str, params: dict, tags: dict) -> str:
    """Create a sweep's parent run (and the store and experiment, once, before any job starts).

    The parent is never the active run of this process, so a job run in the same process
    cannot end it or nest under it by accident.
    """
    experiment_id = ensure_experiment(uri, experiment_name)
    mlflow_client = client(uri)
    run = mlflow_client.create_run(experiment_id, run_name=run_name, tags={ROLE_TAG: "sweep", **{k: str(v) for k, v in tags.items()}})
    _log_params(mlflow_client, run.info.run_id, params)
    return run.info.run_id


def record_failed_job(uri: str | None, experiment_name: str, run_name: str, params: dict, tags: dict, reason: str) -> str:
    """A FAILED run for a sweep job that failed before its own run started (bad data, a
    model that would not load), so the sweep shows every job."""
    experiment_id = ensure_experiment(uri, experiment_name)
    mlflow_client = client(uri)
    run = mlflow_client.create_run(experiment_id, run_name=run_name, tags={**{k: str(v) for k, v in tags.items()}, FAILURE_TAG: reason[:5000]})
    _log_params(mlflow_client, run.info.run_id, params)
    mlflow_client.set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


def finish_sweep_run(
    uri: str | None, run_id: str, status: str, *, metrics: dict, tags: dict, table: list[dict], table_name: str, files: list[Path]
) -> None:
    """Log a sweep's summary (metrics, tags, a table and files) on its parent run and end it."""
    import time

    from mlflow.entities import Metric

    mlflow_client = client(uri)
    now = int(time.time() * 1000)
    values = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None]
    mlflow_client.log_batch(run_id, metrics=values, tags=[])
    for key, value in tags.items():
        mlflow_client.set_tag(run_id, key, str(value)[:5000])
    if table:
        mlflow_client.log_table(run_id, _columns(table), artifact_file=table_name)
    for path in files:
        if Path(path).is_file():
            mlflow_client.log_artifact(run_id, str(path))
    mlflow_client.set_terminated(run_id, status)


def register_best_model(uri: str | None, run_id: str, name: str = REGISTERED_MODEL, alias: str = BEST_ALIAS) -> str | None:
    """Register run `run_id`'s MLflow model as a new version of `name` and point `alias` at
    it (so `models:/riscv-asm@best` is the best run of the latest sweep). Returns the
    version, or None when the run logged no model."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    model_uri = client(uri).get_run(run_id).data.tags.get(MODEL_URI_TAG)
    if not model_uri:
        return None
    # The registry lives in the same store; named here rather than set process-wide.
    registry = MlflowClient(tracking_uri=tracking_uri(uri), registry_uri=tracking_uri(uri))
    try:
        registry.create_registered_model(name, description="RISC-V assembly from descriptions: riscv_ft runs (mlflow_model.py)")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    model_id = model_uri.removeprefix("models:/")
    source = registry.get_logged_model(model_id).artifact_location  # a models:/ source would be looked up in the default store
    version = registry.create_model_version(name, source=source, run_id=run_id, model_id=model_id).version
    registry.set_registered_model_alias(name, alias, version)
    return str(version)


def main(argv: list[str]) -> None:
    """`python -m riscv_ft.track push RUN_DIR...`: send what runs kept while their server was
    away, or while they ran with tracking.offline."""
    if len(argv) < 2 or argv[0] != "push":
        print("usage: python -m riscv_ft.track push RUN_DIR...", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for run_dir in argv[1:]:
        try:
            sent = push(Path(run_dir))
        except TrackingError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        print(f"{run_dir}: sent {sent} tracking calls" if len(argv) > 2 else f"sent {sent} tracking calls")


if __name__ == "__main__":
    main(sys.argv[1:])

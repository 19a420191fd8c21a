"""Where runs are kept: the store's path and URI, its creation, experiments, a client, and
reading runs back (RunRecord) for the sweep summary and `python -m riscv_ft.compare`.

By default runs go to `mlruns/` under the working directory, beside `experiments/` (one
rule for a run's records; RISCV_FT_MLRUNS=DIR moves the store): metadata in
`mlruns/mlflow.db` (SQLite; recent MLflow refuses a plain file store) and artifacts in
`mlruns/artifacts/`, both recorded as absolute paths. `tracking.uri` points at any other server.

To browse the store, from the folder the runs were started in:
    mlflow ui --backend-store-uri sqlite:///$PWD/mlruns/mlflow.db
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
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
PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


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


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextmanager
def store_lock(uri: str | None) -> Iterator[None]:
    """One process at a time creates, migrates or adds experiments to a local SQLite store.

    Without it, processes started together (sweep workers, runs launched at once) raced in
    MLflow's check-then-create: `table experiments already exists`, `Online migration expected
    to match one row`, once a store left half-migrated. The lock is an flock on a file beside
    the database, so it is released by the kernel if its holder dies. A remote server
    serialises on its own: no lock.
    """
    db = sqlite_path(tracking_uri(uri))
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _create_store(uri: str | None) -> None:
    """Create a local SQLite store once, whole: built under a temporary name and renamed into
    place, so no process ever opens a database that is still being migrated. (Call it under
    store_lock.) The project's own store gets every artifact root inside mlruns/: left to
    MLflow, the Default experiment's artifacts would go to ./mlruns of the current folder.
    """
    db = sqlite_path(tracking_uri(uri))
    if db is None or db.exists():
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        artifacts = artifact_location() if uri is None else (db.parent / "artifacts").as_uri()
        store = SqlAlchemyStore(f"sqlite:///{tmp}", artifacts)
        store.engine.dispose()
        os.replace(tmp, db)
    finally:
        tmp.unlink(missing_ok=True)


def unreachable(uri: str | None, err: Exception | str) -> str:
    """The one line said when the tracking server cannot be used at a run's start."""
    why = err if isinstance(err, str) else _first_line(err)
    return (f"cannot reach the MLflow tracking server at {tracking_uri(uri)} ({why}); start it, or train without it: "
            "tracking.offline=true keeps every call in the run folder for `python -m riscv_ft.tracking push RUN --uri URI` "
            "later (or tracking.enabled=false)")


def check_reachable(uri: str | None, timeout_s: float = 10.0, wait_s: float = 0.0) -> None:
    """Raise TrackingError (one line) when a remote tracking server does not answer: called
    before the model loads, so a run does not spend minutes loading and then fail. wait_s:
    how long to keep asking first (a sweep job: its server answered when the sweep started,
    so silence now is most likely a restart)."""
    resolved = tracking_uri(uri)
    if not resolved.startswith(("http://", "https://")):
        return
    import time
    import urllib.error
    import urllib.request

    deadline, pause = time.monotonic() + wait_s, 1.0
    while True:
        try:  # any HTTP answer (even 401/404) means a server is there; the run's own calls say more
            urllib.request.urlopen(resolved.rstrip("/") + "/health", timeout=timeout_s).close()
            return
        except urllib.error.HTTPError:
            return
        except (OSError, ValueError) as err:
            if time.monotonic() + pause > deadline:
                raise TrackingError(unreachable(uri, getattr(err, "reason", None) and str(err.reason) or _first_line(err))) from err
            time.sleep(pause)
            pause = min(pause * 2, 10.0)


def ensure_experiment(uri: str | None, name: str) -> str:
    """Create (once) the store and the experiment, with artifacts beside the SQLite file when local."""
    import mlflow

    with store_lock(uri):
        _create_store(uri)
        mlflow.set_tracking_uri(tracking_uri(uri))
        try:
            experiment = mlflow.get_experiment_by_name(name)
        except Exception as err:  # noqa: BLE001 - MLflow and requests raise many kinds
            raise TrackingError(unreachable(uri, err)) from err
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                raise TrackingError(
                    f"MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore) or set tracking.experiment_name"
                )
            return experiment.experiment_id
        location = artifact_location() if uri is None else None
        try:
            return mlflow.create_experiment(name, artifact_location=location)
        except Exception:  # noqa: BLE001 - another client of a remote server created it first
            return mlflow.get_experiment_by_name(name).experiment_id


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


def _is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri


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
    db = sqlite_path(resolved)
    if db is not None and not db.exists():  # MLflow would create and migrate it unlocked
        with store_lock(uri):
            _create_store(uri)
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



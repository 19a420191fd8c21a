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
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig, OmegaConf

from riscv_ft.config import ConfigError

# MLflow's client and server report usage to an outside host by default; a training tool that
# runs offline should not try. Set MLFLOW_DISABLE_TELEMETRY=false to allow it.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

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
    """Logs one training run. Every method is a no-op when tracking is off."""

    def __init__(self, run=None):
        self.run = run

    @property
    def enabled(self) -> bool:
        return self.run is not None

    @property
    def run_id(self) -> str | None:
        return self.run.info.run_id if self.run else None

    def log_params(self, params: dict) -> None:
        if not self.enabled:
            return
        import mlflow

        # MLflow caps a param value at 6000 characters.
        items = {k: str(v)[:6000] for k, v in params.items()}
        keys = list(items)
        for i in range(0, len(keys), 90):  # the batch API takes at most 100 params
            mlflow.log_params({k: items[k] for k in keys[i : i + 90]})

    def log_metrics(self, step: int, metrics: dict) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None}, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if not self.enabled or not Path(path).exists():
            return
        import mlflow

        if Path(path).is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path or Path(path).name)
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_table(self, rows: list[dict], name: str) -> None:
        if self.enabled and rows:
            import mlflow

            mlflow.log_table(_columns(rows), artifact_file=name)

    def log_dataset(self, rows: list[dict], source: str, digest: str, name: str) -> None:
        if not self.enabled:
            return
        import mlflow
        import pandas as pd

        with warnings.catch_warnings():  # MLflow registers its local source twice, then warns it cannot choose
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
            dataset = mlflow.data.from_pandas(pd.DataFrame(rows), source=_dataset_source(source), name=name, digest=digest)
        mlflow.log_input(dataset, context="training")

    def set_tags(self, tags: dict) -> None:
        if self.enabled:
            import mlflow

            mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_model(self, run_dir: Path, model=None, tokenizer=None) -> None:
        """The run's adapter as an MLflow model (riscv_ft/mlflow_model.py); a failure is
        logged, not raised: the run itself is complete by then."""
        if not self.enabled:
            return
        import mlflow

        from riscv_ft.mlflow_model import log_run_model

        try:
            mlflow.set_tag(MODEL_URI_TAG, log_run_model(run_dir, model, tokenizer))
        except Exception as err:  # noqa: BLE001 - MLflow raises many kinds; the adapter is logged anyway
            log.warning("could not log the run's MLflow model: %s: %s", type(err).__name__, str(err).splitlines()[0][:300] if str(err) else "")


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


def end_active_run(status: str = "KILLED") -> None:
    """End any run left active in this process (by an earlier job of a sweep)."""
    import mlflow

    while mlflow.active_run():
        mlflow.end_run(status)


@contextmanager
def tracked_run(cfg: DictConfig, run_dir: Path, run_name: str, run_id: str | None = None, enabled: bool = True) -> Iterator[Tracker]:
    """An MLflow run around a training run: FINISHED, FAILED (reason tag) or KILLED.

    With `run_id`, the existing run is continued (resume).
    """
    if not (cfg.tracking.enabled and enabled):  # enabled=False: a data-parallel rank other than 0
        yield Tracker(None)
        return
    import mlflow

    experiment_id = ensure_experiment(cfg.tracking.uri, cfg.tracking.experiment_name)
    # A run id left in the environment would silently become this run's parent.
    os.environ.pop("MLFLOW_RUN_ID", None)
    end_active_run("KILLED")
    tags = None if run_id else (sweep_tags_from_env() or None)
    run = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id, run_name=None if run_id else run_name, tags=tags)
    tracker = Tracker(run)
    try:
        yield tracker
    except KeyboardInterrupt:
        mlflow.set_tag(FAILURE_TAG, "interrupted (Ctrl-C or SIGTERM)")
        mlflow.end_run("KILLED")
        raise
    except BaseException as err:
        mlflow.set_tag(FAILURE_TAG, f"{type(err).__name__}: {err}"[:5000])
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


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

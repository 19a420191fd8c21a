"""A Hydra sweep's parent run (driven by riscv_ft.sweep) and the registry.

Each job's run finds its parent and its place in the sweep through environment variables
(riscv_ft/tracking/run.py), so the link holds whichever launcher runs the jobs. A sweep
registers its best run's model as `riscv-asm` with the alias `best`.
"""

from __future__ import annotations

from pathlib import Path

from riscv_ft.tracking.calls import _columns
from riscv_ft.tracking.store import (BEST_ALIAS, FAILURE_TAG, MODEL_URI_TAG, REGISTERED_MODEL, ROLE_TAG, client,
                                     ensure_experiment, tracking_uri)


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



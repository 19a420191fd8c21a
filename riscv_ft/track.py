"""The one place that talks to MLflow.

By default runs go to `<project>/mlruns/`: metadata in `mlruns/mlflow.db` (SQLite; recent
MLflow refuses a plain file store) and artifacts in `mlruns/artifacts/`, both absolute, so
runs started from any directory land together. `tracking.enabled=false` gives a Tracker
that does nothing; `tracking.uri` points at any other server.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_store() -> Path:
    return Path(os.environ.get("RISCV_FT_MLRUNS", PROJECT_ROOT / "mlruns")).resolve()


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


def ensure_experiment(uri: str | None, name: str) -> str:
    """Create (once) the experiment, with artifacts beside the SQLite file when local."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(uri))
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
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

            columns = {k: [str(r.get(k, "")) for r in rows] for k in rows[0]}
            mlflow.log_table(columns, artifact_file=name)

    def log_dataset(self, rows: list[dict], source: str, digest: str, name: str) -> None:
        if not self.enabled:
            return
        import mlflow
        import pandas as pd

        dataset = mlflow.data.from_pandas(pd.DataFrame(rows), source=source, name=name, digest=digest)
        mlflow.log_input(dataset, context="training")

    def set_tags(self, tags: dict) -> None:
        if self.enabled:
            import mlflow

            mlflow.set_tags({k: str(v) for k, v in tags.items()})


def environment_tags(run_dir: Path) -> dict:
    import mlx.core as mx
    import mlx_lm

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "git_commit": commit or "unknown",
        "mlx_version": mx.__version__,
        "mlx_lm_version": mlx_lm.__version__,
        "device": str(mx.default_device()),
        "platform": platform.platform(),
        "run_dir": str(run_dir.resolve()),
    }


@contextmanager
def tracked_run(cfg: DictConfig, run_dir: Path, run_name: str, run_id: str | None = None) -> Iterator[Tracker]:
    """An MLflow run around a training run: FINISHED, FAILED (reason tag) or KILLED.

    With `run_id`, the existing run is continued (resume).
    """
    if not cfg.tracking.enabled:
        yield Tracker(None)
        return
    import mlflow

    experiment_id = ensure_experiment(cfg.tracking.uri, cfg.tracking.experiment_name)
    parent = os.environ.get("RISCV_FT_PARENT_RUN_ID")
    # A run id left in the environment would silently become this run's parent.
    os.environ.pop("MLFLOW_RUN_ID", None)
    while mlflow.active_run():  # a run leaked by an earlier job in this process
        mlflow.end_run("KILLED")
    tags = {"mlflow.parentRunId": parent} if parent and not run_id else None
    run = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id, run_name=None if run_id else run_name, tags=tags)
    tracker = Tracker(run)
    try:
        yield tracker
    except KeyboardInterrupt:
        mlflow.set_tag("failure_reason", "interrupted (Ctrl-C or SIGTERM)")
        mlflow.end_run("KILLED")
        raise
    except BaseException as err:
        mlflow.set_tag("failure_reason", f"{type(err).__name__}: {err}"[:5000])
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")

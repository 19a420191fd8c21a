"""A training run as one MLflow run: Tracker (the calls a run makes), tracked_run (its
lifecycle: FINISHED, FAILED with a reason, or KILLED) and the tags that describe it.

A local SQLite store is written directly; a remote server's calls go through the outbox
(riscv_ft/tracking/outbox.py); `tracking.offline=true` journals them for `push`.
`tracking.enabled=false` gives a Tracker that does nothing.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig

from riscv_ft.tracking.calls import _columns, _deliver, dataset_summary, retrying
from riscv_ft.tracking.outbox import Outbox
from riscv_ft.tracking.store import (FAILURE_TAG, JOB_ENV, JOB_TAG, OVERRIDES_ENV, OVERRIDES_TAG, PARENT_ENV,
                                     PARENT_TAG, PROJECT_ROOT, _is_local, client, ensure_experiment, tracking_uri)

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"  # RUN/mlflow_run_id: the MLflow run this folder belongs to


class Tracker:
    """Logs one training run. Every method is a no-op when tracking is off.

    Calls go to `outbox` when there is one (a remote server: sent in the background), else
    straight to the store.
    """

    def __init__(self, run=None, outbox: "Outbox | None" = None, run_dir: Path | None = None):
        self.run = run
        self.outbox = outbox
        self.run_dir = Path(run_dir if run_dir is not None else outbox.run_dir if outbox is not None else ".")

    @property
    def key(self) -> str | None:
        """What names this run in its outbox: the MLflow run id, or an offline run's key."""
        return self.outbox.key if self.outbox is not None else self.run_id

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

            _deliver(client(mlflow.get_tracking_uri()), self.run_id, op, args, self.run_dir)

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
        resolved, root = Path(path).resolve(), self.run_dir.resolve()
        if not resolved.is_relative_to(root):  # calls name paths inside the run folder only (push checks it)
            log.warning("not logged: %s lies outside the run folder %s", path, root)
            return
        self._send("artifact", path=str(resolved.relative_to(root)), artifact_path=artifact_path)

    def log_table(self, rows: list[dict], name: str) -> None:
        if self.enabled and rows:
            self._send("table", data=_columns(rows), artifact_file=name)

    def log_dataset(self, rows: list[dict], source: str, digest: str, name: str) -> None:
        """The training split as a run input: digest, schema, profile and source, not its rows."""
        if self.enabled:
            schema, profile = dataset_summary(rows)
            self._send("dataset", source=source, digest=digest, name=name, schema=schema, profile=profile)

    def set_tags(self, tags: dict) -> None:
        if self.enabled:
            self._send("tags", tags={k: str(v) for k, v in tags.items()})

    def log_model(self, model_dir: Path) -> None:
        """A saved MLflow model in the run folder (riscv_ft/mlflow_model.py saves it) as the run's
        logged model, through the same queue as every call: a run whose server is away at the
        end gets it when `push` sends the rest."""
        if not self.enabled:
            return
        resolved, root = Path(model_dir).resolve(), self.run_dir.resolve()
        if not resolved.is_relative_to(root):
            log.warning("MLflow model not logged: %s lies outside the run folder %s", model_dir, root)
            return
        self._send("model", dir=str(resolved.relative_to(root)))

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


@contextmanager
def tracked_run(cfg: DictConfig, run_dir: Path, run_name: str, run_id: str | None = None, enabled: bool = True,
                key: str | None = None) -> Iterator[Tracker]:
    """An MLflow run around a training run: FINISHED, FAILED (reason tag) or KILLED.

    With `run_id` (or an offline run's outbox `key`), the existing run is continued (resume). The run is created while the
    server answers; after that, a remote server's calls go through an outbox (see above).
    """
    if not (cfg.tracking.enabled and enabled):  # enabled=False: a data-parallel rank other than 0
        yield Tracker(None)
        return
    flush = float(cfg.tracking.get("flush_timeout_s", 60.0))
    if cfg.tracking.get("offline", False):
        offline_run = {"experiment": cfg.tracking.experiment_name, "run_name": run_name, "tags": sweep_tags_from_env()}
        tracker = Tracker(None, Outbox(run_dir, cfg.tracking.uri, None, offline_run, key=key))
        log.info("tracking.offline: MLflow calls go to %s, for `python -m riscv_ft.tracking push` later", tracker.outbox.path)
        with _finished(tracker, flush):
            yield tracker
        return
    import mlflow

    # Checked before the model loaded (check_reachable); a restart since then is waited out.
    experiment_id = retrying(lambda: ensure_experiment(cfg.tracking.uri, cfg.tracking.experiment_name))
    # A run id left in the environment would silently become this run's parent.
    os.environ.pop("MLFLOW_RUN_ID", None)
    end_active_run("KILLED")
    tags = None if run_id else (sweep_tags_from_env() or None)
    run = retrying(lambda: mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id,
                                            run_name=None if run_id else run_name, tags=tags))
    uri = tracking_uri(cfg.tracking.uri)
    # Which MLflow run this folder holds: riscv-ft-generate run=<id> checks it before trusting
    # the run's run_dir tag (a folder can be reused by another run).
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / RUN_ID_FILE).write_text(run.info.run_id + "\n")
    outbox = None if _is_local(uri) else Outbox(run_dir, uri, run.info.run_id)
    tracker = Tracker(run, outbox, run_dir)
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



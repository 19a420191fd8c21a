"""A Hydra sweep as one MLflow parent run with one child run per job.

    python -m riscv_ft.train -m experiment=smoke lora.rank=4,8 trainer.batch_size=2,4
    python -m riscv_ft.train -m experiment=smoke sweep=rank_batch     # conf/sweep/*.yaml
    python -m riscv_ft.compare                                       # the table, best first

`MlflowSweepCallback` is registered under `hydra.callbacks` in conf/train.yaml:

- on_multirun_start, in the sweep's own process before any launcher starts: the store, the
  experiment and the parent run are created once, and the parent's id goes into
  RISCV_FT_PARENT_RUN_ID, which worker processes (joblib) inherit.
- on_job_start / on_job_end, wherever the job runs: the job's number and overrides go into
  the environment, where tracked_run picks them up as tags. Afterwards a job that failed
  before its run started (bad data, a model that would not load) gets a FAILED run, and
  what a job leaves behind in the process (an active MLflow run, MLX's buffer cache) is
  cleared before the next job.
- on_multirun_end: the parent gets the summary (log_table, CSV, markdown, the run's
  description), a plot of the metric against the swept values, and ends FINISHED. Hydra
  skips this hook when the sweeper raises (a job crashed, Ctrl-C); an exit handler then
  logs the same summary and ends the parent FAILED or KILLED.

SIGTERM or Ctrl-C stop a sweep whose jobs run in joblib's worker processes (sweep=parallel)
as they stop one run in one process: the sweep's process passes SIGTERM on to its workers
and waits; each running job saves a checkpoint, ends its run KILLED and returns, jobs not
yet started return at once, and the parent ends KILLED (exit 130). A worker's job must
return rather than raise: joblib answers a job's exception by killing every other worker
(SIGKILL), mid-save. A second signal stops the sweep at once.
"""

from __future__ import annotations

import atexit
import gc
import json
import logging
import os
import signal
import sys
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from riscv_ft.tracking import run as tracking_run
from riscv_ft.tracking import store, sweep_runs
from riscv_ft.tracking.calls import retrying
from riscv_ft.compare import comparison_table, format_markdown, format_text, varying_settings, write_csv

log = logging.getLogger(__name__)


class _LastError(logging.Handler):
    """Remembers the last ERROR logged during a job: why a job that returned None failed."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.message: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.message = record.getMessage()


class MlflowSweepCallback(Callback):
    def __init__(self, metric: str = "final_val_loss", maximize: bool = False):
        self.metric = metric
        self.maximize = maximize
        self.parent_run_id: str | None = None
        self.uri: str | None = None
        self.experiment_name = ""
        self.sweep_dir: Path | None = None
        self._errors: _LastError | None = None
        self._finished = False
        self._stopped_by: str | None = None  # the signal that stopped the sweep
        self._parallel = False  # jobs run in joblib's worker processes, not in the sweep's own
        self._sweep_pid = os.getpid()

    def __getstate__(self) -> dict:  # pickled into joblib's workers: no logging handler
        return {**self.__dict__, "_errors": None}

    # ---------------------------------------------------------------- the sweep's process

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.tracking.enabled or config.tracking.offline:  # offline: each job's run is pushed on its own
            return
        self.uri, self.experiment_name = config.tracking.uri, config.tracking.experiment_name
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        hydra_cfg = config.hydra
        self._parallel = "joblib" in str(hydra_cfg.launcher._target_)
        self._sweep_pid = os.getpid()
        params = {
            "sweep.sweeper": str(hydra_cfg.sweeper._target_).rsplit(".", 1)[-1],
            "sweep.launcher": str(hydra_cfg.launcher._target_).rsplit(".", 1)[-1],
            "sweep.overrides": " ".join(hydra_cfg.overrides.task),
            "sweep.metric": self.metric,
        }
        if OmegaConf.select(hydra_cfg, "sweeper.params"):
            params["sweep.params"] = json.dumps(OmegaConf.to_container(hydra_cfg.sweeper.params, resolve=True))
        name = f"sweep-{config.run_name or config.model.name}-{self.sweep_dir.name}"
        tags = {"sweep_dir": self.sweep_dir, "git_commit": tracking_run.git_commit()}
        self.parent_run_id = retrying(lambda: sweep_runs.start_sweep_run(self.uri, self.experiment_name, name, params, tags))
        os.environ[store.PARENT_ENV] = self.parent_run_id
        os.environ.pop("MLFLOW_RUN_ID", None)  # would override the parent of every job's run
        atexit.register(self._at_exit)
        self._stop_on_signals()
        log.info("MLflow sweep run %s (%s), experiment %s", name, self.parent_run_id, self.experiment_name)

    def _stop_on_signals(self) -> None:
        """SIGTERM (which by default ends the process without any cleanup) and Ctrl-C become a
        KeyboardInterrupt that is remembered: the running job's run ends KILLED (tracked_run),
        and the parent too (_at_exit). While a job trains, the trainer's own handler takes
        over (save, then stop); the interrupt it raises is remembered by tracking_run.tracked_run."""
        if threading.current_thread() is not threading.main_thread():
            return

        def stop(signum, frame):
            first = self._stopped_by is None
            self._stopped_by = signal.Signals(signum).name
            workers = _worker_processes() if first and self._parallel else []
            if not workers:
                raise KeyboardInterrupt(self._stopped_by)
            log.warning("%s received: stopping the sweep's %d worker processes after their jobs save a checkpoint "
                        "(Ctrl-C again to stop now)", self._stopped_by, len(workers))
            for pid in workers:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, stop)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._stopped_by is None:
            self._finish("FINISHED")
            return
        # Stopped while the jobs ran in workers: each job returned after saving; so does the sweep.
        self._finish("KILLED", f"the sweep stopped early: interrupted ({self._stopped_by})")
        raise KeyboardInterrupt(self._stopped_by)

    def _at_exit(self) -> None:
        stopped_by = getattr(sys, "last_value", None)
        interrupted = self._stopped_by or tracking_run.interrupted_by
        status = "KILLED" if interrupted or isinstance(stopped_by, KeyboardInterrupt) else "FAILED"
        if interrupted:
            reason = f"the sweep stopped early: interrupted ({interrupted})"
        elif stopped_by is not None:
            reason = f"the sweep stopped early: {type(stopped_by).__name__}: {stopped_by}"
        else:  # Hydra printed the error and exited
            reason = "the sweep stopped early: a job raised an exception (see its train.log) or the sweeper failed"
        self._finish(status, reason)

    def _finish(self, status: str, reason: str | None = None) -> None:
        if self.parent_run_id is None or self._finished:
            return
        self._finished = True
        atexit.unregister(self._at_exit)
        try:
            self._log_summary(status, reason)
        except Exception:  # noqa: BLE001 - the summary must not hide the sweep's own outcome
            log.exception("could not log the sweep summary on MLflow run %s", self.parent_run_id)
            try:
                store.client(self.uri).set_terminated(self.parent_run_id, status)
            except Exception:  # noqa: BLE001 - MLflow itself is unreachable; the log says so
                log.exception("could not end MLflow run %s", self.parent_run_id)
        finally:
            os.environ.pop(store.PARENT_ENV, None)

    def _log_summary(self, status: str, reason: str | None) -> None:
        runs = store.child_runs(self.uri, self.parent_run_id)
        columns, rows = comparison_table(runs, self.metric, self.maximize)
        swept = varying_settings(runs)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        title = f"Sweep {self.sweep_dir.name}: {len(runs)} jobs, best {self.metric} first"
        markdown = f"{title}\n\n{format_markdown(columns, rows)}\n"
        (self.sweep_dir / "sweep_summary.md").write_text(markdown)
        files = [
            write_csv(columns, rows, self.sweep_dir / "sweep_summary.csv"),
            self.sweep_dir / "sweep_summary.md",
            plot_metric(rows, swept, self.metric, self.sweep_dir / f"sweep_{self.metric}.png", f"sweep {self.sweep_dir.name}"),
            self.sweep_dir / "multirun.yaml",
            self.sweep_dir / "optimization_results.yaml",  # Optuna's best trial
        ]
        best = rows[0] if rows and rows[0].get(self.metric) is not None else None
        metrics = {"jobs": len(runs), "jobs_failed": sum(r.status != "FINISHED" for r in runs)}
        tags = {"mlflow.note.content": markdown}
        if best:
            metrics[f"best_{self.metric}"] = best[self.metric]
            tags["best_run_id"] = best["run_id"]
            if status == "FINISHED":  # @best names the best of a whole sweep, never of a stopped one
                tags.update(self._register(best["run_id"]))
        if reason:
            tags[store.FAILURE_TAG] = reason
        table = [{c: row.get(c) for c in columns} for row in rows]
        retrying(lambda: sweep_runs.finish_sweep_run(
            self.uri, self.parent_run_id, status, metrics=metrics, tags=tags, table=table,
            table_name="sweep_summary.json", files=[f for f in files if f],
        ))
        log.info("%s\n%s", title, format_text(columns, rows))

    def _register(self, run_id: str) -> dict:
        """The best job's model becomes models:/riscv-asm@best; a failure is logged, not raised."""
        try:
            version = sweep_runs.register_best_model(self.uri, run_id)
        except Exception as err:  # noqa: BLE001 - the registry is extra; the sweep's summary still goes on
            log.warning("could not register the best run's model: %s: %s", type(err).__name__, str(err)[:300])
            return {}
        if version is None:
            log.warning("the best run %s logged no MLflow model; nothing registered", run_id)
            return {}
        log.info("Registered the best run's model: models:/%s@%s (version %s)", store.REGISTERED_MODEL, store.BEST_ALIAS, version)
        return {"registered_model": f"{store.REGISTERED_MODEL}/{version}"}

    # ---------------------------------------------------------------- each job's process

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_run_id is None:
            return
        os.environ[store.PARENT_ENV] = self.parent_run_id  # for launchers whose workers did not inherit it
        os.environ[store.JOB_ENV] = str(config.hydra.job.num)
        os.environ[store.OVERRIDES_ENV] = json.dumps(list(config.hydra.overrides.task))
        os.environ.pop("MLFLOW_RUN_ID", None)
        self._errors = _LastError()
        logging.getLogger().addHandler(self._errors)
        if self._parallel and os.getpid() != self._sweep_pid:
            _stop_worker_on_signals(self._stopped_by)  # set when the sweep was stopped before this job was sent

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if self.parent_run_id is None:
            return
        last_error = self._errors.message if self._errors else None
        logging.getLogger().removeHandler(self._errors)
        self._errors = None
        _worker_job[0] = False
        try:
            tracking_run.end_active_run("KILLED")
            if _worker_stop[0] is None:  # a job the stop skipped or cut short before its run began: no run
                self._record_if_missing(config, job_return, last_error)
        except Exception:  # noqa: BLE001 - bookkeeping must not stop the other jobs
            log.exception("could not check the MLflow run of job %s", config.hydra.job.num)
        finally:
            os.environ.pop(store.JOB_ENV, None)
            os.environ.pop(store.OVERRIDES_ENV, None)
            release_memory()

    def _record_if_missing(self, config: DictConfig, job_return: JobReturn, last_error: str | None) -> None:
        """A FAILED run for a job that failed before tracked_run started its run."""
        job_cfg = job_return.cfg if job_return.cfg is not None else config
        if not job_cfg.tracking.enabled or job_cfg.tracking.offline or retrying(
                lambda: store.job_run(self.uri, self.parent_run_id, config.hydra.job.num)):
            return
        if job_return.status == JobStatus.FAILED:
            err = job_return._return_value
            reason = f"{type(err).__name__}: {err}"
        else:
            reason = last_error or "the job ended before its MLflow run started; see its train.log"
        try:
            params = store.flatten(job_cfg)
        except Exception:  # noqa: BLE001 - an unresolvable value: the overrides still say what ran
            params = {}
        from riscv_ft.experiment import run_name

        tags = {**tracking_run.sweep_tags_from_env(), "run_dir": config.hydra.runtime.output_dir}
        run_id = retrying(lambda: sweep_runs.record_failed_job(self.uri, self.experiment_name, run_name(job_cfg), params, tags, reason))
        log.error("job %s failed before training; recorded as FAILED MLflow run %s", config.hydra.job.num, run_id)


# In a joblib worker process of a parallel sweep: the signal that stopped the sweep (None while
# it runs), and whether a job runs now.
_worker_stop: list[str | None] = [None]
_worker_job = [False]


def stopped_worker() -> str | None:
    """In a parallel sweep's worker that was told to stop: the signal's name (later jobs
    return at once, train.run_and_report)."""
    return _worker_stop[0]


def job_interrupted_in_worker(err: KeyboardInterrupt) -> bool:
    """True in a parallel sweep's worker, where an interrupted job (its run already KILLED,
    its checkpoint saved) must return rather than raise; the stop is remembered for later jobs."""
    if not _worker_job[0]:
        return False
    if _worker_stop[0] is None:  # the trainer's handler, not ours, received the signal
        _worker_stop[0] = str(err) or "SIGTERM"
    return True


def _stop_worker_on_signals(already_stopped: str | None) -> None:
    """In a worker, at each job's start: SIGTERM or Ctrl-C (passed on by the sweep's process)
    interrupts the job, as they do a run in one process. While it trains, the trainer's own
    handler takes over (save, then stop). Between jobs the signal is only remembered: an
    exception in joblib's own loop would end the worker and get its siblings killed."""
    if already_stopped and _worker_stop[0] is None:
        _worker_stop[0] = already_stopped
    _worker_job[0] = True

    def stop(signum, frame):
        if _worker_stop[0] is not None:  # the second signal (Ctrl-C reaches workers directly too)
            return
        _worker_stop[0] = signal.Signals(signum).name
        if _worker_job[0]:
            raise KeyboardInterrupt(_worker_stop[0])

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


def _worker_processes() -> list[int]:
    """The process ids of joblib's (loky's) worker processes started by this process."""
    module = sys.modules.get("joblib.externals.loky.reusable_executor")
    processes = getattr(getattr(module, "_executor", None), "_processes", None) or {}
    return [pid for pid, process in list(processes.items()) if process.is_alive()]


def release_memory() -> None:
    """Give back what a finished job's arrays held, before the next job in this process."""
    gc.collect()
    if "mlx.core" in sys.modules:
        sys.modules["mlx.core"].clear_cache()


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def plot_metric(rows: list[dict], swept: list[str], metric: str, path: Path, title: str) -> Path | None:
    """`metric` against the swept values, saved as a PNG. A grid (every combination of the
    other settings seen at several values) gets one line per combination over the setting
    with the most values; a search (Optuna) gets one scatter panel per setting. Jobs
    without the metric (failed) are left out and counted in the title."""
    points = [r for r in rows if r.get(metric) is not None]
    if not points or not swept:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key = max(swept, key=lambda k: len({str(r.get(k)) for r in points}))
    others = [k for k in swept if k != x_key]
    series: dict[str, list[dict]] = defaultdict(list)
    for r in points:
        series[", ".join(f"{k}={r.get(k)}" for k in others) or metric].append(r)
    grid = all(len(members) >= 2 for members in series.values()) or len(points) == 1
    panels = [x_key] if grid else swept
    fig, axes = plt.subplots(1, len(panels), figsize=(max(7, 3.6 * len(panels)), 4.2), dpi=110, squeeze=False, sharey=True)
    for ax, key in zip(axes[0], panels):
        groups = sorted(series.items()) if grid else [(metric, points)]
        xs_all = [r.get(key) for r in points]
        numeric = all(_number(x) is not None for x in xs_all)
        categories = sorted({str(x) for x in xs_all})
        for label, members in groups:
            xy = sorted((_number(r.get(key)) if numeric else categories.index(str(r.get(key))), r[metric]) for r in members)
            ax.plot(*zip(*xy), "o-" if grid else "o", label=label)
        if numeric:
            xs = sorted({_number(x) for x in xs_all})
            if min(xs) > 0 and max(xs) / min(xs) >= 4:
                ax.set_xscale("log", base=2 if all(x == int(x) for x in xs) else 10)
            if len(xs) <= 8:
                ax.set_xticks(xs, [f"{x:.3g}" for x in xs])
                ax.minorticks_off()
        else:
            ax.set_xticks(range(len(categories)), [c[-30:] for c in categories], rotation=15)
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    if grid and others:
        axes[0][0].legend(fontsize=8)
    failed = len(rows) - len(points)
    heading = f"{metric} by {x_key}" if grid else f"{metric} against each swept setting"
    fig.suptitle(f"{heading}, {title}" + (f" (not shown: {failed} failed)" if failed else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

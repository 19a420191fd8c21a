"""`python -m riscv_ft.tracking push RUN_DIR...`: send what runs kept while their server was
away, or while they ran with tracking.offline. An offline run is created in the store (with
its offline start time) the first time; artifact paths are read relative to where the
folder is now, and what is missing there is skipped with a warning.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from riscv_ft.tracking.calls import _deliver, _rejected
from riscv_ft.tracking.outbox import OUTBOX, OUTBOX_SENT, _read_outbox, _write_header
from riscv_ft.tracking.store import TrackingError, _first_line, client, ensure_experiment, tracking_uri

log = logging.getLogger(__name__)


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


def main(argv: list[str]) -> None:
    """`python -m riscv_ft.tracking push RUN_DIR...`: send what runs kept while their server was
    away, or while they ran with tracking.offline."""
    if len(argv) < 2 or argv[0] != "push":
        print("usage: python -m riscv_ft.tracking push RUN_DIR...", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for run_dir in argv[1:]:
        try:
            sent = push(Path(run_dir))
        except TrackingError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        print(f"{run_dir}: sent {sent} tracking calls" if len(argv) > 2 else f"sent {sent} tracking calls")


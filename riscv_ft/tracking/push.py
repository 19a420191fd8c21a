"""`python -m riscv_ft.tracking push RUN_DIR...`: send what runs kept while their server was
away, or while they ran with tracking.offline. An offline run is created in the store (with
its offline start time) the first time; artifact paths are read relative to where the
folder is now, and what is missing there is skipped with a warning.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from riscv_ft.tracking.calls import OutsideRunFolder, _deliver, inside, refused
from riscv_ft.tracking.outbox import OUTBOX, mark_done, read_outbox, record_refusal, refused_path, write_header
from riscv_ft.tracking.run import RUN_ID_FILE
from riscv_ft.tracking.store import TrackingError, _first_line, client, ensure_experiment, tracking_uri

log = logging.getLogger(__name__)

KNOWN_OPS = {"metrics", "params", "tags", "artifact", "table", "dataset", "model", "end"}


def _create_offline_run(path: Path, header: dict, uri: str | None) -> str:
    """The MLflow run of a tracking.offline run, created once: its id goes into the outbox's
    first line, so a second push continues it."""
    experiment_id = ensure_experiment(uri, header["experiment"])
    run = client(uri).create_run(experiment_id, start_time=header["start_time"], tags=header.get("tags") or {},
                                 run_name=header["run_name"])
    write_header(path, {**header, "run_id": run.info.run_id}, "".join(path.read_text().splitlines(keepends=True)[1:]))
    return run.info.run_id


def _check(run_dir: Path, path: Path, pending: list[dict]) -> None:
    """Refuse an outbox that names anything outside its run folder, before sending anything."""
    for call in pending:
        if call["op"] not in KNOWN_OPS:
            raise TrackingError(f"{path}: call {call['seq']} is an unknown tracking call {call['op']!r}; nothing was sent")
        for name in ("path", "dir"):
            if name in call["args"]:
                try:
                    inside(run_dir, call["args"][name])
                except OutsideRunFolder as err:
                    raise TrackingError(f"{path}: call {call['seq']} names {err}; refused, nothing was sent") from None


def outboxes(run_dir: Path) -> list[Path]:
    """The folder's outbox, and those of earlier runs set aside when the folder was reused."""
    return sorted(Path(run_dir).glob("tracking_outbox.*.jsonl")) + [p for p in [Path(run_dir) / OUTBOX] if p.is_file()]


def push(run_dir: Path, uri: str | None = None, build_model=None) -> int:
    """Send the calls a run folder kept (its server was away, or it ran with tracking.offline)
    to `uri` (None: the project's store): never to a place the file names. Returns how many
    were sent. `build_model(run_dir)` saves the MLflow model of an offline run that could not
    (no MLflow where it ran)."""
    run_dir = Path(run_dir)
    found = outboxes(run_dir)
    if not found:
        raise TrackingError(f"{run_dir}: no {OUTBOX} (the run tracked to a local store, or not at all)")
    return sum(_push_one(run_dir, path, uri, build_model) for path in found)


def _push_one(run_dir: Path, path: Path, uri: str | None, build_model) -> int:
    header, pending, skipped = read_outbox(path)
    if header is None:
        raise TrackingError(f"{path}: no readable first line; not an outbox of this version")
    if skipped:
        log.warning("%s: %d torn or corrupt lines skipped", path, skipped)
    _check(run_dir, path, pending)
    where = tracking_uri(uri)
    run_id = header.get("run_id")
    if run_id and uri is None and header.get("uri") and tracking_uri(header["uri"]) != where:
        raise TrackingError(f"{path} holds calls of run {run_id} on MLflow at {header['uri']}; "
                            f"send them there with --uri {header['uri']} (the destination is never read from the file)")
    if header.get("offline"):
        # A resumed offline run journals the end of each of its processes: only the last one counts.
        ends = [i for i, call in enumerate(pending) if call["op"] == "end"]
        pending = [call for i, call in enumerate(pending) if call["op"] != "end" or i == ends[-1]]
    if run_id is None and pending:
        try:
            run_id = _create_offline_run(path, header, uri)
        except Exception as err:  # noqa: BLE001 - MLflow and requests raise many kinds
            why = _first_line(err.__cause__) if isinstance(err, TrackingError) and err.__cause__ else _first_line(err)
            raise TrackingError(f"cannot create the run in MLflow at {where} ({why}); "
                                f"all {len(pending)} calls are still kept in {path}") from err
    if path.name == OUTBOX and run_id:
        (run_dir / RUN_ID_FILE).write_text(run_id + "\n")
    mlflow_client = client(uri)
    refusals = 0
    for n, call in enumerate(pending):
        try:
            if call["op"] == "model" and build_model is not None and not (inside(run_dir, call["args"]["dir"]) / "MLmodel").is_file():
                build_model(run_dir)
            _deliver(mlflow_client, run_id, call["op"], call["args"], run_dir)
        except Exception as err:  # noqa: BLE001
            if not refused(err):
                raise TrackingError(f"cannot send to MLflow at {where} ({_first_line(err)}); "
                                    f"{len(pending) - n} calls are still kept in {path}") from err
            record_refusal(path, call, err)
            refusals += 1
        mark_done(path, call["seq"])
    if refusals:
        log.warning("%s: MLflow refused %d calls for good; they are kept in %s", path, refusals, refused_path(path))
    return len(pending) - refusals


def main(argv: list[str], build_model=None) -> None:
    """`python -m riscv_ft.tracking push RUN_DIR... [--uri URI]`: send what runs kept while
    their server was away, or while they ran with tracking.offline, to URI (default: the
    project's store, ./mlruns or RISCV_FT_MLRUNS)."""
    usage = "usage: python -m riscv_ft.tracking push RUN_DIR... [--uri URI]"
    uri = None
    if "--uri" in argv:
        at = argv.index("--uri")
        if at + 1 >= len(argv):
            print(usage, file=sys.stderr)
            sys.exit(2)
        uri, argv = argv[at + 1], argv[:at] + argv[at + 2 :]
    if len(argv) < 2 or argv[0] != "push":
        print(usage, file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for run_dir in argv[1:]:
        try:
            sent = push(Path(run_dir), uri, build_model)
        except TrackingError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        print(f"{run_dir}: sent {sent} tracking calls" if len(argv) > 2 else f"sent {sent} tracking calls")

"""One tracking call, as recorded in the outbox, made with an MlflowClient; and which failures
are refusals (sending again can never help) rather than a server that is away or not
allowing calls now.

A call's paths are relative to its run folder and must stay inside it: an outbox is
untrusted input (run folders come back from other machines), so a path that leads out is
refused (OutsideRunFolder), and nothing is read from there.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from riscv_ft.tracking.store import MODEL_URI_TAG, TrackingError

log = logging.getLogger(__name__)

# Error codes of a call that can never succeed as it is. Anything else (no answer, 401/403
# PERMISSION_DENIED or UNAUTHENTICATED, 429, 5xx, RESOURCE_DOES_NOT_EXIST from the wrong
# store) is kept and tried again: those calls may succeed later.
REFUSAL_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST", "MALFORMED_REQUEST", "INVALID_STATE"}
MODEL_NAME = "model"  # the model's name within its run (as mlflow.pyfunc.log_model names it)


class OutsideRunFolder(ValueError):
    """A call names a path outside its run folder."""


def refused(err: Exception) -> bool:
    """The store answered and refused the call for good. Recognised from any MlflowException
    (a local SQLite store raises plain ones, a server RestException), by its error code."""
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(err, OutsideRunFolder):
        return True
    if not isinstance(err, MlflowException):
        return False
    if isinstance(err, RestException) and err.get_http_status_code() not in (400, 409):
        return False
    return err.error_code in REFUSAL_CODES


def retrying(call, window_s: float = 90.0):
    """call() again, pausing 1 s growing to 10 s, while the server is away (never after a
    refusal), for up to window_s: the calls made straight to the server (a run's creation, a
    sweep's parent run) then ride out a restart instead of losing the run's record. The
    soak (benchmarks/soak_tracking.py) lost a sweep job that started during a 10 s outage."""
    deadline, pause = time.monotonic() + window_s, 1.0
    while True:
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - MLflow and requests raise many kinds
            final = refused(err) or (isinstance(err, TrackingError) and err.__cause__ is None)
            if final or time.monotonic() + pause > deadline:
                raise
            log.warning("MLflow does not answer (%s); trying again in %.0f s", str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__, pause)
            time.sleep(pause)
            pause = min(pause * 2, 10.0)


def inside(run_dir: Path, relative: str) -> Path:
    """`relative` under run_dir, refused when it leads out of it (absolute, .., a link)."""
    root = Path(run_dir).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise OutsideRunFolder(f"{relative!r} lies outside the run folder {root}")
    return path


def _deliver(mlflow_client, run_id: str, op: str, args: dict, run_dir: Path) -> None:
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
        path = inside(run_dir, args["path"])
        if path.is_dir():
            mlflow_client.log_artifacts(run_id, str(path), artifact_path=args["artifact_path"])
        elif path.is_file():
            mlflow_client.log_artifact(run_id, str(path), artifact_path=args["artifact_path"])
        else:
            log.warning("%s: %s is not there any more; not sent", run_dir, args["path"])
    elif op == "table":
        mlflow_client.log_table(run_id, args["data"], artifact_file=args["artifact_file"])
    elif op == "dataset":
        _log_dataset(mlflow_client, run_id, args)
    elif op == "model":
        _log_saved_model(mlflow_client, run_id, inside(run_dir, args["dir"]))
    elif op == "end":
        mlflow_client.set_terminated(run_id, args["status"], end_time=args.get("end_time"))
    else:
        raise OutsideRunFolder(f"unknown tracking call {op!r}")


def _log_dataset(mlflow_client, run_id: str, args: dict) -> None:
    """The training data as a run input: its digest, schema, profile and source (not its rows)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    source = _dataset_source(args["source"])
    if isinstance(source, str):
        with warnings.catch_warnings():  # MLflow registers its local source twice, then warns it cannot choose
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
            source = resolve_dataset_source(source)
    dataset = Dataset(name=args["name"], digest=args["digest"], source_type=source._get_source_type(),
                      source=source.to_json(), schema=json.dumps(args["schema"]), profile=json.dumps(args["profile"]))
    entity = DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])
    try:
        mlflow_client.log_inputs(run_id, datasets=[entity])
    except Exception as err:  # noqa: BLE001
        # Two sweep workers logging the same dataset into one SQLite store race in MLflow's
        # check-then-insert (seen: UNIQUE constraint failed: datasets...); the loser's
        # second try finds the row the winner wrote and links it.
        if "UNIQUE constraint failed: datasets" not in str(err):
            raise
        mlflow_client.log_inputs(run_id, datasets=[entity])


def dataset_summary(rows: list[dict]) -> tuple[dict, dict]:
    """(schema, profile) of a split in MLflow's format for a pandas dataset, without MLflow
    (an offline run imports none of it)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    kinds = {bool: "boolean", int: "long", float: "double"}
    spec = [{"type": kinds.get(type(next((r[c] for r in rows if r.get(c) is not None), "")), "string"), "name": c,
             "required": True} for c in columns]
    return {"mlflow_colspec": spec}, {"num_rows": len(rows), "num_elements": len(rows) * len(columns)}


def _log_saved_model(mlflow_client, run_id: str, model_dir: Path) -> None:
    """A model saved in the run folder (an MLflow model directory: MLmodel and its files) as the
    run's logged model, and its URI as the run's riscv_ft.model_uri tag."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    if not (model_dir / "MLmodel").is_file():
        raise OutsideRunFolder(f"{model_dir} holds no saved MLflow model (MLmodel)")
    experiment_id = mlflow_client.get_run(run_id).info.experiment_id
    logged = mlflow_client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id)
    with tempfile.TemporaryDirectory(prefix="riscv_ft_model_") as tmp:
        staged = Path(tmp) / MODEL_NAME
        shutil.copytree(model_dir, staged)
        meta = Model.load(str(staged / "MLmodel"))  # say which run and logged model it is, as log_model would
        meta.run_id, meta.model_id, meta.model_uuid, meta.artifact_path = run_id, logged.model_id, logged.model_id, logged.artifact_location
        meta.save(str(staged / "MLmodel"))
        mlflow_client.log_model_artifacts(logged.model_id, str(staged))
    mlflow_client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    mlflow_client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    mlflow_client.set_tag(run_id, MODEL_URI_TAG, f"models:/{logged.model_id}")


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

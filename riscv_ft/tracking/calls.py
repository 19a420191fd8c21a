"""One tracking call, as recorded in the outbox, made with an MlflowClient."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from riscv_ft.tracking.store import MODEL_URI_TAG, _first_line

log = logging.getLogger(__name__)


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


def _rejected(err: Exception) -> bool:
    """The server answered and refused the call (4xx): sending it again cannot help."""
    from mlflow.exceptions import RestException

    status = err.get_http_status_code() if isinstance(err, RestException) else 500
    return 400 <= status < 500


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



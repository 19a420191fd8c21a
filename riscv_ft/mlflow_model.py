"""A training run as an MLflow model (the `python_function` flavour), for
`mlflow.pyfunc.load_model` and `mlflow models serve`.

The logged model holds only the run's config.yaml and its adapters/ folder. The base model
is named by that config (a Hugging Face repo id, a local folder, or the tiny model's recipe)
and loaded through riscv_ft.assistant like every other use of a trained model, so the base
weights (gigabytes for a 7B) are never copied into the artifact store. The machine that
loads the model needs riscv_ft installed and the base reachable.

    mlflow models serve -m models:/riscv-asm@best --env-manager local --port 5001
    curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
         -d '{"dataframe_records": [{"description": "Add a1 and a2 into a0"}]}'
    # -> {"predictions": ["<the model's answer>"]}

Input: a DataFrame with a `description` column (or a list of strings); output: one
assembly answer per description, the answers `riscv_ft.generate input=FILE` (batched,
Assistant.ask_many) gives for the run; greedy unless `temperature` > 0. Params:
max_tokens, temperature.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

MODEL_NAME = "model"  # the model's name within its run: runs:/<run_id>/model
SAVED_MODEL = "mlflow_model"  # RUN/mlflow_model: the saved model the tracker logs
MAX_ROWS = 256  # descriptions in one request
MAX_TOKENS = 2048  # the most tokens one answer may ask for
RUN_ARTIFACT = "run"  # the artifact holding config.yaml and adapters/
EXAMPLE_DESCRIPTIONS = ["Add a1 and a2 into a0", "Load the word at 8(sp) into t0"]
DEFAULT_PARAMS = {"max_tokens": 256, "temperature": 0.0}

# Models lent by the training process, by adapter digest: MLflow checks the input example
# by loading the model it has just logged and predicting; in the training process that
# would load a second copy of the base (a 7B: gigabytes), so the trained model is lent.
_LENT: dict[str, object] = {}


def _digest(adapter_dir: Path) -> str:
    return hashlib.sha256((adapter_dir / "adapters.safetensors").read_bytes()).hexdigest()


class AssemblyModel(mlflow.pyfunc.PythonModel):
    """Descriptions in, RISC-V assembly out, through riscv_ft.assistant.Assistant."""

    def load_context(self, context) -> None:
        from riscv_ft.assistant import Assistant, source_from_run

        source = source_from_run(context.artifacts[RUN_ARTIFACT])
        lent = _LENT.get(_digest(source.adapter_dir))
        if lent is not None:  # MLflow's check of the input example, in the training process
            self._worker = None
            self.assistant = Assistant(lent.model, lent.tokenizer, source.prompt_format, source)
            return
        # MLX streams belong to a thread, and the scoring server calls predict from a pool
        # of threads: one thread of our own loads the model and answers every request
        # (which also keeps concurrent requests from running MLX at the same time).
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="riscv_ft_model")
        self.assistant = self._worker.submit(Assistant.from_source, source).result()

    def predict(self, context, model_input: pd.DataFrame, params=None):  # a list arrives as a one-column DataFrame
        descriptions = _descriptions(model_input)
        params = {**DEFAULT_PARAMS, **(params or {})}
        _check_bounds(len(descriptions), params)
        answer = partial(self.assistant.ask_many, descriptions, max_tokens=int(params["max_tokens"]), temperature=float(params["temperature"]))
        return answer() if self._worker is None else self._worker.submit(answer).result()


def _descriptions(model_input) -> list[str]:
    """The descriptions in a request; anything else is a bad request (HTTP 400), not a crash."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    if isinstance(model_input, pd.DataFrame):
        column = "description" if "description" in model_input.columns else model_input.columns[0]
        values = model_input[column].tolist()
    elif isinstance(model_input, str):
        values = [model_input]
    elif isinstance(model_input, dict) and "description" in model_input:
        values = list(model_input["description"]) if isinstance(model_input["description"], list) else [model_input["description"]]
    else:
        values = list(model_input)
    bad = [i for i, v in enumerate(values) if not isinstance(v, str) or not v.strip()]
    if bad or not values:
        raise MlflowException(
            f"expected non-empty description strings; row(s) {bad[:5] if bad else 'none given'} are not", INVALID_PARAMETER_VALUE
        )
    return [v.strip() for v in values]


def _check_bounds(rows: int, params: dict) -> None:
    """One request must not hold a worker for hours: bounded rows and tokens (HTTP 400)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    try:
        max_tokens = int(params["max_tokens"])
    except (TypeError, ValueError):
        max_tokens = -1
    if not 1 <= max_tokens <= MAX_TOKENS:
        raise MlflowException(f"max_tokens must be between 1 and {MAX_TOKENS}; got {params['max_tokens']!r}", INVALID_PARAMETER_VALUE)
    if rows > MAX_ROWS:
        raise MlflowException(f"at most {MAX_ROWS} descriptions per request; got {rows}", INVALID_PARAMETER_VALUE)


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string")]),  # a list of strings, or a DataFrame of one column
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_tokens", "long", DEFAULT_PARAMS["max_tokens"]),
                            ParamSpec("temperature", "double", DEFAULT_PARAMS["temperature"])]),
    )


def save_run_model(run_dir: Path, model=None, tokenizer=None) -> Path:
    """Save `run_dir`'s adapter as an MLflow model in RUN/mlflow_model (no server needed):
    the tracker then logs that folder through the run's outbox (riscv_ft/tracking), so it
    reaches the store even when the server was away at the end of the run.

    `model`/`tokenizer`: the trained model still in memory, lent to MLflow's check of the
    input example. Written under a temporary name and renamed, so the folder is whole or absent.
    """
    from riscv_ft.assistant import _check_adapter_dir

    run_dir = Path(run_dir)
    target = run_dir / SAVED_MODEL
    with tempfile.TemporaryDirectory(prefix="riscv_ft_model_") as tmp:
        staged = Path(tmp) / RUN_ARTIFACT
        (staged / "adapters").mkdir(parents=True)
        _check_adapter_dir(run_dir / "adapters", f"run {run_dir}")
        shutil.copy2(run_dir / "config.yaml", staged / "config.yaml")
        for name in ("adapters.safetensors", "adapter_config.json"):
            shutil.copy2(run_dir / "adapters" / name, staged / "adapters" / name)
        key = _digest(staged / "adapters")
        if model is not None:
            _LENT[key] = _Lent(model, tokenizer)
        partial_dir = run_dir / f".{SAVED_MODEL}.tmp"
        shutil.rmtree(partial_dir, ignore_errors=True)
        try:
            with _quiet_mlflow():
                mlflow.pyfunc.save_model(
                    path=str(partial_dir),
                    python_model=AssemblyModel(),
                    artifacts={RUN_ARTIFACT: str(staged)},
                    signature=signature(),
                    input_example=(pd.DataFrame({"description": EXAMPLE_DESCRIPTIONS}), {"max_tokens": 32}),
                    # Named, not inferred (inferring loads the model in a subprocess); riscv_ft
                    # from this very source, never a bare name a public index could answer.
                    pip_requirements=[_own_requirement(), f"mlflow=={mlflow.__version__}"],
                )
            shutil.rmtree(target, ignore_errors=True)
            partial_dir.rename(target)
        finally:
            _LENT.pop(key, None)
            shutil.rmtree(partial_dir, ignore_errors=True)
    return target


def _own_requirement() -> str:
    """A pip requirement for riscv_ft that resolves to this installation: the source tree (a
    checkout or an editable install), else the installed wheel's location. `riscv_ft==0.1.0`
    alone would let `mlflow models serve` without --env-manager local install whatever a
    public index calls riscv_ft (dependency confusion)."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():
        return f"riscv_ft @ {root.as_uri()}"
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        direct = distribution("riscv_ft").read_text("direct_url.json")
    except PackageNotFoundError:
        direct = None
    if direct:
        import json

        return f"riscv_ft @ {json.loads(direct)['url']}"
    raise RuntimeError("riscv_ft is installed from an index, not from a path or wheel: cannot pin it safely")


@contextmanager
def _quiet_mlflow():
    """Hide MLflow's warning about pickling the model object: the pickle holds only a reference
    to AssemblyModel in this module, no code."""
    logger = logging.getLogger("mlflow.pyfunc")
    pickle_note = _DropMessage("serialized using CloudPickle")
    logger.addFilter(pickle_note)
    try:
        yield
    finally:
        logger.removeFilter(pickle_note)


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


class _Lent:
    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

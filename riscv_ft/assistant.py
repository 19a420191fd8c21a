"""Using a fine-tuned model from Python: load the base model and adapter once, then ask.

    from riscv_ft.assistant import Assistant

    assistant = Assistant.from_run("experiments/runs/2026-11-26_02-07-52_tiny_smoke")
    assistant.ask("Add a1 and a2 into a0")            # -> "add a0, a1, a2"
    assistant.ask_many(["...", "..."])                 # batched, one answer per description
    for piece in assistant.stream("..."):              # text as it is generated
        print(piece, end="", flush=True)

    Assistant.from_run("140bf5b8719b49938f3fbcd8245d69ee")               # an MLflow run id
    Assistant.from_adapter("adapters/", model="mistralai/Mistral-7B-Instruct-v0.3")  # e.g. mlx_lm.lora's
    Assistant.from_adapter(None, model="exports/riscv-7b")                # a fused export, no adapter

The base model is loaded by `riscv_ft.model.load_base` with the run's own model config (so a
4-bit base is quantized exactly as it was for training) and the adapter by mlx-lm's
`load_adapters`. Prompts are built in the run's `data.prompt_format`, read from its
config.yaml. Answers are greedy unless a temperature > 0 is given; `decode="verify"` answers
with what most of several sampled answers do in the emulator (riscv_ft.evaluate.verified):

    assistant.ask("Swap a0 and a1 without a temporary", decode="verify", samples=8)

This module also resolves where a model comes from (`Source`) for `riscv_ft.generate` and
`riscv_ft.export`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig, OmegaConf

from riscv_ft.config import ModelConfig
from riscv_ft.model import LoadedModel, load_base
from riscv_ft.sources.cache import ModelLoadError, cache_dir

PROMPT_FORMATS = ("chat", "completion")
EXPORT_RECORD = "riscv_ft_export.json"  # written by riscv_ft.export into every export
_MLFLOW_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_DTYPE_NAMES = ("float32", "bfloat16", "float16")


class AssistantError(ValueError):
    """The model or adapter cannot be used. Its message is one line for the user."""


@dataclass
class Source:
    """Where a fine-tuned model comes from: base model config, adapter folder, prompt format."""

    model_cfg: DictConfig  # a riscv_ft ModelConfig, given to load_base
    adapter_dir: Path | None  # adapters.safetensors + adapter_config.json; None: base (or export) alone
    prompt_format: str
    run_dir: Path | None = None  # the training run folder, when there is one
    mlflow_run_id: str | None = None
    run_config: DictConfig | None = None  # the run's whole resolved config.yaml
    notes: list[str] = field(default_factory=list)  # things the user should know (unfinished run, ...)

    def describe(self) -> str:
        what = f"run {self.run_dir}" if self.run_dir else f"adapter {self.adapter_dir}" if self.adapter_dir else "no adapter"
        base = "tiny model" if self.model_cfg.source == "tiny" else self.model_cfg.path
        return f"{what}, base {base}, prompt format {self.prompt_format}"


# ---------------------------------------------------------------- finding the model


def source_from_run(run: str | os.PathLike, tracking_uri: str | None = None, model: str | None = None) -> Source:
    """A training run folder, or an MLflow run id (its run folder, or its artifacts downloaded).

    `model` replaces the run's `model.path` (a base that lives elsewhere on this machine);
    dtype and quantization stay as the run had them.
    """
    text = str(run)
    folder = Path(text).expanduser()
    mlflow_run_id = None
    if not folder.exists():
        if not _MLFLOW_RUN_ID.match(text):
            raise AssistantError(f"run={text!r} is neither a run folder nor an MLflow run id (32 hex digits)")
        mlflow_run_id = text
        folder = run_folder_from_mlflow(text, tracking_uri)
    folder = folder.resolve()
    if (folder / "adapter_config.json").is_file() and (folder.parent / "config.yaml").is_file():
        folder = folder.parent  # run=RUN/adapters
    config_file = folder / "config.yaml"
    if not config_file.is_file():
        hint = "; for an adapter folder without a run use adapter=DIR model=BASE" if (folder / "adapter_config.json").is_file() else ""
        raise AssistantError(f"run={text!r}: {folder} has no config.yaml, so it is not a riscv_ft run folder{hint}")
    run_config = _load_yaml(config_file)
    adapter_dir = folder / "adapters"
    _check_adapter_dir(adapter_dir, f"run={text!r}")
    model_cfg = _model_config(run_config, config_file)
    if model is not None:
        model_cfg.source, model_cfg.path = ("tiny", model_cfg.path) if model == "tiny" else ("hub", model)
    notes = []
    metrics_file = folder / "metrics.json"
    if metrics_file.is_file():
        try:
            mlflow_run_id = mlflow_run_id or json.loads(metrics_file.read_text()).get("mlflow_run_id")
        except (json.JSONDecodeError, AttributeError):
            pass
    else:
        notes.append(f"{folder} has no metrics.json (an unfinished run?): using its last saved adapters")
    return Source(
        model_cfg=model_cfg,
        adapter_dir=adapter_dir,
        prompt_format=_prompt_format(run_config, config_file),
        run_dir=folder,
        mlflow_run_id=mlflow_run_id,
        run_config=run_config,
        notes=notes,
    )


def source_from_adapter(
    adapter: str | os.PathLike | None,
    model: str | None = None,
    prompt_format: str | None = None,
    dtype: str | None = None,
) -> Source:
    """An adapter folder (ours or `mlx_lm.lora`'s) on a base model, or a model alone (adapter=None).

    The base is `model` (a Hugging Face repo id, a folder, or `tiny`), else the run the adapter
    folder sits in, else the `model` recorded in adapter_config.json. The prompt format is
    `prompt_format`, else the adapter's run's, else an export's record, else `chat` (what
    `mlx_lm.lora` trains with).
    """
    adapter_dir = None
    run_config = None
    if adapter is not None:
        adapter_dir = Path(adapter).expanduser()
        if adapter_dir.is_file() and adapter_dir.name == "adapters.safetensors":
            adapter_dir = adapter_dir.parent
        if (adapter_dir / "adapters" / "adapter_config.json").is_file() and (adapter_dir / "config.yaml").is_file():
            raise AssistantError(f"adapter={str(adapter)!r} is a run folder: use run={adapter} instead")
        _check_adapter_dir(adapter_dir, f"adapter={str(adapter)!r}")
        adapter_dir = adapter_dir.resolve()
        if (adapter_dir.parent / "config.yaml").is_file():
            run_config = _load_yaml(adapter_dir.parent / "config.yaml")

    if model is None and run_config is not None:
        model_cfg = _model_config(run_config, adapter_dir.parent / "config.yaml")
    else:
        if model is None:
            model = _adapter_base(adapter_dir) if adapter_dir else None
            if model is None:
                raise AssistantError("no base model: give model=REPO_OR_DIR (or model=tiny)")
        model_cfg = _plain_model_config(model, dtype)
    if dtype is not None:
        if dtype not in _DTYPE_NAMES:
            raise AssistantError(f"dtype={dtype!r} is not allowed: expected one of {', '.join(_DTYPE_NAMES)}")
        model_cfg.dtype = dtype

    if prompt_format is None:
        if run_config is not None:
            prompt_format = _prompt_format(run_config, adapter_dir.parent / "config.yaml")
        else:
            prompt_format = _export_prompt_format(model_cfg) or "chat"
    if prompt_format not in PROMPT_FORMATS:
        raise AssistantError(f"prompt_format={prompt_format!r} is not allowed: expected one of {', '.join(PROMPT_FORMATS)}")
    return Source(model_cfg=model_cfg, adapter_dir=adapter_dir, prompt_format=prompt_format, run_config=run_config)


def run_folder_from_mlflow(run_id: str, tracking_uri: str | None = None, prefer_local: bool = True) -> Path:
    """The folder of an MLflow run: its `run_dir` tag if that folder is here, else its
    config.yaml and adapters/ artifacts downloaded (once) under the riscv_ft cache."""
    from riscv_ft.tracking.store import default_store
    from riscv_ft.tracking.store import tracking_uri as resolve_uri

    if tracking_uri is None and not (default_store() / "mlflow.db").is_file():
        # Opening a SQLite URI would create an empty store; say what is missing instead.
        raise AssistantError(f"run={run_id}: no MLflow store at {default_store()} (set tracking_uri=URI or RISCV_FT_MLRUNS)")
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=resolve_uri(tracking_uri))
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise AssistantError(f"run={run_id}: not found in MLflow at {resolve_uri(tracking_uri)} ({_first_line(err)})") from err
    local = run.data.tags.get("run_dir")
    if prefer_local and local and (Path(local) / "config.yaml").is_file() and (Path(local) / "adapters" / "adapters.safetensors").is_file():
        # The tag names where the run was, not what is there now: a reused folder holds
        # another run's adapters. RUN/mlflow_run_id says whose they are.
        owner_file = Path(local) / "mlflow_run_id"
        owner = owner_file.read_text().strip() if owner_file.is_file() else None
        if owner == run_id:
            return Path(local)
        if owner is not None:
            raise AssistantError(f"run={run_id}: its folder {local} now holds MLflow run {owner} (the folder was reused); "
                                 f"pass that folder's run id, or move the folder away to use run {run_id}'s logged artifacts")

    folder = cache_dir() / "mlflow-runs" / run_id
    if (folder / "config.yaml").is_file() and (folder / "adapters" / "adapters.safetensors").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_id}.", dir=folder.parent))
    try:
        for name in ("config.yaml", "adapters", "metrics.json"):
            try:
                client.download_artifacts(run_id, name, str(tmp))
            except (MlflowException, OSError) as err:
                if name != "metrics.json":
                    raise AssistantError(
                        f"run={run_id}: cannot download its {name} artifact ({_first_line(err)}); "
                        "is it a sweep's parent run rather than a training run?"
                    ) from err
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def _load_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - YAML and OmegaConf raise many kinds
        raise AssistantError(f"{path}: not a readable config ({_first_line(err)})") from err
    if not isinstance(cfg, DictConfig):
        raise AssistantError(f"{path}: not a riscv_ft run config")
    return cfg


def _model_config(run_config: DictConfig, where: Path) -> DictConfig:
    """The run's model section on top of the schema (fills keys an older run did not write)."""
    if "model" not in run_config:
        raise AssistantError(f"{where}: has no model section")
    try:
        return OmegaConf.merge(OmegaConf.structured(ModelConfig), run_config.model)
    except Exception as err:  # noqa: BLE001
        raise AssistantError(f"{where}: its model section does not fit this version of riscv_ft ({_first_line(err)})") from err


def _prompt_format(run_config: DictConfig, where: Path) -> str:
    value = OmegaConf.select(run_config, "data.prompt_format")
    if value not in PROMPT_FORMATS:
        raise AssistantError(f"{where}: data.prompt_format={value!r}, expected one of {', '.join(PROMPT_FORMATS)}")
    return value


def _plain_model_config(model: str, dtype: str | None) -> DictConfig:
    """A model config for a base named on the command line: no quantizing on load, its own dtype."""
    cfg = OmegaConf.structured(ModelConfig)
    if model == "tiny":
        cfg.name, cfg.source, cfg.dtype = "tiny", "tiny", "float32"
        return cfg
    cfg.name, cfg.source, cfg.path = Path(model).name or model, "hub", model
    cfg.quantize.enabled = False
    cfg.dtype = dtype or _stored_dtype(Path(model).expanduser()) or "bfloat16"
    return cfg


def _stored_dtype(folder: Path) -> str | None:
    """The dtype a local model folder's config.json declares (so float32 stays float32)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    value = config.get("torch_dtype") or config.get("dtype")
    return value if value in _DTYPE_NAMES else None


def _export_prompt_format(model_cfg: DictConfig) -> str | None:
    """The prompt format a riscv_ft export records (model=EXPORT_DIR)."""
    if model_cfg.source != "hub":
        return None
    try:
        record = json.loads((Path(model_cfg.path).expanduser() / EXPORT_RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record.get("prompt_format")


def _check_adapter_dir(folder: Path, what: str) -> None:
    missing = [n for n in ("adapters.safetensors", "adapter_config.json") if not (folder / n).is_file()]
    if not folder.is_dir():
        raise AssistantError(f"{what}: {folder} is not a folder")
    if missing:
        raise AssistantError(f"{what}: {folder} is not an adapter folder (no {' or '.join(missing)})")


def _adapter_base(adapter_dir: Path) -> str | None:
    try:
        return json.loads((adapter_dir / "adapter_config.json").read_text()).get("model")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


# ---------------------------------------------------------------- loading


def load_with_adapter(source: Source) -> LoadedModel:
    """The base through riscv_ft.model.load_base, then the adapter through mlx-lm's load_adapters."""
    from mlx_lm.tuner.utils import load_adapters

    try:
        loaded = load_base(source.model_cfg)
    except ModelLoadError as err:
        raise AssistantError(str(err)) from err
    if source.adapter_dir is not None:
        try:
            load_adapters(loaded.model, str(source.adapter_dir))
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as err:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            detail = "; ".join(lines[1:3]) + (f" (and {len(lines) - 3} more)" if len(lines) > 3 else "")
            raise AssistantError(
                f"adapter {source.adapter_dir} does not fit base {loaded.base_ref}: {detail or _first_line(err)}"
            ) from err
    loaded.model.eval()  # no LoRA dropout
    return loaded


# ---------------------------------------------------------------- asking


class Assistant:
    """A loaded model that answers descriptions with RISC-V assembly. Load once, ask often."""

    def __init__(self, model, tokenizer, prompt_format: str, source: Source | None = None):
        if prompt_format not in PROMPT_FORMATS:
            raise AssistantError(f"prompt_format={prompt_format!r} is not allowed: expected one of {', '.join(PROMPT_FORMATS)}")
        self.model = model
        self.tokenizer = tokenizer
        self.prompt_format = prompt_format
        self.source = source

    @classmethod
    def from_source(cls, source: Source) -> "Assistant":
        loaded = load_with_adapter(source)
        return cls(loaded.model, loaded.tokenizer, source.prompt_format, source)

    @classmethod
    def from_run(cls, run: str | os.PathLike, tracking_uri: str | None = None, model: str | None = None) -> "Assistant":
        """A training run folder or MLflow run id; `model` replaces the run's model.path."""
        return cls.from_source(source_from_run(run, tracking_uri, model))

    @classmethod
    def from_adapter(
        cls, adapter: str | os.PathLike | None, model: str | None = None,
        prompt_format: str | None = None, dtype: str | None = None,
    ) -> "Assistant":
        """An adapter folder on a base model (see `source_from_adapter`); adapter=None for a model alone."""
        return cls.from_source(source_from_adapter(adapter, model, prompt_format, dtype))

    def prompt_tokens(self, description: str) -> list[int]:
        """Token ids the model sees before it answers, exactly as in training."""
        from riscv_ft.data.pipeline import prompt_text

        # The chat template already starts with <s>; the completion template does not.
        text = prompt_text(description, self.tokenizer, self.prompt_format)
        return self.tokenizer.encode(text, add_special_tokens=self.prompt_format != "chat")

    def stream(self, description: str, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 0.0) -> Iterator[str]:
        """The answer as it is generated, piece by piece (mlx_lm.stream_generate)."""
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        sampler = make_sampler(temp=temperature, top_p=top_p)
        started = False
        for response in stream_generate(self.model, self.tokenizer, self.prompt_tokens(description), max_tokens=max_tokens, sampler=sampler):
            text = response.text
            if not started:
                text = text.lstrip()
                started = bool(text)
            if text:
                yield text

    def ask(self, description: str, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 0.0,
            decode: str = "greedy", samples: int = 8) -> str:
        """One answer: greedy (or sampled with a temperature > 0) from riscv_ft.inference's decoder
        (faster than stream's), or with decode="verify" the behavioural majority of the greedy
        answer and `samples` sampled ones (riscv_ft.evaluate.verified; sampled at `temperature`,
        0.7 when it is 0)."""
        return self.ask_many([description], max_tokens, temperature, top_p, batch_size=1, decode=decode,
                             samples=samples)[0]

    def ask_many(
        self, descriptions: list[str], max_tokens: int = 256, temperature: float = 0.0,
        top_p: float = 0.0, batch_size: int = 16, decode: str = "greedy", samples: int = 8,
    ) -> list[str]:
        """One answer per description, generated in batches (riscv_ft.inference.generate_answers);
        decode="verify" as in `ask`."""
        from riscv_ft.inference import generate_answers

        if decode not in ("greedy", "verify"):
            raise AssistantError(f"decode={decode!r} is not allowed: expected greedy or verify")
        if decode == "verify" and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
            raise AssistantError(f"samples={samples!r} is not allowed: expected an integer >= 1")
        if decode == "verify":
            from riscv_ft.evaluate.verified import TEMPERATURE, verified_answers

            return verified_answers(self.model, self.tokenizer, list(descriptions), self.prompt_format, max_tokens,
                                    batch_size, samples=samples, temperature=temperature or TEMPERATURE,
                                    top_p=top_p)[0]
        return generate_answers(
            self.model, self.tokenizer, list(descriptions), self.prompt_format,
            max_tokens=max_tokens, batch_size=batch_size, temperature=temperature, top_p=top_p,
        )

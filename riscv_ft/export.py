"""`python -m riscv_ft.export`: merge a run's adapter into its base model and save the result.

    python -m riscv_ft.export run=RUN_DIR out=exports/riscv-7b                 # 4-bit base stays 4-bit
    python -m riscv_ft.export run=RUN_DIR out=DIR dequantize=true gguf=true    # float16/bf16 + GGUF
    python -m riscv_ft.export run=MLFLOW_RUN_ID out=DIR
    python -m riscv_ft.export adapter=ADAPTER_DIR model=REPO_OR_DIR out=DIR   # e.g. mlx_lm.lora's

The folder is an ordinary MLX model that upstream mlx-lm opens without this project:

    python -m mlx_lm generate --model DIR --prompt "Add a1 and a2 into a0"
    mlx_lm.load("DIR")

Each LoRA/DoRA layer is merged with its own fuse(): W' = W + scale * B^T A^T. On a 4-bit base
the merged weight is quantized again with the base's group size and bits (dequantize=true keeps
it in floating point instead: bigger, and closer to base + adapter). DIR also holds
riscv_ft_export.json (run folder, MLflow run id, git commits, the run's config, the prompt
format, and a check that the export's greedy answers equal base + adapter's) and a README.md.

Options (key=value):
    run= / adapter= model= / tracking_uri=   where the model comes from, as for riscv_ft.generate
    out=DIR           where the export goes; must not exist or be empty
    force=true        replace an earlier export in DIR (only a folder holding riscv_ft_export.json)
    dequantize=true   save floating-point weights even if the base was quantized
    gguf=true         also write model.gguf (mlx_lm.gguf; llama/mistral/mixtral, not quantized)
    verify=3          answer this many held-out prompts before and after (0 skips the check)

The export is written to a temporary folder beside DIR and renamed into place, so a crash never
leaves half an export. Bad input ends with one line on stderr and exit code 2.
"""

from riscv_ft.runtime import use_fast_blas

use_fast_blas()  # before MLX is imported anywhere

import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

from omegaconf import OmegaConf  # noqa: E402

from riscv_ft.assistant import EXPORT_RECORD  # noqa: E402
from riscv_ft.cli import as_bool, as_number, fail, parse_args, wants_help  # noqa: E402
from riscv_ft.generate import require_model, source_from_args  # noqa: E402
from riscv_ft.sources.cache import file_sha256  # noqa: E402

KEYS = {"run", "adapter", "model", "out", "force", "dequantize", "gguf", "verify", "prompt_format", "dtype", "tracking_uri"}
GGUF_FILE = "model.gguf"
GGUF_MODEL_TYPES = ("llama", "mistral", "mixtral")  # what mlx_lm.gguf converts
VERIFY_MAX_TOKENS = 32
# Used to verify an export when its run kept no held-out prompts.
FALLBACK_PROMPTS = [
    "Add a1 and a2 and store the result in a0.",
    "Load a word from the address in sp plus 8 into t0.",
    "Branch to label if a0 equals zero.",
    "Shift a3 left by 4 bits into a4.",
]


# ---------------------------------------------------------------- the output folder


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse a folder that holds anything but an earlier export (and that only with force=true)."""
    if out.exists() and not out.is_dir():
        fail(f"out={str(out)!r} is a file")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            fail(f"out={str(out)!r} is not empty; choose another folder or add force=true to replace an earlier export")
        if not (out / EXPORT_RECORD).is_file():
            fail(f"out={str(out)!r} is not empty and holds no {EXPORT_RECORD}: force=true only replaces an earlier export")


def move_into_place(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished temporary folder to `out` (replacing an earlier export if allowed)."""
    check_out_dir(out, force)  # again: something may have appeared while we worked
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / out.name)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


# ---------------------------------------------------------------- fusing


def fuse_adapters(model, dequantize: bool) -> int:
    """Merge every adapter layer into a plain (or re-quantized) layer; returns how many."""
    from mlx.utils import tree_unflatten

    fused = [(name, module.fuse(dequantize=dequantize)) for name, module in model.named_modules() if hasattr(module, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    if dequantize:
        from mlx_lm.utils import dequantize_model

        dequantize_model(model)  # embeddings and the output head too
    return len(fused)


def quantization_of(model) -> dict | None:
    """The config.json `quantization` block that describes the model's quantized layers."""
    import mlx.nn as nn

    params = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            params[name] = {"group_size": module.group_size, "bits": module.bits, "mode": getattr(module, "mode", "affine")}
    if not params:
        return None
    common = Counter(json.dumps(p, sort_keys=True) for p in params.values()).most_common(1)[0][0]
    block = json.loads(common)
    # mlx-lm reads per-layer entries for layers that differ from the default.
    block.update({name: p for name, p in params.items() if json.dumps(p, sort_keys=True) != common})
    return block


def dtype_name(model) -> str:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    floats = Counter(str(v.dtype).removeprefix("mlx.core.") for _, v in tree_flatten(model.parameters()) if mx.issubdtype(v.dtype, mx.floating))
    return floats.most_common(1)[0][0] if floats else "float32"


def base_folder(base_ref: str) -> Path:
    """The local folder of the base model (a hub model is in the local cache once loaded)."""
    path = Path(base_ref)
    if path.is_dir():
        return path
    from mlx_lm.utils import hf_repo_to_path

    return hf_repo_to_path(base_ref)


def model_config(base_dir: Path, model) -> dict:
    """The base's config.json, with the export's quantization (or none) and dtype."""
    from mlx_lm.utils import load_config

    config = load_config(base_dir)
    config.pop("quantization", None)
    config.pop("quantization_config", None)
    quantization = quantization_of(model)
    if quantization:
        config["quantization"] = quantization  # save_config copies it to quantization_config
    config["torch_dtype"] = dtype_name(model)
    return config


def save_export(folder: Path, model, tokenizer, config: dict, base_dir: Path) -> None:
    """The files mlx_lm.load reads: weights, config.json, tokenizer (what mlx_lm.utils.save
    writes, without its model card, which would fetch the base's card from the hub)."""
    from mlx_lm.utils import save_config, save_model

    save_model(folder, model, donate_model=False)
    save_config(dict(config), config_path=folder / "config.json")
    tokenizer.save_pretrained(str(folder))
    for name in ("generation_config.json", "tokenizer.model"):
        if (base_dir / name).is_file() and not (folder / name).exists():
            shutil.copyfile(base_dir / name, folder / name)


def write_gguf(folder: Path, model, config: dict) -> Path:
    """model.gguf beside the MLX weights, converted by mlx_lm.gguf (its messages silenced)."""
    import contextlib
    from unittest import mock

    import mlx_lm.gguf
    from mlx.utils import tree_flatten

    path = folder / GGUF_FILE
    # mlx_lm.gguf asks the tokenizer for its whole vocabulary once per special token (771 of
    # them in Mistral's v3 vocabulary: 22 s here); hand it a tokenizer that builds it once.
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), \
            mock.patch.object(mlx_lm.gguf, "AutoTokenizer", _VocabOnceTokenizer):
        mlx_lm.gguf.convert_to_gguf(folder, dict(tree_flatten(model.parameters())), config, str(path))
    return path


class _VocabOnceTokenizer:
    @staticmethod
    def from_pretrained(*args, **kwargs):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(*args, **kwargs)
        vocab = tokenizer.get_vocab()
        tokenizer.get_vocab = lambda: vocab
        return tokenizer


# ---------------------------------------------------------------- provenance


def git_state() -> dict:
    """The commit of the code doing the export, and whether tracked files were modified."""
    from riscv_ft.tracking.store import PROJECT_ROOT

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD")
    return {"commit": commit or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None}


def mlflow_tags(source) -> dict:
    """The training run's MLflow tags (its git commit, versions...), if its store is reachable."""
    if not source.mlflow_run_id:
        return {}
    uri = OmegaConf.select(source.run_config, "tracking.uri") if source.run_config is not None else None
    try:
        from riscv_ft.tracking.store import default_store, tracking_uri

        if uri is None and not (default_store() / "mlflow.db").is_file():
            return {}
        import mlflow

        run = mlflow.MlflowClient(tracking_uri=tracking_uri(uri)).get_run(source.mlflow_run_id)
        return dict(run.data.tags)
    except Exception:  # noqa: BLE001 - provenance is best effort; the record says what is missing
        return {}


def verification_prompts(source, count: int) -> list[str]:
    """Held-out descriptions of the run (test split, else validation), else a fixed few."""
    from riscv_ft.generate import read_prompt_rows

    if source.run_dir is not None:
        for name in ("test.jsonl", "valid.jsonl"):
            path = source.run_dir / name
            if path.is_file() and path.stat().st_size:
                try:
                    rows = read_prompt_rows(path)
                except SystemExit:
                    continue
                descriptions = list(dict.fromkeys(r["_description"] for r in rows))
                if descriptions:
                    return descriptions[:count]
    return FALLBACK_PROMPTS[:count]


def usage_text(prompt_format: str, out: Path) -> str:
    if prompt_format == "chat":
        return f'python -m mlx_lm generate --model {out} --prompt "Add a1 and a2 into a0"'
    return (f"python -m mlx_lm generate --model {out} --ignore-chat-template "
            f"--prompt $'User: Add a1 and a2 into a0\\nAssistant: '")


def readme(record: dict, out: Path) -> str:
    src = record["source"]
    adapter = (record.get("adapter_config") or {}).get("fine_tune_type", "lora")
    kind = "de-quantized" if record["dequantized"] else (f"{record['quantization']['bits']}-bit" if record["quantization"] else record["dtype"])
    lines = [
        "# RISC-V assembly assistant (riscv_ft export)",
        "",
        f"Base model `{src['base_model']}` with the {adapter} adapter of "
        + (f"run `{src['run_dir']}`" if src["run_dir"] else f"`{src['adapter_dir']}`")
        + (f" (MLflow run `{src['mlflow_run_id']}`)" if src["mlflow_run_id"] else "")
        + f" merged in; weights {kind}.",
        "",
        f"Trained with the `{record['prompt_format']}` prompt format. Use it with upstream mlx-lm:",
        "",
        "```",
        record["usage"],
        "```",
        "",
        f"Where it came from, and a check of its answers against base + adapter: `{EXPORT_RECORD}`.",
    ]
    if record.get("gguf"):
        lines += ["", f"`{record['gguf']}`: the same weights in GGUF (written by mlx_lm.gguf)."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def export(source, out: Path, dequantize: bool, gguf: bool, verify: int, force: bool) -> dict:
    """Fuse, save into a temporary folder, verify with upstream mlx_lm.load, rename into place."""
    import mlx.core as mx
    from mlx_lm import load as upstream_load

    from riscv_ft import __version__
    from riscv_ft.assistant import Assistant, load_with_adapter
    from riscv_ft.inference import generate_answers

    started = time.perf_counter()
    loaded = load_with_adapter(source)
    model, tokenizer, base_ref = loaded.model, loaded.tokenizer, loaded.base_ref
    base_dir = base_folder(base_ref)
    from mlx_lm.utils import load_config

    model_type = load_config(base_dir).get("model_type")
    was_quantized = quantization_of(model) is not None
    if gguf and model_type not in GGUF_MODEL_TYPES:
        fail(f"gguf=true: mlx_lm.gguf converts {', '.join(GGUF_MODEL_TYPES)} models, not {model_type!r}")
    if gguf and was_quantized and not dequantize:
        fail("gguf=true: mlx_lm.gguf cannot convert a quantized model; add dequantize=true")

    prompts = verification_prompts(source, verify) if verify else []
    assistant = Assistant(model, tokenizer, source.prompt_format, source)
    expected = assistant.ask_many(prompts, max_tokens=VERIFY_MAX_TOKENS) if prompts else []

    n_fused = fuse_adapters(model, dequantize)
    config = model_config(base_dir, model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        save_export(tmp, model, tokenizer, config, base_dir)
        gguf_path = write_gguf(tmp, model, config) if gguf else None
        del model, assistant, loaded
        gc.collect()
        mx.clear_cache()

        verification = None
        if prompts:
            exported, exported_tokenizer = upstream_load(str(tmp))
            answers = generate_answers(exported, exported_tokenizer, prompts, source.prompt_format, max_tokens=VERIFY_MAX_TOKENS)
            equal = sum(a == b for a, b in zip(answers, expected))
            verification = {
                "prompts": len(prompts), "equal_greedy_answers": equal, "max_tokens": VERIFY_MAX_TOKENS,
                "loaded_with": "mlx_lm.load",
                "rows": [{"prompt": p, "base_plus_adapter": e, "export": a} for p, e, a in zip(prompts, expected, answers)],
            }
            del exported

        tags = mlflow_tags(source)
        adapter_file = source.adapter_dir / "adapters.safetensors" if source.adapter_dir else None
        record = {
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "source": {
                "run_dir": str(source.run_dir) if source.run_dir else None,
                "mlflow_run_id": source.mlflow_run_id,
                "adapter_dir": str(source.adapter_dir) if source.adapter_dir else None,
                "adapter_sha256": file_sha256(adapter_file) if adapter_file else None,
                "base_model": base_ref,
                "training_git_commit": tags.get("git_commit"),
            },
            "export_git": git_state(),
            "versions": {"riscv_ft": __version__, "mlx": mx.__version__, "mlx_lm": _mlx_lm_version()},
            "prompt_format": source.prompt_format,
            "usage": usage_text(source.prompt_format, out),
            "fused_layers": n_fused,
            "dtype": config["torch_dtype"],
            "quantization": config.get("quantization"),
            "dequantized": bool(dequantize and was_quantized),
            "gguf": gguf_path.name if gguf_path else None,
            "verification": verification,
            "adapter_config": _read_json(source.adapter_dir / "adapter_config.json") if source.adapter_dir else None,
            "config": OmegaConf.to_container(source.run_config, resolve=True) if source.run_config is not None else None,
            "seconds": round(time.perf_counter() - started, 1),
        }
        (tmp / EXPORT_RECORD).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        (tmp / "README.md").write_text(readme(record, out))
        move_into_place(tmp, out, force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def _mlx_lm_version() -> str:
    import mlx_lm

    return mlx_lm.__version__


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def main(argv: list[str]) -> None:
    if wants_help(argv):
        print(__doc__)
        return
    args = parse_args(argv, KEYS)
    require_model(args)
    if not args.get("out"):
        fail("out=DIR is required: the folder the fused model goes to")
    out = Path(args["out"]).expanduser().absolute()
    force = as_bool(args, "force")
    dequantize = as_bool(args, "dequantize")
    gguf = as_bool(args, "gguf")
    verify = as_number(args, "verify", int, 3, 0, 1000, "an integer >= 0 (0 skips the check)")
    check_out_dir(out, force)

    from riscv_ft.assistant import AssistantError

    try:
        source = source_from_args(args)
        for note in source.notes:
            print(f"note: {note}", file=sys.stderr)
        if source.adapter_dir is None:
            fail("nothing to export: name an adapter (run= or adapter=)")
        inside = [p for p in (source.run_dir, source.adapter_dir) if p is not None and (out == p or p.is_relative_to(out))]
        if inside:
            fail(f"out={str(out)!r} would replace {inside[0]}")
        record = export(source, out, dequantize, gguf, verify, force)
    except AssistantError as err:
        fail(str(err))
    verification = record["verification"]
    print(f"Exported {source.describe()} to {out} ({record['fused_layers']} layers fused, "
          f"{'quantized ' + str(record['quantization'].get('bits')) + '-bit' if record['quantization'] else record['dtype']}) "
          f"in {record['seconds']} s")
    if verification:
        equal, n = verification["equal_greedy_answers"], verification["prompts"]
        print(f"Greedy answers of the export (mlx_lm.load) equal base + adapter on {equal}/{n} held-out prompts")
        if equal < n:
            why = "re-quantizing the merged weights" if record["quantization"] else "rounding the merged weights"
            print(f"warning: {n - equal} answers differ, likely from {why}; see {out / EXPORT_RECORD}", file=sys.stderr)
    print(f"Try it: {record['usage']}")


def cli() -> None:
    """The `riscv-ft-export` command ([project.scripts])."""
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()

"""A model folder on disk (config.json + *.safetensors + tokenizer files), and the float copy
of a quantized one that a CPU-only machine trains on."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import mlx.core as mx

from riscv_ft.device import backend, quantized_matmul_is_fast
from riscv_ft.sources.cache import ModelLoadError, atomic_folder, cache_dir

log = logging.getLogger(__name__)

_DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def is_local(path: str) -> bool:
    """`path` names something on disk rather than a hub repo id (owner/name)."""
    text = str(path)
    return (Path(text).expanduser().exists() or text.startswith(("/", ".", "~"))
            or (os.sep in text and text.count("/") > 1))


def model_folder(path: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelLoadError(f"model.path={path!r}: no such folder; to try the project offline use model=tiny "
                             "(or experiment=smoke)")
    return folder.resolve()


def wants_float_copy(model_cfg) -> bool:
    """model.dequantize: always, never, or auto (a float copy only without Metal or CUDA)."""
    choice = model_cfg.get("dequantize", "never")
    return choice == "always" or (choice == "auto" and not quantized_matmul_is_fast())


def maybe_dequantized(folder: Path, model_cfg) -> Path:
    """`folder`, or its float copy (model.dtype) when it is quantized and dequantize applies."""
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    quantization = config.get("quantization")
    if not quantization:
        return folder
    bits = quantization.get("bits")
    if not wants_float_copy(model_cfg):
        log.info("Base %s: %s-bit quantized weights kept (model.dequantize=%s, device: %s)",
                 folder.name, bits, model_cfg.get("dequantize", "never"), backend())
        return folder
    copy = dequantized_copy(folder, model_cfg.dtype)
    log.info("Base %s: a %s copy of the %s-bit weights (model.dequantize=%s: %s); model.dequantize=never keeps "
             "them quantized", copy.name, model_cfg.dtype, bits, model_cfg.get("dequantize"),
             "no Metal or CUDA here, and quantized matmuls are about 6x slower than float32 on the CPU"
             if model_cfg.get("dequantize") == "auto" else "asked for")
    return copy


def content_digest(folder: Path) -> str:
    """A digest of what a model folder holds, cheap enough for every load: each file's name, size
    and modification time, the bytes of its JSON files and the header of each .safetensors
    (names, dtypes, shapes, offsets). Replacing the model (another quantization, other weights)
    changes it, so a copy made from the old one is never taken for the new one."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        path = folder / name
        if not path.is_file():
            continue
        stat = path.stat()
        digest.update(f"{name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        if name.endswith(".json"):
            digest.update(path.read_bytes())
        elif name.endswith(".safetensors"):
            with open(path, "rb") as f:
                length = int.from_bytes(f.read(8), "little")
                digest.update(f.read(min(length, 100 << 20)))
    return digest.hexdigest()[:16]


def dequantized_copy(folder: Path, dtype: str) -> Path:
    """A cached copy of a quantized MLX model folder with every quantized layer in `dtype`.

    Kept under cache_dir()/float (never beside the user's folder), keyed by the folder's
    content digest: a replaced model gets a new copy.
    """
    stem = re.sub(r"[^\w.-]", "_", folder.name)[:60]
    target = cache_dir() / "float" / f"{stem}-{content_digest(folder)}-{dtype}"
    with atomic_folder(target) as tmp:
        if tmp is None:
            return target
        config = json.loads((folder / "config.json").read_text())
        quantization = config.pop("quantization")
        config.pop("quantization_config", None)
        config["torch_dtype"] = dtype
        for name in os.listdir(folder):
            source = folder / name
            if name == "config.json" or not source.is_file():
                continue
            if name.endswith(".safetensors"):
                weights = mx.load(str(source))
                mx.save_safetensors(str(tmp / name), _dequantize(weights, quantization, _DTYPES[dtype]), {"format": "mlx"})
            elif name != "model.safetensors.index.json":
                (tmp / name).write_bytes(source.read_bytes())
            else:
                index = json.loads(source.read_text())
                index["weight_map"] = {k: v for k, v in index["weight_map"].items() if not k.endswith((".scales", ".biases"))}
                (tmp / name).write_text(json.dumps(index, indent=2))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    return target


def _dequantize(weights: dict, quantization: dict, dtype) -> dict:
    out = {}
    for key, value in weights.items():
        prefix = key[: -len(".weight")] if key.endswith(".weight") else None
        if prefix and f"{prefix}.scales" in weights:
            layer = quantization.get(prefix) if isinstance(quantization.get(prefix), dict) else quantization
            out[key] = mx.dequantize(value, weights[f"{prefix}.scales"], weights.get(f"{prefix}.biases"),
                                     group_size=layer["group_size"], bits=layer["bits"]).astype(dtype)
        elif key.endswith((".scales", ".biases")) and key.rsplit(".", 1)[0] + ".weight" in weights:
            continue
        else:
            out[key] = value.astype(dtype) if mx.issubdtype(value.dtype, mx.floating) else value
        mx.eval(out.get(key, value))
    return out

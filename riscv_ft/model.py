"""The one place that loads models, turns them into LoRA models and saves adapters.

Loading, quantizing and the LoRA/DoRA layers come from mlx-lm; this module adds the locally
built `tiny` model (so that everything runs offline) and writes adapters in exactly the
format `mlx_lm.load(base, adapter_path=...)` reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from omegaconf import DictConfig

from riscv_ft.config import ConfigError, lora_scale

log = logging.getLogger(__name__)

MISTRAL_V3_TOKENIZER = "mistral_instruct_tokenizer_240323.model.v3"
# Mistral-7B-Instruct-v0.3's chat format: <s>[INST] user[/INST] assistant</s>
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + '[/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)
_DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


class ModelLoadError(RuntimeError):
    """The base model cannot be loaded. Its message is one line for the user."""


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object  # mlx_lm TokenizerWrapper
    # What adapter_config.json records as `model`: a repo id or an absolute folder.
    base_ref: str


def cache_dir() -> Path:
    return Path(os.environ.get("RISCV_FT_CACHE", Path.home() / ".cache" / "riscv_ft"))


def tiny_model_dir(tiny: DictConfig) -> Path:
    """Build (once) and return the folder of the tiny Mistral-architecture model."""
    config = {
        "model_type": "mistral",
        "architectures": ["MistralForCausalLM"],
        "hidden_size": tiny.hidden_size,
        "num_hidden_layers": tiny.num_hidden_layers,
        "num_attention_heads": tiny.num_attention_heads,
        "num_key_value_heads": tiny.num_key_value_heads,
        "intermediate_size": tiny.intermediate_size,
        "head_dim": tiny.hidden_size // tiny.num_attention_heads,
        "vocab_size": 32768,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    key = hashlib.sha256(json.dumps([config, tiny.seed], sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir() / f"tiny-mistral-{key}"
    if (folder / "model.safetensors").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Build in a temporary folder and rename, so that a crash never leaves half a model
    # and two processes building at once both end with a complete one.
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        from mlx_lm.models.llama import Model, ModelArgs

        mx.random.seed(tiny.seed)
        model = Model(ModelArgs.from_dict(config))
        # nn.Linear's default init keeps logits near uniform; small embeddings keep the
        # first loss near ln(32768) = 10.4 instead of far above it.
        model.model.embed_tokens.weight = mx.random.normal(model.model.embed_tokens.weight.shape) * 0.02
        mx.save_safetensors(str(tmp / "model.safetensors"), dict(tree_flatten(model.parameters())), {"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        _write_mistral_tokenizer(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished first
            if not (folder / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("Built the tiny model in %s", folder)
    return folder


def _write_mistral_tokenizer(folder: Path) -> None:
    import mistral_common

    source = Path(mistral_common.__file__).parent / "data" / MISTRAL_V3_TOKENIZER
    shutil.copyfile(source, folder / "tokenizer.model")
    special = [(0, "<unk>"), (1, "<s>"), (2, "</s>"), (3, "[INST]"), (4, "[/INST]")]
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "model_max_length": 32768,
        "chat_template": MISTRAL_CHAT_TEMPLATE,
        # [INST] and [/INST] are control tokens of the v3 vocabulary; declaring them lets
        # the tokenizer emit ids 3 and 4 as the real model's tokenizer.json does.
        "added_tokens_decoder": {
            str(i): {"content": c, "special": True, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False}
            for i, c in special
        },
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def resolve_base(model_cfg: DictConfig) -> str:
    """The repo id or folder that mlx_lm.load opens for this model config."""
    if model_cfg.source == "tiny":
        return str(tiny_model_dir(model_cfg.tiny))
    path = Path(model_cfg.path).expanduser()
    return str(path.resolve()) if path.exists() else model_cfg.path


def load_base(model_cfg: DictConfig) -> LoadedModel:
    """Load the base model and tokenizer, cast and quantize as configured, all frozen.

    The weights load lazily and are materialised one array at a time, after casting and
    quantizing: a bf16 checkpoint quantized on load never holds more than the 4-bit model and
    one bf16 matrix (mlx_lm.load alone reads all 14.5 GB of a 7B model first).
    """
    from mlx_lm import load
    from mlx_lm.utils import quantize_model

    base_ref = resolve_base(model_cfg)
    try:
        model, tokenizer, hf_config = load(base_ref, return_config=True, lazy=True)
    except Exception as err:  # noqa: BLE001 - the hub client raises many kinds
        raise ModelLoadError(_explain_load_failure(base_ref, err)) from err

    dtype = _DTYPES[model_cfg.dtype]
    already_quantized = "quantization" in hf_config
    # Cast only the floating-point weights; quantized ones keep their packed integers.
    model.set_dtype(dtype, lambda d: mx.issubdtype(d, mx.floating))
    if already_quantized:
        stored = hf_config["quantization"]
        log.info("%s is stored quantized (%s bits, group size %s): loaded as it is", base_ref, stored.get("bits"), stored.get("group_size"))
        wanted = (model_cfg.quantize.bits, model_cfg.quantize.group_size)
        if model_cfg.quantize.enabled and (stored.get("bits"), stored.get("group_size")) != wanted:
            log.warning("model.quantize asks for %s bits, group size %s; the checkpoint's own quantization is kept", *wanted)
    elif model_cfg.quantize.enabled:
        model, _ = quantize_model(model, hf_config, model_cfg.quantize.group_size, model_cfg.quantize.bits)
    model.freeze()
    for _, weight in tree_flatten(model.parameters()):
        mx.eval(weight)
    return LoadedModel(model=model, tokenizer=tokenizer, base_ref=base_ref)


def _explain_load_failure(base_ref: str, err: Exception) -> str:
    full = f"{type(err).__name__}: {err}"
    text = " ".join(full.split())[:300]
    looks_like_path = base_ref.startswith(("/", ".", "~")) or os.sep in base_ref and base_ref.count("/") > 1
    if looks_like_path and not Path(base_ref).expanduser().exists():
        where = f"model.path={base_ref!r}: no such folder"
    elif looks_like_path:
        where = f"model.path={base_ref!r} is not a model folder that mlx_lm can load ({text})"
    elif any(s in full for s in ("401", "403", "GatedRepo", "gated", "Unauthorized", "Forbidden")):
        return (
            f"the Hugging Face repo {base_ref!r} is gated or private ({text}); run `hf auth login` with a token "
            f"and accept the model's licence at https://huggingface.co/{base_ref}, or use an open copy such as "
            "model.path=mlx-community/Mistral-7B-Instruct-v0.3-4bit"
        )
    elif any(s in full for s in ("Connection", "resolve", "offline", "Offline", "LocalEntryNotFound", "Max retries")):
        where = f"cannot reach the Hugging Face hub to download {base_ref!r} and it is not cached ({text})"
    else:
        where = f"cannot load model {base_ref!r} ({text})"
    return where + "; to try the project offline use model=tiny (or experiment=smoke)"


def apply_adapters(model: nn.Module, lora_cfg: DictConfig) -> dict:
    """Turn the configured linear layers into LoRA/DoRA layers (or unfreeze all for full).

    Returns the `lora_parameters` block of adapter_config.json.
    """
    from mlx_lm.tuner.utils import linear_to_lora_layers

    num_layers = len(model.layers) if lora_cfg.num_layers == -1 else min(lora_cfg.num_layers, len(model.layers))
    # mlx-lm matches keys by their path inside a block (self_attn.q_proj, mlp.up_proj).
    inner = {name: path for path, _ in model.layers[0].named_modules() for name in [path.rsplit(".", 1)[-1]]}
    params = {
        "rank": int(lora_cfg.rank),
        "scale": lora_scale(lora_cfg),
        "dropout": float(lora_cfg.dropout),
        "keys": [inner[k] for k in lora_cfg.targets if k in inner],
    }
    if lora_cfg.fine_tune_type == "full":
        if any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules()):
            # A pre-quantized checkpoint: its packed integers have no gradient in MLX.
            raise ConfigError("lora.fine_tune_type=full cannot train a quantized base (this model.path holds quantized "
                              "weights): use an unquantized base, or train adapters on it with lora.fine_tune_type=lora (QLoRA)")
        model.unfreeze()
    else:
        linear_to_lora_layers(model, num_layers, params, use_dora=lora_cfg.fine_tune_type == "dora")
    return {"num_layers": num_layers, "lora_parameters": params}


def trainable_parameters(model: nn.Module) -> dict[str, mx.array]:
    return dict(tree_flatten(model.trainable_parameters()))


def save_adapters(model: nn.Module, folder: Path, base_ref: str, lora_cfg: DictConfig, lora_meta: dict) -> None:
    """Write adapters.safetensors + adapter_config.json atomically (rename into place)."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = trainable_parameters(model)
    config = {
        "model": base_ref,
        "fine_tune_type": lora_cfg.fine_tune_type,
        "num_layers": lora_meta["num_layers"],
        "lora_parameters": lora_meta["lora_parameters"],
        # Not read by mlx-lm; kept so a reader can see how scale was derived.
        "riscv_ft": {"alpha": float(lora_cfg.alpha), "use_rslora": bool(lora_cfg.use_rslora)},
    }
    tmp_weights = folder / ".adapters.tmp.safetensors"
    mx.save_safetensors(str(tmp_weights), weights)
    os.replace(tmp_weights, folder / "adapters.safetensors")
    tmp_config = folder / ".adapter_config.tmp.json"
    tmp_config.write_text(json.dumps(config, indent=2))
    os.replace(tmp_config, folder / "adapter_config.json")

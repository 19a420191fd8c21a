"""A llama/mistral GGUF file converted into a folder that upstream `mlx_lm.load` opens.

    model.path=FILE.gguf

Tensors of type F32, F16, Q4_0, Q4_1 and Q8_0 are read with `mx.load(path,
return_metadata=True)`, which gives the Q4/Q8 blocks as MLX affine-quantized triples (packed
weight, scales, biases; group size 32): nothing is re-quantized, and config.json carries the
quantization so mlx_lm rebuilds the same quantized layers. llama.cpp stores the rows of
attn_q/attn_k permuted for its rotary layout; they are permuted back (rows of weight, scales
and biases alike: quantization groups run along the input dimension), so the folder is the
same model as the Hugging Face original with the standard rotary embedding.

The tokenizer is rebuilt from the metadata (GPT-2 style byte-level BPE: tokens, merges, token
types, pre-tokenizer) as tokenizer.json with the `tokenizers` library, plus the chat template
and the bos/eos/pad ids. The header is checked first, so an unsupported tensor type, another
architecture or tokenizer, or a truncated file ends with one line (ModelLoadError).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
from pathlib import Path

import mlx.core as mx

from riscv_ft.sources import ModelLoadError, atomic_folder, cache_dir

log = logging.getLogger(__name__)

# Bumped when the folder this module writes changes, so old conversions are not reused.
CONVERTER_VERSION = 1
# GGML tensor type ids (ggml.h) this converter reads; the rest are named in the error.
SUPPORTED_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 8: "Q8_0"}
GGML_TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
                   10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
                   17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS",
                   24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16"}
ARCHITECTURES = ("llama", "mistral")

# GGUF tensor names -> mlx_lm llama names
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}

# Pre-tokenizer split patterns by `tokenizer.ggml.pre` (llama.cpp's llama-vocab.cpp).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = ("gpt2", "default", "smollm", "llama-bpe", "llama3")


def converted_folder(path: Path) -> Path:
    """The cached folder converted from the GGUF file at `path` (converted on first use)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model.path={str(path)!r}: no such GGUF file")
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{CONVERTER_VERSION}".encode()).hexdigest()[:12]
    stem = re.sub(r"[^\w.-]", "_", path.stem)[:60]
    folder = cache_dir() / "gguf" / f"{stem}-{key}"
    with atomic_folder(folder) as tmp:
        if tmp is None:
            return folder
        convert(path, tmp)
        log.info("Converted %s into %s", path, folder)
    return folder


# ----------------------------------------------------------------------------- header


class _Reader:
    """Just enough of the GGUF format (v2/v3) to check a file before MLX reads it."""

    _SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

    def __init__(self, data: bytes, where: str):
        self.data, self.pos, self.where = data, 0, where

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ModelLoadError(f"{self.where}: the GGUF header ends early (truncated or not a GGUF file)")
        value = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value[0]

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.data):
            raise ModelLoadError(f"{self.where}: the GGUF header ends early (truncated or not a GGUF file)")
        text = self.data[self.pos:self.pos + n].decode("utf-8", "replace")
        self.pos += n
        return text

    def value(self, kind: int, keep: bool):
        if kind == 8:
            return self.string()
        if kind == 9:
            item_kind, n = self.take("<I"), self.take("<Q")
            if item_kind in self._SCALARS and not keep:  # large arrays (token scores): skip
                self.pos += n * struct.calcsize(self._SCALARS[item_kind])
                return None
            return [self.value(item_kind, keep) for _ in range(n)]
        if kind not in self._SCALARS:
            raise ModelLoadError(f"{self.where}: malformed GGUF metadata (value type {kind})")
        return self.take(self._SCALARS[kind])


def read_header(path: Path) -> tuple[dict, dict[str, tuple[int, tuple[int, ...]]]]:
    """(metadata without large numeric arrays, {tensor name: (ggml type, shape)}) of a GGUF file."""
    where = f"model.path={str(path)!r}"
    with open(path, "rb") as f:
        head = f.read(4)
        if head != b"GGUF":
            raise ModelLoadError(f"{where}: not a GGUF file (it does not start with 'GGUF')")
        # the header (metadata + tensor infos) is at the start; the vocabulary makes it a few MB
        data = head + f.read(64 << 20)
    reader = _Reader(data, where)
    reader.pos = 4
    version = reader.take("<I")
    if version not in (2, 3):
        raise ModelLoadError(f"{where}: GGUF version {version} is not supported (2 or 3)")
    n_tensors, n_kv = reader.take("<Q"), reader.take("<Q")
    if n_tensors > 1_000_000 or n_kv > 1_000_000:
        raise ModelLoadError(f"{where}: malformed GGUF header ({n_tensors} tensors, {n_kv} metadata keys)")
    metadata = {}
    for _ in range(n_kv):
        key = reader.string()
        metadata[key] = reader.value(reader.take("<I"), keep=not key.endswith(("scores", "token_type")))
    tensors = {}
    for _ in range(n_tensors):
        name = reader.string()
        dims = tuple(reader.take("<Q") for _ in range(reader.take("<I")))
        kind = reader.take("<I")
        reader.take("<Q")  # offset
        tensors[name] = (kind, dims)
    return metadata, tensors


def check_supported(path: Path, metadata: dict, tensors: dict) -> str:
    """The architecture prefix of the metadata keys; ModelLoadError for what cannot be converted."""
    where = f"model.path={str(path)!r}"
    arch = metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelLoadError(f"{where}: architecture {arch!r} is not supported (only {', '.join(ARCHITECTURES)})")
    bad = sorted({GGML_TYPE_NAMES.get(kind, str(kind)) for kind, _ in tensors.values() if kind not in SUPPORTED_TYPES})
    if bad:
        raise ModelLoadError(f"{where}: tensor type(s) {', '.join(bad)} are not supported "
                             f"(only {', '.join(SUPPORTED_TYPES.values())}); use a Q4_0, Q4_1, Q8_0 or F16 GGUF")
    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ModelLoadError(f"{where}: tokenizer {model!r} is not supported (only GPT-2 style byte-level BPE, 'gpt2')")
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ModelLoadError(f"{where}: pre-tokenizer {pre!r} is not supported (only {', '.join(PRE_TOKENIZERS)})")
    unknown = sorted(n for n in tensors if _mlx_name(n) is None)
    if unknown:
        raise ModelLoadError(f"{where}: tensor {unknown[0]!r} is not part of a llama/mistral model")
    return arch


def _mlx_name(gguf_name: str) -> str | None:
    base, _, kind = gguf_name.rpartition(".")
    if kind != "weight":
        return None
    if base in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[base] + ".weight"
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    if match and match.group(2) in _BLOCK_NAMES:
        return f"model.layers.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}.weight"
    return None


# ----------------------------------------------------------------------------- conversion


def convert(path: Path, folder: Path) -> None:
    """Write config.json, model.safetensors and the tokenizer files of a GGUF into `folder`."""
    metadata, tensors = read_header(path)
    arch = check_supported(path, metadata, tensors)
    try:
        arrays, full_metadata = mx.load(str(path), return_metadata=True)
    except Exception as err:  # noqa: BLE001 - MLX raises RuntimeError/ValueError with its reason
        raise ModelLoadError(f"model.path={str(path)!r}: cannot read the GGUF tensors "
                             f"({str(err).splitlines()[0][:200]})") from err
    metadata.update(full_metadata)
    config = model_config(metadata, arch, "output.weight" in tensors)
    weights, quantization = mlx_weights(arrays, config)
    if quantization:
        config["quantization"] = quantization
    mx.save_safetensors(str(folder / "model.safetensors"), weights, {"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(metadata, folder)


def _number(metadata: dict, key: str, default=None):
    value = metadata.get(key, default)
    if value is None:
        raise ModelLoadError(f"GGUF metadata has no {key!r}")
    return value.item() if isinstance(value, mx.array) else value


def model_config(metadata: dict, arch: str, has_output: bool) -> dict:
    """config.json for mlx_lm's llama model from the GGUF's `<arch>.*` keys."""
    heads = int(_number(metadata, f"{arch}.attention.head_count"))
    hidden = int(_number(metadata, f"{arch}.embedding_length"))
    head_dim = int(_number(metadata, f"{arch}.attention.key_length", hidden // heads))
    tokens = metadata.get("tokenizer.ggml.tokens") or []
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": int(_number(metadata, f"{arch}.block_count")),
        "intermediate_size": int(_number(metadata, f"{arch}.feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_number(metadata, f"{arch}.attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "rms_norm_eps": float(_number(metadata, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(_number(metadata, f"{arch}.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(_number(metadata, f"{arch}.context_length", 4096)),
        "vocab_size": int(_number(metadata, f"{arch}.vocab_size", len(tokens))),
        # no output.weight: the head shares the embedding (SmolLM2 does)
        "tie_word_embeddings": not has_output,
        "bos_token_id": int(_number(metadata, "tokenizer.ggml.bos_token_id", 1)),
        "eos_token_id": int(_number(metadata, "tokenizer.ggml.eos_token_id", 2)),
    }
    if f"{arch}.rope.scaling.type" in metadata:
        raise ModelLoadError(f"GGUF rope scaling {metadata[f'{arch}.rope.scaling.type']!r} is not supported")
    return config


def unpermute_rows(array: mx.array, n_head: int) -> mx.array:
    """Undo llama.cpp's q/k row permutation (convert_hf_to_gguf.py's `permute`).

    llama.cpp orders each head's rows as (half, pair) -> (pair, half); this is the inverse.
    """
    rows = array.shape[0]
    return array.reshape(n_head, rows // n_head // 2, 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)


def mlx_weights(arrays: dict, config: dict) -> tuple[dict, dict | None]:
    """mlx_lm-named weights (q/k rows un-permuted) and the quantization block of config.json."""
    weights: dict[str, mx.array] = {}
    layer_bits: dict[str, int] = {}
    for name, array in arrays.items():
        base, _, part = name.rpartition(".")
        target = _mlx_name(base + ".weight")
        if target is None or part not in ("weight", "scales", "biases"):
            raise ModelLoadError(f"GGUF tensor {name!r} is not part of a llama/mistral model")
        module = target[: -len(".weight")]
        if module.endswith("self_attn.q_proj"):
            array = unpermute_rows(array, config["num_attention_heads"])
        elif module.endswith("self_attn.k_proj"):
            array = unpermute_rows(array, config["num_key_value_heads"])
        weights[f"{module}.{part}"] = array
        if part == "scales":
            # every GGUF block type read here has 32 weights per block (= MLX group size 32)
            layer_bits[module] = arrays[base + ".weight"].shape[-1] // array.shape[-1]
    if not layer_bits:
        return weights, None
    bits = max(set(layer_bits.values()), key=list(layer_bits.values()).count)
    quantization: dict = {"group_size": 32, "bits": bits}
    # layers of another width (a Q8_0 embedding in a Q4_0 file) get their own entry
    quantization.update({m: {"group_size": 32, "bits": b} for m, b in layer_bits.items() if b != bits})
    return weights, quantization


# ----------------------------------------------------------------------------- tokenizer


def build_tokenizer(metadata: dict):
    """A `tokenizers.Tokenizer` from GGUF GPT-2 style BPE metadata."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    tokens = list(metadata["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]
    types = metadata.get("tokenizer.ggml.token_type")
    types = types.tolist() if isinstance(types, mx.array) else list(types or [1] * len(tokens))
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                     fuse_unk=False, byte_fallback=False))
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre == "smollm":  # SmolLM's tokenizer.json: digits one by one, then GPT-2's byte level
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    elif pre in ("llama-bpe", "llama3"):
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    # 3 = control, 4 = user defined: matched whole in text, never split by BPE
    special = [AddedToken(t, special=k == 3, normalized=False) for t, k in zip(tokens, types) if k in (3, 4)]
    tokenizer.add_special_tokens([t for t in special if t.special])
    tokenizer.add_tokens([t for t in special if not t.special])
    post = [processors.ByteLevel(trim_offsets=False)]
    if _flag(metadata, "tokenizer.ggml.add_bos_token"):
        bos = tokens[int(_number(metadata, "tokenizer.ggml.bos_token_id"))]
        bos_id = tokens.index(bos)
        post.append(processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                  special_tokens=[(bos, bos_id)]))
    tokenizer.post_processor = processors.Sequence(post)
    return tokenizer


def _flag(metadata: dict, key: str) -> bool:
    value = metadata.get(key, False)
    return bool(value.item() if isinstance(value, mx.array) else value)


def write_tokenizer(metadata: dict, folder: Path) -> None:
    """tokenizer.json + tokenizer_config.json (chat template, special tokens) that transformers loads."""
    tokens = list(metadata["tokenizer.ggml.tokens"])
    build_tokenizer(metadata).save(str(folder / "tokenizer.json"))

    def token(key: str) -> str | None:
        value = metadata.get(f"tokenizer.ggml.{key}_token_id")
        return None if value is None else tokens[int(value.item() if isinstance(value, mx.array) else value)]

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "unk_token": token("unknown"),
        "pad_token": token("padding"),
        "add_bos_token": _flag(metadata, "tokenizer.ggml.add_bos_token"),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_number(metadata, f"{metadata['general.architecture']}.context_length", 4096)),
    }
    if metadata.get("tokenizer.chat_template"):
        config["chat_template"] = metadata["tokenizer.chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if config.get(k)}, indent=2))

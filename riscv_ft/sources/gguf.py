# One module on purpose: one file format, read in the order a conversion runs: header checks,
# metadata, weights, tokenizer; each part is only called from the one before.
"""A llama/mistral/qwen2 GGUF file converted into a folder that upstream `mlx_lm.load` opens.

    model.path=FILE.gguf

The header is read and checked first: metadata from a downloaded file is untrusted, so every
number the conversion uses (head counts, sizes, token ids, ...) is range-checked, and an
unsupported tensor type, another architecture or tokenizer, or a truncated file ends with one
line (ModelLoadError) naming the file and the key.

Two ways to the weights, by tensor type:

- F32, F16, Q4_0, Q4_1 and Q8_0 only: `mx.load(path, return_metadata=True)` gives the Q4/Q8
  blocks as MLX affine-quantized triples (packed weight, scales, biases; group size 32):
  nothing is re-quantized, and config.json carries the quantization so mlx_lm rebuilds the same
  quantized layers (a float copy comes later from local.maybe_dequantized where it applies).
- any other type llama.cpp's `gguf` package dequantizes (Q5_0, Q4_K, Q6_K, ...; MLX's reader
  stops at them): each tensor is dequantized to float32 with `gguf.quants.dequantize`, then
  written in model.dtype when a float base is wanted (model.dequantize, as for a quantized
  folder), else re-quantized to MLX model.quantize.bits / group_size.

llama.cpp stores the rows of attn_q/attn_k of llama/mistral permuted for its interleaved
rotary layout; they are permuted back (rows of weight, scales and biases alike: quantization
groups run along the input dimension). qwen2 uses the NEOX (half-split) rotary layout in
llama.cpp, the same as Hugging Face's, and its convert_hf_to_gguf.py does not permute it: its
rows are taken as they are (tests check both by logits).

The tokenizer is rebuilt from the metadata (GPT-2 style byte-level BPE: tokens, merges, token
types, pre-tokenizer) as tokenizer.json with the `tokenizers` library, plus the chat template
and the bos/eos/pad ids.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import struct
from pathlib import Path

import mlx.core as mx

from riscv_ft.sources.cache import ModelLoadError, atomic_folder, cache_dir

log = logging.getLogger(__name__)

# Bumped when the folder this module writes changes, so old conversions are not reused.
CONVERTER_VERSION = 1
# GGML tensor type ids (ggml.h) that MLX's own GGUF reader turns into MLX arrays.
SUPPORTED_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 8: "Q8_0"}
ARCHITECTURES = ("llama", "mistral", "qwen2")
_PERMUTED_QK = ("llama", "mistral")  # architectures whose q/k rows llama.cpp permutes
_MODEL_TYPES = {"llama": ("llama", "LlamaForCausalLM"), "mistral": ("llama", "LlamaForCausalLM"),
                "qwen2": ("qwen2", "Qwen2ForCausalLM")}

# GGUF tensor names -> mlx_lm llama/qwen2 names
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}
_BIASED = ("attn_q", "attn_k", "attn_v")  # qwen2's q/k/v projections have biases

# Pre-tokenizer split patterns by `tokenizer.ggml.pre` (llama.cpp's llama-vocab.cpp).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2's tokenizer.json: the llama-3 pattern with digits one by one
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = ("gpt2", "default", "smollm", "llama-bpe", "llama3", "qwen2")


def _gguf_types():
    """{ggml type id: name} and {id: (block size, bytes per block)} from llama.cpp's gguf package."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    return {int(t): t.name for t in GGMLQuantizationType}, {int(t): s for t, s in GGML_QUANT_SIZES.items()}


def _dequantizable(kind: int) -> bool:
    """The gguf package has a numpy dequantizer for this tensor type."""
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import _type_traits

    return kind in (0, 1) or any(int(t) == kind for t in _type_traits if isinstance(t, GGMLQuantizationType))


def converted_folder(path: Path, model_cfg=None) -> Path:
    """The cached folder converted from the GGUF file at `path` (converted on first use).

    `model_cfg` (model.dtype / dequantize / quantize) matters only for tensor types MLX cannot
    hold as they are; without it they become float32.
    """
    path = Path(path)
    where = f"model.path={str(path)!r}"
    if not path.is_file():
        raise ModelLoadError(f"{where}: no such GGUF file")
    header = read_header(path)
    arch = check_supported(path, header)
    model_config(header, arch, where)  # every number checked before anything is written
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{CONVERTER_VERSION}".encode()).hexdigest()[:12]
    stem = re.sub(r"[^\w.-]", "_", path.stem)[:60]
    native = all(kind in SUPPORTED_TYPES for kind, _ in header.tensors.values())
    form = None if native else _dequantized_form(model_cfg)
    folder = cache_dir() / "gguf" / (f"{stem}-{key}" if native else f"{stem}-{key}-{form[0]}" +
                                     (f"-q{form[1]}g{form[2]}" if form[1] else ""))
    with atomic_folder(folder) as tmp:
        if tmp is None:
            return folder
        if native:
            convert(path, header, tmp)
        else:
            convert_dequantized(path, header, tmp, *form)
        log.info("Converted %s into %s", path, folder)
    return folder


def _dequantized_form(model_cfg) -> tuple[str, int | None, int]:
    """(dtype, bits or None for float, group size) of a folder dequantized from K-quants & co."""
    from riscv_ft.sources.local import wants_float_copy

    if model_cfg is None:
        return "float32", None, 64
    if wants_float_copy(model_cfg):
        return model_cfg.dtype, None, 64
    return model_cfg.dtype, int(model_cfg.quantize.bits), int(model_cfg.quantize.group_size)


# ----------------------------------------------------------------------------- header


class _Reader:
    """Just enough of the GGUF format (v2/v3) to check a file before anything reads its tensors."""

    _SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

    def __init__(self, data: bytes, where: str):
        self.data, self.pos, self.where = data, 0, where

    def _need(self, size: int) -> None:
        if size < 0 or self.pos + size > len(self.data):
            raise ModelLoadError(f"{self.where}: the GGUF header ends early (truncated or not a GGUF file)")

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        self._need(size)
        value = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value[0]

    def string(self) -> str:
        n = self.take("<Q")
        self._need(n)
        text = self.data[self.pos:self.pos + n].decode("utf-8", "replace")
        self.pos += n
        return text

    def value(self, kind: int, keep: bool):
        if kind == 8:
            return self.string()
        if kind == 9:
            item_kind, n = self.take("<I"), self.take("<Q")
            if item_kind in self._SCALARS:  # numeric arrays in one read
                fmt = self._SCALARS[item_kind]
                self._need(n * struct.calcsize(fmt))
                values = list(struct.unpack_from(f"<{n}{fmt[1]}", self.data, self.pos)) if keep else None
                self.pos += n * struct.calcsize(fmt)
                return values
            return [self.value(item_kind, keep) for _ in range(n)]
        if kind not in self._SCALARS:
            raise ModelLoadError(f"{self.where}: malformed GGUF metadata (value type {kind})")
        return self.take(self._SCALARS[kind])


class Header:
    """What a GGUF file's header says: its metadata, tensors {name: (ggml type, shape)} and the
    byte where the tensor data must end (the file's size, up to the alignment padding)."""

    def __init__(self, metadata: dict, tensors: dict, data_end: int, file_size: int):
        self.metadata, self.tensors, self.data_end, self.file_size = metadata, tensors, data_end, file_size


def read_header(path: Path) -> Header:
    """The header of a GGUF file, checked: types known, shapes whole blocks, data inside the file."""
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
        metadata[key] = reader.value(reader.take("<I"), keep=not key.endswith("scores"))
    names, sizes = _gguf_types()
    tensors, ends = {}, [0]
    for _ in range(n_tensors):
        name = reader.string()
        n_dims = reader.take("<I")
        if not 1 <= n_dims <= 4:
            raise ModelLoadError(f"{where}: malformed GGUF tensor {name!r} ({n_dims} dimensions)")
        dims = tuple(reader.take("<Q") for _ in range(n_dims))
        kind, offset = reader.take("<I"), reader.take("<Q")
        block, block_bytes = sizes.get(kind, (1, 0))
        if kind not in sizes or not _dequantizable(kind):
            raise ModelLoadError(f"{where}: tensor type {names.get(kind, kind)} (of {name!r}) is not supported "
                                 f"(only types llama.cpp's gguf package dequantizes, such as F32, F16, Q4_0, Q8_0, Q4_K, Q6_K)")
        if min(dims) < 1 or dims[0] % block or math.prod(dims) > 1 << 40:
            raise ModelLoadError(f"{where}: malformed GGUF tensor {name!r} (shape {dims} for type {names[kind]})")
        tensors[name] = (kind, dims)
        ends.append(offset + math.prod(dims) // block * block_bytes)
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment < 1 or alignment & (alignment - 1):
        raise ModelLoadError(f"{where}: GGUF metadata general.alignment={alignment!r} is not a power of two")
    data_start = -(-reader.pos // alignment) * alignment
    return Header(metadata, tensors, data_start + max(ends), os.path.getsize(path))


def check_supported(path: Path, header: Header) -> str:
    """The architecture prefix of the metadata keys; ModelLoadError for what cannot be converted."""
    where = f"model.path={str(path)!r}"
    metadata = header.metadata
    if header.file_size < header.data_end:
        raise ModelLoadError(f"{where}: the file is {header.file_size:,} bytes but its header places tensor data up to "
                             f"byte {header.data_end:,} (truncated: tensor data extends past the end of the file)")
    arch = metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelLoadError(f"{where}: architecture {arch!r} is not supported (only {', '.join(ARCHITECTURES)})")
    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ModelLoadError(f"{where}: tokenizer {model!r} is not supported (only GPT-2 style byte-level BPE, 'gpt2')")
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ModelLoadError(f"{where}: pre-tokenizer {pre!r} is not supported (only {', '.join(PRE_TOKENIZERS)})")
    unknown = sorted(n for n in header.tensors if _mlx_name(n, arch) is None)
    if unknown:
        raise ModelLoadError(f"{where}: tensor {unknown[0]!r} is not part of a {arch} model")
    return arch


def _mlx_name(gguf_name: str, arch: str) -> str | None:
    base, _, kind = gguf_name.rpartition(".")
    if kind == "weight" and base in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[base] + ".weight"
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    if not match or match.group(2) not in _BLOCK_NAMES:
        return None
    if kind == "weight" or (kind == "bias" and arch == "qwen2" and match.group(2) in _BIASED):
        return f"model.layers.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}.{kind}"
    return None


# ----------------------------------------------------------------------------- metadata


def _int(metadata: dict, key: str, where: str, default=None, low: int = 1, high: int = 1 << 24) -> int:
    value = metadata.get(key, default)
    if value is None:
        raise ModelLoadError(f"{where}: GGUF metadata has no {key!r}")
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ModelLoadError(f"{where}: GGUF metadata {key}={value!r} is not allowed (an integer from {low} to {high})")
    return value


def _float(metadata: dict, key: str, where: str, default: float, low: float, high: float) -> float:
    value = metadata.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and low < value < high):
        raise ModelLoadError(f"{where}: GGUF metadata {key}={value!r} is not allowed (a number above {low} and below {high:g})")
    return float(value)


def token_id(metadata: dict, key: str, where: str) -> int | None:
    """The token id under `tokenizer.ggml.<key>_token_id`, checked against the vocabulary."""
    full = f"tokenizer.ggml.{key}_token_id"
    value = metadata.get(full)
    if value is None:
        return None
    n = len(metadata["tokenizer.ggml.tokens"])
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
        raise ModelLoadError(f"{where}: GGUF metadata {full}={value!r} is out of range (0..{n - 1}: the vocabulary "
                             f"has {n} tokens)")
    return value


def _check_tokenizer(metadata: dict, where: str) -> int:
    """Number of tokens; ModelLoadError for a vocabulary, merges or token types that do not fit."""
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ModelLoadError(f"{where}: GGUF metadata tokenizer.ggml.tokens is not a non-empty list of strings")
    types = metadata.get("tokenizer.ggml.token_type")
    if types is not None and (not isinstance(types, list) or len(types) != len(tokens)):
        raise ModelLoadError(f"{where}: GGUF metadata tokenizer.ggml.token_type has "
                             f"{len(types) if isinstance(types, list) else 'no list of'} entries for {len(tokens)} tokens")
    merges = metadata.get("tokenizer.ggml.merges", [])
    if not isinstance(merges, list):
        raise ModelLoadError(f"{where}: GGUF metadata tokenizer.ggml.merges is not a list of strings")
    for i, merge in enumerate(merges):
        if not isinstance(merge, str) or len(merge.split(" ")) != 2 or "" in merge.split(" "):
            raise ModelLoadError(f"{where}: GGUF metadata tokenizer.ggml.merges[{i}]={merge!r} is not 'LEFT RIGHT'")
    for key in ("bos", "eos", "padding", "unknown"):
        token_id(metadata, key, where)
    template = metadata.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise ModelLoadError(f"{where}: GGUF metadata tokenizer.chat_template is not a string")
    return len(tokens)


def model_config(header: Header, arch: str, where: str) -> dict:
    """config.json for mlx_lm's llama/qwen2 model from the GGUF's `<arch>.*` keys, every value checked
    against the others and against the tensors' shapes."""
    metadata, tensors = header.metadata, header.tensors
    n_tokens = _check_tokenizer(metadata, where)
    heads = _int(metadata, f"{arch}.attention.head_count", where, high=4096)
    kv_heads = _int(metadata, f"{arch}.attention.head_count_kv", where, default=heads, high=heads)
    if heads % kv_heads:
        raise ModelLoadError(f"{where}: GGUF metadata {arch}.attention.head_count_kv={kv_heads} does not divide "
                             f"{arch}.attention.head_count={heads}")
    hidden = _int(metadata, f"{arch}.embedding_length", where, high=1 << 20)
    if f"{arch}.attention.key_length" not in metadata and hidden % heads:
        raise ModelLoadError(f"{where}: GGUF metadata {arch}.embedding_length={hidden} is not a multiple of "
                             f"{arch}.attention.head_count={heads}")
    head_dim = _int(metadata, f"{arch}.attention.key_length", where, default=hidden // heads, high=1 << 16)
    if head_dim % 2 or (arch == "qwen2" and head_dim * heads != hidden):
        raise ModelLoadError(f"{where}: GGUF metadata gives a head size of {head_dim}, which {arch} cannot use")
    layers = _int(metadata, f"{arch}.block_count", where, high=4096)
    blocks = {int(n.split(".")[1]) for n in tensors if n.startswith("blk.")}
    if blocks != set(range(layers)):
        raise ModelLoadError(f"{where}: GGUF metadata {arch}.block_count={layers} does not match the tensors "
                             f"(blocks {min(blocks, default=0)}..{max(blocks, default=-1)})")
    embedding = tensors.get("token_embd.weight")
    if embedding is None or embedding[1] != (hidden, n_tokens):
        raise ModelLoadError(f"{where}: tensor 'token_embd.weight' has shape {embedding and embedding[1]}, not "
                             f"({hidden}, {n_tokens}) from {arch}.embedding_length and the {n_tokens} tokens")
    vocab = _int(metadata, f"{arch}.vocab_size", where, default=n_tokens, high=1 << 24)
    if vocab != n_tokens:
        raise ModelLoadError(f"{where}: GGUF metadata {arch}.vocab_size={vocab} does not match the {n_tokens} tokens")
    if f"{arch}.rope.scaling.type" in metadata:
        raise ModelLoadError(f"{where}: GGUF rope scaling {metadata[f'{arch}.rope.scaling.type']!r} is not supported")
    model_type, architecture = _MODEL_TYPES[arch]
    bos, eos = token_id(metadata, "bos", where), token_id(metadata, "eos", where)
    config = {
        "model_type": model_type,
        "architectures": [architecture],
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": _int(metadata, f"{arch}.feed_forward_length", where, high=1 << 22),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": _float(metadata, f"{arch}.attention.layer_norm_rms_epsilon", where, 1e-5, 0.0, 1.0),
        "rope_theta": _float(metadata, f"{arch}.rope.freq_base", where, 10000.0, 0.0, 1e12),
        "max_position_embeddings": _int(metadata, f"{arch}.context_length", where, default=4096, high=1 << 24),
        "vocab_size": vocab,
        # no output.weight: the head shares the embedding (SmolLM2 does)
        "tie_word_embeddings": "output.weight" not in tensors,
        "bos_token_id": 1 if bos is None else bos,
        "eos_token_id": 2 if eos is None else eos,
    }
    if arch == "qwen2":
        del config["head_dim"]  # qwen2 derives it from hidden_size / heads
    return config


def unpermute_rows(array: mx.array, n_head: int) -> mx.array:
    """Undo llama.cpp's q/k row permutation (convert_hf_to_gguf.py's `permute`).

    llama.cpp orders each head's rows as (half, pair) -> (pair, half); this is the inverse.
    """
    rows = array.shape[0]
    return array.reshape(n_head, rows // n_head // 2, 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)


def _unpermuted(module: str, array, config: dict, arch: str):
    if arch not in _PERMUTED_QK:
        return array
    if module.endswith("self_attn.q_proj"):
        return unpermute_rows(array, config["num_attention_heads"])
    if module.endswith("self_attn.k_proj"):
        return unpermute_rows(array, config["num_key_value_heads"])
    return array


# ----------------------------------------------------------------------------- conversion


def _write_folder(folder: Path, weights: dict, config: dict, metadata: dict) -> None:
    mx.save_safetensors(str(folder / "model.safetensors"), weights, {"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(metadata, folder)


def convert(path: Path, header: Header, folder: Path) -> None:
    """F32/F16/Q4_0/Q4_1/Q8_0 only: the weights as MLX reads them, quantized blocks kept exactly."""
    where = f"model.path={str(path)!r}"
    arch = header.metadata["general.architecture"]
    try:
        arrays = mx.load(str(path))
    except Exception as err:  # noqa: BLE001 - MLX raises RuntimeError/ValueError with its reason
        raise ModelLoadError(f"{where}: cannot read the GGUF tensors ({str(err).splitlines()[0][:200]})") from err
    config = model_config(header, arch, where)
    weights, quantization = mlx_weights(arrays, config, arch)
    if quantization:
        config["quantization"] = quantization
    _write_folder(folder, weights, config, header.metadata)


def convert_dequantized(path: Path, header: Header, folder: Path, dtype: str, bits: int | None, group_size: int) -> None:
    """Any type the gguf package dequantizes: float32 per tensor, then `dtype`, or MLX `bits`."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    where = f"model.path={str(path)!r}"
    arch = header.metadata["general.architecture"]
    config = model_config(header, arch, where)
    try:
        reader = GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - the reader raises ValueError/IndexError on malformed files
        raise ModelLoadError(f"{where}: cannot read the GGUF tensors ({str(err).splitlines()[0][:200]})") from err
    target = getattr(mx, dtype)
    weights: dict[str, mx.array] = {}
    for tensor in reader.tensors:
        name = _mlx_name(tensor.name, arch)
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        array = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(shape)
        module = name.rsplit(".", 1)[0]
        value = _unpermuted(module, mx.array(array), config, arch).astype(target)
        if bits and name.endswith(".weight") and value.ndim == 2 and value.shape[-1] % group_size == 0:
            weights[name], weights[f"{module}.scales"], weights[f"{module}.biases"] = mx.quantize(
                value, group_size=group_size, bits=bits)
        else:
            weights[name] = value
        mx.eval([weights[k] for k in weights if k.startswith(module)])
    if bits:
        config["quantization"] = {"group_size": group_size, "bits": bits}
    config["torch_dtype"] = dtype
    _write_folder(folder, weights, config, header.metadata)


def mlx_weights(arrays: dict, config: dict, arch: str) -> tuple[dict, dict | None]:
    """mlx_lm-named weights (q/k rows un-permuted) and the quantization block of config.json."""
    weights: dict[str, mx.array] = {}
    layer_bits: dict[str, int] = {}
    for name, array in arrays.items():
        base, _, part = name.rpartition(".")
        target = _mlx_name(base + (".bias" if part == "bias" else ".weight"), arch)
        if target is None or part not in ("weight", "scales", "biases", "bias"):
            raise ModelLoadError(f"GGUF tensor {name!r} is not part of a {arch} model")
        module = target.rsplit(".", 1)[0]
        weights[f"{module}.{part}"] = _unpermuted(module, array, config, arch)
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
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tokens = list(metadata["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]
    types = metadata.get("tokenizer.ggml.token_type")
    types = list(types or [1] * len(tokens))
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                     fuse_unk=False, byte_fallback=False))
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre == "smollm":  # SmolLM's tokenizer.json: digits one by one, then GPT-2's byte level
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    elif pre in ("llama-bpe", "llama3", "qwen2"):
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT if pre == "qwen2" else _LLAMA3_SPLIT), behavior="isolated",
                                 invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        if pre == "qwen2":  # Qwen2's tokenizer.json normalizes to NFC first
            tokenizer.normalizer = normalizers.NFC()
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    # 3 = control, 4 = user defined: matched whole in text, never split by BPE
    special = [AddedToken(t, special=k == 3, normalized=False) for t, k in zip(tokens, types) if k in (3, 4)]
    tokenizer.add_special_tokens([t for t in special if t.special])
    tokenizer.add_tokens([t for t in special if not t.special])
    post = [processors.ByteLevel(trim_offsets=False)]
    if _flag(metadata, "tokenizer.ggml.add_bos_token"):
        bos_id = token_id(metadata, "bos", "GGUF")
        if bos_id is None:
            raise ModelLoadError("GGUF metadata asks for a bos token (add_bos_token) but has no tokenizer.ggml.bos_token_id")
        bos = tokens[bos_id]
        bos_id = tokens.index(bos)
        post.append(processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                  special_tokens=[(bos, bos_id)]))
    tokenizer.post_processor = processors.Sequence(post)
    return tokenizer


def _flag(metadata: dict, key: str) -> bool:
    return bool(metadata.get(key, False))


def write_tokenizer(metadata: dict, folder: Path) -> None:
    """tokenizer.json + tokenizer_config.json (chat template, special tokens) that transformers loads."""
    tokens = list(metadata["tokenizer.ggml.tokens"])
    build_tokenizer(metadata).save(str(folder / "tokenizer.json"))

    def token(key: str) -> str | None:
        value = token_id(metadata, key, "GGUF")  # checked in model_config already
        return None if value is None else tokens[value]

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "unk_token": token("unknown"),
        "pad_token": token("padding"),
        "add_bos_token": _flag(metadata, "tokenizer.ggml.add_bos_token"),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(metadata.get(f"{metadata['general.architecture']}.context_length", 4096)),
    }
    if metadata.get("tokenizer.chat_template"):
        config["chat_template"] = metadata["tokenizer.chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if config.get(k)}, indent=2))

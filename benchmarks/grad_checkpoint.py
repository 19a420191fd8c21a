"""Gradient checkpointing on and off: peak memory and tokens/s of riscv_ft's loop, in one process.

The tiny model trains a few steps on batches of long synthetic samples (random tokens, the
second half of each sample the answer), once per sequence length and setting; beside each
measurement is what riscv_ft.memory.estimate_memory_gb predicts for the same configuration.

    python benchmarks/grad_checkpoint.py                     # lengths 512 1024 2048, batch 4
    python benchmarks/grad_checkpoint.py --seq 1024 --iters 10

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from riscv_ft.runtime import use_fast_blas  # noqa: E402

use_fast_blas()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from riscv_ft.cli import compose  # noqa: E402
from riscv_ft.data.batch import Sample  # noqa: E402
from riscv_ft.memory import estimate_memory_gb  # noqa: E402
from riscv_ft.model import apply_adapters, load_base  # noqa: E402
from riscv_ft.trainer import Trainer  # noqa: E402


def synthetic_samples(count: int, length: int, seed: int) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [Sample(rng.integers(5, 32000, size=length).tolist(), length // 2) for _ in range(count)]


def measure(seq: int, checkpoint: bool, args) -> dict:
    cfg = compose([
        "model=tiny", f"data.max_seq_length={seq}", f"trainer.batch_size={args.batch_size}",
        f"trainer.iters={args.iters}", f"trainer.grad_checkpoint={str(checkpoint).lower()}",
        f"trainer.report_every={args.iters}", "trainer.eval_every=0", "trainer.save_every=0",
        "trainer.val_batches=1", "tracking.enabled=false",
    ])
    loaded = load_base(cfg.model)
    mx.random.seed(0)
    apply_adapters(loaded.model, cfg.lora)
    trainer = Trainer.for_run(loaded.model, cfg)
    train = synthetic_samples(args.batch_size * args.iters, seq + 1, seed=1)  # seq inputs after the shift
    valid = synthetic_samples(args.batch_size, seq + 1, seed=2)
    summary = trainer.fit(train, valid, lambda step, metrics: None, lambda step: None)
    estimate = estimate_memory_gb(cfg)
    del trainer, loaded
    gc.collect()
    mx.clear_cache()
    return {
        "seq": seq, "grad_checkpoint": checkpoint,
        "peak_gb": round(summary["peak_memory_gb"], 3),
        "tokens_per_s": round(summary["all_tokens_per_s"], 1),
        "answer_tokens_per_s": round(summary["tokens_per_s"], 1),
        "estimate_gb": round(estimate["total_gb"] - estimate["overhead_gb"], 3),  # MLX's counter excludes Python
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--iters", type=int, default=6)
    args = parser.parse_args()

    rows = [measure(seq, checkpoint, args) for seq in args.seq for checkpoint in (False, True)]
    print(f"tiny model, batch {args.batch_size}, {args.iters} steps per row (first step's compile included)")
    print(f"{'seq':>6} {'checkpoint':>10} {'peak GB':>9} {'estimate GB':>12} {'tokens/s':>9}")
    for r in rows:
        print(f"{r['seq']:>6} {str(r['grad_checkpoint']):>10} {r['peak_gb']:>9.3f} {r['estimate_gb']:>12.3f} {r['tokens_per_s']:>9.1f}")
    ratios = {}
    for seq in args.seq:
        off, on = (next(r for r in rows if r["seq"] == seq and r["grad_checkpoint"] is c) for c in (False, True))
        ratios[str(seq)] = {"peak_on_over_off": round(on["peak_gb"] / off["peak_gb"], 3),
                            "speed_on_over_off": round(on["tokens_per_s"] / off["tokens_per_s"], 3)}
        print(f"seq {seq}: checkpointing keeps {ratios[str(seq)]['peak_on_over_off']:.2f}x the peak memory "
              f"at {ratios[str(seq)]['speed_on_over_off']:.2f}x the speed")
    print(json.dumps({"rows": rows, "ratios": ratios, "load_average": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()

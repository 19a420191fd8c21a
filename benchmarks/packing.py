"""Sequence packing on the real snapshot: padding share and samples per row, packed against
length-bucketed batches, and (with --iters) a short training run of each, compared at equal
samples seen.

    python benchmarks/packing.py --data ../shared/data/riscv-instruction-specification/train.jsonl
    python benchmarks/packing.py --data ... --iters 200 --batch-size 8 --pack-rows 1
"""

from __future__ import annotations

import argparse
import time

from riscv_ft.runtime import use_fast_blas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="JSONL file in the dataset schema")
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4, help="samples per unpacked batch")
    parser.add_argument("--pack-rows", type=int, default=4, help="rows per packed batch")
    parser.add_argument("--iters", type=int, default=0, help="training steps of the unpacked run (0: data only)")
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    use_fast_blas()

    from riscv_ft.cli import compose
    from riscv_ft.data.packing import packed_batches
    from riscv_ft.data.batch import padding_share
    from riscv_ft.data.pipeline import length_bucketed_batches, prepare
    from riscv_ft.model import load_base

    overrides = ["model=tiny", f"data.path={args.data}", f"data.max_seq_length={args.max_seq_length}",
                 "model.dtype=float32", "lora.rank=8"]
    cfg = compose(overrides)
    loaded = load_base(cfg.model)
    train = prepare(cfg.data, loaded.tokenizer, seed=0).samples["train"]
    started = time.perf_counter()
    packed = packed_batches(train, args.pack_rows, args.max_seq_length, seed=0)
    pack_seconds = time.perf_counter() - started
    unpacked = length_bucketed_batches(train, args.batch_size, 8, seed=0)
    print(f"{len(train)} training samples, {sum(len(s.tokens) - 1 for s in train)} positions")
    for name, batches in (("unpacked", unpacked), ("packed", packed)):
        rows = sum(len(b.inputs) for b in batches)
        real = sum(b.real_tokens for b in batches)
        print(f"{name:9s} batches {len(batches):4d}  rows {rows:4d}  shapes {len({b.inputs.shape for b in batches}):3d}  "
              f"samples/row {sum(b.samples for b in batches) / rows:5.2f}  real tokens/row {real / rows:6.1f}  "
              f"padding {100 * padding_share(batches):5.1f}%")
    print(f"packing one epoch took {pack_seconds * 1000:.0f} ms")
    if args.iters:
        _train_both(args, overrides, train)


def _train_both(args, overrides, train) -> None:
    """Unpacked for --iters steps, then packed for as many steps as see the same samples."""
    import mlx.core as mx

    from riscv_ft.cli import compose
    from riscv_ft.data.packing import packed_batches
    from riscv_ft.data.pipeline import prepare
    from riscv_ft.model import apply_adapters, load_base
    from riscv_ft.trainer import Trainer

    samples_wanted = args.iters * args.batch_size
    plan = packed_batches(train, args.pack_rows, args.max_seq_length, seed=0)
    per_step = sum(b.samples for b in plan) / len(plan)
    packed_iters = max(1, round(samples_wanted / per_step))
    for pack, rows, iters in ((False, args.batch_size, args.iters), (True, args.pack_rows, packed_iters)):
        cfg = compose([*overrides, f"trainer.batch_size={rows}", f"trainer.iters={iters}", f"trainer.learning_rate={args.lr}",
                       "trainer.eval_every=0", f"trainer.report_every={iters}", f"trainer.warmup_steps={max(iters // 10, 1)}"])
        loaded = load_base(cfg.model)
        data = prepare(cfg.data, loaded.tokenizer, seed=0)
        mx.random.seed(0)
        apply_adapters(loaded.model, cfg.lora)
        trainer = Trainer(loaded.model, cfg.trainer, 8, pack_length=args.max_seq_length if pack else 0)
        started = time.perf_counter()
        summary = trainer.fit(data.samples["train"], data.samples["valid"], lambda step, m: None, lambda step: None)
        print(f"{'packed' if pack else 'unpacked':9s} steps {iters:4d}  samples seen {summary['samples_seen']:5d}  "
              f"val loss {summary['val_loss']:.4f}  train loss {summary['train_loss']:.4f}  "
              f"all tok/s {summary['all_tokens_per_s']:.0f}  padding {100 * summary['padding_share']:.1f}%  "
              f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

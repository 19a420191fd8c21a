"""exp on the CPU: MLX's mx.exp against riscv_ft.device.exp (2**x), and what it changes in the
decoder: SmolLM2-135M float32, one compiled decoding step at batch 32 (96 cache positions) with
mlx-lm's swiglu and MLX's softmax against ours (`inference._swiglu`, `inference._softmax`),
alternated in one process with the project's BLAS set-up; then 32 held-out prompts answered in
one batch both ways (tokens/s; the answers compared token for token). Prints each round and
the ratios of the medians.
    python benchmarks/exp_cpu.py [--rounds 3]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from riscv_ft.runtime import use_fast_blas  # noqa: E402

use_fast_blas()

import mlx.core as mx  # noqa: E402  (after the BLAS set-up)
from mlx_lm.models import activations  # noqa: E402

import riscv_ft.inference as inference  # noqa: E402
from riscv_ft import device  # noqa: E402
from riscv_ft.cli import compose  # noqa: E402
from riscv_ft.data.pipeline import prepare_rows  # noqa: E402
from riscv_ft.model import load_base  # noqa: E402

from generate_speed import SMOKE, SNAPSHOT  # noqa: E402  (this folder: the same data as that benchmark)

OURS = {"_swiglu": inference._swiglu, "_softmax": inference._softmax}
MLX = {"_swiglu": activations.swiglu, "_softmax": lambda s: mx.softmax(s, axis=-1, precise=True)}


def use(kernels: dict) -> None:
    for name, fn in kernels.items():
        setattr(inference, name, fn)


def exp_alone(rounds: int) -> float:
    """30 x (32, 1536) values a call: the gates of SmolLM2's 30 MLPs in one decoding step."""
    gates = [mx.random.normal((32, 1, 1536), key=mx.random.key(i)) for i in range(30)]
    ways = {"mx.exp": mx.compile(mx.exp), "device.exp": mx.compile(device.exp)}
    times = {name: [] for name in ways}
    for f in ways.values():
        mx.eval([f(g) for g in gates])
    for r in range(rounds):
        for name, f in ways.items():
            t = time.perf_counter()
            for _ in range(20):
                mx.eval([f(g) for g in gates])
            times[name].append((time.perf_counter() - t) / 20 * 1e3)
            print(f"round {r}  {name:10s} {times[name][-1]:6.2f} ms for 30 x (32, 1536) values", flush=True)
    return statistics.median(times["mx.exp"]) / statistics.median(times["device.exp"])


def decode_step(model, rounds: int, batch: int = 32, capacity: int = 96) -> float:
    shapes = inference._kv_shapes(model)
    keys = [mx.random.normal((batch, h, capacity, d), key=mx.random.key(i)) for i, (h, d, _, _) in enumerate(shapes)]
    values = [mx.random.normal((batch, h, capacity, d), key=mx.random.key(100 + i)) for i, (h, _, d, _) in enumerate(shapes)]
    mx.eval(keys, values)
    y = mx.zeros((batch, 1), dtype=mx.int32)
    start, prefix, write_at = mx.zeros((batch,), dtype=mx.int32), mx.array(0, dtype=mx.int32), mx.array(capacity - 20, dtype=mx.int32)
    times = {"mlx": [], "ours": []}
    for r in range(rounds):
        for name, kernels in (("mlx", MLX), ("ours", OURS)):
            use(kernels)
            step = inference._compiled_step(model)  # traced again with these kernels
            for i in range(23):
                if i == 3:
                    t = time.perf_counter()
                logits, _, _ = step(y, keys, values, write_at, start, prefix)
                mx.eval(mx.argmax(logits, axis=-1))
            times[name].append((time.perf_counter() - t) / 20 * 1e3)
            print(f"round {r}  decoding step, {name:4s} exp: {times[name][-1]:6.1f} ms", flush=True)
    use(OURS)
    return statistics.median(times["mlx"]) / statistics.median(times["ours"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with mx.stream(mx.cpu):
        alone = exp_alone(args.rounds)
        cfg = compose(["model=smollm2", f"data.path={SNAPSHOT if SNAPSHOT.is_file() else SMOKE}",
                       "tracking.enabled=false"])
        loaded = load_base(cfg.model)
        model, tokenizer = loaded.model, loaded.tokenizer
        model.eval()
        step = decode_step(model, args.rounds)
        splits, _ = prepare_rows(cfg.data, cfg.trainer.seed)
        prompts = [inference.prompt_tokens(tokenizer, r["description"], cfg.data.prompt_format) for r in (splits["test"] + splits["valid"])[:32]]
        stops = inference.stop_ids(tokenizer)
        answers, rates = {}, {"mlx": [], "ours": []}
        for r in range(args.rounds):
            for name, kernels in (("mlx", MLX), ("ours", OURS)):
                use(kernels)
                t = time.perf_counter()
                answers[name] = inference.decode_prompts(model, prompts, 64, stops=stops)
                tokens = sum(min(len(a) + 1, 64) for a in answers[name])  # the stop token computed too
                rates[name].append(tokens / (time.perf_counter() - t))
                print(f"round {r}  32 prompts in one batch, {name:4s} exp: {rates[name][-1]:6.1f} tokens/s", flush=True)
        use(OURS)
    same = sum(a == b for a, b in zip(answers["ours"], answers["mlx"]))
    whole = statistics.median(rates["ours"]) / statistics.median(rates["mlx"])
    print(f"device.exp is {alone:.2f}x mx.exp's speed; with it the decoding step is {step:.2f}x, a batch of 32 "
          f"answers {whole:.2f}x ({statistics.median(rates['ours']):.1f} tokens/s; medians of {args.rounds}); "
          f"identical answers {same}/{len(prompts)}")


if __name__ == "__main__":
    main()

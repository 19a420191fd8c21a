"""Generation speed: our decoder (riscv_ft.inference) against mlx-lm's own generate and
batch_generate, on the same model, the same held-out prompts and the same greedy settings, in
one process.

    python benchmarks/generate_speed.py                                  # SmolLM2-135M float32
    python benchmarks/generate_speed.py --model tiny --single 4 --batch 8
    python benchmarks/generate_speed.py --model PATH --adapters RUN/adapters

Two rows, each ours against mlx-lm's:
- one stream: `--single` prompts one at a time (mlx_lm.stream_generate, what mlx_lm.generate
  runs; ours: decode_prompts with one prompt);
- batch: `--batch` prompts in one batch (mlx_lm.batch_generate; ours: decode_prompts).
tokens/s is generated tokens (each row's stop token counted) over wall-clock seconds including
the prompt's prefill; the CPU seconds of the process beside it are less disturbed by other
processes on a shared machine. The load average (`os.getloadavg`, 1 min) is printed next to
each figure. Answers are compared token for token. The last line of stdout is one JSON object.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from riscv_ft.runtime import use_fast_blas  # noqa: E402

use_fast_blas()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import mlx.core as mx  # noqa: E402

from riscv_ft.cli import compose  # noqa: E402
from riscv_ft.data.pipeline import prepare_rows  # noqa: E402
from riscv_ft.data.snapshot import snapshot_file  # noqa: E402
from riscv_ft.inference import decode_prompts, prompt_tokens, stop_ids  # noqa: E402
from riscv_ft.model import load_base  # noqa: E402
from riscv_ft.runtime import blas_in_use  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SNAPSHOT = snapshot_file()
SMOKE = REPO / "riscv_ft" / "data" / "smoke.jsonl"


def mlx_lm_one_by_one(model, tokenizer, prompts, max_tokens, sampler):
    """mlx_lm.stream_generate per prompt: the generated ids (stop token left out), tokens computed."""
    from mlx_lm import stream_generate

    stops = stop_ids(tokenizer)
    answers, computed = [], 0
    for prompt in prompts:
        ids = [r.token for r in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens, sampler=sampler)]
        computed += len(ids)
        answers.append([t for t in ids[: next((i for i, t in enumerate(ids) if t in stops), len(ids))]])
    return answers, computed


def mlx_lm_batch(model, tokenizer, prompts, max_tokens, sampler):
    from mlx_lm import batch_generate

    response = batch_generate(model, tokenizer, prompts, max_tokens=max_tokens, sampler=sampler, return_token_ids=True)
    return response.token_ids, _computed(response.token_ids, max_tokens)


def ours(model, tokenizer, prompts, max_tokens, sampler, batch_size):
    answers = decode_prompts(model, prompts, max_tokens, batch_size, sampler, stop_ids(tokenizer))
    return answers, _computed(answers, max_tokens)


def _computed(answers, max_tokens) -> int:
    # An answer shorter than max_tokens ended with a stop token, which was computed too.
    return sum(min(len(a) + 1, max_tokens) for a in answers)


def timed(fn, *args):
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    answers, tokens = fn(*args)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"answers": answers, "tokens": tokens, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "tokens_per_s": round(tokens / wall, 1), "tokens_per_cpu_s": round(tokens / cpu, 1),
            "load_average": round((load + os.getloadavg()[0]) / 2, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="smollm2 (default, float32), tiny, or a model folder / repo id")
    parser.add_argument("--adapters", default=None, help="an adapters/ folder written by a training run")
    parser.add_argument("--data", default=None, help="JSONL file (default: the real snapshot if present, else smoke.jsonl)")
    parser.add_argument("--single", type=int, default=8, help="prompts for the one-stream row")
    parser.add_argument("--batch", type=int, default=32, help="prompts (= batch size) for the batch row")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    data_path = args.data or str(SNAPSHOT if SNAPSHOT.is_file() else SMOKE)
    if args.model in ("tiny", "smollm2"):
        model_overrides = [f"model={args.model}"]
    else:
        model_overrides = ["model=mistral7b", f"model.path={args.model}", "model.quantize.enabled=false"]
    cfg = compose([*model_overrides, f"data.path={data_path}", "tracking.enabled=false"])
    splits, _ = prepare_rows(cfg.data, cfg.trainer.seed)
    held_out = splits["test"] + splits["valid"]
    descriptions = [r["description"] for r in held_out[: max(args.single, args.batch)]]

    loaded = load_base(cfg.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    if args.adapters:
        from mlx_lm.tuner.utils import load_adapters

        model = load_adapters(model, args.adapters)
    model.eval()
    from mlx_lm.sample_utils import make_sampler

    sampler = make_sampler(temp=0.0)
    prompts = [prompt_tokens(tokenizer, d, cfg.data.prompt_format) for d in descriptions]
    n = args.max_tokens

    # Warm-up: MLX's CPU kernels are compiled once per machine (cached in a temp folder), but a
    # process's first batch of each shape still costs more (benchmarks/exp_cpu.py's round 0 ran
    # at 0.7x the later rounds): both decoders answer the batch once, untimed.
    decode_prompts(model, prompts[: args.batch], n, args.batch, sampler)
    mlx_lm_batch(model, tokenizer, prompts[: args.batch], n, sampler)

    rows = {
        "single_mlx_lm": timed(mlx_lm_one_by_one, model, tokenizer, prompts[: args.single], n, sampler),
        "single_ours": timed(ours, model, tokenizer, prompts[: args.single], n, sampler, 1),
        "batch_mlx_lm": timed(mlx_lm_batch, model, tokenizer, prompts[: args.batch], n, sampler),
        "batch_ours": timed(ours, model, tokenizer, prompts[: args.batch], n, sampler, args.batch),
    }
    print(f"model {cfg.model.name} ({model_overrides[-1]}), {mx.default_device()}, {blas_in_use()}; "
          f"greedy, up to {n} new tokens; prompt tokens: mean {sum(map(len, prompts)) / len(prompts):.0f}")
    summary = {}
    for kind, label in (("single", f"one stream ({args.single} prompts)"), ("batch", f"batch of {args.batch}")):
        theirs, mine = rows[f"{kind}_mlx_lm"], rows[f"{kind}_ours"]
        same = sum(a == b for a, b in zip(theirs["answers"], mine["answers"]))
        for who, r in (("mlx-lm", theirs), ("ours", mine)):
            print(f"{label:24s} {who:7s} {r['tokens']:5d} tokens {r['wall_s']:7.2f} s  {r['tokens_per_s']:7.1f} tokens/s  "
                  f"({r['tokens_per_cpu_s']:7.1f} per CPU s)  load average {r['load_average']:.2f}")
        ratio = mine["tokens_per_s"] / theirs["tokens_per_s"]
        print(f"{label:24s} ours / mlx-lm {ratio:.2f}x; identical answers {same}/{len(mine['answers'])}")
        summary[kind] = {"prompts": len(mine["answers"]), "identical_answers": same, "ratio": round(ratio, 2),
                         **{f"{who}_{k}": r[k] for who, r in (("mlx_lm", theirs), ("ours", mine))
                            for k in ("tokens", "wall_s", "cpu_s", "tokens_per_s", "tokens_per_cpu_s", "load_average")}}
    print(json.dumps({"model": args.model, "adapters": args.adapters, "max_tokens": n, "device": str(mx.default_device()),
                      "blas": blas_in_use(), **summary}))


if __name__ == "__main__":
    main()

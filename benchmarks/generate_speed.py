"""Batched generation (riscv_ft.inference.generate_answers) against one prompt at a time
(mlx_lm.generate), on the same test prompts with the same greedy settings, in one process.

    python benchmarks/generate_speed.py                      # tiny model, 64 test prompts
    python benchmarks/generate_speed.py --model PATH --adapters RUN/adapters --max-tokens 128

Both paths get the same token ids (the chat template, no second BOS). Greedy decoding makes
the answers comparable: the script reports how many match exactly (batched decoding pads
prompts on the left, so float rounding can flip a near-tie now and then). A model with random
weights rarely stops early, so both paths generate about max_tokens per prompt.
The last line of stdout is one JSON object.
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
from riscv_ft.data.pipeline import prepare_rows, prompt_text  # noqa: E402
from riscv_ft.inference import generate_answers  # noqa: E402
from riscv_ft.model import load_base  # noqa: E402
from riscv_ft.runtime import blas_in_use  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SNAPSHOT = REPO.parent / "shared" / "data" / "riscv-instruction-specification" / "train.jsonl"
SMOKE = REPO / "riscv_ft" / "data" / "smoke.jsonl"


def one_by_one(model, tokenizer, descriptions: list[str], prompt_format: str, max_tokens: int) -> tuple[list[str], int]:
    """mlx_lm.stream_generate (what mlx_lm.generate runs) per prompt; answers and tokens generated."""
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    sampler = make_sampler(temp=0.0)
    answers, generated = [], 0
    for d in descriptions:
        prompt = tokenizer.encode(prompt_text(d, tokenizer, prompt_format), add_special_tokens=prompt_format != "chat")
        text, last = "", None
        for last in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens, sampler=sampler):
            text += last.text
        answers.append(text.strip())
        generated += last.generation_tokens if last is not None else 0
    return answers, generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny (default) or a model folder / repo id")
    parser.add_argument("--adapters", default=None, help="an adapters/ folder written by a training run")
    parser.add_argument("--data", default=None, help="JSONL file (default: the real snapshot if present, else smoke.jsonl)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per batch_generate call")
    args = parser.parse_args()

    data_path = args.data or str(SNAPSHOT if SNAPSHOT.is_file() else SMOKE)
    model_overrides = ["model=tiny"] if args.model == "tiny" else ["model=mistral7b", f"model.path={args.model}", "model.quantize.enabled=false"]
    cfg = compose([*model_overrides, f"data.path={data_path}", "tracking.enabled=false"])
    splits, _ = prepare_rows(cfg.data, cfg.trainer.seed)
    held_out = splits["test"] + splits["valid"]
    descriptions = [r["description"] for r in held_out[: args.prompts]]

    loaded = load_base(cfg.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    if args.adapters:
        from mlx_lm.tuner.utils import load_adapters

        model = load_adapters(model, args.adapters)
    model.eval()
    fmt = cfg.data.prompt_format

    generate_answers(model, tokenizer, descriptions[:2], fmt, max_tokens=4, batch_size=2)  # warm-up
    start = time.perf_counter()
    batched = generate_answers(model, tokenizer, descriptions, fmt, max_tokens=args.max_tokens, batch_size=args.batch_size)
    batched_s = time.perf_counter() - start

    start = time.perf_counter()
    single, generated = one_by_one(model, tokenizer, descriptions, fmt, args.max_tokens)
    single_s = time.perf_counter() - start

    same = sum(a == b for a, b in zip(batched, single))
    ratio = single_s / batched_s
    print(f"{len(descriptions)} prompts, up to {args.max_tokens} new tokens each, greedy; model {cfg.model.name}, "
          f"{mx.default_device()}, {blas_in_use()}")
    print(f"one by one (mlx_lm.generate): {single_s:7.2f} s  {generated / single_s:8.1f} tokens/s")
    print(f"batched ({args.batch_size} a batch):      {batched_s:7.2f} s  {generated / batched_s:8.1f} tokens/s")
    print(f"speed-up {ratio:.2f}x; identical answers {same}/{len(descriptions)}")
    print(json.dumps({
        "model": args.model, "adapters": args.adapters, "prompts": len(descriptions), "max_tokens": args.max_tokens,
        "batch_size": args.batch_size, "generated_tokens": generated,
        "one_by_one_s": round(single_s, 3), "batched_s": round(batched_s, 3), "speedup": round(ratio, 3),
        "one_by_one_tokens_per_s": round(generated / single_s, 1), "batched_tokens_per_s": round(generated / batched_s, 1),
        "identical_answers": same, "device": str(mx.default_device()), "blas": blas_in_use(),
        "load_average": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()

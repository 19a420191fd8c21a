"""The cost of verified decoding (riscv_ft/evaluate/verified.py) beside greedy's, in one process:
seconds per answer and functional answers on the first N shipped user-style prompts.

    python benchmarks/verify_cost.py                                  # model=smollm2, 8 prompts, 8 samples
    python benchmarks/verify_cost.py --model tiny --prompts 4 --samples 2
    python benchmarks/verify_cost.py --adapters RUN/adapters          # a tuned SmolLM2

Greedy: one batch of N answers. Verified: the same greedy answers plus N x samples sampled ones
(temperature 0.7), assembled, run and grouped; its seconds include the greedy answers'. A warm-up
generation runs first. The last line of stdout is one JSON object.
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

import mlx.core as mx  # noqa: E402

from riscv_ft.cli import compose  # noqa: E402
from riscv_ft.data.user_prompts import load_user_prompts  # noqa: E402
from riscv_ft.evaluate.model_eval import evaluate_model  # noqa: E402
from riscv_ft.inference import generate_answers  # noqa: E402
from riscv_ft.model import load_base  # noqa: E402
from riscv_ft.runtime import blas_in_use  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="a model config name: smollm2 (default) or tiny")
    parser.add_argument("--adapters", default=None, help="an adapters/ folder written by a training run")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    cfg = compose([f"model={args.model}", "tracking.enabled=false"])
    loaded = load_base(cfg.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    if args.adapters:
        from mlx_lm.tuner.utils import load_adapters

        model = load_adapters(model, args.adapters)
    fmt = cfg.data.prompt_format
    rows = load_user_prompts()[: args.prompts]
    generate_answers(model, tokenizer, [r["description"] for r in rows[:2]], fmt, max_tokens=4)  # warm-up
    scored, summary = evaluate_model(model, tokenizer, rows, fmt, args.max_tokens, decode="verify",
                                     samples=args.samples, seed=0)
    verified = summary["verified"]
    greedy_s, verify_s = summary["seconds_per_answer"], verified["seconds_per_answer"]
    print(f"{len(rows)} user-style prompts, up to {args.max_tokens} new tokens; model {args.model}"
          f"{' + ' + args.adapters if args.adapters else ''}, {mx.default_device()}, {blas_in_use()}")
    print(f"greedy:                   {greedy_s:7.3f} s per answer, functional {summary['functional']}/{summary['functional_n']}")
    print(f"verified ({args.samples} samples):     {verify_s:7.3f} s per answer, functional "
          f"{verified['functional']}/{verified['functional_n']}  ({verify_s / greedy_s:.1f}x greedy's time)")
    changed = sum(r["prediction"] != r["verified"]["prediction"] for r in scored)
    print(f"answers changed by verification: {changed}/{len(rows)}")
    print(json.dumps({
        "model": args.model, "adapters": args.adapters, "prompts": len(rows), "samples": args.samples,
        "max_tokens": args.max_tokens, "greedy_s_per_answer": greedy_s, "verified_s_per_answer": verify_s,
        "ratio": round(verify_s / greedy_s, 2), "greedy_functional": summary["functional"],
        "verified_functional": verified["functional"], "functional_n": summary["functional_n"],
        "answers_changed": changed, "device": str(mx.default_device()), "blas": blas_in_use(),
        "load_average": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()

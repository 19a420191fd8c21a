"""Evaluating a model: answer held-out descriptions (batched, greedy), score the answers.

With decode="verify" the same rows are also answered by verified decoding (verified.py) and
scored again: the summary's `verified` block, beside the greedy figures, and the cost of each
in seconds per answer (`seconds_per_answer`, `verified.seconds_per_answer`).

Used at the end of every training run and by `python -m riscv_ft.evaluate run=RUN_DIR`.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections import defaultdict
from pathlib import Path

from riscv_ft.data.user_prompts import ROW_FIELDS
from riscv_ft.evaluate.scorer import score_rows, summarize
from riscv_ft.evaluate.verified import DECODES, SAMPLES, verified_answers
from riscv_ft.answer_cache import cached_answers
from riscv_ft.rv.assembler import AssemblerNotFound
from riscv_ft.rv.reference import CLASSES, classify, normalize

log = logging.getLogger(__name__)

# Figures worth a metric in MLflow (the rest stays in eval_summary.json).
HEADLINE = ("exact_match_rate", "mnemonic_match_rate", "assembles_rate", "same_encoding_rate", "functional_rate")


def select_rows(rows: list[dict], num_rows: int, seed: int) -> tuple[list[dict], dict]:
    """The rows to evaluate and how they were chosen.

    The whole split when it has at most `num_rows` rows (or num_rows is -1); else a seeded
    sample stratified by reference class (reference.classify), each class getting its share
    of `num_rows` (largest remainders first), in the split's order. The first rows of a
    split are no fair sample: they over-represent some classes.
    """
    if num_rows == -1 or len(rows) <= num_rows:
        return list(rows), {"method": "whole split", "rows": len(rows), "split_rows": len(rows)}
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_class[classify(row["instructions"])].append(i)
    exact = {c: num_rows * len(idx) / len(rows) for c, idx in by_class.items()}
    counts = {c: int(v) for c, v in exact.items()}
    for c in sorted(exact, key=lambda c: (counts[c] - exact[c], CLASSES.index(c)))[: num_rows - sum(counts.values())]:
        counts[c] += 1
    rng = random.Random(seed)
    chosen = sorted(i for c in sorted(by_class) for i in rng.sample(by_class[c], counts[c]))
    return [rows[i] for i in chosen], {
        "method": "stratified sample", "rows": len(chosen), "split_rows": len(rows), "seed": seed,
        "classes": {c: counts[c] for c in CLASSES if c in counts},
    }


def answer_rows(model, tokenizer, rows: list[dict], prompt_format: str, max_tokens: int,
                batch_size: int = 32, answers: list[str] | None = None, identity: str | None = None) -> list[dict]:
    """Each row's description answered: {description, reference, prediction} (and the row's
    category and scratch), the scorer's input. `answers` given: those instead of the model's.
    With the model's `identity` (answer_cache.model_identity; base models only) the answers are
    cached on disk (answer_cache.cached_answers)."""
    if answers is None:
        answers, _ = cached_answers(identity, model, tokenizer, [r["description"] for r in rows], prompt_format,
                                    max_tokens, batch_size)
    return [{"description": r["description"], "reference": r["instructions"], "prediction": a,
             **{k: r[k] for k in ROW_FIELDS if k in r}} for r, a in zip(rows, answers)]


def evaluate_model(model, tokenizer, rows: list[dict], prompt_format: str, max_tokens: int,
                   assembler: str = "auto", batch_size: int = 32, decode: str = "greedy",
                   samples: int = SAMPLES, seed: int | None = None, identity: str | None = None) -> tuple[list[dict], dict]:
    """Answer each row's description and score the answer against its instructions.

    decode="verify": the rows are answered by verified decoding too (the greedy answers are
    its tie-breakers, so they come for free); each scored row gets a `verified` field with that
    answer's verdict and the summary a `verified` block."""
    if decode not in DECODES:
        raise ValueError(f"decode={decode!r}: expected one of {', '.join(DECODES)}")
    # a cached base answer costs what answering it took when it was made (cached_answers)
    answers, greedy_s = cached_answers(identity, model, tokenizer, [r["description"] for r in rows], prompt_format,
                                       max_tokens, batch_size)
    pairs = answer_rows(model, tokenizer, rows, prompt_format, max_tokens, answers=answers)
    try:
        scored = score_rows(pairs, assembler=assembler)
    except AssemblerNotFound as err:
        # Still useful without an assembler: exact match needs none (and verifying needs one).
        log.warning("no RISC-V assembler (%s); scoring exact match only", str(err).splitlines()[0])
        scored = [{**p, "exact_match": normalize(p["reference"]) == normalize(p["prediction"])} for p in pairs]
        return scored, _exact_only(scored)
    summary = summarize(scored)
    summary["seconds_per_answer"] = _per_answer(greedy_s, rows)
    if decode == "verify":
        if seed is not None:  # the same samples on a rerun
            import mlx.core as mx

            mx.random.seed(seed)
        started = time.perf_counter()
        answers, _ = verified_answers(model, tokenizer, [r["description"] for r in rows], prompt_format, max_tokens,
                                      batch_size, samples=samples, greedy=[p["prediction"] for p in pairs],
                                      assembler=assembler, scratch=[r.get("scratch") for r in rows])
        # the cost of a verified answer includes its greedy answer
        verify_s = greedy_s + time.perf_counter() - started
        verified = score_rows(answer_rows(model, tokenizer, rows, prompt_format, max_tokens, answers=answers),
                              assembler=assembler)
        for row, v in zip(scored, verified):
            row["verified"] = {k: v[k] for k in ("prediction", "assembles", "functional", "error")}
        summary["verified"] = {**summarize(verified), "samples": samples,
                               "seconds_per_answer": _per_answer(verify_s, rows)}
    return scored, summary


def _per_answer(seconds: float, rows: list) -> float | None:
    return round(seconds / len(rows), 4) if rows else None


def _exact_only(scored: list[dict]) -> dict:
    n = len(scored)
    hits = sum(bool(r["exact_match"]) for r in scored)
    return {"rows": n, "exact_match": hits, "exact_match_n": n, "exact_match_rate": round(hits / n, 4) if n else None}


def headline_metrics(summary: dict, prefix: str = "eval_") -> dict:
    """The figures worth an MLflow metric, with the assembly-class functional rate (the one
    rate that checks behaviour on the dataset's runnable references), the functional rate of
    one- and multi-instruction tasks and of each category, the seconds per answer, and with
    verified decoding the same under `<prefix>verified_`."""
    metrics = {f"{prefix}{k}": summary[k] for k in HEADLINE if summary.get(k) is not None}
    assembly = summary.get("classes", {}).get("assembly", {})
    if assembly.get("functional_rate") is not None:
        metrics[f"{prefix}assembly_functional_rate"] = assembly["functional_rate"]
    for size, block in summary.get("instructions", {}).items():  # one, multi
        if block.get("functional_rate") is not None:
            metrics[f"{prefix}{size}_functional_rate"] = block["functional_rate"]
    for category, block in summary.get("categories", {}).items():
        if block.get("functional_rate") is not None:
            metrics[f"{prefix}category_{metric_name(category)}_functional_rate"] = block["functional_rate"]
    if summary.get("seconds_per_answer") is not None:
        metrics[f"{prefix}seconds_per_answer"] = summary["seconds_per_answer"]
    if summary.get("verified"):
        metrics.update(headline_metrics(summary["verified"], f"{prefix}verified_"))
    return metrics


def metric_name(text: str) -> str:
    """A category as part of a metric name: lower case, [a-z0-9_] only."""
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_") or "none"


def write_evaluation(run_dir: Path, scored: list[dict], summary: dict, name: str = "eval") -> None:
    write_scored(run_dir / f"{name}.jsonl", scored)
    (run_dir / f"{name}_summary.json").write_text(json.dumps(summary, indent=2))


def write_scored(path: Path, scored: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in scored:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def describe(summary: dict) -> str:
    def pct(key):
        value = summary.get(key)
        return "n/a" if value is None else f"{100 * value:.1f}% of {summary.get(key.replace('_rate', '_n'))}"

    assembly = summary.get("classes", {}).get("assembly", {})
    on_assembly = ("" if assembly.get("functional_rate") is None else
                   f" (assembly-class rows: {100 * assembly['functional_rate']:.1f}% of {assembly['functional_n']})")
    sizes = summary.get("instructions", {})
    by_size = "".join(f", {name}-instruction {_fraction(sizes[name])}" for name in ("one", "multi")
                      if sizes.get(name, {}).get("functional_n"))
    text = (f"Evaluation on {summary.get('rows')} rows: exact match {pct('exact_match_rate')}, "
            f"assembles {pct('assembles_rate')}, functional {pct('functional_rate')}{on_assembly}{by_size}")
    if summary.get("seconds_per_answer") is not None:
        text += f"; {summary['seconds_per_answer']:.3f} s per answer"
    if summary.get("verified"):
        text += f"\n    verified decoding ({summary['verified'].get('samples')} samples): {describe(summary['verified'])}"
    return text


def _fraction(block: dict) -> str:
    """`12/18 (66.7%)` functional, or n/a."""
    n = block.get("functional_n")
    return f"{block['functional']}/{n} ({100 * block['functional'] / n:.1f}%)" if n else "n/a"


def compare_table(columns: list[tuple[str, dict]], title: str) -> str:
    """Functional rates side by side (e.g. base | tuned | tuned verified): one- and
    multi-instruction tasks, each category, everything, and seconds per answer."""
    columns = [(name, block) for name, block in columns if block]
    if not columns:
        return ""
    rows = [("one-instruction", lambda b: b.get("instructions", {}).get("one", {})),
            ("multi-instruction", lambda b: b.get("instructions", {}).get("multi", {}))]
    categories = sorted({c for _, b in columns for c in b.get("categories", {})})
    rows += [(f"category {c}", lambda b, c=c: b.get("categories", {}).get(c, {})) for c in categories]
    rows.append(("all", lambda b: b))
    width = max(len(label) for label, _ in rows)
    lines = [f"{title}, functional: " + " | ".join(name for name, _ in columns)]
    for label, pick in rows:
        lines.append(f"  {label:<{width}}  " + " | ".join(f"{_fraction(pick(b)):>16}" for _, b in columns))
    seconds = [b.get("seconds_per_answer") for _, b in columns]
    lines.append(f"  {'s per answer':<{width}}  " + " | ".join(f"{'n/a' if s is None else f'{s:.3f}':>16}" for s in seconds))
    return "\n".join(lines)

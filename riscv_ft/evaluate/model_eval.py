"""Evaluating a model: answer held-out descriptions (batched, greedy), score the answers.

Used at the end of every training run and by `python -m riscv_ft.evaluate run=RUN_DIR`.
"""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from pathlib import Path

from riscv_ft.evaluate.assembler import AssemblerNotFound
from riscv_ft.evaluate.reference import CLASSES, classify, normalize
from riscv_ft.evaluate.scorer import score_rows, summarize
from riscv_ft.inference import cached_answers

log = logging.getLogger(__name__)

# Figures worth a metric in MLflow (the rest stays in eval_summary.json).
HEADLINE = ("exact_match_rate", "mnemonic_match_rate", "assembles_rate", "same_encoding_rate", "functional_rate")
# User-style prompts with reference assembly, written by hand (not by data/synthetic.py): a second
# test set, answered in every evaluation next to the held-out split.
USER_PROMPTS = Path(__file__).resolve().parent.parent / "data" / "user_prompts.jsonl"


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


def load_user_prompts(path: Path = USER_PROMPTS) -> list[dict]:
    """The shipped user-style prompt set as rows of {description, instructions}."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"description": r["description"], "instructions": r["instructions"]} for r in rows]


def answer_rows(model, tokenizer, rows: list[dict], prompt_format: str, max_tokens: int,
                batch_size: int = 32, identity: str | None = None) -> list[dict]:
    """Each row's description answered: {description, reference, prediction}, the scorer's input.
    With the model's `identity` (inference.model_identity; base models only) the answers are
    cached on disk (inference.cached_answers)."""
    answers = cached_answers(identity, model, tokenizer, [r["description"] for r in rows], prompt_format, max_tokens, batch_size)
    return [{"description": r["description"], "reference": r["instructions"], "prediction": a} for r, a in zip(rows, answers)]


def evaluate_model(model, tokenizer, rows: list[dict], prompt_format: str, max_tokens: int,
                   assembler: str = "auto", batch_size: int = 32, identity: str | None = None) -> tuple[list[dict], dict]:
    """Answer each row's description and score the answer against its instructions."""
    pairs = answer_rows(model, tokenizer, rows, prompt_format, max_tokens, batch_size, identity)
    try:
        scored = score_rows(pairs, assembler=assembler)
    except AssemblerNotFound as err:
        # Still useful without an assembler: exact match needs none.
        log.warning("no RISC-V assembler (%s); scoring exact match only", str(err).splitlines()[0])
        scored = [{**p, "exact_match": normalize(p["reference"]) == normalize(p["prediction"])} for p in pairs]
        return scored, _exact_only(scored)
    return scored, summarize(scored)


def _exact_only(scored: list[dict]) -> dict:
    n = len(scored)
    hits = sum(bool(r["exact_match"]) for r in scored)
    return {"rows": n, "exact_match": hits, "exact_match_n": n, "exact_match_rate": round(hits / n, 4) if n else None}


def headline_metrics(summary: dict, prefix: str = "eval_") -> dict:
    """The figures worth an MLflow metric, with the assembly-class functional rate (the one
    rate that checks behaviour on the dataset's runnable references)."""
    metrics = {f"{prefix}{k}": summary[k] for k in HEADLINE if summary.get(k) is not None}
    assembly = summary.get("classes", {}).get("assembly", {})
    if assembly.get("functional_rate") is not None:
        metrics[f"{prefix}assembly_functional_rate"] = assembly["functional_rate"]
    return metrics


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
    return (f"Evaluation on {summary.get('rows')} rows: exact match {pct('exact_match_rate')}, "
            f"assembles {pct('assembles_rate')}, functional {pct('functional_rate')}{on_assembly}")

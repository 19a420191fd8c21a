"""Evaluating a model: answer held-out descriptions (batched, greedy), score the answers.

Used at the end of every training run and by `python -m riscv_ft.evaluate run=RUN_DIR`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from riscv_ft.evaluate.assembler import AssemblerNotFound
from riscv_ft.evaluate.reference import normalize
from riscv_ft.evaluate.scorer import score_rows, summarize
from riscv_ft.inference import generate_answers

log = logging.getLogger(__name__)

# Figures worth a metric in MLflow (the rest stays in eval_summary.json).
HEADLINE = ("exact_match_rate", "mnemonic_match_rate", "assembles_rate", "same_encoding_rate", "functional_rate")


def answer_rows(model, tokenizer, rows: list[dict], prompt_format: str, max_tokens: int,
                batch_size: int = 32) -> list[dict]:
    """Each row's description answered: {description, reference, prediction}, the scorer's input."""
    answers = generate_answers(model, tokenizer, [r["description"] for r in rows], prompt_format, max_tokens, batch_size)
    return [{"description": r["description"], "reference": r["instructions"], "prediction": a} for r, a in zip(rows, answers)]


def evaluate_model(model, tokenizer, rows: list[dict], prompt_format: str, max_tokens: int,
                   assembler: str = "auto", batch_size: int = 32) -> tuple[list[dict], dict]:
    """Answer each row's description and score the answer against its instructions."""
    pairs = answer_rows(model, tokenizer, rows, prompt_format, max_tokens, batch_size)
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


def headline_metrics(summary: dict) -> dict:
    return {f"eval_{k}": summary[k] for k in HEADLINE if summary.get(k) is not None}


def write_evaluation(run_dir: Path, scored: list[dict], summary: dict) -> None:
    with open(run_dir / "eval.jsonl", "w", encoding="utf-8") as f:
        for row in scored:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (run_dir / "eval_summary.json").write_text(json.dumps(summary, indent=2))


def describe(summary: dict) -> str:
    def pct(key):
        value = summary.get(key)
        return "n/a" if value is None else f"{100 * value:.1f}% of {summary.get(key.replace('_rate', '_n'))}"

    return (f"Evaluation on {summary.get('rows')} held-out rows: exact match {pct('exact_match_rate')}, "
            f"assembles {pct('assembles_rate')}, functional {pct('functional_rate')}")

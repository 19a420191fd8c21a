"""The table of SmolLM2 recipe runs: one row per run folder under RUNS (a sweep's job
folders, or run folders copied back from a machine without an assembler).

    python benchmarks/smollm2_table.py RUNS [--rescore]

Columns: validation loss, then functional rates (right answers, checked by running them in the
emulator against the reference) on the assembly-class rows of the real test split and on the
user-style prompts, tuned and (where the run answered with the base too) base, and the wall time.
--rescore scores each run's eval*.jsonl again here with the real assembler and emulator (for
runs made on a machine without an assembler); the files are not changed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from riscv_ft.evaluate.scorer import score_rows, summarize  # noqa: E402


def rates(path: Path, rescore: bool) -> tuple[str, str]:
    """(assembly-class functional, all-rows functional) of one scored answers file, as 'k/n'."""
    if not path.is_file():
        return "", ""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if rescore:
        rows = score_rows([{k: r[k] for k in ("description", "reference", "prediction")} for r in rows])
    summary = summarize(rows)
    assembly = summary.get("classes", {}).get("assembly", {})
    fmt = lambda d: f"{d.get('functional', 0)}/{d.get('functional_n', 0)}" if d.get("functional_n") else "n/a"  # noqa: E731
    return fmt(assembly), fmt(summary)


def pct(fraction: str) -> str:
    if "/" not in fraction:
        return fraction
    k, n = map(int, fraction.split("/"))
    return f"{100 * k / n:.1f}% ({fraction})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--rescore", action="store_true")
    args = parser.parse_args()
    print("| run | val loss | test split, assembly rows: tuned | base | user-style prompts: tuned | base | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for run in sorted(p for p in args.runs.iterdir() if (p / "metrics.json").is_file()):
        metrics = json.loads((run / "metrics.json").read_text())
        tuned_test, _ = rates(run / "eval.jsonl", args.rescore)
        base_test, _ = rates(run / "base_eval.jsonl", args.rescore)
        _, tuned_user = rates(run / "eval_user.jsonl", args.rescore)
        _, base_user = rates(run / "base_eval_user.jsonl", args.rescore)
        print(f"| {run.name} | {metrics.get('val_loss', float('nan')):.3f} | {pct(tuned_test)} | {pct(base_test)} "
              f"| {pct(tuned_user)} | {pct(base_user)} | {metrics.get('wall_time_s', 0):.0f} |")


if __name__ == "__main__":
    main()

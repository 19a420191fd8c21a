"""Command line for the model-free scorer.

    python -m riscv_ft.score IN.jsonl --out OUT.jsonl [--assembler auto|gnu|llvm-mc|clang|zig]

IN.jsonl has one JSON object per line with string fields `reference` and `prediction` (other
fields are kept). OUT.jsonl gets the same rows with the fields described in
riscv_ft/evaluate/scorer.py. The last line printed on stdout is a JSON summary (counts and rates
of every metric, overall and per reference class).

Input errors are all-or-nothing: a missing file, a line that is not a JSON object, or a row
without string `reference`/`prediction` prints one line on stderr naming the file and line, and
exits with status 2 before anything is scored (no traceback). Blank lines are skipped. A bad
*answer* (any string at all) is never an input error: it is scored, and its row says why it
failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + error
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


class InputError(Exception):
    pass


def read_rows(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read: {err}")
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{n}: not valid JSON ({err.msg})")
        if not isinstance(row, dict):
            raise InputError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        for key in ("reference", "prediction"):
            if key not in row:
                raise InputError(f"{path}:{n}: missing field {key!r}")
            if not isinstance(row[key], str):
                raise InputError(f"{path}:{n}: field {key!r} must be a string, got {type(row[key]).__name__}")
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m riscv_ft.score", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, help="JSONL with reference and prediction fields")
    parser.add_argument("--out", type=Path, required=True, help="where to write the scored rows (JSONL)")
    parser.add_argument("--assembler", default="auto", choices=["auto", "gnu", "llvm-mc", "clang", "zig"])
    args = parser.parse_args(argv)

    from riscv_ft.rv.assembler import AssemblerNotFound, find_assembler
    from riscv_ft.rv.reference import CLASSES
    from riscv_ft.evaluate.scorer import score_rows, summarize

    try:
        rows = read_rows(args.input)
        assembler = find_assembler(args.assembler)
    except (InputError, AssemblerNotFound) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    scored = score_rows(rows, assembler)
    seconds = time.perf_counter() - start
    try:
        with open(args.out, "w", encoding="utf-8") as fh:
            for row in scored:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    except OSError as err:
        print(f"error: cannot write {args.out}: {err}", file=sys.stderr)
        return 2

    summary = summarize(scored)
    summary.update(assembler=assembler.name, seconds=round(seconds, 3),
                   rows_per_s=round(len(rows) / seconds, 1) if seconds > 0 else None)
    print(f"{len(rows)} rows scored with {assembler.name} in {seconds:.2f} s -> {args.out}")
    for name in ("all", *CLASSES):
        block = summary if name == "all" else summary["classes"][name]
        if block["rows"]:
            rates = "  ".join(f"{m}={_fmt(block[m + '_rate'])}" for m in
                              ("exact_match", "mnemonic_match", "assembles", "same_encoding", "functional"))
            print(f"  {name:<12} rows={block['rows']:<6} {rates}")
    print(json.dumps(summary))
    return 0


def _fmt(rate) -> str:
    return "-" if rate is None else f"{rate:.3f}"


if __name__ == "__main__":
    sys.exit(main())

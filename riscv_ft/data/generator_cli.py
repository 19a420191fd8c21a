"""The command line the two row generators share (`python -m riscv_ft.data.synthetic`, `python
-m riscv_ft.data.tasks`): draw and verify rows, then write them as JSONL, whole or not at all.

Errors are one line on stderr with exit code 2 (a template that fails verification, an
impossible --rows, an --out that cannot be written; argparse's own usage errors print usage
too); an existing --out file is replaced only by a complete new one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from riscv_ft.data.tasks.base import VerificationError
from riscv_ft.sources.cache import write_text_atomically


def run_generator(argv: list[str] | None, prog: str, description: str, make_rows: Callable[[argparse.Namespace], list[dict]],
                  add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    add_arguments(parser)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-verify", action="store_true", help="skip assembling and running each row")
    parser.add_argument("--assembler", default="auto")
    args = parser.parse_args(argv)
    if not args.out.name or args.out.is_dir():  # before minutes of verification, not after
        return _error(f"--out {args.out}: a folder; give a file name")
    if not args.out.parent.is_dir():
        return _error(f"--out {args.out}: no folder {args.out.parent}")
    try:
        rows = make_rows(args)
    except (VerificationError, RuntimeError, ValueError) as err:
        return _error(str(err))
    try:
        write_text_atomically(args.out, "".join(json.dumps(row) + "\n" for row in rows))
    except OSError as err:
        return _error(f"--out {args.out}: {err.strerror or err}")
    print(f"wrote {len(rows)} {'rows (not verified)' if args.no_verify else 'verified rows'} to {args.out}")
    return 0


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2

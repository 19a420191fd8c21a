"""How many rows per second the model-free scorer handles on typical 1-3 instruction rows.

    python benchmarks/score_speed.py [--rows 5000] [--repeat 3] [--assembler auto]

Rows: references are generated pairs (riscv_ft.data.synthetic, not verified here); predictions
are a realistic mix for a model under training: 35% identical, 10% case/spacing variants,
20% equivalent-but-different code (swapped operands, other registers), 20% a different
instruction, 10% garbage that fails to assemble, 5% hostile (directives, traps, loops). Every
repeat uses a fresh emulator, so no run profits from an earlier run's cache. Assembler discovery
(a one-off probe) is not timed.

Prints one line per repeat, then, as the last line, a JSON object with `rows_per_s` (the median).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from riscv_ft.data.synthetic import synthetic_rows  # noqa: E402
from riscv_ft.rv.assembler import find_assembler  # noqa: E402
from riscv_ft.rv.emulator import Emulator  # noqa: E402
from riscv_ft.evaluate.scorer import score_rows, summarize  # noqa: E402

HOSTILE = ['.incbin "/etc/passwd"', "ecall", "j .", "sd a0, 0(zero)", "j nowhere", "ebreak", ".rept 9\nnop\n.endr"]
GARBAGE = ["add a0, a1", "the answer is add", "addi a0, a1, 99999", "lw a0, a1", "foo bar baz", ""]
OTHER_REGS = ["a0", "a1", "a2", "a3", "t0", "t1", "t2", "s1", "s2", "a5"]


def _variant(ref: str, pool: list[dict], rng: random.Random) -> str:
    r = rng.random()
    if r < 0.35:
        return ref
    if r < 0.45:
        return ref.upper().replace(", ", ",") if rng.random() < 0.5 else ref.replace(", ", " ,  ")
    if r < 0.65:  # often equivalent, different bytes: swap the two sources or rename a register
        lines = []
        for line in ref.split("\n"):
            mnemonic, _, ops = line.partition(" ")
            parts = ops.split(", ")
            if len(parts) == 3 and mnemonic in ("add", "and", "or", "xor", "mul", "addw", "mulw"):
                parts[1], parts[2] = parts[2], parts[1]
            elif parts and rng.random() < 0.5:
                parts[0] = rng.choice(OTHER_REGS)
            lines.append(f"{mnemonic} {', '.join(parts)}".strip())
        return "\n".join(lines)
    if r < 0.85:
        return rng.choice(pool)["instructions"]
    if r < 0.95:
        return rng.choice(GARBAGE)
    return rng.choice(HOSTILE)


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def make_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    pool = synthetic_rows(count, seed=seed, verify=False)
    return [{"reference": row["instructions"], "prediction": _variant(row["instructions"], pool, rng),
             "description": row["description"]} for row in pool]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--assembler", default="auto")
    args = parser.parse_args()

    asm = find_assembler(args.assembler)
    rows = make_rows(args.rows, args.seed)
    speeds = []
    for k in range(args.repeat):
        emulator = Emulator()  # cold cache every repeat
        cpu_start = _cpu_seconds()
        start = time.perf_counter()
        scored = score_rows(rows, asm, emulator=emulator)
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu_start
        speeds.append(len(rows) / seconds)
        summary = summarize(scored)
        # CPU time (this process + assembler processes) shows the cost when other jobs share the cores
        print(f"repeat {k + 1}: {len(rows)} rows in {seconds:.3f} s = {speeds[-1]:,.0f} rows/s "
              f"(CPU {cpu:.3f} s; assembler {asm.name}; functional_rate {summary['functional_rate']}, "
              f"assembles_rate {summary['assembles_rate']})")
    result = {"rows_per_s": round(statistics.median(speeds), 1), "rows": len(rows), "repeats": args.repeat,
              "assembler": asm.name, "min_rows_per_s": round(min(speeds), 1)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Score predicted RISC-V answers against references without a model.

Fields added to each row (see the README of this package, riscv_ft/evaluate/__init__.py):

    reference_class  assembly | mnemonic | pseudo-code | directive | other (reference.py)
    exact_match      equal after normalizing whitespace, case and commas
    mnemonic_match   same mnemonic (or directive) per statement; null for pseudo-code/other
    assembles        the prediction assembles for RV64GC; null unless the reference is assembly
    same_encoding    prediction and reference assemble to identical machine code (both with the
                     same options, so `mv a0,a1` and `addi a0,a1,0` are the same instruction);
                     null when the reference does not assemble
    functional       same end state from the same 10 random initial states (emulator.py; the
                     reference's load/store bases point into the data region in each), and
                     from states whose registers sit next to each constant either program
                     uses (so `slti a0, a1, 29` is not taken for `slti a0, a1, 32`);
                     false when the prediction does not assemble; null when the reference is
                     not runnable assembly
    error            why something failed, else null: the prediction's assembler error or
                     refusal, "reference does not assemble: ...[; prediction: ...]", or
                     "not equivalent: from initial state k, <first difference> [reference:
                     <disassembly>; prediction: <disassembly>]"

A row may carry `scratch`: register names (ABI or x/f) whose final value does not count, so
an answer may use another temporary than the reference; every other register and memory must
still match. A run that never ends (hits the emulator's step limit) is never functional, even
when the reference loops too.

Placeholders (`rd`, `imm`, `label`...) are bound to the same concrete operands in reference and
prediction first (reference.bind_placeholders). Nothing here raises for a bad answer: garbage,
hostile directives, traps, faults and endless loops all end up in the row's fields.

Not thread-safe: score_rows shares one emulator per process (pass `emulator=` to use another).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

from riscv_ft.rv.assembler import Assembler, find_assembler
from riscv_ft.rv.emulator import NO_SCRATCH, Emulator, Scratch, boundary_states, disassemble
from riscv_ft.rv.reference import CLASSES, bind_placeholders, classify, instruction_count, mnemonics, normalize
from riscv_ft.rv.sanitize import REGISTERS

METRICS = ("exact_match", "mnemonic_match", "assembles", "same_encoding", "functional")
_MNEMONIC_CLASSES = ("assembly", "mnemonic", "directive")

_emulator: Emulator | None = None
# An integer operand: not the digits of a register name (x10, s1) or of a label.
_CONSTANT = re.compile(r"(?<![\w.])[-+]?(?:0x[0-9a-f]+|\d+)\b", re.IGNORECASE)


_BASE = re.compile(r"\(\s*([a-z0-9]+)\s*\)", re.IGNORECASE)


def base_registers(text: str) -> frozenset[int]:
    """Integer registers used as load/store/atomic bases: `8(a1)`, `(a0)`."""
    regs = (REGISTERS.get(m.group(1).lower()) for m in _BASE.finditer(text))
    return frozenset(n for r in regs if r and r[0] == "x" and r[1] != 0 for n in [r[1]])


def constants(text: str) -> list[int]:
    """The integer literals of an assembly text, in order of appearance."""
    return [int(m.group(0), 0) for m in _CONSTANT.finditer(text)]


def scratch_registers(names, row: int | str = "?") -> Scratch:
    """A row's `scratch` (register names, ABI or x/f) as register numbers; ValueError naming the
    row for anything else (a caller bug, like a missing reference)."""
    if names is None:
        return NO_SCRATCH
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ValueError(f"row {row}: field 'scratch' must be a list of register names, not {names!r}")
    x, f = set(), set()
    for name in names:
        reg = REGISTERS.get(name.strip().lower()) if isinstance(name, str) else None
        if reg is None:
            raise ValueError(f"row {row}: scratch register {name!r} is not a register name "
                             "(ABI names such as t0/ft0, or x0-x31/f0-f31)")
        (x if reg[0] == "x" else f).add(reg[1])
    return Scratch(frozenset(x), frozenset(f))


def default_emulator() -> Emulator:
    """One emulator per process: its machine and per-program cache are reused across calls."""
    global _emulator
    if _emulator is None:
        _emulator = Emulator()
    return _emulator


def score_rows(rows: Sequence[dict], assembler: str | Assembler = "auto",
               emulator: Emulator | None = None) -> list[dict]:
    """Rows with `reference` and `prediction` -> copies with the metric fields added.

    A row whose reference or prediction is missing or not text raises ValueError (a caller
    bug, not a bad answer); every property of the answers themselves is a per-row result.
    """
    scratch = []
    for i, row in enumerate(rows):
        for key in ("reference", "prediction"):
            if not isinstance(row.get(key), str):
                raise ValueError(f"row {i}: field {key!r} is missing or not a string")
        scratch.append(scratch_registers(row.get("scratch"), i))
    asm = find_assembler(assembler)
    emu = emulator or default_emulator()

    out: list[dict] = []
    jobs: list[tuple[dict, str, str, Scratch]] = []  # (output row, bound reference, bound prediction, scratch)
    for row, row_scratch in zip(rows, scratch):
        ref, pred = row["reference"], row["prediction"]
        cls = classify(ref)
        scored: dict[str, Any] = dict(row)
        scored.update(reference_class=cls, exact_match=normalize(ref) == normalize(pred),
                      mnemonic_match=None, assembles=None, same_encoding=None, functional=None, error=None)
        if cls in _MNEMONIC_CLASSES:
            ref_m, pred_m = mnemonics(ref), mnemonics(pred)
            # a bare-mnemonic reference matches any prediction that uses that one mnemonic
            scored["mnemonic_match"] = bool(pred_m) and pred_m == ref_m
        if cls == "assembly":
            bound_ref, bound_pred, _ = bind_placeholders(ref, pred)
            jobs.append((scored, bound_ref, bound_pred, row_scratch))
        out.append(scored)

    results = asm.assemble_many([t for _, r, p, _ in jobs for t in (r, p)])
    for k, (scored, bound_ref, bound_pred, row_scratch) in enumerate(jobs):
        ref_res, pred_res = results[2 * k], results[2 * k + 1]
        scored["assembles"] = pred_res.ok
        if not ref_res.ok:
            scored["error"] = f"reference does not assemble: {ref_res.error}"
            if not pred_res.ok:
                scored["error"] += f"; prediction: {pred_res.error}"
            continue
        if not pred_res.ok:
            scored.update(same_encoding=False, functional=False, error=pred_res.error)
            continue
        same = ref_res.program.code == pred_res.program.code
        scored["same_encoding"] = same
        try:
            # the reference's load/store bases point into memory in every state
            pointers = base_registers(bound_ref)
            if same:  # identical bytes at the same address cannot behave differently...
                loops = emu.endless(ref_res.program, pointers)  # ...but an endless loop is never functional
                difference = None if loops is None else (loops, "the reference does not end (no exit within "
                                                                "the step limit)")
            else:
                difference = emu.first_difference(pred_res.program, emu.run_all(ref_res.program, pointers),
                                                  pointers, row_scratch)
            literals = constants(bound_ref) + constants(bound_pred) if difference is None and not same else []
            if literals:  # the random states agree: try the values next to each constant
                edges = boundary_states(literals, like=emu.states_for(pointers)[-1], keep=pointers)
                extra = emu.difference_from(ref_res.program, pred_res.program, edges, row_scratch)
                difference = extra and (len(emu.states) + extra[0], extra[1])
        except Exception as err:  # noqa: BLE001 - an emulator bug must not end a long evaluation
            scored["error"] = f"emulator error: {type(err).__name__}: {err}"
            continue
        scored["functional"] = difference is None
        if difference is not None:
            k_state, detail = difference
            # the machine code after binding and pseudo-instruction expansion says what ran
            scored["error"] = (f"not equivalent: from initial state {k_state}, {detail} "
                               f"[reference: {disassemble(ref_res.program.code)}; "
                               f"prediction: {disassemble(pred_res.program.code)}]")
    return out


def _block(rows: Iterable[dict]) -> dict[str, Any]:
    rows = list(rows)
    block: dict[str, Any] = {"rows": len(rows)}
    for metric in METRICS:
        values = [r[metric] for r in rows if r.get(metric) is not None]
        block[metric] = sum(bool(v) for v in values)
        block[f"{metric}_n"] = len(values)  # rows the metric applies to: the rate's denominator
        block[f"{metric}_rate"] = round(block[metric] / len(values), 4) if values else None
    block["errors"] = sum(1 for r in rows if r.get("error"))
    return block


def summarize(scored_rows: Sequence[dict]) -> dict[str, Any]:
    """Counts and rates of every metric, overall and per reference class.

    `<metric>` is how many rows were true, `<metric>_n` how many rows it applies to (not
    null), `<metric>_rate` the ratio (null if it applies to none). exact_match applies to every
    row; assembles/same_encoding/functional only to assembly references. `instructions` splits
    the assembly-class rows into `one` and `multi` (reference.instruction_count), `categories`
    (present when rows carry a `category`) has a block per category.
    """
    summary = _block(scored_rows)
    summary["classes"] = {cls: _block(r for r in scored_rows if r.get("reference_class") == cls)
                          for cls in CLASSES}
    # assembly-class rows by the size of the task: one instruction or several (reference's count)
    assembly = [r for r in scored_rows if r.get("reference_class") == "assembly"]
    summary["instructions"] = {
        "one": _block(r for r in assembly if instruction_count(r["reference"]) <= 1),
        "multi": _block(r for r in assembly if instruction_count(r["reference"]) > 1)}
    categories = sorted({str(r["category"]) for r in scored_rows if r.get("category") is not None})
    if categories:  # rows tagged by kind of task (the user-style prompts)
        summary["categories"] = {c: _block(r for r in scored_rows if str(r.get("category")) == c) for c in categories}
    return summary

"""Extra training rows mixed into the real data's training split (never into valid/test):

* `synthetic`: assembler-verified pairs from riscv_ft.data.synthetic (concrete operands);
* `tasks`: verified multi-instruction tasks from riscv_ft.data.tasks (min with a branch, a
  bit-field insert, a stack frame, a counted loop, FP loads and stores...);
* `user_style`: plain requests the way users type them ("put a1 plus a2 in a0", "load the
  word at 8(sp) into t0"), generated here from phrasings of their own with concrete registers
  and immediates, each checked by assembling and running it against itself;
* oversampling: assembly-class rows of the real data repeated, so the few runnable targets
  weigh more against pseudo-code and bare mnemonics.

The user-style evaluation set (data/user_prompts.jsonl) is written by hand, and nothing here
reads it: a test (tests/test_user_prompts.py) checks with `near_copies` that no evaluation
description is a near copy of a description that any generator here writes.
"""

from __future__ import annotations

import difflib
import json
import logging
import random
import re

log = logging.getLogger(__name__)

_REGS = ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "t0", "t1", "t2", "t3", "t4", "t5", "t6",
         "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7"]

# (assembly template, phrasings). {d} destination, {a} {b} sources, {i} immediate, {o} offset,
# {m} base register. Phrasings are plain requests, not the synthetic generator's templates.
_OPS: list[tuple[str, list[str]]] = [
    ("add {d}, {a}, {b}", ["{d} should hold {a} plus {b}", "put {a} plus {b} in {d}", "Add {a} to {b}, result goes to {d}.",
                           "I want {d} = {a} + {b}", "compute the sum {a}+{b} into {d}"]),
    ("sub {d}, {a}, {b}", ["{d} should hold {a} minus {b}", "Subtract {b} from {a} into {d}.", "I want {d} = {a} - {b}",
                           "take {b} away from {a} and keep it in {d}"]),
    ("mul {d}, {a}, {b}", ["multiply {a} and {b}, put the product in {d}", "I want {d} = {a} * {b}", "{d} gets {a} times {b}"]),
    ("div {d}, {a}, {b}", ["signed divide {a} by {b} into {d}", "{d} = {a} / {b} (signed)", "quotient of {a} over {b} in {d}"]),
    ("divu {d}, {a}, {b}", ["unsigned divide {a} by {b} into {d}", "{d} = {a} / {b}, unsigned"]),
    ("rem {d}, {a}, {b}", ["{d} = {a} mod {b} (signed)", "signed remainder of {a} by {b} into {d}"]),
    ("remu {d}, {a}, {b}", ["{d} = {a} mod {b}, unsigned", "unsigned remainder of {a} divided by {b} in {d}"]),
    ("and {d}, {a}, {b}", ["{d} = {a} & {b}", "AND {a} with {b} and put it in {d}", "mask {a} by {b}; {d} holds the outcome"]),
    ("or {d}, {a}, {b}", ["{d} = {a} | {b}", "OR together {a} and {b} into {d}", "combine the bits of {a} and {b} into {d}"]),
    ("xor {d}, {a}, {b}", ["{d} = {a} ^ {b}", "exclusive-or {a} and {b} into {d}", "xor {a} and {b}; {d} gets the outcome"]),
    ("sll {d}, {a}, {b}", ["shift {a} left by {b} bits into {d}", "{d} = {a} << {b}"]),
    ("srl {d}, {a}, {b}", ["logical right shift of {a} by {b} into {d}", "{d} = {a} >> {b} (logical)"]),
    ("sra {d}, {a}, {b}", ["arithmetic right shift of {a} by {b} into {d}", "{d} = {a} >> {b}, keeping the sign"]),
    ("slt {d}, {a}, {b}", ["{d} = 1 if {a} < {b} else 0 (signed)", "is {a} smaller than {b}? answer 0/1 in {d}",
                           "make {d} one when {a} is below {b}, zero otherwise"]),
    ("sltu {d}, {a}, {b}", ["{d} = 1 if {a} < {b} as unsigned values", "unsigned compare: {d} = ({a} < {b})"]),
    ("addw {d}, {a}, {b}", ["32-bit add {a} and {b}, sign-extended into {d}", "add the low words of {a} and {b} into {d}"]),
    ("subw {d}, {a}, {b}", ["32-bit subtract {b} from {a} into {d}", "word-sized {d} = {a} - {b}"]),
    ("addi {d}, {a}, {i}", ["add {i} to {a} and put it in {d}", "{d} = {a} + {i}", "{d} gets {a} plus {i}"]),
    ("andi {d}, {a}, {i}", ["{d} = {a} & {i}", "AND {a} with the constant {i} into {d}"]),
    ("ori {d}, {a}, {i}", ["{d} = {a} | {i}", "set the bits of {i} in {a}, result to {d}"]),
    ("xori {d}, {a}, {i}", ["{d} = {a} ^ {i}", "xor {a} with {i} into {d}"]),
    ("slti {d}, {a}, {i}", ["{d} = 1 if {a} < {i}, else 0", "check whether {a} is less than {i}; 1 or 0 in {d}"]),
    ("slli {d}, {a}, {s}", ["shift {a} left by {s} into {d}", "{d} = {a} << {s}", "multiply {a} by 2^{s} with a shift into {d}"]),
    ("srli {d}, {a}, {s}", ["shift {a} right by {s} (zero fill) into {d}", "{d} = {a} >> {s}, logical"]),
    ("srai {d}, {a}, {s}", ["shift {a} right by {s} keeping the sign, into {d}", "{d} = {a} >> {s}, arithmetic"]),
    ("li {d}, {i}", ["set {d} to {i}", "{d} = {i}", "put the number {i} in {d}", "{d} gets the immediate {i}"]),
    ("mv {d}, {a}", ["copy {a} to {d}", "{d} = {a}", "move the value of {a} into {d}"]),
    ("neg {d}, {a}", ["{d} = -{a}", "put minus {a} in {d}"]),
    ("not {d}, {a}", ["{d} = ~{a}", "invert every bit of {a} into {d}"]),
    ("seqz {d}, {a}", ["{d} = 1 if {a} == 0", "{d} becomes 1 exactly when {a} is zero"]),
    ("snez {d}, {a}", ["{d} = 1 if {a} != 0", "{d} becomes 1 exactly when {a} is nonzero"]),
    ("lw {d}, {o}({m})", ["read the 32-bit word at {o}({m}) into {d}", "{d} = word at address {m}+{o}",
                          "fetch the word {o} bytes past {m} into {d}"]),
    ("ld {d}, {o}({m})", ["read the doubleword at {o}({m}) into {d}", "{d} = 64-bit value at {m}+{o}"]),
    ("lbu {d}, {o}({m})", ["{d} = unsigned byte at {o}({m})", "read one byte (zero-extended) from {o}({m}) into {d}"]),
    ("lb {d}, {o}({m})", ["{d} = signed byte at {o}({m})", "read a sign-extended byte from {o}({m}) into {d}"]),
    ("lhu {d}, {o}({m})", ["{d} = unsigned halfword at {o}({m})"]),
    ("sw {a}, {o}({m})", ["write {a} as a word to {o}({m})", "save the low 32 bits of {a} at {m}+{o}",
                          "put the word in {a} into memory at {o}({m})"]),
    ("sd {a}, {o}({m})", ["write the doubleword {a} to {o}({m})", "save {a} (64-bit) at {m}+{o}"]),
    ("sb {a}, {o}({m})", ["put the lowest 8 bits of {a} into memory at {o}({m})", "save one byte of {a} at {m}+{o}"]),
    ("sh {a}, {o}({m})", ["put the low 16 bits of {a} into memory at {o}({m})"]),
]
_JOINERS = ["{0}, then {1}", "First {0}. Then {1}.", "{0}; after that {1}", "{0} and then {1}"]


def _mask(text: str) -> str:
    """A description with registers and numbers masked: what two phrasings share."""
    text = re.sub(r"\b(?:[astx]\d+|zero|ra|sp|gp|tp|fp|f[at]?s?\d+)\b", "R", text.lower())
    return re.sub(r"-?\b(?:0x[0-9a-f]+|\d+)\b", "N", text).strip(" .?!")


def masked_tokens(text: str) -> tuple[str, ...]:
    """Words and operators of a description, lower case, registers as R and numbers as N,
    sentence punctuation dropped: a template filled twice gives the same tokens."""
    return tuple(t for t in re.findall(r"[a-z_.]+|[^\sa-z_.]", _mask(text).replace("R", " r ").replace("N", " n "))
                 if t not in ".,;!?")


def near_copies(held_out: list[str], generated: list[str], threshold: float = 0.8) -> list[tuple[float, str, str]]:
    """(ratio, held-out text, generated text) for each held-out description whose masked tokens
    match some generated description's with difflib ratio >= threshold (1.0: the same template)."""
    pool = {}
    for text in generated:
        pool.setdefault(masked_tokens(text), text)
    found = []
    for text in held_out:
        tokens = masked_tokens(text)
        matcher = difflib.SequenceMatcher(autojunk=False)
        matcher.set_seq2(tokens)
        best, best_ratio = None, 0.0
        for candidate in pool:
            matcher.set_seq1(candidate)
            bar = max(best_ratio, threshold)  # the cheap upper bounds skip most candidates
            if matcher.real_quick_ratio() < bar or matcher.quick_ratio() < bar:
                continue
            ratio = matcher.ratio()
            if ratio >= bar:
                best, best_ratio = candidate, ratio
        if best is not None:
            found.append((round(best_ratio, 3), text, pool[best]))
    return found


def _one(rng: random.Random) -> tuple[str, str]:
    asm, phrasings = rng.choice(_OPS)
    regs = rng.sample(_REGS, 3)
    values = {"d": regs[0], "a": regs[1], "b": regs[2], "i": str(rng.choice([rng.randint(-64, 64), rng.randint(-2048, 2047)])),
              "s": str(rng.randint(1, 31)), "o": str(rng.choice([0, 4, 8, 12, 16, 24, 32, 40])), "m": rng.choice(["sp", "a0", "a1", "s0", "t0"])}
    if values["m"] in (values["d"], values["a"]):
        values["m"] = "sp"
    if asm.startswith("andi") or asm.startswith("ori") or asm.startswith("xori"):
        values["i"] = str(rng.randint(0, 255))
    return rng.choice(phrasings).format(**values), asm.format(**values)


def user_style_rows(num_rows: int, seed: int, assembler: str = "auto") -> list[dict]:
    """`num_rows` verified user-style pairs of one or two instructions, deterministic for `seed`."""
    from riscv_ft.evaluate.scorer import score_rows

    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < num_rows:
        text, asm = _one(rng)
        if rng.random() < 0.3:
            text2, asm2 = _one(rng)
            text, asm = rng.choice(_JOINERS).format(text, text2[0].lower() + text2[1:]), asm + "\n" + asm2
        if rng.random() < 0.5 and _mask(text.split()[0]) != "r":  # never "T2 = ..."
            text = text[0].upper() + text[1:]
        if text in seen:
            continue
        seen.add(text)
        rows.append({"description": text, "instructions": asm})
    scored = score_rows([{"reference": r["instructions"], "prediction": r["instructions"]} for r in rows], assembler=assembler)
    bad = [r["reference"] for r in scored if not r["functional"]]
    if bad:
        raise RuntimeError(f"user-style generator wrote {len(bad)} pairs that do not run, e.g. {bad[0]!r}")
    return rows


def mix_training_rows(train: list[dict], data_cfg, seed: int) -> tuple[list[dict], dict]:
    """The training split with the configured extra rows; and counts for the data report."""
    from riscv_ft.rv.reference import classify

    added = {}
    rows = list(train)
    repeat = int(data_cfg.get("oversample_assembly", 1))
    if repeat > 1:
        assembly = [r for r in train if classify(r["instructions"]) == "assembly"]
        rows += assembly * (repeat - 1)
        added["oversampled_assembly"] = len(assembly) * (repeat - 1)
    if data_cfg.get("mix_synthetic", 0):
        from riscv_ft.data.synthetic import synthetic_rows

        extra = synthetic_rows(int(data_cfg.mix_synthetic), seed=seed + 1, max_instructions=data_cfg.synthetic_max_instructions)
        rows += extra
        added["synthetic"] = len(extra)
    if data_cfg.get("mix_tasks", 0):
        from riscv_ft.data.tasks import task_rows

        extra = [{"description": r["description"], "instructions": r["instructions"]}
                 for r in task_rows(int(data_cfg.mix_tasks), seed=seed + 3)]
        rows += extra
        added["tasks"] = len(extra)
    if data_cfg.get("mix_user_style", 0):
        extra = user_style_rows(int(data_cfg.mix_user_style), seed=seed + 2)
        rows += extra
        added["user_style"] = len(extra)
    if added:
        # mixed, not appended blocks: the batcher shuffles, but a stable mix keeps runs comparable
        random.Random(seed).shuffle(rows)
        log.info("Training rows: %d real + %s", len(train), json.dumps(added))
    return rows, added

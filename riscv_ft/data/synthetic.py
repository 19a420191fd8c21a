# One module on purpose: each operation's phrasings, its Python semantics and the check against
# the emulator are read together, table by table (data/tasks/ is the multi-instruction sibling).
"""Generated (description, instructions) pairs for RV64I + M, each one checked by running it.

    rows = synthetic_rows(3000, seed=0)        # [{"description": ..., "instructions": ...}, ...]
    python -m riscv_ft.data.synthetic --rows 3000 --seed 0 --out synthetic.jsonl

What is generated: arithmetic, logic, shifts, immediates, loads and stores, compares, the common
pseudo-instructions (li, mv, neg, negw, not, seqz, snez, sltz, sgtz, sgt, sgtu, sext.w, zext.b,
nop), alone or as short sequences of 2-3 instructions joined by "\\n". Operands are concrete,
mostly ABI register names (a0, t1, s2; some rows use x10-style names). Each operation has several
phrasings; descriptions stay under 25 words so a small model can learn them. Output is
deterministic for a given seed.

How it is checked (verify=True): every pair's instructions go through the same assembler as the scorer
(riscv_ft.rv.assembler) and emulator (riscv_ft.rv.emulator). Each pair must assemble,
run to its end without trapping from several random initial states (base registers of loads
and stores pointing into the data region), and leave exactly the registers and memory that a
small Python model of the same operations predicts. So a description that says "unsigned" over
an `slt`, or a sign-extension mistake in a template, fails loudly (VerificationError) instead of
becoming training data.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field

from riscv_ft.data.tasks.base import MASK, VerificationError, s32, s64, sext
from riscv_ft.rv.sanitize import INT_ABI

MAX_WORDS = 25

# Registers a generated row may use. zero/ra/sp/gp/tp are left out (a write to them is
# pointless or would break calling conventions a learner should respect); s0 doubles as fp.
REGS = ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "t0", "t1", "t2", "t3", "t4", "t5", "t6",
        "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11"]
NUM = {name: i for i, name in enumerate(INT_ABI)}


# ------------------------------------------------------------------ semantics

def _sext32(v: int) -> int:
    return sext(v, 32)


def _tdiv(a: int, b: int) -> int:
    """Division rounding toward zero, as RISC-V (and C) divide."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def _div(a, b):
    x, y = s64(a), s64(b)
    if y == 0:
        return MASK
    if x == -(1 << 63) and y == -1:
        return a
    return _tdiv(x, y) & MASK


def _rem(a, b):
    x, y = s64(a), s64(b)
    if y == 0:
        return a
    if x == -(1 << 63) and y == -1:
        return 0
    return (x - y * _tdiv(x, y)) & MASK


def _divw(a, b):
    x, y = s32(a), s32(b)
    if y == 0:
        return MASK
    if x == -(1 << 31) and y == -1:
        return _sext32(x)
    return _sext32(_tdiv(x, y))


def _remw(a, b):
    x, y = s32(a), s32(b)
    if y == 0:
        return _sext32(x)
    if x == -(1 << 31) and y == -1:
        return 0
    return _sext32(x - y * _tdiv(x, y))


def _divuw(a, b):
    x, y = a & 0xFFFFFFFF, b & 0xFFFFFFFF
    return MASK if y == 0 else _sext32(x // y)


def _remuw(a, b):
    x, y = a & 0xFFFFFFFF, b & 0xFFFFFFFF
    return _sext32(x if y == 0 else x % y)


_R = {  # rd = f(rs1, rs2) on unsigned 64-bit values
    "add": lambda a, b: (a + b) & MASK,
    "sub": lambda a, b: (a - b) & MASK,
    "and": lambda a, b: a & b,
    "or": lambda a, b: a | b,
    "xor": lambda a, b: a ^ b,
    "sll": lambda a, b: (a << (b & 63)) & MASK,
    "srl": lambda a, b: a >> (b & 63),
    "sra": lambda a, b: (s64(a) >> (b & 63)) & MASK,
    "slt": lambda a, b: int(s64(a) < s64(b)),
    "sltu": lambda a, b: int(a < b),
    "sgt": lambda a, b: int(s64(a) > s64(b)),
    "sgtu": lambda a, b: int(a > b),
    "addw": lambda a, b: _sext32(a + b),
    "subw": lambda a, b: _sext32(a - b),
    "sllw": lambda a, b: _sext32((a & 0xFFFFFFFF) << (b & 31)),
    "srlw": lambda a, b: _sext32((a & 0xFFFFFFFF) >> (b & 31)),
    "sraw": lambda a, b: _sext32(s32(a) >> (b & 31)),
    "mul": lambda a, b: (a * b) & MASK,
    "mulh": lambda a, b: ((s64(a) * s64(b)) >> 64) & MASK,
    "mulhu": lambda a, b: (a * b) >> 64,
    "mulhsu": lambda a, b: ((s64(a) * b) >> 64) & MASK,
    "mulw": lambda a, b: _sext32(a * b),
    "div": _div,
    "divu": lambda a, b: MASK if b == 0 else a // b,
    "rem": _rem,
    "remu": lambda a, b: a if b == 0 else a % b,
    "divw": _divw,
    "divuw": _divuw,
    "remw": _remw,
    "remuw": _remuw,
}
_I = {  # rd = f(rs1, imm)
    "addi": lambda a, i: (a + i) & MASK,
    "andi": lambda a, i: a & (i & MASK),
    "ori": lambda a, i: a | (i & MASK),
    "xori": lambda a, i: a ^ (i & MASK),
    "slti": lambda a, i: int(s64(a) < i),
    "sltiu": lambda a, i: int(a < (i & MASK)),
    "addiw": lambda a, i: _sext32(a + i),
    "slli": lambda a, i: (a << i) & MASK,
    "srli": lambda a, i: a >> i,
    "srai": lambda a, i: (s64(a) >> i) & MASK,
    "slliw": lambda a, i: _sext32((a & 0xFFFFFFFF) << i),
    "srliw": lambda a, i: _sext32((a & 0xFFFFFFFF) >> i),
    "sraiw": lambda a, i: _sext32(s32(a) >> i),
}
_U = {  # rd = f(rs1)  (pseudo-instructions with one source)
    "mv": lambda a: a,
    "neg": lambda a: (-a) & MASK,
    "negw": lambda a: _sext32(-a),
    "not": lambda a: ~a & MASK,
    "seqz": lambda a: int(a == 0),
    "snez": lambda a: int(a != 0),
    "sltz": lambda a: int(s64(a) < 0),
    "sgtz": lambda a: int(s64(a) > 0),
    "sext.w": _sext32,
    "zext.b": lambda a: a & 0xFF,
}
_LOADS = {"lb": (1, True), "lh": (2, True), "lw": (4, True), "ld": (8, True),
          "lbu": (1, False), "lhu": (2, False), "lwu": (4, False)}
_STORES = {"sb": 1, "sh": 2, "sw": 4, "sd": 8}

# ------------------------------------------------------------------ phrasings
# Short phrases (lower case, usable inside a sequence) and full sentences (single rows only).
# Fields: {rd} {rs1} {rs2} {imm} {off}.

_SIZE = {1: "byte", 2: "halfword", 4: "word", 8: "doubleword"}
PHRASES: dict[str, list[str]] = {
    "add": ["add {rs1} and {rs2} into {rd}", "set {rd} to {rs1} + {rs2}", "store the sum of {rs1} and {rs2} in {rd}",
            "{rd} = {rs1} + {rs2}"],
    "sub": ["subtract {rs2} from {rs1} into {rd}", "set {rd} to {rs1} - {rs2}", "{rd} = {rs1} - {rs2}"],
    "and": ["AND together {rs1} and {rs2}, giving {rd}", "set {rd} to {rs1} & {rs2}", "{rd} = {rs1} AND {rs2}"],
    "or": ["OR together {rs1} and {rs2}, giving {rd}", "set {rd} to {rs1} | {rs2}", "{rd} = {rs1} OR {rs2}"],
    "xor": ["XOR together {rs1} and {rs2}, giving {rd}", "set {rd} to {rs1} ^ {rs2}", "{rd} = {rs1} XOR {rs2}"],
    "sll": ["shift {rs1} left by {rs2} into {rd}", "set {rd} to {rs1} << {rs2}"],
    "srl": ["shift {rs1} right logically by {rs2} into {rd}", "logical right shift {rs1} by {rs2} into {rd}"],
    "sra": ["shift {rs1} right arithmetically by {rs2} into {rd}", "arithmetic right shift {rs1} by {rs2} into {rd}"],
    "slt": ["set {rd} to 1 if {rs1} < {rs2} signed, else 0", "compare {rs1} < {rs2} (signed) into {rd}"],
    "sltu": ["set {rd} to 1 if {rs1} < {rs2} unsigned, else 0", "compare {rs1} < {rs2} (unsigned) into {rd}"],
    "sgt": ["set {rd} to 1 if {rs1} > {rs2} signed, else 0", "compare {rs1} > {rs2} (signed) into {rd}"],
    "sgtu": ["set {rd} to 1 if {rs1} > {rs2} unsigned, else 0", "compare {rs1} > {rs2} (unsigned) into {rd}"],
    "addw": ["word-add {rs1} and {rs2} into {rd}", "32-bit add {rs1} and {rs2} into {rd}"],
    "subw": ["subtract {rs2} from {rs1} as 32-bit words into {rd}", "32-bit subtract {rs2} from {rs1} into {rd}"],
    "sllw": ["32-bit shift {rs1} left by {rs2} into {rd}", "shift word {rs1} left by {rs2} into {rd}"],
    "srlw": ["32-bit logical right shift {rs1} by {rs2} into {rd}",
             "shift word {rs1} right logically by {rs2} into {rd}"],
    "sraw": ["32-bit arithmetic right shift {rs1} by {rs2} into {rd}",
             "shift word {rs1} right arithmetically by {rs2} into {rd}"],
    "mul": ["multiply {rs1} by {rs2} into {rd}", "set {rd} to {rs1} * {rs2}", "{rd} = {rs1} * {rs2}"],
    "mulh": ["store the high 64 bits of signed {rs1} * {rs2} in {rd}"],
    "mulhu": ["store the high 64 bits of unsigned {rs1} * {rs2} in {rd}"],
    "mulhsu": ["store the high 64 bits of signed {rs1} times unsigned {rs2} in {rd}"],
    "mulw": ["32-bit multiply {rs1} by {rs2} into {rd}", "multiply words {rs1} and {rs2} into {rd}"],
    "div": ["divide {rs1} by {rs2} (signed) into {rd}", "set {rd} to signed {rs1} / {rs2}"],
    "divu": ["divide {rs1} by {rs2} (unsigned) into {rd}", "set {rd} to unsigned {rs1} / {rs2}"],
    "rem": ["store the signed remainder of {rs1} / {rs2} in {rd}", "set {rd} to {rs1} mod {rs2} (signed)"],
    "remu": ["store the unsigned remainder of {rs1} / {rs2} in {rd}", "set {rd} to {rs1} mod {rs2} (unsigned)"],
    "divw": ["32-bit signed divide {rs1} by {rs2} into {rd}"],
    "divuw": ["32-bit unsigned divide {rs1} by {rs2} into {rd}"],
    "remw": ["store the 32-bit signed remainder of {rs1} / {rs2} in {rd}"],
    "remuw": ["store the 32-bit unsigned remainder of {rs1} / {rs2} in {rd}"],
    "addi": ["add {imm} to {rs1}, giving {rd}", "set {rd} to {rs1} + {imm}", "{rd} = {rs1} + {imm}"],
    "andi": ["AND {rs1} with {imm} into {rd}", "set {rd} to {rs1} & {imm}"],
    "ori": ["OR {rs1} with {imm} into {rd}", "set {rd} to {rs1} | {imm}"],
    "xori": ["XOR {rs1} with {imm} into {rd}", "set {rd} to {rs1} ^ {imm}"],
    "slti": ["set {rd} to 1 if {rs1} < {imm} signed, else 0", "compare {rs1} < {imm} (signed) into {rd}"],
    "sltiu": ["set {rd} to 1 if {rs1} < {imm} unsigned, else 0", "compare {rs1} < {imm} (unsigned) into {rd}"],
    "addiw": ["32-bit add {imm} to {rs1} into {rd}", "add {imm} to word {rs1} into {rd}"],
    "slli": ["shift {rs1} left by {imm} into {rd}", "set {rd} to {rs1} << {imm}", "{rd} = {rs1} << {imm}"],
    "srli": ["shift {rs1} right logically by {imm} into {rd}", "logical right shift {rs1} by {imm} into {rd}"],
    "srai": ["shift {rs1} right arithmetically by {imm} into {rd}", "arithmetic right shift {rs1} by {imm} into {rd}"],
    "slliw": ["32-bit shift {rs1} left by {imm} into {rd}", "shift word {rs1} left by {imm} into {rd}"],
    "srliw": ["32-bit logical right shift {rs1} by {imm} into {rd}"],
    "sraiw": ["32-bit arithmetic right shift {rs1} by {imm} into {rd}"],
    "lui": ["load upper immediate {imm} into {rd}", "set {rd} to {imm} << 12"],
    "li": ["materialize {imm} in {rd}", "set {rd} to {imm}", "{rd} = {imm}", "put the constant {imm} in {rd}"],
    "mv": ["copy {rs1} to {rd}", "move {rs1} into {rd}", "{rd} = {rs1}"],
    "neg": ["negate {rs1}, giving {rd}", "set {rd} to -{rs1}"],
    "negw": ["negate word {rs1} into {rd}", "32-bit negate {rs1} into {rd}"],
    "not": ["invert the bits of {rs1} into {rd}", "set {rd} to NOT {rs1}", "{rd} = ~{rs1}"],
    "seqz": ["set {rd} to 1 if {rs1} is zero, else 0", "test {rs1} == 0 into {rd}"],
    "snez": ["set {rd} to 1 if {rs1} is nonzero, else 0", "test {rs1} != 0 into {rd}"],
    "sltz": ["set {rd} to 1 if {rs1} is negative, else 0", "test {rs1} < 0 into {rd}"],
    "sgtz": ["set {rd} to 1 if {rs1} is positive, else 0", "test {rs1} > 0 into {rd}"],
    "sext.w": ["sign-extend the low word of {rs1} into {rd}", "sign-extend {rs1} from 32 bits into {rd}"],
    "zext.b": ["zero-extend the byte in {rs1} to 64 bits in {rd}", "set {rd} to {rs1} & 0xff"],
    "nop": ["do nothing"],
}
for _name, (_size, _signed) in _LOADS.items():
    _kind = "sign-extended" if _signed else "zero-extended"
    PHRASES[_name] = [f"load the {_SIZE[_size]} at {{off}}({{rs1}}) into {{rd}}, {_kind}" if _size < 8 else
                      f"fetch the 64-bit {_SIZE[_size]} from {{off}}({{rs1}}) into {{rd}}",
                      f"load a {_SIZE[_size]} from {{rs1}} + {{off}} into {{rd}}" + (f", {_kind}" if _size < 8 else "")]
for _name, _size in _STORES.items():
    _what = "" if _size == 8 else f"low {_SIZE[_size]} of "
    PHRASES[_name] = [f"save the {_what}{{rs2}} to memory, {{off}} bytes past {{rs1}}",
                      f"store {_SIZE[_size]} {{rs2}} to address {{rs1}} + {{off}}"]

SENTENCES: dict[str, list[str]] = {
    "add": ["Add the values in {rs1} and {rs2} and write the sum to {rd}."],
    "sub": ["Subtract the value in {rs2} from {rs1} and write the difference to {rd}."],
    "mul": ["Multiply {rs1} and {rs2} and keep the low 64 bits in {rd}."],
    "li": ["Load the immediate value {imm} into register {rd}."],
    "mv": ["Copy the value of register {rs1} into register {rd}."],
    "and": ["Compute the bitwise AND of {rs1} and {rs2} and store it in {rd}."],
    "xor": ["Compute the bitwise XOR of {rs1} and {rs2} and store it in {rd}."],
    "slli": ["Shift {rs1} left by {imm} bits and store the result in {rd}."],
    "addi": ["Add the immediate {imm} to {rs1} and store the result in {rd}."],
    "ld": ["Load a 64-bit value from memory at {rs1} plus {off} into {rd}."],
    "sd": ["Store the 64-bit value in {rs2} to memory at {rs1} plus {off}."],
    "nop": ["Do nothing for one instruction.", "Insert a no-op."],
}


def _kind(op: str) -> str:
    if op in _R:
        return "r"
    if op in _I:
        return "i"
    if op in _U:
        return "u"
    if op in _LOADS:
        return "load"
    if op in _STORES:
        return "store"
    return op  # li, lui, nop


OPS = sorted(PHRASES)
_SEQUENCE_OPS = [op for op in OPS if op != "nop"]


# ------------------------------------------------------------------ generation

@dataclass
class Step:
    op: str
    rd: int = 0
    rs1: int = 0
    rs2: int = 0
    imm: int = 0

    def apply(self, x: list[int], mem: bytearray, base: int) -> None:
        """Run this instruction on the Python model (x: 32 registers, mem at `base`)."""
        kind = _kind(self.op)
        result = None
        if kind == "r":
            result = _R[self.op](x[self.rs1], x[self.rs2])
        elif kind == "i":
            result = _I[self.op](x[self.rs1], self.imm)
        elif kind == "u":
            result = _U[self.op](x[self.rs1])
        elif kind == "li":
            result = self.imm & MASK
        elif kind == "lui":
            result = _sext32(self.imm << 12)
        elif kind == "load":
            size, signed = _LOADS[self.op]
            at = ((x[self.rs1] + self.imm) & MASK) - base
            value = int.from_bytes(mem[at:at + size], "little", signed=signed)
            result = value & MASK
        elif kind == "store":
            size = _STORES[self.op]
            at = ((x[self.rs1] + self.imm) & MASK) - base
            mem[at:at + size] = (x[self.rs2] & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        if result is not None and self.rd != 0:
            x[self.rd] = result


@dataclass
class Sample:
    description: str
    instructions: str
    steps: list[Step]
    pointers: set[int] = field(default_factory=set)  # registers used as load/store bases

    def row(self) -> dict:
        return {"description": self.description, "instructions": self.instructions}


def _imm_for(op: str, rng: random.Random) -> int:
    if op in ("slli", "srli", "srai"):
        return rng.randint(1, 63)
    if op in ("slliw", "srliw", "sraiw"):
        return rng.randint(1, 31)
    if op == "sltiu":
        return rng.randint(0, 2047)  # a negative immediate compared unsigned reads confusingly
    if op == "andi" and rng.random() < 0.5:
        return rng.choice([0xFF, 0xF, 0x7FF, 1, 3, 7, -1, -16])
    if op == "lui":
        return rng.randint(1, 0xFFFFF)
    if op == "li":
        r = rng.random()
        if r < 0.45:
            return rng.randint(-64, 100)
        if r < 0.7:
            return rng.randint(-2048, 2047)
        if r < 0.9:
            return rng.randint(-(1 << 31), (1 << 31) - 1)
        return rng.getrandbits(63) * rng.choice([1, -1])
    r = rng.random()  # 12-bit signed immediates, mostly small
    return rng.randint(-16, 64) if r < 0.6 else rng.randint(-2048, 2047)


def _fmt_imm(op: str, value: int) -> str:
    if op == "lui" or (op == "li" and abs(value) >= 4096) or (op == "andi" and value in (0xFF, 0xF, 0x7FF)):
        return f"{value:#x}" if value >= 0 else f"-{-value:#x}"
    return str(value)


class _Generator:
    def __init__(self, seed: int, max_instructions: int = 3):
        self.rng = random.Random(seed)
        self.lengths = [n for n in (2, 2, 3) if n <= max_instructions]

    def reg_name(self, reg: int, xnames: bool) -> str:
        return f"x{reg}" if xnames else INT_ABI[reg]

    def step(self, op: str, written: set[int], prev_rd: int | None, pointers: set[int]) -> Step:
        rng = self.rng
        kind = _kind(op)
        src_choices = [NUM[r] for r in REGS]
        # chain: use the previous result as the first source most of the time
        rs1 = prev_rd if prev_rd is not None and rng.random() < 0.7 else rng.choice(src_choices)
        if kind in ("load", "store"):
            # the base must still hold a pointer: never a register an earlier step wrote
            free = [r for r in src_choices if r not in written]
            reuse = sorted(pointers & set(free))  # sometimes two accesses share a base register
            rs1 = rng.choice(reuse) if reuse and rng.random() < 0.3 else rng.choice(free)
            pointers.add(rs1)
        rs2 = rng.choice([r for r in src_choices if r != rs1] or src_choices)
        rd = rng.choice([r for r in src_choices if r not in pointers] or src_choices)
        imm = 0
        if kind in ("i", "li", "lui"):
            imm = _imm_for(op, rng)
        elif kind in ("load", "store"):
            size = _LOADS[op][0] if kind == "load" else _STORES[op]
            imm = size * rng.randint(-8, 16)
        return Step(op, rd, rs1, rs2, imm)

    def render(self, step: Step, xnames: bool, phrase: str) -> tuple[str, str]:
        names = {k: self.reg_name(getattr(step, k), xnames) for k in ("rd", "rs1", "rs2")}
        imm = _fmt_imm(step.op, step.imm)
        kind = _kind(step.op)
        if kind == "r":
            asm = f"{step.op} {names['rd']}, {names['rs1']}, {names['rs2']}"
        elif kind == "i":
            asm = f"{step.op} {names['rd']}, {names['rs1']}, {imm}"
        elif kind == "u":
            asm = f"{step.op} {names['rd']}, {names['rs1']}"
        elif kind in ("li", "lui"):
            asm = f"{step.op} {names['rd']}, {imm}"
        elif kind == "load":
            asm = f"{step.op} {names['rd']}, {step.imm}({names['rs1']})"
        elif kind == "store":
            asm = f"{step.op} {names['rs2']}, {step.imm}({names['rs1']})"
        else:
            asm = "nop"
        text = phrase.format(imm=imm, off=step.imm, **names)
        return asm, text

    def sample(self) -> Sample:
        rng = self.rng
        xnames = rng.random() < 0.1
        n = 1 if rng.random() < 0.6 or not self.lengths else rng.choice(self.lengths)
        for _attempt in range(20):  # re-draw the rare sequence whose description runs long
            written: set[int] = set()
            pointers: set[int] = set()
            steps, asms, texts = [], [], []
            prev = None
            for i in range(n):
                op = rng.choice(OPS if n == 1 else _SEQUENCE_OPS)
                step = self.step(op, written, prev, pointers)
                options = PHRASES[op] + (SENTENCES.get(op, []) if n == 1 else [])
                asm, text = self.render(step, xnames, rng.choice(options))
                steps.append(step)
                asms.append(asm)
                texts.append(text)
                if _kind(op) not in ("store",) and op != "nop":
                    written.add(step.rd)
                    prev = step.rd
            description = _join(texts)
            if len(description.split()) < MAX_WORDS:
                return Sample(description, "\n".join(asms), steps, pointers)
        raise VerificationError("could not draw a short enough description")  # pragma: no cover


def _join(texts: list[str]) -> str:
    if len(texts) == 1:
        text = texts[0]
    elif len(texts) == 2:
        text = f"{texts[0]}, then {texts[1]}"
    else:
        text = f"{texts[0]}, {texts[1]}, then {texts[2]}"
    if text.split(" ", 1)[0] not in NUM and not text[0].isdigit():  # "a0 = ..." stays lower case
        text = text[0].upper() + text[1:]
    return text if text.endswith(".") else text + "."


# ------------------------------------------------------------------ verification

def verify_samples(samples: list[Sample], assembler="auto", states_per_sample: int = 3, seed: int = 0) -> None:
    """Assemble and run every sample; raise VerificationError listing the ones that are wrong."""
    from riscv_ft.rv.assembler import find_assembler
    from riscv_ft.rv.emulator import (DATA_BASE, DATA_SIZE, Emulator, InitialState, pointer,
                                            random_register_value)

    asm = find_assembler(assembler)
    results = asm.assemble_many([s.instructions for s in samples])
    emu = Emulator(states=[])
    rng = random.Random(seed)
    # A pool of random register files and memories (drawing fresh ones per run would take most
    # of the time); each run takes the next one and points the sample's base registers into memory.
    pool = [([0] + [random_register_value(rng) for _ in range(31)], tuple(rng.getrandbits(64) for _ in range(32)),
             rng.randbytes(DATA_SIZE)) for _ in range(16)]
    failures = []
    for n, (sample, res) in enumerate(zip(samples, results)):
        if not res.ok:
            failures.append(f"{sample.instructions!r}: does not assemble: {res.error}")
            continue
        for k in range(states_per_sample):
            x, f, memory = pool[(n * states_per_sample + k) % len(pool)]
            x = list(x)
            for reg in sample.pointers:
                x[reg] = pointer(rng)
            state = InitialState(tuple(x), f, memory)
            end = emu.run(res.program, state, keep_memory=True)
            model_x, model_mem = list(x), bytearray(memory)
            for step in sample.steps:
                step.apply(model_x, model_mem, DATA_BASE)
            got_mem = end.memory or memory
            if end.outcome != "end":
                failures.append(f"{sample.instructions!r}: ended with {end.outcome}")
            elif end.xregs() != model_x:
                bad = next(i for i in range(32) if end.xregs()[i] != model_x[i])
                failures.append(f"{sample.instructions!r} ({sample.description!r}): {INT_ABI[bad]} is "
                                f"{end.xregs()[bad]:#x}, the description implies {model_x[bad]:#x}")
            elif got_mem != bytes(model_mem):
                failures.append(f"{sample.instructions!r} ({sample.description!r}): memory differs from the model")
            else:
                continue
            break
    if failures:
        raise VerificationError(f"{len(failures)} of {len(samples)} generated pairs failed verification, e.g.: "
                             + "; ".join(failures[:3]))


def synthetic_rows(num_rows: int, seed: int, verify: bool = True, assembler="auto",
                   max_instructions: int = 3) -> list[dict]:
    """`num_rows` {"description", "instructions"} pairs, deterministic for `seed`; sequences
    have at most `max_instructions` (1-3) instructions.

    verify=True assembles and runs every pair (needs a RISC-V assembler: see
    riscv_ft.rv.assembler.find_assembler) and raises VerificationError if any is wrong.
    """
    if num_rows < 0:
        raise ValueError("num_rows must be >= 0")
    if max_instructions not in (1, 2, 3):
        raise ValueError("max_instructions must be 1, 2 or 3")
    gen = _Generator(seed, max_instructions)
    samples = [gen.sample() for _ in range(num_rows)]
    if verify and samples:
        verify_samples(samples, assembler=assembler, seed=seed)
    return [s.row() for s in samples]


def main(argv: list[str] | None = None) -> int:
    from riscv_ft.data.generator_cli import run_generator

    def add_arguments(parser):
        parser.add_argument("--max-instructions", type=int, default=3, choices=(1, 2, 3))

    return run_generator(argv, "python -m riscv_ft.data.synthetic", __doc__.split("\n\n")[0],
                         lambda a: synthetic_rows(a.rows, a.seed, verify=not a.no_verify, assembler=a.assembler,
                                                  max_instructions=a.max_instructions), add_arguments)


if __name__ == "__main__":
    sys.exit(main())

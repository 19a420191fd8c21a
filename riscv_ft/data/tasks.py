"""Generated multi-instruction tasks (up to 12 instructions), each checked by running it.

    rows = task_rows(3000, seed=0)   # [{"description", "instructions", "category", "scratch"}, ...]
    python -m riscv_ft.data.tasks --rows 3000 --seed 0 --out tasks.jsonl

riscv_ft.data.synthetic strings 1-3 unrelated instructions together; real requests ask for one
thing that takes several instructions: an expression, a bit field, a minimum with a branch, a
load-modify-store, a stack frame, a loop. This module draws such tasks, one small function per
kind (the CATEGORIES table), each with

* the request, phrased the ways people write: imperative ("Put the max of a1 and a2 in a0"),
  a question ("How do I ...?"), C-like ("a0 = max(a1, a2)") or a terse note, with varied
  registers, constants and labels (named `done:` and numeric `1:`/`1f` alike);
* the answer, RV64GC only (no Zb*: no min/max/abs/zext.w instructions): 2-12 instructions,
  except a few requests that one instruction answers (set bit 3: `ori`; sign-extend a word);
* `scratch`: the temporaries the answer used, whose final values the request does not fix
  (the evaluation set's field of the same name);
* a Python model of what the *request* says (min(a, b), the sum 1..n, the IEEE float sum...),
  written independently of the answer.

verify=True assembles every answer with the scorer's assembler and runs it in its emulator from
several random states (load/store bases pointing into the data region; a task may first put
its own inputs in place: FP values, a small array index); each run must end normally and leave
every register except the scratch ones, and all memory, as the model says. A wrong template
raises TaskError instead of becoming training data. Output is deterministic for a seed.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from riscv_ft.rv.sanitize import FP_ABI, INT_ABI

MASK = (1 << 64) - 1
MAX_WORDS = 40

# Registers a task may name: not zero/ra/sp/gp/tp (the stack tasks name ra and sp themselves).
INT_REGS = [f"a{i}" for i in range(8)] + [f"t{i}" for i in range(7)] + ["s0"] + [f"s{i}" for i in range(1, 12)]
TEMPS = [f"t{i}" for i in range(7)]
FP_REGS = [f"fa{i}" for i in range(8)] + [f"ft{i}" for i in range(12)] + [f"fs{i}" for i in range(12)]
FP_TEMPS = [f"ft{i}" for i in range(12)]
XNUM = {name: i for i, name in enumerate(INT_ABI)}
XNUM["fp"] = 8
FNUM = {name: i for i, name in enumerate(FP_ABI)}


class TaskError(RuntimeError):
    """A generated task failed verification: a bug in a template, never a bad random draw."""


# ------------------------------------------------------------------ values

def s64(v: int) -> int:
    v &= MASK
    return v - (1 << 64) if v >> 63 else v


def s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v


def sext(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return (v - (1 << bits) if v >> (bits - 1) else v) & MASK


def f32(value: float) -> float:
    """The float32 nearest to `value` (round to nearest even), as a Python float."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def f32_bits(value: float) -> int:
    return struct.unpack("<I", struct.pack("<f", value))[0]


def f64_bits(value: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", value))[0]


def boxed(value: float) -> int:
    """A single in a 64-bit FP register: NaN-boxed, as the F extension writes it."""
    return (0xFFFFFFFF << 32) | f32_bits(value)


@dataclass
class State:
    """The machine state a task's model reads and writes (registers by ABI name)."""

    x: list[int]
    f: list[int]
    mem: bytearray
    base: int
    singles: set[int] = field(default_factory=set)  # FP registers the model wrote a single to

    def __getitem__(self, reg: str) -> int:
        return self.x[XNUM[reg]]

    def __setitem__(self, reg: str, value: int) -> None:
        if XNUM[reg]:
            self.x[XNUM[reg]] = value & MASK

    def load(self, addr: int, size: int, signed: bool = True) -> int:
        at = (addr & MASK) - self.base
        return int.from_bytes(self.mem[at:at + size], "little", signed=signed) & MASK

    def store(self, addr: int, size: int, value: int) -> None:
        at = (addr & MASK) - self.base
        self.mem[at:at + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def fs(self, reg: str) -> float:
        return struct.unpack("<f", struct.pack("<I", self.f[FNUM[reg]] & 0xFFFFFFFF))[0]

    def set_fs(self, reg: str, value: float) -> None:
        self.f[FNUM[reg]] = boxed(value)
        self.singles.add(FNUM[reg])

    def fd(self, reg: str) -> float:
        return struct.unpack("<d", struct.pack("<Q", self.f[FNUM[reg]]))[0]

    def set_fd(self, reg: str, value: float) -> None:
        self.f[FNUM[reg]] = f64_bits(value)

    def load_f(self, addr: int, double: bool) -> float:
        raw = self.load(addr, 8 if double else 4, signed=False)
        return struct.unpack("<d" if double else "<f", raw.to_bytes(8 if double else 4, "little"))[0]

    def store_f(self, addr: int, value: float, double: bool) -> None:
        self.store(addr, 8 if double else 4, f64_bits(value) if double else f32_bits(value))


@dataclass
class Task:
    category: str
    description: str
    lines: list[str]
    model: Callable[[State], None]  # what the request says, applied to a copy of the start state
    pointers: set[str] = field(default_factory=set)  # registers that must hold a data address
    scratch: list[str] = field(default_factory=list)
    prepare: Callable[[random.Random, State], None] | None = None  # puts the task's inputs in place
    style: str = ""  # how the request is phrased: imperative, question, c, terse

    @property
    def instructions(self) -> str:
        return "\n".join(self.lines)

    def row(self) -> dict:
        return {"description": self.description, "instructions": self.instructions,
                "category": self.category, "scratch": list(self.scratch)}


# ------------------------------------------------------------------ drawing helpers

class _Draw:
    """Per-task drawing: distinct registers, phrasings, labels."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()
        self.style = ""
        self.only = ""  # a style every request of this draw must use (the parts of a combined task)
        self.label_names: set[str] = set()

    def reg(self, pool: list[str] | None = None) -> str:
        choices = [r for r in (pool or INT_REGS) if r not in self.used]
        if not choices:  # a combined task can use up the temporaries
            choices = [r for r in (INT_REGS if pool in (None, TEMPS) else FP_REGS) if r not in self.used]
        name = self.rng.choice(choices)
        self.used.add(name)
        return name

    def regs(self, n: int, pool: list[str] | None = None) -> list[str]:
        return [self.reg(pool) for _ in range(n)]

    def temp(self) -> str:
        return self.reg(TEMPS if self.rng.random() < 0.85 else INT_REGS)

    def ftemp(self) -> str:
        return self.reg(FP_TEMPS if self.rng.random() < 0.85 else FP_REGS)

    def freg(self) -> str:
        return self.reg(FP_REGS)

    def pick(self, options):
        return self.rng.choice(options)

    def say(self, **styles: list[str]) -> str:
        """One phrasing: first a style (imperative, question, c, terse...), then a template."""
        names = sorted(styles)
        if self.only:  # never a question inside a combined request
            names = [self.only] if self.only in styles else [n for n in names if n != "question"]
        style = self.style = self.rng.choice(names)
        text = self.rng.choice(styles[style])
        if style == "imperative":  # a sentence; notes and C-like requests keep their case
            text = text[0].upper() + text[1:] + ("." if self.rng.random() < 0.5 else "")
        return text

    def labels(self, n: int, loop: bool = False, named: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
        """n distinct labels as (definition, forward reference, backward reference); with
        loop=True the first one names a loop head; `named`: the names to use when not numeric."""
        if self.rng.random() < 0.4:
            return [(f"{k}:", f"{k}f", f"{k}b") for k in range(1, n + 1)]
        free = [name for name in ("done", "skip", "end", "next", "out", "over", "keep", "L1", "L2", ".Ldone", ".Lskip",
                                  "after", "finish", "cont") if name not in self.label_names]
        names = list(named) if named and not set(named) & self.label_names else self.rng.sample(free, n)
        if loop:
            names[0] = self.rng.choice([name for name in ("loop", "again", "top", ".Lloop", "repeat", "L0")
                                        if name not in self.label_names])
        self.label_names.update(names)
        return [(f"{name}:", name, name) for name in names]

    def label_line(self, definition: str, rest: str | None = None) -> list[str]:
        """A label alone on its line, or in front of the next instruction."""
        if rest is None:
            return [definition]
        if self.rng.random() < 0.5:
            return [definition, rest]
        return [f"{definition} {rest}"]


def _imm(rng: random.Random, lo: int = -200, hi: int = 200, nonzero: bool = True) -> int:
    while True:
        v = rng.randint(lo, hi)
        if v or not nonzero:
            return v


def _hex(v: int) -> str:
    return f"{v:#x}" if v >= 0 else f"-{-v:#x}"


# ------------------------------------------------------------------ arithmetic expressions

def _arith(d: _Draw) -> Task:
    rng = d.rng
    dst, a, b, c = d.regs(4)
    kind = rng.randrange(10)
    if kind == 0:  # a * K
        k = rng.choice([3, 5, 6, 7, 9, 10, 12, 24, 100, 1000, rng.randint(11, 99)])
        t = d.temp()
        text = d.say(c=[f"{dst} = {a} * {k}", f"{dst} = {a}*{k};"],
                     imperative=[f"multiply {a} by {k} and put the result in {dst}", f"set {dst} to {k} times {a}"],
                     question=[f"How do I multiply {a} by the constant {k} into {dst}?"],
                     terse=[f"{dst} <- {a} * {k}", f"{a}*{k} -> {dst}"])
        return Task("arith", text, [f"li {t}, {k}", f"mul {dst}, {a}, {t}"],
                    lambda s: s.__setitem__(dst, s[a] * k), scratch=[t])
    if kind == 1:  # a + b - c
        text = d.say(c=[f"{dst} = {b} - {c} + {a};"], imperative=[f"add {a} and {b}, subtract {c}, result in {dst}"],
                     question=[f"How can I compute {a} + {b} - {c} into {dst}?"], terse=[f"{a}+{b}-{c} -> {dst}"])
        return Task("arith", text, [f"add {dst}, {a}, {b}", f"sub {dst}, {dst}, {c}"],
                    lambda s: s.__setitem__(dst, s[a] + s[b] - s[c]))
    if kind == 2:  # (a + b) * c
        text = d.say(c=[f"{dst} = {c} * ({a} + {b})"], imperative=[f"multiply {a} + {b} by {c}, result in {dst}"],
                     question=[f"What is the RISC-V for {dst} = ({a}+{b})*{c}?"], terse=[f"({a}+{b})*{c} -> {dst}"])
        return Task("arith", text, [f"add {dst}, {a}, {b}", f"mul {dst}, {dst}, {c}"],
                    lambda s: s.__setitem__(dst, (s[a] + s[b]) * s[c]))
    if kind == 3:  # a * b + c
        t = d.temp()
        text = d.say(c=[f"{dst} = {a} * {b} + {c}"], imperative=[f"multiply {a} by {b}, add {c}, leave it in {dst}"],
                     question=[f"How do I do a multiply-add {dst} = {a}*{b} + {c}?"], terse=[f"mac: {dst} = {a}*{b}+{c}"])
        return Task("arith", text, [f"mul {t}, {a}, {b}", f"add {dst}, {t}, {c}"],
                    lambda s: s.__setitem__(dst, s[a] * s[b] + s[c]), scratch=[t])
    if kind == 4:  # 2a + b, 4a - b ...
        sh = rng.choice([1, 2, 3])
        op, sym = rng.choice([("add", "+"), ("sub", "-")])
        t = d.temp()
        text = d.say(c=[f"{dst} = {1 << sh}*{a} {sym} {b}", f"{dst} = ({a} << {sh}) {sym} {b}"],
                     imperative=[f"compute {1 << sh} times {a} {'plus' if sym == '+' else 'minus'} {b} into {dst}"],
                     question=[f"How do I get {1 << sh}*{a} {sym} {b} in {dst} without a mul?"],
                     terse=[f"{dst} <- {a}*{1 << sh} {sym} {b}"])
        return Task("arith", text, [f"slli {t}, {a}, {sh}", f"{op} {dst}, {t}, {b}"],
                    lambda s: s.__setitem__(dst, (s[a] << sh) + (s[b] if sym == "+" else -s[b])), scratch=[t])
    if kind == 5:  # sum of squares
        t1, t2 = d.temp(), d.temp()
        text = d.say(c=[f"{dst} = {a}*{a} + {b}*{b}"], imperative=[f"put the sum of the squares of {a} and {b} in {dst}"],
                     question=[f"How do I compute {a} squared plus {b} squared into {dst}?"],
                     terse=[f"{dst} = {a}^2 + {b}^2"])
        return Task("arith", text, [f"mul {t1}, {a}, {a}", f"mul {t2}, {b}, {b}", f"add {dst}, {t1}, {t2}"],
                    lambda s: s.__setitem__(dst, s[a] * s[a] + s[b] * s[b]), scratch=[t1, t2])
    if kind == 6:  # polynomial a*a + k*a + m
        k, m = _imm(rng, -20, 20), _imm(rng, -500, 500)
        t1, t2 = d.temp(), d.temp()
        ks = f"+ {k}" if k >= 0 else f"- {-k}"
        ms = f"+ {m}" if m >= 0 else f"- {-m}"
        text = d.say(c=[f"{dst} = {a}*{a} {ks}*{a} {ms}"],
                     imperative=[f"evaluate x*x {ks}*x {ms} for x in {a}, result in {dst}"],
                     question=[f"How do I evaluate the polynomial x^2 {ks}x {ms} at x = {a} into {dst}?"],
                     terse=[f"poly: {dst} = {a}^2 {ks}*{a} {ms}"])
        return Task("arith", text, [f"mul {t1}, {a}, {a}", f"li {t2}, {k}", f"mul {t2}, {t2}, {a}",
                                    f"add {dst}, {t1}, {t2}", f"addi {dst}, {dst}, {m}"],
                    lambda s: s.__setitem__(dst, s[a] * s[a] + k * s[a] + m), scratch=[t1, t2])
    if kind == 7:  # division / remainder by a constant
        k = rng.choice([3, 5, 7, 10, 12, 60, 100, 1000])
        op, word, fn = rng.choice([
            ("divu", "unsigned quotient", lambda v: (v & MASK) // k),
            ("remu", "unsigned remainder", lambda v: (v & MASK) % k),
            ("div", "signed quotient", lambda v: abs(s64(v)) // k * (1 if s64(v) >= 0 else -1)),
            ("rem", "signed remainder", lambda v: s64(v) - k * (abs(s64(v)) // k * (1 if s64(v) >= 0 else -1)))])
        t = d.temp()
        sym = "/" if "quotient" in word else "%"
        sign = "unsigned" if op.endswith("u") else "signed"
        text = d.say(c=[f"{dst} = {a} {sym} {k}; // {sign}"],
                     imperative=[f"put the {word} of {a} divided by {k} in {dst}"],
                     question=[f"How do I get the {word} of {a} / {k} into {dst}?"],
                     terse=[f"{dst} = {a} {sym} {k} ({sign})"])
        return Task("arith", text, [f"li {t}, {k}", f"{op} {dst}, {a}, {t}"],
                    lambda s: s.__setitem__(dst, fn(s[a])), scratch=[t])
    if kind == 8:  # average (a + b) >> 1
        text = d.say(c=[f"{dst} = ({a} + {b}) >> 1  // arithmetic shift"],
                     imperative=[f"average {a} and {b} (signed, rounding down, overflow wraps) into {dst}"],
                     question=[f"How do I halve the sum of {a} and {b} with an arithmetic shift into {dst}?"],
                     terse=[f"{dst} = ({a}+{b})/2 via add + srai"])
        return Task("arith", text, [f"add {dst}, {a}, {b}", f"srai {dst}, {dst}, 1"],
                    lambda s: s.__setitem__(dst, s64((s[a] + s[b]) & MASK) >> 1))
    # kind 9: 32-bit expression a*b - c as int
    text = d.say(c=[f"int {dst} = {a} * {b} - {c};  // 32-bit"],
                 imperative=[f"with 32-bit arithmetic, compute {a} times {b} minus {c} into {dst}"],
                 question=[f"How do I compute the 32-bit {a}*{b} - {c} in {dst}?"],
                 terse=[f"{dst} = (int32)({a}*{b} - {c})"])
    return Task("arith", text, [f"mulw {dst}, {a}, {b}", f"subw {dst}, {dst}, {c}"],
                lambda s: s.__setitem__(dst, sext(s[a] * s[b] - s[c], 32)))


# ------------------------------------------------------------------ bit fields and extension

def _bitfield(d: _Draw) -> Task:
    rng = d.rng
    dst, a = d.regs(2)
    kind = rng.randrange(7)
    if kind == 0:  # extract unsigned field [hi:lo]
        lo = rng.randint(0, 40)
        width = rng.randint(2, 20)
        hi = lo + width - 1
        text = d.say(c=[f"{dst} = ({a} >> {lo}) & {_hex((1 << width) - 1)}"],
                     imperative=[f"extract bits {hi}..{lo} of {a} into {dst}, zero-extended",
                                 f"get the {width}-bit field at bit {lo} of {a} into {dst}"],
                     question=[f"How do I pull out bits {lo} to {hi} of {a} as an unsigned number in {dst}?"],
                     terse=[f"{dst} = {a}[{hi}:{lo}] (unsigned)"])
        if width <= 11 and rng.random() < 0.5:
            lines = [f"srli {dst}, {a}, {lo}", f"andi {dst}, {dst}, {(1 << width) - 1}"]
        else:
            lines = [f"slli {dst}, {a}, {63 - hi}", f"srli {dst}, {dst}, {64 - width}"]
        return Task("bitfield", text, lines, lambda s: s.__setitem__(dst, (s[a] >> lo) & ((1 << width) - 1)))
    if kind == 1:  # extract signed field
        lo = rng.randint(0, 40)
        width = rng.randint(2, 20)
        hi = lo + width - 1
        text = d.say(imperative=[f"extract the signed field in bits {hi}:{lo} of {a} into {dst}",
                                 f"sign-extend the {width}-bit field starting at bit {lo} of {a} into {dst}"],
                     question=[f"How do I read bits {hi}..{lo} of {a} as a signed value into {dst}?"],
                     terse=[f"{dst} = sext({a}[{hi}:{lo}])"])
        return Task("bitfield", text, [f"slli {dst}, {a}, {63 - hi}", f"srai {dst}, {dst}, {64 - width}"],
                    lambda s: s.__setitem__(dst, sext(s[a] >> lo, width)))
    if kind == 2:  # insert the low bits of b into a field of a
        b = d.reg()
        t1, t2 = d.temp(), d.temp()
        lo = rng.randint(0, 40)
        width = rng.randint(2, 16)
        hi = lo + width - 1
        mask = ((1 << width) - 1) << lo
        text = d.say(imperative=[f"insert the low {width} bits of {b} into bits {hi}:{lo} of {a}, result in {dst}",
                                 f"replace bits {lo}-{hi} of {a} with the low bits of {b}; put it in {dst}"],
                     question=[f"How do I write {b} into the bit field {hi}:{lo} of {a} (answer in {dst})?"],
                     c=[f"{dst} = ({a} & ~{_hex(mask)}) | (({b} << {lo}) & {_hex(mask)})"])
        lines = [f"li {t1}, {_hex(mask)}", f"slli {t2}, {b}, {lo}", f"and {t2}, {t2}, {t1}", f"not {t1}, {t1}",
                 f"and {dst}, {a}, {t1}", f"or {dst}, {dst}, {t2}"]
        return Task("bitfield", text, lines,
                    lambda s: s.__setitem__(dst, (s[a] & ~mask) | ((s[b] << lo) & mask)), scratch=[t1, t2])
    if kind in (3, 4, 5):  # set / clear / toggle bit n
        n = rng.randint(0, 63)
        what = ["set", "clear", "toggle"][kind - 3]
        same = rng.random() < 0.5
        if same:
            dst = a
        where = f"" if same else f", result in {dst}"
        text = d.say(imperative=[f"{what} bit {n} of {a}{where}", f"{what} bit number {n} in {a}{where}"],
                     question=[f"How do I {what} bit {n} of {a}{where}?"],
                     c=[f"{dst} = {a} {'|' if what == 'set' else '&' if what == 'clear' else '^'} "
                        f"{'~' if what == 'clear' else ''}(1UL << {n})"],
                     terse=[f"{what} bit {n}: {a}" + ("" if same else f" -> {dst}")])
        op = {"set": "or", "clear": "and", "toggle": "xor"}[what]
        fn = {"set": lambda v: v | (1 << n), "clear": lambda v: v & ~(1 << n), "toggle": lambda v: v ^ (1 << n)}[what]
        if n <= 10 and rng.random() < 0.6:  # the mask fits an immediate: one instruction
            imm = ~(1 << n) if what == "clear" else 1 << n
            return Task("bitfield", text, [f"{op}i {dst}, {a}, {imm}"], lambda s: s.__setitem__(dst, fn(s[a])))
        t = d.temp()
        lines = [f"li {t}, 1", f"slli {t}, {t}, {n}"] + ([f"not {t}, {t}"] if what == "clear" else []) + \
            [f"{op} {dst}, {a}, {t}"]
        return Task("bitfield", text, lines, lambda s: s.__setitem__(dst, fn(s[a])), scratch=[t])
    # kind 6: test bit n
    n = rng.randint(0, 63)
    text = d.say(imperative=[f"set {dst} to bit {n} of {a} (0 or 1)"],
                 question=[f"How do I check whether bit {n} of {a} is set, leaving 0 or 1 in {dst}?"],
                 c=[f"{dst} = ({a} >> {n}) & 1"], terse=[f"{dst} = bit {n} of {a}"])
    return Task("bitfield", text, [f"srli {dst}, {a}, {n}", f"andi {dst}, {dst}, 1"],
                lambda s: s.__setitem__(dst, (s[a] >> n) & 1))


def _extend(d: _Draw) -> Task:
    rng = d.rng
    dst, a = d.regs(2)
    bits = rng.choice([8, 16, 32])
    name = {8: "byte", 16: "halfword", 32: "word"}[bits]
    ctype = {8: "char", 16: "short", 32: "int"}[bits]
    if rng.random() < 0.5:  # sign extension
        text = d.say(imperative=[f"sign-extend the low {name} of {a} into {dst}",
                                 f"sign extend {a} from {bits} bits into {dst}"],
                     question=[f"How do I sign-extend the {bits}-bit value in {a} to 64 bits in {dst}?"],
                     c=[f"{dst} = (long)({ctype}){a};"], terse=[f"{dst} = sext{bits}({a})"])
        if bits == 32 and rng.random() < 0.6:  # one instruction does it
            lines = [rng.choice([f"sext.w {dst}, {a}", f"addiw {dst}, {a}, 0"])]
        else:
            lines = [f"slli {dst}, {a}, {64 - bits}", f"srai {dst}, {dst}, {64 - bits}"]
        return Task("extend", text, lines, lambda s: s.__setitem__(dst, sext(s[a], bits)))
    uctype = {8: "unsigned char", 16: "unsigned short", 32: "unsigned int"}[bits]
    text = d.say(imperative=[f"zero-extend the {name} in {a} to 64 bits, giving {dst}", f"zero extend {a} from {bits} bits into {dst}"],
                 question=[f"How do I zero-extend the {bits}-bit value in {a} to 64 bits in {dst}?"],
                 c=[f"{dst} = ({uctype}){a};"], terse=[f"{dst} = zext{bits}({a})"])
    if bits == 8 and rng.random() < 0.5:
        lines = [f"andi {dst}, {a}, 255"]
    else:
        lines = [f"slli {dst}, {a}, {64 - bits}", f"srli {dst}, {dst}, {64 - bits}"]
    return Task("extend", text, lines, lambda s: s.__setitem__(dst, s[a] & ((1 << bits) - 1)))


# ------------------------------------------------------------------ min, max, abs, clamp

def _minmax(d: _Draw) -> Task:
    rng = d.rng
    kind = rng.randrange(4)
    if kind in (0, 1):  # min / max, signed or unsigned, branch or branchless
        dst, a, b = d.regs(3)
        which = "max" if kind == 0 else "min"
        unsigned = rng.random() < 0.3
        key = (lambda v: v & MASK) if unsigned else s64
        sign = "unsigned " if unsigned else ""
        u = "u" if unsigned else ""
        text = d.say(c=[f"{dst} = {which}({a}, {b}){'  // unsigned' if unsigned else ''}",
                        f"{dst} = {a} {'>' if which == 'max' else '<'} {b} ? {a} : {b};{' (unsigned)' if unsigned else ''}"],
                     imperative=[f"put the {sign}{'larger' if which == 'max' else 'smaller'} of {a} and {b} in {dst}",
                                 f"compute the {sign}{which}imum of {a} and {b} into {dst}"],
                     question=[f"How do I get the {sign}{which} of {a} and {b} into {dst} on RV64 (no Zbb)?"],
                     terse=[f"{dst} <- {sign}{which}({a},{b})"])
        pick_a = (lambda x, y: key(x) >= key(y)) if which == "max" else (lambda x, y: key(x) <= key(y))
        model = lambda s: s.__setitem__(dst, s[a] if pick_a(s[a], s[b]) else s[b])  # noqa: E731
        if rng.random() < 0.6:  # with a branch
            (lab, fwd, _), = d.labels(1)
            br = f"bge{u}" if which == "max" else f"ble{u}"
            lines = [f"mv {dst}, {a}", f"{br} {a}, {b}, {fwd}", f"mv {dst}, {b}"] + d.label_line(lab)
            return Task("minmax", text, lines, model)
        t1, t2 = d.temp(), d.temp()
        # branchless: mask = -(b < a) for min (-(a < b) for max); dst = a ^ ((a ^ b) & mask)
        cmp = f"slt{u} {t1}, {a}, {b}" if which == "max" else f"slt{u} {t1}, {b}, {a}"
        lines = [cmp, f"neg {t1}, {t1}", f"xor {t2}, {a}, {b}", f"and {t2}, {t2}, {t1}", f"xor {dst}, {a}, {t2}"]
        return Task("minmax", text, lines, model, scratch=[t1, t2])
    if kind == 2:  # abs
        dst, a = d.regs(2)
        text = d.say(c=[f"{dst} = abs({a})", f"{dst} = {a} < 0 ? -{a} : {a};"],
                     imperative=[f"put the absolute value of {a} in {dst}"],
                     question=[f"How do I compute |{a}| into {dst}? There is no abs instruction."],
                     terse=[f"{dst} = |{a}|"])
        model = lambda s: s.__setitem__(dst, abs(s64(s[a])))  # noqa: E731
        if rng.random() < 0.5:
            (lab, fwd, _), = d.labels(1)
            lines = [f"mv {dst}, {a}", f"bgez {a}, {fwd}", f"neg {dst}, {a}"] + d.label_line(lab)
            return Task("minmax", text, lines, model)
        t = d.temp()
        return Task("minmax", text, [f"srai {t}, {a}, 63", f"xor {dst}, {a}, {t}", f"sub {dst}, {dst}, {t}"], model,
                    scratch=[t])
    # clamp to constants
    dst, a = d.regs(2)
    t = d.temp()
    lo, hi = sorted(rng.sample([rng.randint(-1000, 1000) for _ in range(3)] + [0, 255, 100], 2))
    text = d.say(c=[f"{dst} = {a} < {lo} ? {lo} : ({a} > {hi} ? {hi} : {a});",
                    f"{dst} = clamp({a}, {lo}, {hi})"],
                 imperative=[f"clamp {a} to the range {lo}..{hi} (signed) and put it in {dst}",
                             f"limit {a} to between {lo} and {hi}, result in {dst}"],
                 question=[f"How do I saturate {a} to [{lo}, {hi}] into {dst}?"],
                 terse=[f"{dst} = clamp {a} to [{lo},{hi}]"])
    (l1, f1, _), (l2, f2, _) = d.labels(2)
    lines = [f"mv {dst}, {a}", f"li {t}, {lo}", f"bge {dst}, {t}, {f1}", f"mv {dst}, {t}"]
    lines += d.label_line(l1, f"li {t}, {hi}") + [f"ble {dst}, {t}, {f2}", f"mv {dst}, {t}"] + d.label_line(l2)
    return Task("minmax", text, lines, lambda s: s.__setitem__(dst, max(lo, min(hi, s64(s[a])))), scratch=[t])


# ------------------------------------------------------------------ compare and set

def _compare(d: _Draw) -> Task:
    rng = d.rng
    dst, a, b = d.regs(3)
    kind = rng.randrange(6)
    if kind == 0:  # equal / not equal
        eq = rng.random() < 0.5
        text = d.say(c=[f"{dst} = ({a} {'==' if eq else '!='} {b});"],
                     imperative=[f"make {dst} 1 when {a} and {b} are {'the same' if eq else 'different'}, 0 if not"],
                     question=[f"How do I test whether {a} {'and' if eq else 'and'} {b} are {'equal' if eq else 'different'}, 0/1 in {dst}?"],
                     terse=[f"{dst} = {a} {'==' if eq else '!='} {b} ? 1 : 0"])
        return Task("compare", text, [f"xor {dst}, {a}, {b}", f"{'seqz' if eq else 'snez'} {dst}, {dst}"],
                    lambda s: s.__setitem__(dst, int((s[a] == s[b]) == eq)))
    if kind == 1:  # >= or <=, signed or unsigned
        ge = rng.random() < 0.5
        unsigned = rng.random() < 0.3
        key = (lambda v: v) if unsigned else s64
        u = "u" if unsigned else ""
        sym = ">=" if ge else "<="
        text = d.say(c=[f"{dst} = {a} {sym} {b};{'  // unsigned' if unsigned else ''}"],
                     imperative=[f"set {dst} to 1 when {a} {sym} {b} ({'unsigned' if unsigned else 'signed'}), otherwise 0"],
                     question=[f"How do I compute {a} {sym} {b} as a 0/1 flag in {dst}{', unsigned' if unsigned else ''}?"],
                     terse=[f"{dst} = ({a} {sym} {b}){' unsigned' if unsigned else ''}"])
        first = f"slt{u} {dst}, {a}, {b}" if ge else f"slt{u} {dst}, {b}, {a}"
        return Task("compare", text, [first, f"xori {dst}, {dst}, 1"],
                    lambda s: s.__setitem__(dst, int(key(s[a]) >= key(s[b]) if ge else key(s[a]) <= key(s[b]))))
    if kind == 2:  # equal to a constant
        k = _imm(rng, -2000, 2000)
        text = d.say(c=[f"{dst} = ({a} == {k});"], imperative=[f"set {dst} to 1 if {a} is {k}, else 0"],
                     question=[f"How do I check if {a} equals {k} (flag in {dst})?"], terse=[f"{dst} = {a}=={k}"])
        return Task("compare", text, [f"addi {dst}, {a}, {-k}", f"seqz {dst}, {dst}"],
                    lambda s: s.__setitem__(dst, int(s64(s[a]) == k)))
    if kind == 3:  # in range [lo, hi)
        lo = rng.randint(-100, 500)
        hi = lo + rng.randint(2, 1000)
        text = d.say(c=[f"{dst} = ({a} >= {lo} && {a} < {hi});"],
                     imperative=[f"set {dst} to 1 if {lo} <= {a} < {hi} (signed), else 0"],
                     question=[f"How do I test {lo} <= {a} < {hi} with one compare, result in {dst}?"],
                     terse=[f"{dst} = {a} in [{lo}, {hi})"])
        return Task("compare", text, [f"addi {dst}, {a}, {-lo}", f"sltiu {dst}, {dst}, {hi - lo}"],
                    lambda s: s.__setitem__(dst, int(lo <= s64(s[a]) < hi)))
    if kind == 4:  # select with a branch
        c, e = d.regs(2)
        text = d.say(c=[f"{dst} = ({a} < {b}) ? {c} : {e};"],
                     imperative=[f"if {a} < {b} (signed) put {c} in {dst}, otherwise {e}"],
                     question=[f"How do I pick {c} when {a} is less than {b} and {e} otherwise, into {dst}?"],
                     terse=[f"{dst} = {a}<{b} ? {c} : {e}"])
        (lab, fwd, _), = d.labels(1)
        lines = [f"mv {dst}, {c}", f"blt {a}, {b}, {fwd}", f"mv {dst}, {e}"] + d.label_line(lab)
        return Task("compare", text, lines, lambda s: s.__setitem__(dst, s[c] if s64(s[a]) < s64(s[b]) else s[e]))
    # kind 5: sign of a: -1, 0, 1
    t = d.temp()
    text = d.say(c=[f"{dst} = ({a} > 0) - ({a} < 0);"], imperative=[f"set {dst} to the sign of {a}: -1, 0 or 1"],
                 question=[f"How do I compute signum({a}) into {dst}?"], terse=[f"{dst} = sgn({a})"])
    return Task("compare", text, [f"sgtz {dst}, {a}", f"sltz {t}, {a}", f"sub {dst}, {dst}, {t}"],
                lambda s: s.__setitem__(dst, (s64(s[a]) > 0) - (s64(s[a]) < 0)), scratch=[t])


# ------------------------------------------------------------------ memory

_SIZES = {"b": (1, "byte"), "h": (2, "halfword"), "w": (4, "word"), "d": (8, "doubleword")}


def _load_store(d: _Draw) -> Task:
    rng = d.rng
    p = d.reg()
    kind = rng.randrange(6)
    if kind == 0:  # add a constant to a memory word/doubleword
        sfx = rng.choice("wd")
        size, name = _SIZES[sfx]
        off = size * rng.randint(0, 12)
        k = _imm(rng, -100, 100)
        t = d.temp()
        where = f"{off}({p})"
        verb = "increment" if k > 0 else "decrement"
        text = d.say(imperative=[f"{verb} the {name} in memory at {where} by {abs(k)}", f"add {k} to the {name} in memory at {where}"],
                     question=[f"How do I add {k} to the {name} stored at {p}+{off}?"],
                     c=[f"*({'int' if sfx == 'w' else 'long'} *)({p} + {off}) += {k};"],
                     terse=[f"mem{size * 8}[{p}+{off}] += {k}"])
        return Task("load_store", text, [f"l{sfx} {t}, {where}", f"addi {t}, {t}, {k}", f"s{sfx} {t}, {where}"],
                    lambda s: s.store(s[p] + off, size, s.load(s[p] + off, size) + k), {p}, [t])
    if kind == 1:  # OR / AND / XOR a register into memory
        sfx = rng.choice("bhwd")
        size, name = _SIZES[sfx]
        off = size * rng.randint(0, 12)
        r = d.reg()
        t = d.temp()
        op, word, fn = rng.choice([("or", "OR", lambda m, v: m | v), ("and", "AND", lambda m, v: m & v),
                                   ("xor", "XOR", lambda m, v: m ^ v), ("add", "add", lambda m, v: m + v)])
        sym = {"or": "|=", "and": "&=", "xor": "^=", "add": "+="}[op]
        load = f"l{sfx}u" if sfx in "bh" and rng.random() < 0.5 else f"l{sfx}"
        text = d.say(imperative=[f"{word} {r} into the {name} at {off}({p})" if op != "add" else
                                 f"add {r} to the {name} at {off}({p})"],
                     question=[f"How do I {word} the {name} at {p}+{off} with {r} in place?" if op != "add" else
                               f"How do I add {r} to the {name} stored at {p}+{off}?"],
                     c=[f"mem[{p} + {off}] {sym} {r};  // {name}"], terse=[f"{name} @ {off}({p}) {sym} {r}"])
        return Task("load_store", text, [f"{load} {t}, {off}({p})", f"{op} {t}, {t}, {r}", f"s{sfx} {t}, {off}({p})"],
                    lambda s: s.store(s[p] + off, size, fn(s.load(s[p] + off, size), s[r])), {p}, [t])
    if kind == 2:  # swap two words in memory
        sfx = rng.choice("wd")
        size, name = _SIZES[sfx]
        o1, o2 = (size * k for k in rng.sample(range(0, 10), 2))
        t1, t2 = d.temp(), d.temp()
        text = d.say(imperative=[f"swap the {name}s at {o1}({p}) and {o2}({p})"],
                     question=[f"How do I exchange the two {name}s at offsets {o1} and {o2} from {p}?"],
                     c=[f"tmp = {p}[{o1 // size}]; {p}[{o1 // size}] = {p}[{o2 // size}]; {p}[{o2 // size}] = tmp;"],
                     terse=[f"swap mem {o1}({p}) <-> {o2}({p}), {name}s"])

        def model(s: State) -> None:
            v1, v2 = s.load(s[p] + o1, size), s.load(s[p] + o2, size)
            s.store(s[p] + o1, size, v2)
            s.store(s[p] + o2, size, v1)
        return Task("load_store", text, [f"l{sfx} {t1}, {o1}({p})", f"l{sfx} {t2}, {o2}({p})",
                                         f"s{sfx} {t2}, {o1}({p})", f"s{sfx} {t1}, {o2}({p})"], model, {p}, [t1, t2])
    if kind == 3:  # arr[i] load with an index register
        dst, i = d.regs(2)
        t = d.temp()
        sfx = rng.choice("wd")
        size, name = _SIZES[sfx]
        ctype = "int" if sfx == "w" else "long"
        text = d.say(c=[f"{dst} = (({ctype} *){p})[{i}];", f"{dst} = {p}[{i}]  // {ctype} array"],
                     imperative=[f"load element {i} of the {ctype} array at {p} into {dst}"],
                     question=[f"How do I index a {size * 8}-bit array: {dst} = {p}[{i}]?"],
                     terse=[f"{dst} <- {name} array {p}, index {i}"])

        def prepare(r: random.Random, s: State) -> None:
            s[i] = r.randint(0, 40)
        return Task("load_store", text, [f"slli {t}, {i}, {size.bit_length() - 1}", f"add {t}, {p}, {t}",
                                         f"l{sfx} {dst}, 0({t})"],
                    lambda s: s.__setitem__(dst, s.load(s[p] + s[i] * size, size)), {p}, [t], prepare)
    if kind == 4:  # arr[i] = v
        v, i = d.regs(2)
        t = d.temp()
        sfx = rng.choice("wd")
        size, name = _SIZES[sfx]
        ctype = "int" if sfx == "w" else "long"
        text = d.say(c=[f"(({ctype} *){p})[{i}] = {v};"], imperative=[f"store {v} into element {i} of the {ctype} array at {p}"],
                     question=[f"How do I write {v} to {p}[{i}] where {p} points to {size * 8}-bit elements?"],
                     terse=[f"{p}[{i}] = {v} ({name}s)"])

        def prepare(r: random.Random, s: State) -> None:
            s[i] = r.randint(0, 40)
        return Task("load_store", text, [f"slli {t}, {i}, {size.bit_length() - 1}", f"add {t}, {p}, {t}",
                                         f"s{sfx} {v}, 0({t})"],
                    lambda s: s.store(s[p] + s[i] * size, size, s[v]), {p}, [t], prepare)
    # kind 5: load two words, store their sum
    o1, o2, o3 = (4 * k for k in rng.sample(range(0, 12), 3))
    t1, t2 = d.temp(), d.temp()
    text = d.say(imperative=[f"add the words at {o1}({p}) and {o2}({p}) and store the sum at {o3}({p})"],
                 question=[f"How do I load two ints from {p}+{o1} and {p}+{o2} and write their sum to {p}+{o3}?"],
                 c=[f"{p}[{o3 // 4}] = {p}[{o1 // 4}] + {p}[{o2 // 4}];  // int *{p}"],
                 terse=[f"word {o3}({p}) = word {o1}({p}) + word {o2}({p})"])
    return Task("load_store", text, [f"lw {t1}, {o1}({p})", f"lw {t2}, {o2}({p})", f"add {t1}, {t1}, {t2}",
                                     f"sw {t1}, {o3}({p})"],
                lambda s: s.store(s[p] + o3, 4, s.load(s[p] + o1, 4) + s.load(s[p] + o2, 4)), {p}, [t1, t2])


def _memory_copy(d: _Draw) -> Task:
    rng = d.rng
    kind = rng.randrange(3)
    sfx = rng.choice("wd")
    size, name = _SIZES[sfx]
    n = rng.randint(2, 5)
    if kind == 0:  # copy n words from src to dst
        dst, src = d.regs(2)
        t = d.temp()
        text = d.say(imperative=[f"copy {n} {name}s from the buffer at {src} to the buffer at {dst}"],
                     question=[f"How do I copy {n} {name}s from {src} to {dst} (no loop)?"],
                     c=[f"for (i = 0; i < {n}; i++) {dst}[i] = {src}[i];  // {name}s, unrolled"],
                     terse=[f"memcpy({dst}, {src}, {n * size}) with {name} moves"])
        lines = [line for k in range(n) for line in (f"l{sfx} {t}, {k * size}({src})", f"s{sfx} {t}, {k * size}({dst})")]

        def prepare(r: random.Random, s: State) -> None:  # the buffers do not overlap
            s[dst] = s[src] + r.choice([-1, 1]) * 8 * r.randint(n, 64)

        def model(s: State) -> None:
            for k in range(n):
                s.store(s[dst] + k * size, size, s.load(s[src] + k * size, size))
        return Task("memory_copy", text, lines, model, {dst, src}, [t], prepare)
    if kind == 1:  # clear n words
        p = d.reg()
        off = size * rng.randint(0, 4)
        at = f"{p}+{off}" if off else p
        text = d.say(imperative=[f"zero the {n} {name}s starting at {at}", f"clear {n} {name}s of memory at {off}({p})"],
                     question=[f"How do I set {n} consecutive {name}s at {at} to zero?"],
                     c=[f"memset({at}, 0, {n * size});"], terse=[f"clear {n}x{name} @ {at}"])
        lines = [f"s{sfx} zero, {off + k * size}({p})" for k in range(n)]

        def model(s: State) -> None:
            for k in range(n):
                s.store(s[p] + off + k * size, size, 0)
        return Task("memory_copy", text, lines, model, {p})
    # kind 2: fill n words with a register's value
    p, v = d.regs(2)
    text = d.say(imperative=[f"fill {n} {name}s at {p} with the value in {v}"],
                 question=[f"How do I store {v} into the first {n} {name}s of the array at {p}?"],
                 c=[f"{p}[0..{n - 1}] = {v};  // {name}s"], terse=[f"fill {n} {name}s @ {p} = {v}"])
    lines = [f"s{sfx} {v}, {k * size}({p})" for k in range(n)]

    def model(s: State) -> None:
        for k in range(n):
            s.store(s[p] + k * size, size, s[v])
    return Task("memory_copy", text, lines, model, {p})


# ------------------------------------------------------------------ stack frames

def _stack(d: _Draw) -> Task:
    rng = d.rng
    saved = ["ra"] * (rng.random() < 0.8) + sorted(rng.sample(["s0", "s1", "s2", "s3", "s4", "s5"], rng.randint(0, 3)),
                                                  key=lambda r: XNUM[r])
    if not saved:
        saved = ["ra", "s0"]
    frame = 16 * ((8 * len(saved) + 15) // 16)
    slots = {r: frame - 8 * (k + 1) for k, r in enumerate(saved)}
    listed = ", ".join(saved[:-1]) + (" and " if len(saved) > 1 else "") + saved[-1]
    push = [f"addi sp, sp, -{frame}"] + [f"sd {r}, {slots[r]}(sp)" for r in saved]
    pop = [f"ld {r}, {slots[r]}(sp)" for r in saved] + [f"addi sp, sp, {frame}"]
    kind = rng.randrange(3)

    def push_model(s: State) -> None:
        s["sp"] = s["sp"] - frame
        for r in saved:
            s.store(s["sp"] + slots[r], 8, s[r])

    def pop_model(s: State) -> None:
        for r in saved:
            s[r] = s.load(s["sp"] + slots[r], 8)
        s["sp"] = s["sp"] + frame
    if kind == 0:
        text = d.say(imperative=[f"push {listed} onto the stack", f"save {listed} on the stack (keep sp 16-byte aligned)"],
                     question=[f"How do I write a function prologue that saves {listed}?"],
                     terse=[f"prologue: save {listed}", f"push {listed}"])
        return Task("stack", text, push, push_model, {"sp"})
    if kind == 1:
        text = d.say(imperative=[f"pop {listed} from the stack (they were saved by the matching prologue)",
                                 f"restore {listed} from the stack frame and free it"],
                     question=[f"How do I write the epilogue that restores {listed} and releases the {frame}-byte frame?"],
                     terse=[f"epilogue: restore {listed}, sp += {frame}"])
        return Task("stack", text, pop, pop_model, {"sp"})
    # a whole frame around a small body that uses the saved registers
    body_reg = next((r for r in saved if r.startswith("s")), None)
    if body_reg is None:
        text = d.say(imperative=[f"save {listed} on the stack and then restore it (empty function body)"],
                     terse=[f"push {listed}; pop {listed}"])

        def model(s: State) -> None:
            push_model(s)
            pop_model(s)
        return Task("stack", text, push + pop, model, {"sp"})
    a, b = rng.sample([f"a{i}" for i in range(4)], 2)
    text = d.say(imperative=[f"save {listed} on the stack, set a0 = {a} + {b} using {body_reg} as a temporary, "
                             f"then restore them"],
                 question=[f"How do I compute a0 = {a} + {b} in {body_reg} while preserving {listed} on the stack?"],
                 terse=[f"frame saving {listed}; body a0 = {a} + {b} via {body_reg}"])

    def model(s: State) -> None:
        push_model(s)
        s[body_reg] = s[a] + s[b]
        s["a0"] = s[body_reg]
        pop_model(s)
    return Task("stack", text, push + [f"add {body_reg}, {a}, {b}", f"mv a0, {body_reg}"] + pop, model, {"sp"})


# ------------------------------------------------------------------ loops

def _loop(d: _Draw) -> Task:
    rng = d.rng
    kind = rng.randrange(8)
    n = rng.randint(2, 20)
    if kind == 5:  # length of a NUL-terminated string
        dst, p = d.regs(2)
        t1, t2 = d.temp(), d.temp()
        (lab, _, back), (lab2, fwd2, _) = d.labels(2, loop=True)
        text = d.say(imperative=[f"count the bytes before the terminating zero of the string at {p}; length in {dst}"],
                     question=[f"How do I compute strlen of the C string at {p} into {dst}?"],
                     c=[f"{dst} = strlen((char *){p});"], terse=[f"{dst} = strlen({p})"])
        lines = [f"mv {t1}, {p}"] + d.label_line(lab, f"lbu {t2}, 0({t1})") + \
            [f"beqz {t2}, {fwd2}", f"addi {t1}, {t1}, 1", f"j {back}"] + d.label_line(lab2, f"sub {dst}, {t1}, {p}")

        def prepare(r: random.Random, s: State) -> None:
            length = r.randint(0, 30)
            for k in range(length):
                s.store(s[p] + k, 1, r.randint(1, 255))
            s.store(s[p] + length, 1, 0)

        def model(s: State) -> None:
            length = 0
            while s.load(s[p] + length, 1, signed=False):
                length += 1
            s[dst] = length
        return Task("loop", text, lines, model, {p}, [t1, t2], prepare)
    if kind == 6:  # fill n bytes / words with a value, with a loop
        p, v = d.regs(2)
        t1, t2 = d.temp(), d.temp()
        sfx = rng.choice("bwd")
        size, name = _SIZES[sfx]
        (lab, _, back), = d.labels(1, loop=True)
        text = d.say(imperative=[f"with a loop, store {v} into each of the {n} {name}s at {p}"],
                     question=[f"How do I write a loop that fills {n} {name}s starting at {p} with {v}?"],
                     c=[f"for (i = 0; i < {n}; i++) {p}[i] = {v};  // {name} elements"],
                     terse=[f"loop: {n} x {name} @ {p} := {v}"])
        lines = [f"mv {t1}, {p}", f"li {t2}, {n}"] + d.label_line(lab, f"s{sfx} {v}, 0({t1})") + \
            [f"addi {t1}, {t1}, {size}", f"addi {t2}, {t2}, -1", f"bnez {t2}, {back}"]

        def model(s: State) -> None:
            for k in range(n):
                s.store(s[p] + k * size, size, s[v])
        return Task("loop", text, lines, model, {p}, [t1, t2])
    if kind == 7:  # copy n words with a loop
        dst, src = d.regs(2)
        t1, t2, t3, t4 = d.temp(), d.temp(), d.temp(), d.temp()
        sfx = rng.choice("wd")
        size, name = _SIZES[sfx]
        (lab, _, back), = d.labels(1, loop=True)
        text = d.say(imperative=[f"copy {n} {name}s from {src} to {dst} in a loop (the buffers do not overlap)"],
                     question=[f"How do I loop-copy {n} {name}s from the array at {src} to the one at {dst}?"],
                     c=[f"for (i = 0; i < {n}; i++) {dst}[i] = {src}[i];  // {name}s, loop"],
                     terse=[f"loop copy {n} {name}s {src} -> {dst}"])
        lines = [f"mv {t1}, {src}", f"mv {t2}, {dst}", f"li {t3}, {n}"] + d.label_line(lab, f"l{sfx} {t4}, 0({t1})") + \
            [f"s{sfx} {t4}, 0({t2})", f"addi {t1}, {t1}, {size}", f"addi {t2}, {t2}, {size}", f"addi {t3}, {t3}, -1",
             f"bnez {t3}, {back}"]

        def prepare(r: random.Random, s: State) -> None:
            s[dst] = s[src] + r.choice([-1, 1]) * 8 * r.randint(n, 64)

        def model(s: State) -> None:
            for k in range(n):
                s.store(s[dst] + k * size, size, s.load(s[src] + k * size, size))
        return Task("loop", text, lines, model, {dst, src}, [t1, t2, t3, t4], prepare)
    if kind == 0:  # sum 1..n
        dst = d.reg()
        t = d.temp()
        (lab, _, back), = d.labels(1, loop=True)
        text = d.say(imperative=[f"sum the integers 1 to {n} into {dst} with a loop"],
                     question=[f"How do I add up 1 + 2 + ... + {n} in a loop, result in {dst}?"],
                     c=[f"for ({dst} = 0, i = 1; i <= {n}; i++) {dst} += i;"], terse=[f"{dst} = sum(1..{n}), loop"])
        lines = [f"li {dst}, 0", f"li {t}, {n}"] + d.label_line(lab, f"add {dst}, {dst}, {t}") + \
            [f"addi {t}, {t}, -1", f"bnez {t}, {back}"]
        return Task("loop", text, lines, lambda s: s.__setitem__(dst, n * (n + 1) // 2), scratch=[t])
    if kind == 1:  # factorial
        n = rng.randint(2, 12)
        dst = d.reg()
        t = d.temp()
        (lab, _, back), = d.labels(1, loop=True)
        text = d.say(imperative=[f"compute {n} factorial into {dst} using a loop"],
                     question=[f"How do I compute {n}! with a loop into {dst}?"],
                     c=[f"{dst} = 1; for (i = {n}; i > 0; i--) {dst} *= i;"], terse=[f"{dst} = {n}! (loop)"])
        lines = [f"li {dst}, 1", f"li {t}, {n}"] + d.label_line(lab, f"mul {dst}, {dst}, {t}") + \
            [f"addi {t}, {t}, -1", f"bnez {t}, {back}"]
        fact = 1
        for k in range(2, n + 1):
            fact *= k
        return Task("loop", text, lines, lambda s: s.__setitem__(dst, fact), scratch=[t])
    if kind == 2:  # sum of an array of n words
        dst, p = d.regs(2)
        t1, t2, t3 = d.temp(), d.temp(), d.temp()
        sfx = rng.choice("wd")
        size, name = _SIZES[sfx]
        (lab, _, back), = d.labels(1, loop=True)
        text = d.say(imperative=[f"sum the {n} {name}s of the array at {p} into {dst} with a loop"],
                     question=[f"How do I loop over {n} {'ints' if sfx == 'w' else 'longs'} at {p} and add them into {dst}?"],
                     c=[f"{dst} = 0; for (i = 0; i < {n}; i++) {dst} += {p}[i];  // {name}s"],
                     terse=[f"{dst} = sum of {n} {name}s @ {p}"])
        lines = [f"li {dst}, 0", f"li {t1}, {n}", f"mv {t2}, {p}"] + d.label_line(lab, f"l{sfx} {t3}, 0({t2})") + \
            [f"add {dst}, {dst}, {t3}", f"addi {t2}, {t2}, {size}", f"addi {t1}, {t1}, -1", f"bnez {t1}, {back}"]
        return Task("loop", text, lines,
                    lambda s: s.__setitem__(dst, sum(s.load(s[p] + k * size, size) for k in range(n))), {p},
                    [t1, t2, t3])
    if kind == 3:  # power by repeated multiplication
        n = rng.randint(2, 8)
        dst, a = d.regs(2)
        t = d.temp()
        (lab, _, back), = d.labels(1, loop=True)
        text = d.say(imperative=[f"raise {a} to the power {n} with a multiply loop, result in {dst}"],
                     question=[f"How do I compute {a} to the {n}th power into {dst} with a loop?"],
                     c=[f"{dst} = 1; for (i = 0; i < {n}; i++) {dst} *= {a};"], terse=[f"{dst} = {a}**{n} (loop)"])
        lines = [f"li {dst}, 1", f"li {t}, {n}"] + d.label_line(lab, f"mul {dst}, {dst}, {a}") + \
            [f"addi {t}, {t}, -1", f"bnez {t}, {back}"]
        return Task("loop", text, lines, lambda s: s.__setitem__(dst, pow(s[a], n, 1 << 64)), scratch=[t])
    # kind 4: count set bits
    dst, a = d.regs(2)
    t1, t2 = d.temp(), d.temp()
    (lab, _, back), (lab2, fwd2, _) = d.labels(2, loop=True)
    text = d.say(imperative=[f"count the 1 bits of {a} into {dst} with a loop (keep {a})"],
                 question=[f"How do I compute the population count of {a} into {dst} without Zbb?"],
                 c=[f"{dst} = popcount({a});  // loop, no cpop"], terse=[f"{dst} = number of set bits in {a}"])
    lines = [f"li {dst}, 0", f"mv {t1}, {a}"] + d.label_line(lab, f"beqz {t1}, {fwd2}") + \
        [f"andi {t2}, {t1}, 1", f"add {dst}, {dst}, {t2}", f"srli {t1}, {t1}, 1", f"j {back}"] + d.label_line(lab2)
    return Task("loop", text, lines, lambda s: s.__setitem__(dst, bin(s[a]).count("1")), scratch=[t1, t2])


# ------------------------------------------------------------------ large constants

def _constant(d: _Draw) -> Task:
    rng = d.rng
    kind = rng.randrange(4)
    v = rng.choice([rng.randint(2048, (1 << 31) - 1), -rng.randint(2049, 1 << 31), rng.randint(0x1000, 0xFFFFF) << 12])
    if kind == 0:  # explicit lui + addiw
        v = s32(v)
        dst = d.reg()
        hi = ((v + 0x800) >> 12) & 0xFFFFF
        lo = v - s32(hi << 12)
        text = d.say(imperative=[f"load {_hex(v) if rng.random() < 0.5 else v} into {dst} with lui and addiw"],
                     question=[f"How do I build the 32-bit constant {_hex(v)} in {dst} using lui/addiw?"],
                     terse=[f"{dst} = {_hex(v)} (lui + addiw)"])
        lines = [f"lui {dst}, {_hex(hi)}", f"addiw {dst}, {dst}, {lo}"]
        return Task("constant", text, lines, lambda s: s.__setitem__(dst, v))
    dst, a = d.regs(2)
    t = d.temp()
    shown = _hex(v) if rng.random() < 0.6 else str(v)
    if kind == 1:  # add a big constant
        text = d.say(c=[f"{dst} = {a} + {shown};"], imperative=[f"add the constant {shown} to {a}, result in {dst}"],
                     question=[f"How do I add {shown} to {a}? It does not fit in addi. Result in {dst}."],
                     terse=[f"{dst} = {a} + {shown}"])
        return Task("constant", text, [f"li {t}, {shown}", f"add {dst}, {a}, {t}"],
                    lambda s: s.__setitem__(dst, s[a] + v), scratch=[t])
    if kind == 2:  # AND with a big mask
        m = rng.choice([0xFFFF0000, 0x00FFFF00, 0xFFFF, 0x0F0F0F0F, 0xFFFFFFFF00, rng.getrandbits(32) | 0x1000])
        text = d.say(c=[f"{dst} = {a} & {_hex(m)};"], imperative=[f"mask {a} with {_hex(m)} into {dst}"],
                     question=[f"How do I AND {a} with the mask {_hex(m)} into {dst}?"], terse=[f"{dst} = {a} & {_hex(m)}"])
        return Task("constant", text, [f"li {t}, {_hex(m)}", f"and {dst}, {a}, {t}"],
                    lambda s: s.__setitem__(dst, s[a] & m), scratch=[t])
    # kind 3: compare with a big constant
    text = d.say(c=[f"{dst} = ({a} < {shown});  // signed"],
                 imperative=[f"set {dst} to 1 if {a} is less than {shown} (signed), else 0"],
                 question=[f"How do I compare {a} against {shown}, 0/1 in {dst}?"], terse=[f"{dst} = {a} < {shown}"])
    return Task("constant", text, [f"li {t}, {shown}", f"slt {dst}, {a}, {t}"],
                lambda s: s.__setitem__(dst, int(s64(s[a]) < v)), scratch=[t])


# ------------------------------------------------------------------ floating point

def _fp_value(rng: random.Random) -> float:
    return round(rng.uniform(-500, 500), rng.choice([0, 1, 2, 3])) or 1.5


def _fp(d: _Draw) -> Task:
    rng = d.rng
    double = rng.random() < 0.5
    sfx, name, ctype, size = ("d", "double", "double", 8) if double else ("s", "single", "float", 4)
    ld_, st_ = ("fld", "fsd") if double else ("flw", "fsw")
    rnd = (lambda v: v) if double else f32
    ops = {"add": ("fadd", "+", lambda x, y: x + y), "sub": ("fsub", "-", lambda x, y: x - y),
           "mul": ("fmul", "*", lambda x, y: x * y), "div": ("fdiv", "/", lambda x, y: x / y)}
    word, (mn, sym, fn) = rng.choice(sorted(ops.items()))
    kind = rng.randrange(5)
    if kind == 0:  # load two values, operate, store
        p = d.reg()
        o1, o2, o3 = (size * k for k in rng.sample(range(0, 8), 3))
        t1, t2 = d.ftemp(), d.ftemp()
        text = d.say(imperative=[f"load the {ctype}s at {o1}({p}) and {o2}({p}), {word} them, and store the result at {o3}({p})"],
                     question=[f"How do I compute {p}[{o3 // size}] = {p}[{o1 // size}] {sym} {p}[{o2 // size}] for {ctype}s?"],
                     c=[f"(({ctype} *){p})[{o3 // size}] = (({ctype} *){p})[{o1 // size}] {sym} (({ctype} *){p})[{o2 // size}];"],
                     terse=[f"{ctype}: mem[{p}+{o3}] = mem[{p}+{o1}] {sym} mem[{p}+{o2}]"])

        def prepare(r: random.Random, s: State) -> None:
            s.store_f(s[p] + o1, _fp_value(r), double)
            s.store_f(s[p] + o2, _fp_value(r), double)

        def model(s: State) -> None:
            s.store_f(s[p] + o3, rnd(fn(s.load_f(s[p] + o1, double), s.load_f(s[p] + o2, double))), double)
        return Task("fp", text, [f"{ld_} {t1}, {o1}({p})", f"{ld_} {t2}, {o2}({p})", f"{mn}.{sfx} {t1}, {t1}, {t2}",
                                 f"{st_} {t1}, {o3}({p})"], model, {p}, [t1, t2], prepare)
    if kind == 1:  # register expression x*y + z with two roundings
        dst, x, y, z = d.freg(), d.freg(), d.freg(), d.freg()
        t = d.ftemp()
        text = d.say(c=[f"{dst} = {x} * {y} + {z};  // {ctype}, not fused"],
                     imperative=[f"multiply the {ctype}s {x} and {y}, then add {z}, result in {dst} (separate mul and add)"],
                     question=[f"How do I compute {dst} = {x}*{y} + {z} in {ctype} precision with fmul and fadd?"],
                     terse=[f"{dst} = {x}*{y}+{z} ({name} precision, two roundings)"])
        get, put = (State.fd, State.set_fd) if double else (State.fs, State.set_fs)

        def prepare(r: random.Random, s: State) -> None:
            for reg in (x, y, z):
                put(s, reg, rnd(_fp_value(r)))

        def model(s: State) -> None:
            put(s, dst, rnd(rnd(get(s, x) * get(s, y)) + get(s, z)))
        return Task("fp", text, [f"fmul.{sfx} {t}, {x}, {y}", f"fadd.{sfx} {dst}, {t}, {z}"], model, set(), [t], prepare)
    if kind == 2:  # int -> float, operate, float -> int (truncating)
        dst, a, b = d.regs(3)
        t1, t2 = d.ftemp(), d.ftemp()
        text = d.say(c=[f"{dst} = (int)(({ctype}){a} {sym} ({ctype}){b});"],
                     imperative=[f"convert {a} and {b} to {ctype}, {word} them, and truncate the result back to an int in {dst}"],
                     question=[f"How do I do {a} {sym} {b} in {name} precision and get the truncated int in {dst}?"],
                     terse=[f"{dst} = int({ctype}({a}) {sym} {ctype}({b}))"])

        def prepare(r: random.Random, s: State) -> None:
            s[a] = r.randint(-1000, 1000)
            s[b] = r.choice([-1, 1]) * r.randint(1, 1000)

        def model(s: State) -> None:
            v = rnd(fn(rnd(float(s32(s[a]))), rnd(float(s32(s[b])))))
            s[dst] = int(v)  # toward zero, as the rtz rounding mode
        return Task("fp", text, [f"fcvt.{sfx}.w {t1}, {a}", f"fcvt.{sfx}.w {t2}, {b}", f"{mn}.{sfx} {t1}, {t1}, {t2}",
                                 f"fcvt.w.{sfx} {dst}, {t1}, rtz"], model, set(), [t1, t2], prepare)
    if kind == 3:  # load a single, widen to double (or narrow a double), store
        p = d.reg()
        dst = d.freg()
        widen = rng.random() < 0.5
        t = d.ftemp()
        if widen:
            off = 4 * rng.randint(0, 10)
            text = d.say(imperative=[f"load the float at {off}({p}) and convert it to double in {dst}"],
                         question=[f"How do I read a float from {p}+{off} into {dst} as a double?"],
                         c=[f"{dst} = (double)*(float *)({p} + {off});"], terse=[f"{dst} = (double) float@{off}({p})"])

            def prepare(r: random.Random, s: State) -> None:
                s.store_f(s[p] + off, _fp_value(r), False)
            return Task("fp", text, [f"flw {t}, {off}({p})", f"fcvt.d.s {dst}, {t}"],
                        lambda s: s.set_fd(dst, s.load_f(s[p] + off, False)), {p}, [t], prepare)
        off = 8 * rng.randint(0, 10)
        text = d.say(imperative=[f"load the double at {off}({p}), round it to float, and store it back at {off}({p}) as a float"],
                     question=[f"How do I narrow the double at {p}+{off} to a float stored at the same address?"],
                     c=[f"*(float *)({p} + {off}) = (float)*(double *)({p} + {off});"],
                     terse=[f"double@{off}({p}) -> float, stored in place"])

        def prepare(r: random.Random, s: State) -> None:
            s.store_f(s[p] + off, r.uniform(-1e4, 1e4), True)
        return Task("fp", text, [f"fld {t}, {off}({p})", f"fcvt.s.d {t}, {t}", f"fsw {t}, {off}({p})"],
                    lambda s: s.store_f(s[p] + off, f32(s.load_f(s[p] + off, True)), False), {p}, [t], prepare)
    # kind 4: max / abs / compare on FP registers
    dst, x, y = d.freg(), d.freg(), d.freg()
    get, put = (State.fd, State.set_fd) if double else (State.fs, State.set_fs)

    def prepare(r: random.Random, s: State) -> None:
        for reg in (x, y):
            put(s, reg, rnd(_fp_value(r)))
    which = rng.choice(["max", "min", "absdiff", "less"])
    if which in ("max", "min"):
        text = d.say(c=[f"{dst} = f{which}({x}, {y});  // {ctype}"], imperative=[f"put the {which} of the {ctype}s {x} and {y} in {dst}"],
                     question=[f"How do I take the {which}imum of two {ctype}s {x}, {y} into {dst}?"])
        return Task("fp", text, [f"f{which}.{sfx} {dst}, {x}, {y}"],
                    lambda s: put(s, dst, (max if which == "max" else min)(get(s, x), get(s, y))), set(), [], prepare)
    if which == "absdiff":
        text = d.say(c=[f"{dst} = fabs({x} - {y});  // {ctype}"],
                     imperative=[f"put the absolute difference of the {ctype}s {x} and {y} in {dst}"],
                     question=[f"How do I compute |{x} - {y}| for {ctype}s into {dst}?"])
        return Task("fp", text, [f"fsub.{sfx} {dst}, {x}, {y}", f"fabs.{sfx} {dst}, {dst}"],
                    lambda s: put(s, dst, abs(rnd(get(s, x) - get(s, y)))), set(), [], prepare)
    a = d.reg()
    text = d.say(c=[f"{a} = ({x} < {y}) ? 0 : 1;  // {ctype}s"],
                 imperative=[f"{a} should be 0 when the {ctype} {x} < {y}, and 1 otherwise"],
                 question=[f"How do I get 1 in {a} when {x} >= {y} (not less), for {ctype}s?"])
    return Task("fp", text, [f"flt.{sfx} {a}, {x}, {y}", f"xori {a}, {a}, 1"],
                lambda s: s.__setitem__(a, int(not get(s, x) < get(s, y))), set(), [], prepare)


# ------------------------------------------------------------------ branches, moves, logic

_CONDITIONS = {  # name: (branch taken when the condition is FALSE, symbol, model)
    "eq": ("bne", "==", lambda x, y: x == y), "ne": ("beq", "!=", lambda x, y: x != y),
    "lt": ("bge", "<", lambda x, y: s64(x) < s64(y)), "ge": ("blt", ">=", lambda x, y: s64(x) >= s64(y)),
    "ltu": ("bgeu", "<", lambda x, y: x < y), "gt": ("ble", ">", lambda x, y: s64(x) > s64(y)),
}


def _branch(d: _Draw) -> Task:
    rng = d.rng
    kind = rng.randrange(4)
    cond = rng.choice(sorted(_CONDITIONS))
    skip_op, sym, holds = _CONDITIONS[cond]
    note = " (unsigned)" if cond == "ltu" else ""
    if kind == 0:  # if (a op b) dst += k
        dst, a, b = d.regs(3)
        k = _imm(rng, -50, 50)
        (lab, fwd, _), = d.labels(1)
        text = d.say(c=[f"if ({a} {sym} {b}) {dst} += {k};{'  // unsigned' if note else ''}"],
                     imperative=[f"add {k} to {dst}, but only when {a} {sym} {b}{note}"],
                     question=[f"How do I add {k} to {dst} only if {a} {sym} {b}{note}?"],
                     terse=[f"{a} {sym} {b}{note} ? {dst} += {k}"])
        lines = [f"{skip_op} {a}, {b}, {fwd}", f"addi {dst}, {dst}, {k}"] + d.label_line(lab)
        return Task("branch", text, lines, lambda s: s.__setitem__(dst, s[dst] + k if holds(s[a], s[b]) else s[dst]))
    if kind == 1:  # if (a op b) dst = x else dst = y, with an if/else
        dst, a, b, x, y = d.regs(5)
        (l1, f1, _), (l2, f2, _) = d.labels(2, named=rng.choice([("else", "endif"), (".Lelse", ".Lend"), ("L1", "L2")]))
        text = d.say(c=[f"if ({a} {sym} {b}) {{ {dst} = {x}; }} else {{ {dst} = {y}; }}{'  // unsigned' if note else ''}",
                        f"{dst} = {x} if {a} {sym} {b}{note} else {y}"],
                     imperative=[f"when {a} {sym} {b}{note} copy {x} into {dst}, otherwise copy {y}"],
                     question=[f"How do I write an if/else: {dst} gets {x} if {a} {sym} {b}{note}, else {y}?"],
                     terse=[f"{dst} = ({a} {sym} {b}{note}) ? {x} : {y}, if/else"])
        lines = [f"{skip_op} {a}, {b}, {f1}", f"mv {dst}, {x}", f"j {f2}"] + d.label_line(l1, f"mv {dst}, {y}") + \
            d.label_line(l2)
        return Task("branch", text, lines, lambda s: s.__setitem__(dst, s[x] if holds(s[a], s[b]) else s[y]))
    if kind == 2:  # if a is zero/negative, set it to a constant
        a = d.reg()
        k = rng.randint(-100, 100)
        test, skip, fn = rng.choice([("is zero", "bnez", lambda v: v == 0), ("is negative", "bgez", lambda v: s64(v) < 0),
                                     ("is not zero", "beqz", lambda v: v != 0)])
        (lab, fwd, _), = d.labels(1)
        text = d.say(imperative=[f"if {a} {test}, replace it with {k}"], question=[f"How do I set {a} to {k} when it {test}?"],
                     terse=[f"{a} {test} -> {a} = {k}"])
        lines = [f"{skip} {a}, {fwd}", f"li {a}, {k}"] + d.label_line(lab)
        return Task("branch", text, lines, lambda s: s.__setitem__(a, k if fn(s[a]) else s[a]))
    # kind 3: conditional negate
    dst, a, b = d.regs(3)
    (lab, fwd, _), = d.labels(1)
    text = d.say(c=[f"{dst} = ({b} < 0) ? -{a} : {a};"], imperative=[f"copy {a} to {dst}, negated when {b} is negative"],
                 question=[f"How do I give {dst} the value of {a} with the sign flipped if {b} < 0?"],
                 terse=[f"{dst} = {a}, negated if {b} < 0"])
    lines = [f"mv {dst}, {a}", f"bgez {b}, {fwd}", f"neg {dst}, {a}"] + d.label_line(lab)
    return Task("branch", text, lines, lambda s: s.__setitem__(dst, -s[a] if s64(s[b]) < 0 else s[a]))


def _move(d: _Draw) -> Task:
    rng = d.rng
    kind = rng.randrange(3)
    if kind == 0:  # swap with a temporary
        a, b = d.regs(2)
        t = d.temp()
        text = d.say(imperative=[f"exchange the contents of {a} and {b}"], question=[f"How do I swap {a} and {b}?"],
                     c=[f"tmp = {a}; {a} = {b}; {b} = tmp;"], terse=[f"swap {a} <-> {b}"])

        def model(s: State) -> None:
            s[a], s[b] = s[b], s[a]
        return Task("move", text, [f"mv {t}, {a}", f"mv {a}, {b}", f"mv {b}, {t}"], model, scratch=[t])
    if kind == 1:  # swap without a temporary
        a, b = d.regs(2)
        text = d.say(imperative=[f"swap {a} and {b} using XOR only, no third register"],
                     question=[f"How can I swap {a} and {b} without a temporary register?"],
                     terse=[f"xor-swap {a}, {b}"])

        def model(s: State) -> None:
            s[a], s[b] = s[b], s[a]
        return Task("move", text, [f"xor {a}, {a}, {b}", f"xor {b}, {a}, {b}", f"xor {a}, {a}, {b}"], model)
    # kind 2: rotate three registers
    a, b, c = d.regs(3)
    t = d.temp()
    text = d.say(imperative=[f"rotate the values: {a} takes {b}'s value, {b} takes {c}'s, {c} takes the old {a}"],
                 c=[f"tmp = {a}; {a} = {b}; {b} = {c}; {c} = tmp;"],
                 question=[f"How do I cycle {a} <- {b} <- {c} <- {a} through a temporary?"])

    def model(s: State) -> None:
        s[a], s[b], s[c] = s[b], s[c], s[a]
    return Task("move", text, [f"mv {t}, {a}", f"mv {a}, {b}", f"mv {b}, {c}", f"mv {c}, {t}"], model, scratch=[t])


def _logic(d: _Draw) -> Task:
    rng = d.rng
    kind = rng.randrange(4)
    dst, a, b = d.regs(3)
    if kind == 0:  # nor / nand / xnor
        op, name, fn = rng.choice([("or", "NOR", lambda x, y: ~(x | y)), ("and", "NAND", lambda x, y: ~(x & y)),
                                   ("xor", "XNOR", lambda x, y: ~(x ^ y))])
        sym = {"or": "|", "and": "&", "xor": "^"}[op]
        text = d.say(imperative=[f"compute the {name} of {a} and {b} into {dst}"], c=[f"{dst} = ~({a} {sym} {b});"],
                     question=[f"RV64 has no {name.lower()} instruction; how do I get {a} {name} {b} in {dst}?"],
                     terse=[f"{dst} = {a} {name} {b}"])
        return Task("logic", text, [f"{op} {dst}, {a}, {b}", f"not {dst}, {dst}"], lambda s: s.__setitem__(dst, fn(s[a], s[b])))
    if kind == 1:  # a & ~b, a | ~b
        t = d.temp()
        op, name, fn = rng.choice([("and", "AND NOT", lambda x, y: x & ~y), ("or", "OR NOT", lambda x, y: x | ~y)])
        sym = "&" if op == "and" else "|"
        text = d.say(c=[f"{dst} = {a} {sym} ~{b};"], imperative=[f"compute {a} {name} {b} into {dst} (no Zbb)"],
                     question=[f"How do I do {dst} = {a} {sym} ~{b} with base instructions?"], terse=[f"{dst} = {a} {name} {b}"])
        return Task("logic", text, [f"not {t}, {b}", f"{op} {dst}, {a}, {t}"], lambda s: s.__setitem__(dst, fn(s[a], s[b])),
                    scratch=[t])
    if kind == 2:  # rotate by a constant
        n = rng.randint(1, 63)
        left = rng.random() < 0.5
        t1, t2 = d.temp(), d.temp()
        way = "left" if left else "right"
        text = d.say(imperative=[f"rotate {a} {way} by {n} bits into {dst}"],
                     question=[f"How do I rotate {a} {way} by {n} without the Zbb rol/ror instructions, result in {dst}?"],
                     c=[f"{dst} = ({a} {'<<' if left else '>>'} {n}) | ({a} {'>>' if left else '<<'} {64 - n});"],
                     terse=[f"{dst} = rot{'l' if left else 'r'}({a}, {n})"])
        first, second = ("slli", "srli") if left else ("srli", "slli")
        amount = n if left else 64 - n
        return Task("logic", text, [f"{first} {t1}, {a}, {n}", f"{second} {t2}, {a}, {64 - n}", f"or {dst}, {t1}, {t2}"],
                    lambda s: s.__setitem__(dst, ((s[a] << amount) | (s[a] >> (64 - amount))) & MASK), scratch=[t1, t2])
    # kind 3: a bitwise select: dst = (a & m) | (b & ~m)
    m = d.reg()
    t = d.temp()
    text = d.say(c=[f"{dst} = ({a} & {m}) | ({b} & ~{m});"],
                 imperative=[f"merge {a} and {b} bit by bit: where {m} has a 1 take {a}'s bit, else {b}'s, into {dst}"],
                 question=[f"How do I select bits from {a} where the mask {m} is set and from {b} elsewhere, into {dst}?"])
    return Task("logic", text, [f"xor {t}, {a}, {b}", f"and {t}, {t}, {m}", f"xor {dst}, {b}, {t}"],
                lambda s: s.__setitem__(dst, (s[a] & s[m]) | (s[b] & ~s[m] & MASK)), scratch=[t])


def _combined(d: _Draw) -> Task:
    """Two tasks of different kinds in one request, done one after the other (4-12 instructions)."""
    rng = d.rng
    d.only = rng.choice(["imperative", "c", "terse"])
    kinds = rng.sample([name for name in CATEGORIES if name not in ("stack", "combined")], 2)
    first, second = (CATEGORIES[name](d) for name in kinds)
    a, b = first.description.rstrip("."), second.description.rstrip(".")
    a = re.sub(r";?\s*//\s*(.*)$", r" (\1)", a).rstrip(";")  # a C comment would swallow the second part
    if d.only == "c":
        text = f"{a}; {b}"
    elif d.only == "terse":
        text = rng.choice([f"{a}; {b}", f"{a}, then {b}"])
    else:
        b = b[0].lower() + b[1:]
        text = rng.choice([f"{a}, then {b}.", f"{a}. Then {b}.", f"{a}; after that, {b}.", f"{a} and then {b}."])

    d.style = d.only

    def model(s: State) -> None:
        first.model(s)
        second.model(s)

    def prepare(r: random.Random, s: State) -> None:
        for part in (first, second):
            if part.prepare:
                part.prepare(r, s)
    return Task("combined", text, first.lines + second.lines, model, first.pointers | second.pointers,
                first.scratch + second.scratch, prepare)


CATEGORIES: dict[str, Callable[[_Draw], Task]] = {
    "arith": _arith, "bitfield": _bitfield, "extend": _extend, "minmax": _minmax, "compare": _compare,
    "load_store": _load_store, "memory_copy": _memory_copy, "stack": _stack, "loop": _loop,
    "constant": _constant, "fp": _fp, "branch": _branch, "move": _move, "logic": _logic, "combined": _combined,
}


def draw_tasks(num: int, seed: int, categories: list[str] | None = None) -> list[Task]:
    """`num` tasks, deterministic for `seed`, categories drawn in turn (round robin from a
    seeded offset) so that every category is present in any run of len(CATEGORIES) rows."""
    names = list(categories or CATEGORIES)
    unknown = [n for n in names if n not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown task categories {unknown}; known: {', '.join(CATEGORIES)}")
    rng = random.Random(seed)
    start = rng.randrange(len(names))
    tasks: list[Task] = []
    seen: set[str] = set()
    while len(tasks) < num:
        for _attempt in range(50):  # re-draw the rare repeat or over-long request
            d = _Draw(rng)
            task = CATEGORIES[names[(start + len(tasks)) % len(names)]](d)
            task.style = d.style
            if len(task.description.split()) <= MAX_WORDS and 1 <= len(task.lines) <= 12 \
                    and task.description not in seen:
                break
        else:
            raise TaskError(f"could not draw a new {names[(start + len(tasks)) % len(names)]} task")
        seen.add(task.description)
        tasks.append(task)
    return tasks


# ------------------------------------------------------------------ verification

def _fp_differs(got: int, want: int, single: bool) -> bool:
    # The emulator (unicorn 2, QEMU 5.0) does not NaN-box single results: compare their low
    # 32 bits, the single itself.
    return (got ^ want) & (0xFFFFFFFF if single else MASK) != 0


def verify_tasks(tasks: list[Task], assembler="auto", states_per_task: int = 3, seed: int = 0) -> None:
    """Assemble and run every task from several states; raise TaskError listing wrong ones."""
    from riscv_ft.rv.assembler import find_assembler
    from riscv_ft.rv.emulator import (DATA_BASE, DATA_SIZE, Emulator, InitialState, pointer,
                                            random_fp_value, random_register_value)

    asm = find_assembler(assembler)
    results = asm.assemble_many([t.instructions for t in tasks])
    emu = Emulator(states=[])
    rng = random.Random(seed)
    failures = []
    for task, res in zip(tasks, results):
        if not res.ok:
            failures.append(f"{task.instructions!r}: does not assemble: {res.error}")
            continue
        keep_x = [XNUM[r] for r in INT_ABI if r not in task.scratch]
        keep_f = [FNUM[r] for r in FP_ABI if r not in task.scratch]
        for _k in range(states_per_task):
            start = State([0] + [random_register_value(rng) for _ in range(31)],
                          [random_fp_value(rng) for _ in range(32)], bytearray(rng.randbytes(DATA_SIZE)), DATA_BASE)
            for reg in task.pointers:
                start[reg] = pointer(rng)
            if task.prepare:
                task.prepare(rng, start)
            end = emu.run(res.program, InitialState(tuple(start.x), tuple(start.f), bytes(start.mem)), keep_memory=True)
            want = State(list(start.x), list(start.f), bytearray(start.mem), DATA_BASE)
            task.model(want)
            got_x, got_f = end.xregs(), end.fregs()
            problem = None
            if end.outcome != "end":
                problem = f"ended with {end.outcome}"
            elif [got_x[i] for i in keep_x] != [want.x[i] for i in keep_x]:
                bad = next(i for i in keep_x if got_x[i] != want.x[i])
                problem = f"{INT_ABI[bad]} is {got_x[bad]:#x}, the request implies {want.x[bad]:#x}"
            elif any(_fp_differs(got_f[i], want.f[i], i in want.singles) for i in keep_f):
                bad = next(i for i in keep_f if _fp_differs(got_f[i], want.f[i], i in want.singles))
                problem = f"{FP_ABI[bad]} is {got_f[bad]:#x}, the request implies {want.f[bad]:#x}"
            elif (end.memory or bytes(start.mem)) != bytes(want.mem):
                problem = "memory differs from the model"
            if problem:
                failures.append(f"[{task.category}] {task.instructions!r} ({task.description!r}): {problem}")
                break
    if failures:
        raise TaskError(f"{len(failures)} of {len(tasks)} generated tasks failed verification, e.g.: "
                        + "; ".join(failures[:3]))


def task_rows(num_rows: int, seed: int, verify: bool = True, assembler="auto",
              categories: list[str] | None = None) -> list[dict]:
    """`num_rows` {"description", "instructions", "category", "scratch"} rows, deterministic for
    `seed`; verify=True assembles and runs each one (TaskError if any is wrong)."""
    if num_rows < 0:
        raise ValueError("num_rows must be >= 0")
    tasks = draw_tasks(num_rows, seed, categories)
    if verify and tasks:
        verify_tasks(tasks, assembler=assembler, seed=seed)
    return [t.row() for t in tasks]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m riscv_ft.data.tasks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-verify", action="store_true", help="skip assembling and running each task")
    parser.add_argument("--assembler", default="auto")
    args = parser.parse_args(argv)
    try:
        rows = task_rows(args.rows, args.seed, verify=not args.no_verify, assembler=args.assembler)
    except (TaskError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with open(args.out, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} {'verified ' if not args.no_verify else ''}rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What every task family shares: 64-bit value helpers, the machine State a task's Python model
changes, the Task itself and the per-task drawing of registers, phrasings and labels (_Draw;
its underscore names are private to riscv_ft.data.tasks)."""

from __future__ import annotations

import random
import re
import struct
from dataclasses import dataclass, field
from typing import Callable

from riscv_ft.rv.sanitize import FP_ABI, INT_ABI


MASK = (1 << 64) - 1
MAX_WORDS = 40

# Registers a task may name: not zero/ra/sp/gp/tp (the stack tasks name ra and sp themselves).
INT_REGS = [f"a{i}" for i in range(8)] + [f"t{i}" for i in range(7)] + ["s0"] + [f"s{i}" for i in range(1, 12)]
TEMPS = [f"t{i}" for i in range(7)]
FP_REGS = [f"fa{i}" for i in range(8)] + [f"ft{i}" for i in range(12)] + [f"fs{i}" for i in range(12)]
FP_TEMPS = [f"ft{i}" for i in range(12)]
_FP_REGISTER = re.compile(r"\bf[ast]\d+\b")
XNUM = {name: i for i, name in enumerate(INT_ABI)}
XNUM["fp"] = 8
FNUM = {name: i for i, name in enumerate(FP_ABI)}


class VerificationError(RuntimeError):
    """A generated row or task failed verification (riscv_ft.data.synthetic and
    riscv_ft.data.tasks): a bug in a template, never a bad random draw."""


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
    # False where the request forbids other registers ("swap them without a temporary").
    temporaries_free: bool = True

    @property
    def instructions(self) -> str:
        return "\n".join(self.lines)

    def names(self, reg: str) -> bool:
        """Whether the request mentions this register ("T3 should be ..." counts)."""
        return re.search(rf"\b{reg}\b", self.description, re.IGNORECASE) is not None

    @property
    def answer_scratch(self) -> list[str]:
        """The registers an answer may leave changed, declared as the user-style evaluation set
        declares them: where the request names a temporary to use or forbids others, only the
        scratch ones; else every temporary the request does not name (t0-t6, and ft0-ft11 for
        an FP answer), since a person who names no temporary accepts any. Narrower (the
        reference's own temporaries alone), GRPO scored a right answer that used t5 instead of
        t1 as wrong (NOTES 16)."""
        if not self.temporaries_free or any(self.names(reg) for reg in self.scratch):
            return list(self.scratch)
        free = TEMPS + (FP_TEMPS if _FP_REGISTER.search(self.instructions) else [])
        return list(self.scratch) + [reg for reg in free if reg not in self.scratch and not self.names(reg)]

    def row(self) -> dict:
        return {"description": self.description, "instructions": self.instructions,
                "category": self.category, "scratch": self.answer_scratch}


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

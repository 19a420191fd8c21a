# One module on purpose: the machine setup, the context-buffer fast path, the random states and
# the end-state comparison all follow one memory map and one register layout.
"""Run RV64GC machine code in unicorn from fixed initial states and snapshot the end state.

Two snippets are functionally equivalent here when, started from each of the same several
random initial states, they end in the same architectural state: the same way out (fell off
the end, took the branch to the harness target, trapped, faulted, hit the step limit), the
same integer and FP registers, the same fcsr and the same data memory.

Memory map (nothing else is mapped, so any other access is a per-run fault, not a crash):

    CODE_BASE .. +64 KiB   read/execute   the snippet, then zeros (an illegal instruction)
    DATA_BASE .. +16 KiB   read/write     random bytes; many registers point into its middle,
                                          so `ld a0, 16(a1)` or `sw a2, -8(sp)` usually hits it

Bounds: at most MAX_STEPS instructions per run (a `j .` loop ends as "step limit" in well
under a millisecond). unicorn's wall-clock `timeout` is not used: it starts a thread per run
and would cost ~180 us of a ~15 us run; the step cap bounds time on its own.

Speed: registers are loaded and read through unicorn's context buffer (one call instead of
63). Its layout is not a public API, so it is located at start-up by writing marker values
through the official register API; if that ever fails, the slow per-register path is used.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import random
import struct
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

from unicorn import (UC_ARCH_RISCV, UC_ERR_INSN_INVALID, UC_HOOK_INTR, UC_HOOK_MEM_INVALID, UC_MODE_RISCV64,
                     UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE, Uc, UcError)
from unicorn import riscv_const as rv

from riscv_ft.rv.assembler import CODE_BASE, Program
from riscv_ft.rv.sanitize import FP_ABI, INT_ABI

CODE_SIZE = 0x10000
DATA_BASE = 0x80000
DATA_SIZE = 0x4000
MAX_STEPS = 10_000
_MAX_CONTEXTS = 4096  # cached register contexts per machine (a few KB each)
DEFAULT_STATES = 10  # see random_states; a wrong answer usually stops at the first or second
MSTATUS_FS = 3 << 13  # FP unit on ("dirty"); with FS=0 every F/D instruction is illegal

_TRAPS = {0: "instruction address misaligned", 1: "instruction access fault", 2: "illegal instruction",
          3: "ebreak", 4: "load address misaligned", 5: "load access fault", 6: "store address misaligned",
          7: "store access fault", 8: "ecall", 9: "ecall", 11: "ecall"}
_ACCESS = {19: "read from unmapped", 20: "write to unmapped", 21: "fetch from unmapped",
           22: "write to read-only", 23: "read from protected", 24: "fetch from non-executable"}
_EBREAK = (struct.pack("<I", 0x00100073), struct.pack("<H", 0x9002))  # ebreak, c.ebreak
_MASK = (1 << 64) - 1
STEP_LIMIT = "step limit"  # the outcome of a run that did not end within max_steps instructions


# Machine CSRs compared after code that can reach them (csr* instructions, mret, raw words);
# mscratch is what placeholder `csr` operands are bound to, so it starts random.
_CSRS = ("MSTATUS", "MIE", "MTVEC", "MSCRATCH", "MEPC", "MCAUSE", "MTVAL", "SATP", "SSCRATCH", "STVEC",
         "MEDELEG", "MIDELEG", "PRIV")
_CSR_IDS = [getattr(rv, f"UC_RISCV_REG_{name}") for name in _CSRS]
_MSCRATCH = _CSRS.index("MSCRATCH")


@dataclass(frozen=True, eq=False)
class InitialState:
    x: tuple[int, ...]  # x0..x31 (x0 is ignored: it is always zero)
    f: tuple[int, ...]  # f0..f31 as raw 64-bit patterns (single-precision values NaN-boxed)
    memory: bytes  # DATA_SIZE bytes at DATA_BASE
    mscratch: int = 0


class FinalState(NamedTuple):
    """What a run ended with; two runs agree when these compare equal."""

    outcome: str  # "end", "target", "trap: ecall", "fault: write to unmapped 0x...", "step limit"
    x: bytes  # x1..x31, 8 bytes little-endian each
    f: bytes  # f0..f31
    fcsr: int
    memory: bytes  # b"" if unchanged; else a digest, or all of it when asked to keep it
    csrs: tuple[int, ...] = ()  # the machine CSRs in _CSRS order

    def xregs(self) -> list[int]:
        return [0, *struct.unpack("<31Q", self.x)]

    def fregs(self) -> list[int]:
        return list(struct.unpack("<32Q", self.f))


class Scratch(NamedTuple):
    """Registers whose final value does not count (an evaluation row's `scratch`)."""

    x: frozenset[int] = frozenset()  # integer register numbers
    f: frozenset[int] = frozenset()  # FP register numbers


NO_SCRATCH = Scratch()


def ignoring_scratch(end: FinalState, scratch: Scratch) -> FinalState:
    """`end` with the scratch registers zeroed, so that their values compare equal."""
    x, f = bytearray(end.x), bytearray(end.f)
    for n in scratch.x:
        if n:  # x0 is not in the snapshot
            x[8 * (n - 1):8 * n] = bytes(8)
    for n in scratch.f:
        f[8 * n:8 * (n + 1)] = bytes(8)
    return end._replace(x=bytes(x), f=bytes(f))


def compare(reference: FinalState, prediction: FinalState, scratch: Scratch = NO_SCRATCH) -> str | None:
    """None when the two end states agree, else the first difference in words.

    Registers in `scratch` do not count. A run that hit the step limit agrees with nothing, not
    even with another endless run: code that never ends does not do what was asked, and two
    loops cut off after the same count say nothing about what they would compute."""
    if reference.outcome == STEP_LIMIT:
        return "the reference does not end (no exit within the step limit)"
    if prediction.outcome == STEP_LIMIT:
        return ("the prediction does not end (no exit within the step limit; "
                f"the reference ended with {reference.outcome})")
    if scratch.x or scratch.f:
        reference, prediction = ignoring_scratch(reference, scratch), ignoring_scratch(prediction, scratch)
    return None if reference == prediction else describe_difference(reference, prediction)


def describe_difference(reference: FinalState, prediction: FinalState) -> str:
    """The first way the prediction's end state differs from the reference's, in words."""
    if reference.outcome != prediction.outcome:
        return f"reference ended with {reference.outcome}, prediction with {prediction.outcome}"
    for names, ref, pred in ((INT_ABI, reference.xregs(), prediction.xregs()),
                             (FP_ABI, reference.fregs(), prediction.fregs())):
        for name, a, b in zip(names, ref, pred):
            if a != b:
                return f"{name} is {b:#x}, reference {a:#x}"
    if reference.fcsr != prediction.fcsr:
        return f"fcsr is {prediction.fcsr:#x}, reference {reference.fcsr:#x}"
    for name, a, b in zip(_CSRS, reference.csrs, prediction.csrs):
        if a != b:
            return f"{name.lower()} is {b:#x}, reference {a:#x}"
    if reference.memory != prediction.memory:
        return "data memory differs"
    return "no difference"


def disassemble(code: bytes, limit: int = 6) -> str:
    """`add a0, a1, a2; c.mv a0, a1` for messages (capstone), or hex if capstone is missing."""
    try:
        md = _disassembler()
    except ImportError:  # only messages use it
        return code.hex()
    insns = list(md.disasm_lite(code, CODE_BASE))
    parts = [f"{mnemonic} {ops}".strip() for _addr, _size, mnemonic, ops in insns]
    decoded = sum(size for _addr, size, _m, _o in insns)
    if decoded < len(code):  # capstone stops at bytes it cannot decode
        parts.append(f".byte 0x{code[decoded:decoded + 8].hex()}" + ("..." if len(code) - decoded > 8 else ""))
    return "; ".join(parts[:limit]) + ("; ..." if len(parts) > limit else "")


@functools.lru_cache(maxsize=1)
def _disassembler():
    import capstone

    return capstone.Cs(capstone.CS_ARCH_RISCV, capstone.CS_MODE_RISCV64 | capstone.CS_MODE_RISCVC)


# ------------------------------------------------------------------ initial states

def pointer(rng: random.Random) -> int:
    """An 8-aligned address in the middle of the data region: +/-2 KiB offsets stay inside."""
    return DATA_BASE + 0x1000 + 8 * rng.randrange(0x400)


def random_register_value(rng: random.Random) -> int:
    """A 64-bit register value: a pointer, random bits, a small or an edge value, or a 32-bit one."""
    kind = rng.random()
    if kind < 0.3:
        return pointer(rng)
    if kind < 0.6:
        return rng.getrandbits(64)
    if kind < 0.75:
        return rng.randint(-100, 100) & _MASK
    if kind < 0.9:  # values at the edges of 32/64-bit arithmetic
        return rng.choice(_EDGE_VALUES) & _MASK
    return _random_word(rng)


_EDGE_VALUES = [0, 1, -1, 2, 1 << 63, (1 << 63) - 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, -(1 << 31), 0xFF, 0x8000, 63, 64]


def _random_word(rng: random.Random) -> int:
    """A sign-extended random 32-bit value, as the W instructions leave them."""
    v = rng.getrandbits(32)
    return (v - (1 << 32) if v & 0x80000000 else v) & _MASK


def random_fp_value(rng: random.Random) -> int:
    """Raw FP register bits: a NaN-boxed single, a double, random bits or a special value."""
    kind = rng.random()
    if kind < 0.35:  # a single, NaN-boxed as the F extension requires
        return (0xFFFFFFFF << 32) | struct.unpack("<I", struct.pack("<f", rng.uniform(-1000, 1000)))[0]
    if kind < 0.8:
        return struct.unpack("<Q", struct.pack("<d", rng.uniform(-1e6, 1e6)))[0]
    if kind < 0.9:
        return rng.getrandbits(64)
    specials = [0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), float("nan"), 2.5]
    return struct.unpack("<Q", struct.pack("<d", rng.choice(specials)))[0]


def random_states(count: int = DEFAULT_STATES, seed: int = 20240611) -> list[InitialState]:
    """`count` deterministic initial states.

    State 0 points every register into the data region (so any load or store works). Then, so
    that every register meets every kind of value (with values drawn per register, a register
    that drew only pointers and small numbers lets `sraiw a0, a1, 24` pass for `... 25`):
    state 1 holds random 64-bit values everywhere, state 2 sign-extended random 32-bit values,
    state 3 small and edge values; the rest mix pointers, random, small, edge and 32-bit values,
    so signed/unsigned and 32/64-bit variants tell apart.
    """
    rng = random.Random(seed)
    kinds = [lambda: pointer(rng), lambda: rng.getrandbits(64), lambda: _random_word(rng),
             lambda: rng.choice(_EDGE_VALUES) if rng.random() < 0.5 else rng.randint(-100, 100)]
    states = []
    for k in range(count):
        draw = kinds[k] if k < len(kinds) else (lambda: random_register_value(rng))
        x = [0] + [draw() & _MASK for _ in range(31)]
        f = [random_fp_value(rng) for _ in range(32)]
        states.append(InitialState(tuple(x), tuple(f), rng.randbytes(DATA_SIZE), rng.getrandbits(64)))
    return states


def boundary_states(constants: Iterable[int], like: InitialState, keep: Iterable[int] = (),
                    limit: int = 8) -> list[InitialState]:
    """States whose integer registers all hold c-1, c or c+1 for each constant c of a program
    (except the registers in `keep`, such as load and store bases, which hold `like`'s values).

    Random 64-bit values almost never land next to a compare's immediate, so `slti a0, a1, 29`
    and `slti a0, a1, 32` agree from every random state; a register holding 30 tells them
    apart. Registers all equal cannot hide a difference that the random states show, they only
    add one: two equivalent programs agree from every state. FP registers and memory come from
    `like`."""
    values: list[int] = []
    for c in list(dict.fromkeys(constants))[:limit]:
        for v in (c - 1, c, c + 1):
            if v & _MASK not in values:
                values.append(v & _MASK)
    keep = set(keep)
    return [InitialState(tuple(like.x[i] if i in keep else (0 if i == 0 else v) for i in range(32)),
                         like.f, like.memory, like.mscratch) for v in values]


# ------------------------------------------------------------------ the machine

class _Machine:
    """One unicorn RV64 instance with the memory map, hooks and register fast path."""

    def __init__(self):
        uc = Uc(UC_ARCH_RISCV, UC_MODE_RISCV64)
        uc.mem_map(CODE_BASE, CODE_SIZE, UC_PROT_READ | UC_PROT_EXEC)
        uc.mem_map(DATA_BASE, DATA_SIZE, UC_PROT_READ | UC_PROT_WRITE)
        uc.reg_write(rv.UC_RISCV_REG_MSTATUS, uc.reg_read(rv.UC_RISCV_REG_MSTATUS) | MSTATUS_FS)
        uc.hook_add(UC_HOOK_INTR, self._on_trap)
        uc.hook_add(UC_HOOK_MEM_INVALID, self._on_bad_access)
        uc.ctl_exits_enabled(True)  # stop at the end *or* at the branch target
        self.uc = uc
        self.trap: int | None = None
        self.bad_access: tuple[int, int] | None = None
        self.loaded: tuple[bytes, int] | None = None
        self.loaded_len = 0
        self.contexts: dict[InitialState, object] = {}
        self._calibrate()

    def _on_trap(self, uc, intno, _user):
        self.trap = intno
        uc.emu_stop()

    def _on_bad_access(self, _uc, access, address, _size, _value, _user):
        self.bad_access = (access, address)
        return False  # do not map anything: the run ends with a fault

    def _calibrate(self) -> None:
        """Find x0..x31 and f0..f31 in the context buffer by writing marker values."""
        uc = self.uc
        gprs = [rv.UC_RISCV_REG_X0 + i for i in range(1, 32)]
        fprs = [rv.UC_RISCV_REG_F0 + i for i in range(32)]
        for i, reg in enumerate(gprs, 1):
            uc.reg_write(reg, 0x5A5A000000000000 | i)
        for i, reg in enumerate(fprs):
            uc.reg_write(reg, 0xA5A5000000000000 | i)
        self.scratch = uc.context_save()
        raw = bytes(self.scratch)
        self.size = self.scratch.size
        xo = raw.find(struct.pack("<Q", 0x5A5A000000000001)) - 8
        fo = raw.find(struct.pack("<Q", 0xA5A5000000000000))
        self.fast = (xo >= 0 and fo >= 0
                     and raw[xo + 8:xo + 256] == struct.pack("<31Q", *(0x5A5A000000000000 | i for i in range(1, 32)))
                     and raw[fo:fo + 256] == struct.pack("<32Q", *(0xA5A5000000000000 | i for i in range(32))))
        self.xo, self.fo = xo, fo
        for reg in gprs + fprs:
            uc.reg_write(reg, 0)
        uc.reg_write(rv.UC_RISCV_REG_FCSR, 0)
        uc.reg_write(rv.UC_RISCV_REG_MSCRATCH, 0)
        self.baseline = bytes(uc.context_save())
        self.baseline_csrs = tuple(uc.reg_read_batch(_CSR_IDS))
        if self.fast:  # check that writing through the buffer really sets registers
            ctx = self._context_for(InitialState((0, *range(1, 32)), tuple(range(100, 132)), b""))
            uc.context_restore(ctx)
            self.fast = (uc.reg_read(rv.UC_RISCV_REG_X31) == 31 and uc.reg_read(rv.UC_RISCV_REG_F31) == 131)
            uc.context_restore(self._raw_context(self.baseline))

    def _raw_context(self, raw: bytes):
        ctx = self.uc.context_save()
        ctypes.memmove(ctx.context, raw, self.size)
        return ctx

    def _context_for(self, state: InitialState):
        raw = bytearray(self.baseline)
        struct.pack_into("<31Q", raw, self.xo + 8, *(v & _MASK for v in state.x[1:]))
        struct.pack_into("<32Q", raw, self.fo, *(v & _MASK for v in state.f))
        return self._raw_context(bytes(raw))

    def load_state(self, state: InitialState, cache: bool) -> None:
        uc = self.uc
        if self.fast:
            ctx = self.contexts.get(state) if cache else None
            if ctx is None:
                ctx = self._context_for(state)
                if cache:
                    # Emulator.states_for makes new states for each set of load/store bases, so
                    # the cache would grow with every set seen: bound it.
                    if len(self.contexts) >= _MAX_CONTEXTS:
                        self.contexts.clear()
                    self.contexts[state] = ctx
            uc.context_restore(ctx)
        else:
            uc.context_restore(self._raw_context(self.baseline))
            uc.reg_write_batch([(rv.UC_RISCV_REG_X0 + i, state.x[i] & _MASK) for i in range(1, 32)]
                               + [(rv.UC_RISCV_REG_F0 + i, state.f[i] & _MASK) for i in range(32)])
        uc.reg_write(rv.UC_RISCV_REG_FCSR, 0)  # fflags live outside the context buffer
        uc.mem_write(DATA_BASE, state.memory)

    def read_registers(self) -> tuple[bytes, bytes]:
        uc = self.uc
        if self.fast:
            uc.context_update(self.scratch)
            raw = bytes(self.scratch)
            return raw[self.xo + 8:self.xo + 256], raw[self.fo:self.fo + 256]
        x = uc.reg_read_batch([rv.UC_RISCV_REG_X0 + i for i in range(1, 32)])
        f = uc.reg_read_batch([rv.UC_RISCV_REG_F0 + i for i in range(32)])
        return struct.pack("<31Q", *x), struct.pack("<32Q", *f)

    def load_code(self, program: Program) -> None:
        key = (program.code, program.target)
        if self.loaded == key:
            return
        code = program.code
        span = max(len(code), self.loaded_len) + 16
        # zeros after the code: the end marker, the target marker, and wiping the last snippet
        self.uc.mem_write(CODE_BASE, code + bytes(span - len(code)))
        self.uc.ctl_remove_cache(CODE_BASE, CODE_BASE + span)
        self.uc.ctl_set_exits([CODE_BASE + len(code), CODE_BASE + program.target])
        self.loaded, self.loaded_len = key, len(code)


class Emulator:
    """Runs programs from a fixed set of initial states; results per program are cached."""

    def __init__(self, states: Sequence[InitialState] | None = None, max_steps: int = MAX_STEPS,
                 cache_size: int = 5_000):
        self.states = list(states) if states is not None else random_states()
        self.max_steps = max_steps
        self._machine = _Machine()
        self._cache: dict[tuple[bytes, int, frozenset], tuple[FinalState, ...]] = {}
        self._cache_size = cache_size
        self._pointer_states: dict[frozenset[int], list[InitialState]] = {}

    def states_for(self, pointers: frozenset[int] = frozenset()) -> list[InitialState]:
        """self.states with the integer registers in `pointers` holding pointers into the data
        region (state 0's, rotated per state): a load or store's base register that holds random
        bits traps in both programs, and a state where both trap tells nothing."""
        if not pointers:
            return self.states
        hit = self._pointer_states.get(pointers)
        if hit is None:
            ptr = self.states[0].x
            hit = [InitialState(tuple(ptr[(i + k - 1) % 31 + 1] if i in pointers else v for i, v in enumerate(st.x)),
                                st.f, st.memory, st.mscratch) for k, st in enumerate(self.states)]
            if len(self._pointer_states) >= 256:
                self._pointer_states.clear()
            self._pointer_states[pointers] = hit
        return hit

    def run_all(self, program: Program, pointers: frozenset[int] = frozenset()) -> tuple[FinalState, ...]:
        """The end state from each of states_for(pointers) (cached by machine code)."""
        key = (program.code, program.target, pointers)
        hit = self._cache.get(key)
        if hit is None:
            hit = tuple(self.run(program, s, _cache_state=True) for s in self.states_for(pointers))
            if len(self._cache) >= self._cache_size:
                self._cache.clear()  # simple bound; scoring runs rarely exceed it
            self._cache[key] = hit
        return hit

    def first_difference(self, program: Program, expected: Sequence[FinalState],
                         pointers: frozenset[int] = frozenset(), scratch: Scratch = NO_SCRATCH) -> tuple[int, str] | None:
        """Run `program` state by state against `expected` (another program's run_all with the
        same pointers) and stop at the first state where it ends differently: (state index,
        what differs), or None. A wrong answer usually shows in state 0 or 1, so most
        mismatches cost one or two runs, not ten. See compare() for `scratch` and endless loops."""
        cached = self._cache.get((program.code, program.target, pointers))
        for k, (state, want) in enumerate(zip(self.states_for(pointers), expected)):
            got = cached[k] if cached else self.run(program, state, _cache_state=True)
            difference = compare(want, got, scratch)
            if difference is not None:
                return k, difference
        return None

    def difference_from(self, reference: Program, program: Program, states: Sequence[InitialState],
                        scratch: Scratch = NO_SCRATCH) -> tuple[int, str] | None:
        """Like first_difference, on extra states (not cached) for both programs."""
        for k, state in enumerate(states):
            difference = compare(self.run(reference, state), self.run(program, state), scratch)
            if difference is not None:
                return k, difference
        return None

    def endless(self, program: Program, pointers: frozenset[int] = frozenset()) -> int | None:
        """The first of states_for(pointers) from which `program` hits the step limit, or None."""
        return next((k for k, end in enumerate(self.run_all(program, pointers)) if end.outcome == STEP_LIMIT), None)

    def run(self, program: Program, state: InitialState, keep_memory: bool = False,
            _cache_state: bool = False) -> FinalState:
        """Run `program` once from `state`; every failure is described in .outcome."""
        if len(program.code) + 16 > CODE_SIZE:
            return FinalState("code too large", b"", b"", 0, b"")
        m = self._machine
        m.load_code(program)
        m.load_state(state, cache=_cache_state)
        if program.privileged:
            m.uc.reg_write(rv.UC_RISCV_REG_MSCRATCH, state.mscratch)
        m.trap = m.bad_access = None
        error = None
        try:
            m.uc.emu_start(CODE_BASE, 0, count=self.max_steps)
        except UcError as err:
            error = err
        outcome = self._outcome(m, program, error)
        x, f = m.read_registers()
        fcsr = m.uc.reg_read(rv.UC_RISCV_REG_FCSR)
        mem = m.uc.mem_read(DATA_BASE, DATA_SIZE)
        if mem == state.memory:
            memory = b""
        else:
            memory = bytes(mem) if keep_memory else hashlib.blake2b(mem, digest_size=16).digest()
        if program.privileged:
            csrs = tuple(m.uc.reg_read_batch(_CSR_IDS))
        else:  # nothing else can touch them: skip the ~20 us of reading them
            csrs = m.baseline_csrs[:_MSCRATCH] + (state.mscratch,) + m.baseline_csrs[_MSCRATCH + 1:]
        if program.privileged:
            # CSR writes, mret, raw words...: state outside the snapshot (privilege level, trap
            # vectors, PMP) may have changed, so the next run gets a fresh machine (~1 ms).
            self._machine = _Machine()
        return FinalState(outcome, x, f, fcsr, memory, csrs)

    def _outcome(self, m: _Machine, program: Program, error: UcError | None) -> str:
        if m.trap is not None:
            return f"trap: {_TRAPS.get(m.trap, f'cause {m.trap}')}"
        if error is not None:
            if error.errno == UC_ERR_INSN_INVALID:
                pc = m.uc.reg_read(rv.UC_RISCV_REG_PC)
                at = bytes(m.uc.mem_read(pc, 4)) if CODE_BASE <= pc < CODE_BASE + CODE_SIZE - 4 else b""
                if at.startswith(_EBREAK[0]) or at[:2] == _EBREAK[1]:
                    return "trap: ebreak"
                return "trap: illegal instruction"
            if m.bad_access is not None:
                access, address = m.bad_access
                return f"fault: {_ACCESS.get(access, f'access {access}')} {address:#x}"
            return f"fault: {error}"
        pc = m.uc.reg_read(rv.UC_RISCV_REG_PC)
        if pc == CODE_BASE + len(program.code):
            return "end"
        if pc == CODE_BASE + program.target:
            return "target"
        return STEP_LIMIT

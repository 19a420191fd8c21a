"""Generated multi-instruction tasks (up to 12 instructions), each checked by running it.

    rows = task_rows(3000, seed=0)   # [{"description", "instructions", "category", "scratch"}, ...]
    python -m riscv_ft.data.tasks --rows 3000 --seed 0 --out tasks.jsonl

riscv_ft.data.synthetic strings 1-3 unrelated instructions together; real requests ask for one
thing that takes several instructions: an expression, a bit field, a minimum with a branch, a
load-modify-store, a stack frame, a loop. This package draws such tasks, one small function per
kind (the CATEGORIES table below; the kinds live in integer.py, memory.py, control.py and fp.py,
what they share in base.py), each with

* the request, phrased the ways people write: imperative ("Put the max of a1 and a2 in a0"),
  a question ("How do I ...?"), C-like ("a0 = max(a1, a2)") or a terse note, with varied
  registers, constants and labels (named `done:` and numeric `1:`/`1f` alike);
* the answer, RV64GC only (no Zb*: no min/max/abs/zext.w instructions): 2-12 instructions,
  except a few requests that one instruction answers (set bit 3: `ori`; sign-extend a word);
* `scratch`: the registers whose final values the request does not fix (the evaluation set's
  field of the same name, declared the same way): the temporaries the answer used, and where
  the request names none of them every temporary it does not name;
* a Python model of what the *request* says (min(a, b), the sum 1..n, the IEEE float sum...),
  written independently of the answer.

verify=True assembles every answer with the scorer's assembler and runs it in its emulator from
several random states (load/store bases pointing into the data region; a task may first put
its own inputs in place: FP values, a small array index); each run must end normally and leave
every register except the scratch ones, and all memory, as the model says. A wrong template
raises VerificationError instead of becoming training data. Output is deterministic for a seed.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Callable

from riscv_ft.rv.sanitize import FP_ABI, INT_ABI
from riscv_ft.data.tasks.base import _Draw, FNUM, MASK, MAX_WORDS, State, Task, VerificationError, XNUM
from riscv_ft.data.tasks.control import _branch, _loop
from riscv_ft.data.tasks.fp import _fp
from riscv_ft.data.tasks.integer import _arith, _bitfield, _compare, _constant, _extend, _logic, _minmax, _move
from riscv_ft.data.tasks.memory import _load_store, _memory_copy, _stack


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
                first.scratch + second.scratch, prepare,
                temporaries_free=first.temporaries_free and second.temporaries_free)


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
            raise VerificationError(f"could not draw a new {names[(start + len(tasks)) % len(names)]} task")
        seen.add(task.description)
        # Its own generator, so naming the temporaries leaves every other draw as it was.
        named = _name_temporaries(task, random.Random(f"{seed}-temporaries-{len(tasks)}"))
        if named.description not in seen and len(named.description.split()) <= MAX_WORDS:
            task = named
            seen.add(task.description)
        tasks.append(task)
    return tasks


NAMED_TEMPORARIES_SHARE = 1 / 3


def _name_temporaries(task: Task, rng: random.Random) -> Task:
    """A third of the tasks with temporaries say which to use ("..., using t3 as a temporary"),
    as people often do. The SFT models ignored such requests (NOTES 16: "Swap a0 and a1 using
    t0" answered through t3) because no generated request ever named one; a request that names
    its temporaries lets the answer change those alone (Task.answer_scratch)."""
    temps = [reg for reg in task.scratch if not task.names(reg)]
    if not temps or not task.temporaries_free or rng.random() >= NAMED_TEMPORARIES_SHARE:
        return task
    listed = temps[0] if len(temps) == 1 else ", ".join(temps[:-1]) + " and " + temps[-1]
    many = len(temps) > 1
    text = task.description.rstrip()
    if task.style == "c":
        note = f"{'temporaries' if many else 'temporary'}: {listed}"
        return dataclasses.replace(task, description=f"{text}, {note}" if "//" in text else f"{text} // {note}")
    if task.style == "terse":
        return dataclasses.replace(task, description=rng.choice([f"{text} (scratch {listed})", f"{text}; tmp {listed}"]))
    end = text[-1] if text[-1] in ".?" else ""
    phrase = rng.choice([f", using {listed} as {'temporaries' if many else 'a temporary'}",
                         f" (use {listed} for intermediate values)", f", with {listed} as scratch"])
    return dataclasses.replace(task, description=text[: len(text) - len(end)] + phrase + end)


# ------------------------------------------------------------------ verification

def _fp_differs(got: int, want: int, single: bool) -> bool:
    # The emulator (unicorn 2, QEMU 5.0) does not NaN-box single results: compare their low
    # 32 bits, the single itself.
    return (got ^ want) & (0xFFFFFFFF if single else MASK) != 0


def verify_tasks(tasks: list[Task], assembler="auto", states_per_task: int = 3, seed: int = 0) -> None:
    """Assemble and run every task from several states; raise VerificationError listing wrong ones."""
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
        # The temporaries a row adds to its scratch (Task.answer_scratch) must be ones the
        # request leaves alone; else a wrong answer could leave them wrong and still score.
        added = [r for r in task.answer_scratch if r not in task.scratch]
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
            elif any((want.x[XNUM[r]] != start.x[XNUM[r]]) if r in XNUM else (want.f[FNUM[r]] != start.f[FNUM[r]])
                     for r in added):
                problem = "the request changes a temporary it does not name, so its scratch would hide a wrong answer"
            if problem:
                failures.append(f"[{task.category}] {task.instructions!r} ({task.description!r}): {problem}")
                break
    if failures:
        raise VerificationError(f"{len(failures)} of {len(tasks)} generated tasks failed verification, e.g.: "
                        + "; ".join(failures[:3]))


def task_rows(num_rows: int, seed: int, verify: bool = True, assembler="auto",
              categories: list[str] | None = None) -> list[dict]:
    """`num_rows` {"description", "instructions", "category", "scratch"} rows, deterministic for
    `seed`; verify=True assembles and runs each one (VerificationError if any is wrong)."""
    if num_rows < 0:
        raise ValueError("num_rows must be >= 0")
    tasks = draw_tasks(num_rows, seed, categories)
    if verify and tasks:
        verify_tasks(tasks, assembler=assembler, seed=seed)
    return [t.row() for t in tasks]


def main(argv: list[str] | None = None) -> int:
    from riscv_ft.data.generator_cli import run_generator

    return run_generator(argv, "python -m riscv_ft.data.tasks", __doc__.split("\n\n")[0],
                         lambda a: task_rows(a.rows, a.seed, verify=not a.no_verify, assembler=a.assembler))

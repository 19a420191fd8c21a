"""Verified decoding: answer with what most sampled answers *do*, not with the first guess.

For each description the model gives its greedy answer and `samples` sampled ones (one batch,
temperature > 0). Then, without any reference:

1. answers that do not assemble (or are refused) drop out;
2. the rest run in the emulator from the same initial states, and answers that end in the
   same state from every one of them form a group (the same behaviour, however spelled);
   answers that never end (hit the step limit) drop out too;
3. the largest group wins; on a tie the group holding the greedy answer, else the greedy
   answer itself - unless the greedy answer has no group (it does not assemble or never
   ends): a sure failure, so the tied group sampled first wins instead. From the winning
   group the greedy answer is returned if it is a member, else its most frequent spelling.

When nothing assembles the greedy answer stands. Registers a description declares `scratch`
(an evaluation row's field, see scorer.py) are left out of the comparison, as the scorer
does; riscv-ft-generate and the Assistant know of none and compare every register.
`pick_by_behaviour` is the selection alone (no model, testable with constructed candidates);
`verified_answers` samples with a model.
Not thread-safe (the scorer's emulator is shared per process).
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from riscv_ft.rv.assembler import Assembler, find_assembler
from riscv_ft.rv.emulator import NO_SCRATCH, STEP_LIMIT, Emulator, Scratch, ignoring_scratch
from riscv_ft.rv.reference import bind_placeholders
from riscv_ft.evaluate.scorer import default_emulator, base_registers, scratch_registers

DECODES = ("greedy", "verify")
SAMPLES = 8  # sampled answers per description, besides the greedy one
TEMPERATURE = 0.7  # sampling temperature when none > 0 is given


def pick_by_behaviour(candidates: Sequence[str], greedy: str, assembler: str | Assembler = "auto",
                      emulator: Emulator | None = None) -> str:
    """The answer whose behaviour most of `candidates` and `greedy` share (module docstring)."""
    return pick_many([candidates], [greedy], assembler, emulator)[0]


def pick_many(candidate_lists: Sequence[Sequence[str]], greedies: Sequence[str],
              assembler: str | Assembler = "auto", emulator: Emulator | None = None,
              scratch: Sequence[Sequence[str] | None] | None = None) -> list[str]:
    """pick_by_behaviour for many descriptions, with one batched assembler call for all;
    `scratch`: per description, register names whose final value does not count (or None)."""
    if len(candidate_lists) != len(greedies):
        raise ValueError(f"{len(candidate_lists)} candidate lists for {len(greedies)} greedy answers")
    scratch = [scratch_registers(names, k) for k, names in enumerate(scratch or [None] * len(greedies))]
    asm = find_assembler(assembler)
    emu = emulator or default_emulator()
    pools = [[greedy, *candidates] for candidates, greedy in zip(candidate_lists, greedies)]
    # An answer in the dataset's template style (`add rd, rs1, rs2`) runs with its placeholders
    # bound to the scorer's fixed registers, the same in every answer that uses them.
    bound = [[bind_placeholders(text, text)[0] for text in pool] for pool in pools]
    results = iter(asm.assemble_many([text for texts in bound for text in texts]))
    picks = []
    for pool, texts, ignored in zip(pools, bound, scratch):
        programs = [next(results) for _ in texts]
        picks.append(_pick(pool, texts, programs, emu, ignored))
    return picks


def _pick(pool: list[str], bound: list[str], programs: list, emu: Emulator, scratch: Scratch = NO_SCRATCH) -> str:
    greedy = pool[0]
    ok = [i for i, res in enumerate(programs) if res.ok]
    if not ok:
        return greedy
    # the same states for every answer: any register one of them uses as a load/store base
    # points into the data region
    pointers = frozenset().union(*(base_registers(bound[i]) for i in ok))
    groups: dict[tuple, list[int]] = {}
    for i in ok:
        try:
            ends = emu.run_all(programs[i].program, pointers)
        except Exception:  # noqa: BLE001 - an emulator bug drops the answer, not the evaluation
            continue
        if any(end.outcome == STEP_LIMIT for end in ends):
            continue
        if scratch != NO_SCRATCH:
            ends = tuple(ignoring_scratch(end, scratch) for end in ends)
        groups.setdefault(ends, []).append(i)
    if not groups:
        return greedy
    largest = max(len(members) for members in groups.values())
    top = [members for members in groups.values() if len(members) == largest]
    greedy_runs = any(0 in members for members in groups.values())
    if any(0 in members for members in top) or (len(top) > 1 and greedy_runs):
        return greedy  # greedy's group wins the tie, or a tie without it: greedy stands
    spellings = Counter(pool[i] for i in top[0])
    return pool[max(top[0], key=lambda i: (spellings[pool[i]], -i))]  # most frequent, then first


def verified_answers(model, tokenizer, descriptions: list[str], prompt_format: str, max_tokens: int,
                     batch_size: int = 32, samples: int = SAMPLES, temperature: float = TEMPERATURE,
                     top_p: float = 0.0, greedy: list[str] | None = None, assembler: str | Assembler = "auto",
                     scratch: Sequence[Sequence[str] | None] | None = None) -> tuple[list[str], list[str]]:
    """(verified answers, greedy answers) for `descriptions`: the greedy answers (or the given
    ones) and `samples` sampled answers per description, in batches, picked by behaviour
    (`scratch` as in pick_many)."""
    from riscv_ft.inference import generate_answers

    if samples < 1:
        raise ValueError(f"samples={samples}: need at least 1 sampled answer")
    if greedy is None:
        greedy = generate_answers(model, tokenizer, descriptions, prompt_format, max_tokens, batch_size)
    # every description `samples` times, next to each other: one batch holds whole descriptions
    sampled = generate_answers(model, tokenizer, [d for d in descriptions for _ in range(samples)],
                               prompt_format, max_tokens, batch_size, temperature=temperature, top_p=top_p)
    lists = [sampled[k * samples:(k + 1) * samples] for k in range(len(descriptions))]
    return pick_many(lists, greedy, assembler, scratch=scratch), greedy

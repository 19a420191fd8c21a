"""The user-style evaluation set (riscv_ft/data/user_prompts.jsonl): its size and fields, every
reference runnable, every alternative answer functional under the scorer (with the row's
scratch registers), and no description a near copy of what the training generators write."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from riscv_ft.data import mixing
from riscv_ft.data.mixing import masked_tokens, near_copies, user_style_rows
from riscv_ft.data.synthetic import synthetic_rows
from riscv_ft.data.tasks import task_rows
from riscv_ft.data.tasks.base import FP_TEMPS, TEMPS
from riscv_ft.rv.assembler import available_assemblers
from riscv_ft.data.user_prompts import USER_PROMPTS, load_user_prompts
from riscv_ft.evaluate.model_eval import answer_rows
from riscv_ft.rv.reference import instruction_count, normalize
from riscv_ft.rv.sanitize import REGISTERS
from riscv_ft.evaluate.scorer import score_rows, summarize

needs_assembler = pytest.mark.skipif(not available_assemblers(), reason="no RISC-V assembler installed")

CATEGORIES = {"arith", "logic", "shift", "compare", "branch", "load_store", "immediate", "constant", "fp", "bitfield",
              "minmax", "loop", "stack", "memory_copy", "move", "system"}
# Shorter descriptions than this many masked tokens are compared for an exact template match
# only: "Load the word at 8(sp) into t0" and "Load the byte at 6(s2) into t1" differ by one
# token of ten (ratio 0.9) although neither copies the other.
LONG = 12


def _rows() -> list[dict]:
    return [json.loads(line) for line in USER_PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_the_set_is_large_tagged_and_every_multi_instruction_prompt_has_an_alternative():
    rows = _rows()
    multi = [r for r in rows if instruction_count(r["instructions"]) > 1]
    assert len(rows) >= 150 and len(multi) >= 60, (len(rows), len(multi))
    assert len({r["description"] for r in rows}) == len(rows)
    assert all(set(r) <= {"description", "instructions", "category", "scratch", "alternatives"} for r in rows)
    assert {r["category"] for r in rows} <= CATEGORIES and len({r["category"] for r in multi}) >= 12
    for r in rows:
        assert all(REGISTERS.get(name) for name in r.get("scratch", [])), r
    for r in multi:
        alternatives = r.get("alternatives", [])
        assert alternatives and all(normalize(a) != normalize(r["instructions"]) for a in alternatives), r
    # the first 62 rows are the set's first version (descriptions and references unchanged), so
    # figures on them stay comparable with earlier runs
    first = json.dumps([[r["description"], r["instructions"]] for r in rows[:62]]).encode()
    assert hashlib.sha256(first).hexdigest() == "f4d672203ecd28bb17dc99ca20fd00543a1230b0818a6facfc8705321c514ff6"


def test_every_prompt_declares_its_scratch_registers_by_one_rule():
    """A request that names no temporary accepts any: its scratch holds every temporary it does
    not name (t0-t6, and ft0-ft11 where the reference uses FP registers). Only a request that
    names the temporary to use, or forbids others, declares fewer; the generated tasks follow
    the same rule (riscv_ft.data.tasks Task.answer_scratch)."""
    narrow = []
    for r in _rows():
        text, declared = r["description"], r.get("scratch") or []
        def named(reg: str) -> bool:
            return re.search(rf"\b{reg}\b", text, re.IGNORECASE) is not None
        if any(named(reg) for reg in declared) or re.search(r"without touching|\buse t\d\b", text, re.IGNORECASE):
            narrow.append(text)
            continue
        uses_fp = re.search(r"\bf[ast]\d+\b", r["instructions"])
        free = [reg for reg in TEMPS + (FP_TEMPS if uses_fp else []) if not named(reg)]
        assert set(free) <= set(declared), (text, sorted(set(free) - set(declared)))
    assert 5 <= len(narrow) <= 15, narrow


@needs_assembler
def test_every_reference_runs_and_every_alternative_is_functional_with_its_scratch():
    rows = _rows()
    pairs = [{"reference": r["instructions"], "prediction": answer, "scratch": r.get("scratch", []), "row": i}
             for i, r in enumerate(rows) for answer in [r["instructions"], *r.get("alternatives", [])]]
    scored = score_rows(pairs)
    wrong = [(rows[s["row"]]["description"], s["prediction"], s["error"]) for s in scored
             if s["reference_class"] != "assembly" or not s["functional"]]
    assert not wrong, wrong[:3]
    assert len(scored) >= len(rows) + 60


@needs_assembler
def test_the_evaluation_loads_the_new_fields_and_reports_per_category():
    rows = load_user_prompts()
    assert len(rows) == len(_rows()) and all("alternatives" not in r for r in rows)
    assert sum("scratch" in r for r in rows) >= 60 and all("category" in r for r in rows)
    # answered by the first alternative (or the reference): functional everywhere, summary per category
    answers = [r.get("alternatives", [r["instructions"]])[0] for r in _rows()]
    scored = score_rows(answer_rows(None, None, rows, "chat", 8, answers=answers))
    summary = summarize(scored)
    assert summary["functional_rate"] == 1.0 and summary["instructions"]["multi"]["functional_n"] >= 60
    assert set(summary["categories"]) == {r["category"] for r in rows}


def test_training_mix_does_not_read_the_evaluation_set(monkeypatch):
    def forbidden(*_args, **_kwargs):
        raise AssertionError("the training mix read the evaluation set")
    monkeypatch.setattr("riscv_ft.data.user_prompts.load_user_prompts", forbidden)
    monkeypatch.setattr(mixing, "load_user_prompts", forbidden, raising=False)
    assert len(user_style_rows(20, seed=0)) == 20
    assert len(task_rows(20, seed=0)) == 20 and len(synthetic_rows(20, seed=0)) == 20


@pytest.fixture(scope="module")
def generated() -> list[str]:
    """A large sample of every generator that feeds the training mix (unverified: text only)."""
    return ([r["description"] for r in synthetic_rows(15000, seed=0, verify=False)]
            + [r["description"] for r in task_rows(15000, seed=0, verify=False)]
            + [r["description"] for r in user_style_rows(3000, seed=0)])


def _leaks(held_out: list[str], generated: list[str]) -> dict[str, str]:
    """held-out text -> the generated text it nearly copies: the same template (masked tokens
    equal) at any length, or difflib ratio >= 0.8 for descriptions of LONG tokens or more."""
    templates = {masked_tokens(g): g for g in generated}
    found = {text: templates[masked_tokens(text)] for text in held_out if masked_tokens(text) in templates}
    long_ones = [t for t in held_out if len(masked_tokens(t)) >= LONG and t not in found]
    found.update({text: copy for _ratio, text, copy in near_copies(long_ones, generated, 0.8)})
    return found


@pytest.mark.slow
def test_no_evaluation_prompt_is_a_near_copy_of_generated_training_text(generated):
    descriptions = [r["description"] for r in _rows()]
    leaks = _leaks(descriptions, generated)
    assert not leaks, list(leaks.items())[:5]
    # the check itself: evaluation prompts turned into templates (registers and numbers
    # replaced), as a generator copying them would write them, are all caught
    copied = [d.replace("a0", "s7").replace("a1", "t5").replace("16", "40") for d in descriptions[::10]]
    assert len(_leaks(descriptions[::10], generated + copied)) == len(copied)
    long_one = next(d for d in descriptions if len(masked_tokens(d)) >= 16)
    edited = long_one.replace("the ", "a ", 1) + " please"  # a copy with small edits
    assert _leaks([long_one], generated + [edited])

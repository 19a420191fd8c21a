"""Generated multi-instruction tasks (riscv_ft.data.tasks): every category verifies in the real
assembler and emulator against its Python model, verification catches a wrong answer, a wrong
model and an undeclared temporary, output is deterministic, and the phrasing varies."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from collections import Counter

import pytest
from omegaconf import OmegaConf

from riscv_ft.data.tasks import CATEGORIES, VerificationError, draw_tasks, task_rows, verify_tasks
from riscv_ft.rv.assembler import available_assemblers

needs_assembler = pytest.mark.skipif(not available_assemblers(), reason="no RISC-V assembler installed")

# Zb* and other non-RV64GC mnemonics that models tend to invent
NOT_RV64GC = {"max", "maxu", "min", "minu", "abs", "zext.w", "zext.h", "sext.b", "sext.h", "cpop", "bset", "bclr",
              "binv", "bext", "andn", "orn", "rol", "ror", "divi", "muli", "subi"}


def _mnemonics(instructions: str) -> set[str]:
    out = set()
    for line in instructions.split("\n"):
        line = re.sub(r"^\s*[\w.]+:\s*", "", line)  # a label in front of an instruction
        if line:
            out.add(line.split()[0])
    return out


@needs_assembler
@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_each_category_yields_rows_that_verify(category):
    tasks = draw_tasks(80, seed=11, categories=[category])
    verify_tasks(tasks, states_per_task=4, seed=3)  # raises VerificationError on any wrong task
    assert {t.category for t in tasks} == {category}
    lengths = [len(t.lines) for t in tasks]
    assert max(lengths) <= 12 and sum(n >= 2 for n in lengths) >= 40
    used = set().union(*(_mnemonics(t.instructions) for t in tasks))
    assert not used & NOT_RV64GC, used & NOT_RV64GC
    if category == "fp":  # named with their f forms, single and double
        assert {"flw", "fsw", "fld", "fsd", "fadd.s", "fadd.d", "fcvt.w.s", "fcvt.d.s"} <= used, used
        # and what RV64GC lacks spelled out: no FP immediates (li + fcvt), rounding to a long,
        # an int sum converted, a value in memory compared
        assert {"li", "fcvt.l.s", "fcvt.l.d", "addw", "subw"} <= used, used
        assert any(t.lines[0].split()[0] in ("flw", "fld") and t.lines[-1].startswith("flt") for t in tasks)
        # single instructions asked for by their effect (more draws: each is one in about 80)
        one = {t.lines[0].split()[0] for t in draw_tasks(500, seed=11, categories=["fp"]) if len(t.lines) == 1}
        assert {"fsqrt.s", "fsqrt.d", "fneg.d", "fmv.x.w", "fmv.x.d", "fcvt.d.l", "fcvt.s.wu"} <= one, one
    if category == "bitfield":  # masks that fit an immediate: one andi
        assert any(t.lines[0].startswith("andi") and len(t.lines) == 1 for t in tasks)
    if category == "memory_copy":  # every width, counts also in bytes
        assert {"sb", "sh", "sw", "sd"} <= used and any(" bytes" in t.description or " B " in t.description for t in tasks)


@needs_assembler
def test_verification_catches_wrong_answers_models_and_undeclared_temporaries():
    tasks = draw_tasks(60, seed=5, categories=["minmax", "loop", "load_store"])
    verify_tasks(tasks)
    branchy = next(t for t in tasks if any(line.split()[0] in ("bge", "ble") for line in t.lines if line.split()))
    flipped = [line.replace("bge ", "blt ").replace("ble ", "bgt ") for line in branchy.lines]
    with pytest.raises(VerificationError, match="request implies"):
        verify_tasks([dataclasses.replace(branchy, lines=flipped)])
    with pytest.raises(VerificationError, match="request implies|memory differs"):
        verify_tasks([dataclasses.replace(t, model=lambda s: None) for t in tasks[:5]])
    with_temp = next(t for t in tasks if t.scratch and t.category == "load_store")
    with pytest.raises(VerificationError, match="request implies"):  # a clobbered register not declared scratch
        verify_tasks([dataclasses.replace(with_temp, scratch=[])])
    with pytest.raises(VerificationError, match="does not assemble"):
        verify_tasks([dataclasses.replace(with_temp, lines=with_temp.lines + ["max a0, a1, a2"])])


@needs_assembler
def test_a_request_that_names_no_temporary_lets_the_answer_use_any_as_the_evaluation_set_does():
    """A row's scratch is declared like the user-style set's: where the request names no
    temporary, every temporary it does not name; where it names one, that one alone. GRPO's
    reward once scored a right answer that used t5 instead of the reference's t1 as wrong."""
    from riscv_ft.data.tasks import Task
    from riscv_ft.evaluate.scorer import score_rows

    tasks = draw_tasks(120, seed=21, categories=["arith", "bitfield", "minmax", "load_store"])
    verify_tasks(tasks)
    unnamed = [t for t in tasks if t.scratch and re.fullmatch(r"t\d", t.scratch[0])
               and not re.search(rf"\b{t.scratch[0]}\b", t.description, re.IGNORECASE)]
    assert len(unnamed) >= 10
    rows, narrow = [], []
    for t in unnamed:
        other = next(r for r in ("t6", "t5", "t4", "t3") if not re.search(rf"\b{r}\b", t.description + "\n" + t.instructions))
        answer = re.sub(rf"\b{t.scratch[0]}\b", other, t.instructions)
        rows.append({"reference": t.instructions, "prediction": answer, "scratch": t.row()["scratch"]})
        narrow.append({**rows[-1], "scratch": list(t.scratch)})
    assert all(r["functional"] for r in score_rows(rows))
    assert not any(r["functional"] for r in score_rows(narrow))  # the reference's temporaries alone
    # Named or forbidden temporaries keep the scratch to what the request allows.
    swap = ["mv t0, a0", "mv a0, a1", "mv a1, t0"]
    named = Task("move", "swap a0 and a1, using t0 as a temporary", swap, lambda s: None, scratch=["t0"])
    assert named.row()["scratch"] == ["t0"]
    # A third of the generated tasks with temporaries name them, and then allow those alone.
    drawn = [t for t in draw_tasks(300, seed=9) if t.scratch and t.temporaries_free]
    naming = [t for t in drawn if all(re.search(rf"\b{r}\b", t.description) for r in t.scratch)]
    assert 0.2 * len(drawn) <= len(naming) <= 0.5 * len(drawn)
    assert all(t.row()["scratch"] == t.scratch for t in naming)
    assert {t.style for t in naming} == {"imperative", "question", "c", "terse"}
    xor_swaps = [t for t in draw_tasks(150, seed=2, categories=["move"]) if t.lines[0].startswith("xor")]
    assert xor_swaps and all(t.row()["scratch"] == [] for t in xor_swaps)
    via_saved = [t for t in draw_tasks(150, seed=2, categories=["stack"]) if any(x.startswith("add ") for x in t.lines)]
    assert via_saved and all(t.row()["scratch"] == [] for t in via_saved)  # "using s2 as a temporary", saved
    # The widening is checked: a request whose model changes a temporary it does not name is refused.
    sneaky = Task("arith", "a0 = a1 + 1", ["addi a0, a1, 1", "li t5, 0"],
                  lambda s: (s.__setitem__("a0", s["a1"] + 1), s.__setitem__("t5", 0)))
    assert "t5" in sneaky.row()["scratch"]
    with pytest.raises(VerificationError, match="changes a temporary it does not name"):
        verify_tasks([sneaky])


def test_deterministic_for_a_seed():
    rows = task_rows(400, seed=1, verify=False)
    assert rows == task_rows(400, seed=1, verify=False)
    assert rows != task_rows(400, seed=2, verify=False)
    assert task_rows(50, seed=1, verify=False) == rows[:50]
    assert all(set(r) == {"description", "instructions", "category", "scratch"} for r in rows)
    assert Counter(r["category"] for r in rows[:len(CATEGORIES)]) == Counter(list(CATEGORIES))
    with pytest.raises(ValueError, match="unknown task categories"):
        task_rows(5, seed=0, categories=["poetry"])


def test_phrasing_and_registers_vary():
    tasks = draw_tasks(2200, seed=0)
    rows = [t.row() for t in tasks]
    texts = [r["description"] for r in rows]
    assert len(set(texts)) == len(texts)
    assert max(len(t.split()) for t in texts) <= 40
    styles = Counter(t.style for t in tasks)
    assert set(styles) == {"imperative", "question", "c", "terse"} and min(styles.values()) > 200, styles
    assert all("?" in t.description for t in tasks if t.style == "question")
    assert all(t.description[0].isupper() for t in tasks if t.style == "imperative" and t.category != "combined")
    assert sum(bool(re.match(r"^\w+ = ", t.description)) for t in tasks if t.style == "c") > 200
    registers = Counter(re.findall(r"\b(?:a[0-7]|t[0-6]|s\d+|f[ast]\d+)\b", " ".join(texts)))
    assert len(registers) >= 40 and registers.most_common(1)[0][1] < 0.1 * sum(registers.values())
    code = "\n".join(r["instructions"] for r in rows)
    assert re.search(r"^\d:", code, re.M) and re.search(r"\b\db\b", code) and re.search(r"\b\df\b", code)
    assert re.search(r"^(done|skip|end|next|out|over|keep|finish|cont|after):$", code, re.M)  # named, alone on a line
    lengths = Counter(r["instructions"].count("\n") + 1 for r in rows)
    assert set(range(2, 13)) - {11} <= set(lengths), lengths


@needs_assembler
def test_mix_tasks_adds_verified_rows_to_the_training_split_only(snapshot_path):
    from riscv_ft.data.pipeline import prepare_rows

    base = {"source": "file", "path": str(snapshot_path), "valid_fraction": 0.1, "test_fraction": 0.1,
            "synthetic_max_instructions": 3}
    plain, _ = prepare_rows(OmegaConf.create(base), seed=0)
    mixed, report = prepare_rows(OmegaConf.create({**base, "mix_tasks": 44}), seed=0)
    assert report.mixed == {"tasks": 44}
    assert mixed["valid"] == plain["valid"] and mixed["test"] == plain["test"]
    assert len(mixed["train"]) == len(plain["train"]) + 44
    added = [r for r in mixed["train"] if r not in plain["train"]]
    assert sum("\n" in r["instructions"] for r in added) >= 30


@needs_assembler
def test_command_line_writes_verified_rows(tmp_path):
    out = tmp_path / "tasks.jsonl"
    done = subprocess.run([sys.executable, "-m", "riscv_ft.data.tasks", "--rows", "30", "--seed", "4", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == task_rows(30, seed=4, verify=False)


@pytest.mark.parametrize("module", ["riscv_ft.data.tasks", "riscv_ft.data.synthetic"])
def test_command_line_errors_are_one_line_and_leave_the_old_file(tmp_path, module):
    """Both generators share one command line (riscv_ft/data/generator_cli.py): an --out in a
    missing folder or naming a folder, or an impossible --rows, is one line and exit 2; a file
    already at --out is left as it was, and no temporary is left beside it."""
    old = tmp_path / "rows.jsonl"
    old.write_text('{"kept": true}\n')
    cases = [(["--rows", "-1", "--out", str(old)], "error: num_rows must be >= 0"),
             (["--rows", "2", "--no-verify", "--out", str(tmp_path / "missing" / "x.jsonl")],
              f"error: --out {tmp_path / 'missing' / 'x.jsonl'}: no folder {tmp_path / 'missing'}"),
             (["--rows", "2", "--no-verify", "--out", str(tmp_path)], f"error: --out {tmp_path}: a folder; give a file name"),
             (["--rows", "2", "--no-verify", "--out", "."], "error: --out .: a folder; give a file name")]
    for args, line in cases:
        done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.strip().splitlines() == [line], done.stderr
    assert old.read_text() == '{"kept": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]
    done = subprocess.run([sys.executable, "-m", module, "--rows", "3", "--no-verify", "--out", str(old)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and len(old.read_text().splitlines()) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]

"""Generated pairs (riscv_ft.data.synthetic): deterministic, varied, short, and verified by the
scorer's own assembler and emulator - including that verification catches a wrong pair."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from riscv_ft.data.synthetic import NUM, Sample, Step, synthetic_rows, verify_samples
from riscv_ft.data.tasks.base import VerificationError
from riscv_ft.rv.assembler import available_assemblers
from riscv_ft.evaluate.scorer import score_rows

needs_assembler = pytest.mark.skipif(not available_assemblers(), reason="no RISC-V assembler installed")


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return synthetic_rows(2000, seed=7, verify=False)


def test_deterministic_by_seed():
    assert synthetic_rows(300, seed=1, verify=False) == synthetic_rows(300, seed=1, verify=False)
    assert synthetic_rows(300, seed=1, verify=False) != synthetic_rows(300, seed=2, verify=False)
    assert synthetic_rows(50, seed=1, verify=False) == synthetic_rows(300, seed=1, verify=False)[:50]
    # max_instructions=3 is the default and draws exactly what it always drew
    assert synthetic_rows(300, seed=1, verify=False, max_instructions=3) == synthetic_rows(300, seed=1, verify=False)


@pytest.mark.parametrize("longest", [1, 2])
def test_max_instructions_caps_sequence_length(longest):
    rows = synthetic_rows(600, seed=4, verify=False, max_instructions=longest)
    assert {r["instructions"].count("\n") + 1 for r in rows} == set(range(1, longest + 1))
    with pytest.raises(ValueError, match="max_instructions"):
        synthetic_rows(10, seed=0, max_instructions=4)


def test_shape_and_length(rows):
    assert len(rows) == 2000 and len(synthetic_rows(0, seed=0)) == 0
    assert all(set(r) == {"description", "instructions"} for r in rows)
    assert max(len(r["description"].split()) for r in rows) < 25
    assert all(r["instructions"].strip() == r["instructions"] and r["instructions"] for r in rows)


def test_coverage_and_variety(rows):
    mnemonics = {line.split()[0] for r in rows for line in r["instructions"].split("\n")}
    expected = {"add", "sub", "and", "or", "xor", "sll", "srl", "sra", "slt", "sltu", "addw", "subw",
                "addi", "andi", "ori", "xori", "slli", "srli", "srai", "slti", "sltiu", "lui",
                "mul", "mulh", "mulhu", "div", "divu", "rem", "remu", "mulw", "divw", "remw",
                "lb", "lh", "lw", "ld", "lbu", "lhu", "lwu", "sb", "sh", "sw", "sd",
                "li", "mv", "neg", "negw", "not", "seqz", "snez", "sltz", "sgtz", "sext.w", "nop"}
    assert expected <= mnemonics, expected - mnemonics
    lengths = {r["instructions"].count("\n") + 1 for r in rows}
    assert lengths == {1, 2, 3}
    # several phrasings per operation
    add_phrasings = {re.sub(r"\b(x\d+|[ast]\d+|s1[01])\b", "R", r["description"])
                     for r in rows if r["instructions"].startswith("add ") and "\n" not in r["instructions"]}
    assert len(add_phrasings) >= 4
    # mostly ABI names, some x-names
    xnames = sum(1 for r in rows if re.search(r"\bx\d+\b", r["instructions"]))
    assert 0.03 * len(rows) < xnames < 0.2 * len(rows)
    assert len({r["description"] for r in rows}) > 0.95 * len(rows)


@needs_assembler
def test_verified_rows_assemble_and_score_perfectly():
    start = time.perf_counter()
    rows = synthetic_rows(3000, seed=11, verify=True)
    assert time.perf_counter() - start < 30  # "thousands of pairs in seconds" (typically ~1.5 s)
    scored = score_rows([{"reference": r["instructions"], "prediction": r["instructions"]} for r in rows])
    assert all(s["reference_class"] == "assembly" for s in scored)
    assert all(s["functional"] is True and s["exact_match"] is True for s in scored), \
        [s for s in scored if s["functional"] is not True][:3]


@needs_assembler
def test_verification_catches_a_wrong_pair():
    a0, a1, a2 = NUM["a0"], NUM["a1"], NUM["a2"]
    right = Sample("Add a1 and a2 into a0.", "add a0, a1, a2", [Step("add", a0, a1, a2)])
    verify_samples([right])
    # the description (and the model) say add, the instruction subtracts
    wrong = Sample("Add a1 and a2 into a0.", "sub a0, a1, a2", [Step("add", a0, a1, a2)])
    with pytest.raises(VerificationError, match="sub a0, a1, a2"):
        verify_samples([right, wrong])
    # a signedness slip in a template: lw described (and modelled) as zero-extending
    slip = Sample("Load a word.", "lw a0, 8(a1)", [Step("lwu", a0, a1, 0, 8)], pointers={a1})
    with pytest.raises(VerificationError, match="lw a0"):
        verify_samples([slip])
    with pytest.raises(VerificationError, match="does not assemble"):
        verify_samples([Sample("Nothing.", "frobnicate a0", [])])
    with pytest.raises(VerificationError, match="ended with trap"):
        verify_samples([Sample("Call the OS.", "ecall", [])])


@needs_assembler
def test_cli_writes_rows(tmp_path):
    out = tmp_path / "syn.jsonl"
    result = subprocess.run([sys.executable, "-m", "riscv_ft.data.synthetic", "--rows", "40", "--seed", "3",
                             "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written == synthetic_rows(40, seed=3, verify=False)

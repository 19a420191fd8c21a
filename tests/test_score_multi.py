"""The scorer on multi-instruction answers, judged as a person would (issue 22): scratch
registers, labels alone on a line and numeric local labels, endless loops, and snippets whose
verdict does not depend on their position in an assembler batch (issue 26 item 12)."""

from __future__ import annotations

import pytest

from riscv_ft.rv.assembler import available_assemblers, find_assembler
from riscv_ft.rv.reference import classify, instruction_count
from riscv_ft.evaluate.scorer import score_rows

pytestmark = pytest.mark.skipif(not available_assemblers(), reason="no RISC-V assembler installed")


def score(reference: str, prediction: str, **fields) -> dict:
    return score_rows([{"reference": reference, "prediction": prediction, **fields}])[0]


# ---------------------------------------------------------------- scratch registers

TEMP_REF = "mv t0, a1\nslli t0, t0, 2\nadd a0, t0, a2"  # a0 = a1 * 4 + a2, through t0
TEMP_PRED = "slli t1, a1, 2\nadd a0, t1, a2"  # the same through t1


def test_clobbering_a_scratch_register_is_functional():
    assert score(TEMP_REF, TEMP_PRED, scratch=["t0", "t1"])["functional"] is True
    assert score(TEMP_REF, TEMP_PRED, scratch=["x5", "x6"])["functional"] is True  # x names too


def test_clobbering_a_register_outside_scratch_is_not_functional():
    row = score(TEMP_REF, TEMP_PRED, scratch=["t0"])  # t1 is not scratch
    assert row["functional"] is False and "t1 is" in row["error"]
    # the right result, but a3 changed too
    row = score(TEMP_REF, TEMP_PRED + "\nli a3, 7", scratch=["t0", "t1"])
    assert row["functional"] is False and "a3 is" in row["error"]
    # memory always counts
    row = score(TEMP_REF, TEMP_PRED + "\nsd a0, 0(sp)", scratch=["t0", "t1"])
    assert row["functional"] is False


def test_without_scratch_every_register_counts():
    row = score(TEMP_REF, TEMP_PRED)
    assert row["functional"] is False and row["assembles"] is True


def test_fp_scratch_registers():
    ref = "fadd.d ft0, fa1, fa2\nfmul.d fa0, ft0, fa3"
    pred = "fadd.d ft1, fa1, fa2\nfmul.d fa0, ft1, fa3"
    assert score(ref, pred, scratch=["ft0", "ft1"])["functional"] is True
    assert score(ref, pred, scratch=["ft0"])["functional"] is False


@pytest.mark.parametrize("scratch", [["t0", "q9"], "t0", [5]])
def test_a_bad_scratch_field_names_the_row(scratch):
    rows = [{"reference": "nop", "prediction": "nop"},
            {"reference": TEMP_REF, "prediction": TEMP_PRED, "scratch": scratch}]
    with pytest.raises(ValueError, match="row 1: .*scratch"):
        score_rows(rows)


# ---------------------------------------------------------------- labels

MAX_REF = "mv a0, a1\nbge a0, a2, done\nmv a0, a2\ndone:"  # a0 = max(a1, a2), signed
COUNT_REF = "li t0, 4\n1:\naddi a0, a0, 3\naddi t0, t0, -1\nbnez t0, 1b"  # a0 += 12, t0 = 0


def test_labels_alone_on_a_line_and_numeric_labels_are_assembly():
    assert classify(MAX_REF) == "assembly"
    assert classify(COUNT_REF) == "assembly"
    assert classify("beqz a0, 1f\nli a0, 1\n1: ret") == "assembly"
    assert classify("done:") == "other"  # labels only: no instruction to run
    assert classify(".L1: .word 5") == "directive"


@pytest.mark.parametrize("prediction, functional", [
    ("mv a0, a2\nbge a0, a1, 1f\nmv a0, a1\n1:", True),  # numeric label, forward
    ("blt a1, a2, bigger\nmv a0, a1\nj out\nbigger:\nmv a0, a2\nout:", True),  # two label-only lines
    ("mv a0, a1\nbgeu a0, a2, 1f\nmv a0, a2\n1:", False),  # unsigned compare
    ("mv a0, a1\nble a0, a2, done\nmv a0, a2\ndone:", False),  # min, not max
])
def test_label_answers_are_scored_by_behaviour(prediction, functional):
    row = score(MAX_REF, prediction)
    assert row["reference_class"] == "assembly" and row["assembles"] is True
    assert row["functional"] is functional, row["error"]


@pytest.mark.parametrize("prediction, functional", [
    ("addi a0, a0, 12\nli t0, 0", True),  # unrolled: same end state
    ("li t0, 4\nloop:\naddi a0, a0, 3\naddi t0, t0, -1\nbnez t0, loop", True),
    ("li t0, 3\n1: addi a0, a0, 3\naddi t0, t0, -1\nbnez t0, 1b", False),  # one round short
    ("addi a0, a0, 12", False),  # t0 left as it was
])
def test_numeric_label_loop_reference(prediction, functional):
    row = score(COUNT_REF, prediction)
    assert row["reference_class"] == "assembly"
    assert row["functional"] is functional, row["error"]


# ---------------------------------------------------------------- endless loops

@pytest.mark.parametrize("reference, prediction", [
    ("add a0, a1, a2", "add a0, a1, a2\n1: j 1b"),  # the answer loops
    ("1: j 1b", "1: j 1b"),  # both loop, identical bytes
    ("1: j 1b", "spin: j spin"),  # both loop, differently spelled
    # counting a random a0 down by one: 2^63 rounds, cut off by the step limit in both
    ("1: addi a0, a0, -1\nbnez a0, 1b", "loop:\naddi a0, a0, -1\nbnez a0, loop"),
])
def test_an_endless_loop_is_never_functional(reference, prediction):
    row = score(reference, prediction)
    assert row["assembles"] is True and row["functional"] is False
    assert "does not end" in row["error"]


# ---------------------------------------------------------------- batch isolation (issue 26 item 12)

@pytest.mark.parametrize("snippet", ["beq a0, a1, .text.rv2", "j .text.rv2", "la a0, .text.rv0"])
def test_a_snippet_has_the_same_verdict_alone_and_third_in_a_batch(snippet):
    asm = find_assembler()
    alone = asm.assemble(snippet)
    third = asm.assemble_many(["nop", "addi a0, a0, 1", snippet, "nop"])[2]
    assert alone.ok is third.ok is False
    assert alone.error == third.error and ".text.rv" in alone.error


def test_own_labels_still_work_in_any_batch_position():
    asm = find_assembler()
    text = "beqz a0, 1f\naddi a0, a0, 1\n1:\nmv a1, a0"
    alone = asm.assemble(text)
    third = asm.assemble_many(["nop", "1: j 1f\n1:", text])[2]
    assert alone.ok and third.ok and alone.program.code == third.program.code


# ---------------------------------------------------------------- instruction_count

@pytest.mark.parametrize("text, count", [
    ("add a0, a1, a2", 1),
    ("ret", 1),
    (MAX_REF, 3),
    (COUNT_REF, 4),
    ("li a0, 0x12345678  # two machine instructions, one statement", 1),
    ("addi sp, sp, -16; sd ra, 8(sp)", 2),
    (".align 2\nloop: .word 5\nnop", 1),
    ("", 0),
])
def test_instruction_count(text, count):
    assert instruction_count(text) == count

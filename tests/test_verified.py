"""Verified decoding (riscv_ft/evaluate/verified.py): the selection on constructed candidates
with the real assembler and emulator, and the plumbing end to end on the tiny model."""

from __future__ import annotations

import json

import pytest

from riscv_ft.rv.assembler import available_assemblers
from riscv_ft.evaluate.verified import pick_by_behaviour, pick_many

pytestmark = pytest.mark.skipif(not available_assemblers(), reason="no RISC-V assembler installed")

ADD = ["add a0, a1, a2", "add a0, a2, a1", "ADD x10, x11, x12"]  # three spellings, one behaviour
SUB = "sub a0, a1, a2"


def test_the_behavioural_majority_wins_over_greedy():
    # 5 candidates: 3 behave as add, 1 does not assemble, 1 behaves as the greedy answer (sub)
    candidates = [ADD[0], "addd a0, a1", ADD[1], SUB, ADD[2]]
    assert pick_by_behaviour(candidates, greedy=SUB) == ADD[0]


def test_answers_that_do_not_assemble_do_not_vote():
    # the same garbage three times would be the largest group if it counted
    candidates = ["frob a0, a1", "frob a0, a1", "frob a0, a1", ADD[1], ADD[0]]
    assert pick_by_behaviour(candidates, greedy=SUB) in ADD[:2]


def test_the_groups_most_frequent_spelling_is_answered():
    assert pick_by_behaviour([ADD[1], ADD[0], ADD[1], SUB], greedy="nonsense") == ADD[1]


def test_a_tie_picks_the_greedy_group():
    # add: 3 candidates; sub: 2 candidates + greedy, spelled differently (greedy, not the group's
    # most frequent spelling, is the answer)
    greedy = "sub x10, x11, x12"
    assert pick_by_behaviour([ADD[0], SUB, ADD[1], SUB, ADD[2]], greedy=greedy) == greedy


def test_a_tie_without_the_greedy_group_keeps_greedy():
    # greedy (or) runs but its group is smaller than the tied add and sub groups
    assert pick_by_behaviour([ADD[0], SUB, ADD[1], SUB], greedy="or a0, a1, a2") == "or a0, a1, a2"


def test_a_tie_with_a_greedy_answer_that_does_not_assemble_picks_the_first_group():
    assert pick_by_behaviour([SUB, ADD[0], ADD[1], SUB], greedy="garbage here") == SUB
    assert pick_by_behaviour([ADD[0], SUB], greedy="1: j 1b") == ADD[0]  # greedy never ends


def test_endless_loops_and_nothing_assembling():
    assert pick_by_behaviour(["1: j 1b", "loop: j loop", "j .", ADD[0]], greedy="x") == ADD[0]
    assert pick_by_behaviour(["not asm", "neither"], greedy="greedy text") == "greedy text"


def test_label_answers_are_grouped_by_behaviour():
    max_a = "mv a0, a1\nbge a0, a2, 1f\nmv a0, a2\n1:"
    max_b = "blt a1, a2, big\nmv a0, a1\nj out\nbig:\nmv a0, a2\nout:"
    assert pick_by_behaviour([max_a, max_b, "mv a0, a1"], greedy="mv a0, a2") == max_a


def test_templates_run_with_bound_placeholders_and_many_are_picked_at_once():
    picks = pick_many([["add rd, rs1, rs2", "add rd, rs2, rs1", "sub rd, rs2, rs1"], [SUB, SUB]],
                      ["sub rd, rs1, rs2", ADD[0]])
    assert picks == ["add rd, rs1, rs2", SUB]


def test_verified_decoding_end_to_end_on_the_tiny_model(tmp_path, capsys):
    """The plumbing: Assistant.ask/ask_many and riscv-ft-generate with decode=verify on the tiny
    (untrained) model return strings; its answers are garbage, so nothing more is asserted."""
    from riscv_ft.assistant import Assistant
    from riscv_ft.generate import main

    assistant = Assistant.from_adapter(None, model="tiny", prompt_format="chat")
    answer = assistant.ask("Add a1 and a2 into a0", max_tokens=6, decode="verify", samples=3)
    assert isinstance(answer, str)
    answers = assistant.ask_many(["Add a1 and a2 into a0", "Negate a1"], max_tokens=6, decode="verify", samples=2)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)

    prompts, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    prompts.write_text(json.dumps({"description": "Add a1 and a2 into a0"}) + "\n")
    main(["model=tiny", "prompt_format=chat", f"input={prompts}", f"output={out}", "max_tokens=6",
          "decode=verify", "samples=2"])
    assert isinstance(json.loads(out.read_text())["generated"], str)


@pytest.mark.parametrize("args, message", [
    (["decode=beam"], "decode='beam' is not allowed"),
    (["decode=verify", "samples=0"], "samples='0' is not allowed"),
])
def test_bad_decode_arguments_are_one_line(capsys, args, message):
    from riscv_ft.generate import main

    with pytest.raises(SystemExit) as stop:
        main(["model=tiny", "prompt=x", *args])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_evaluation_reports_verified_decoding_per_category_and_size_with_its_cost():
    """evaluate_model with decode=verify on the tiny model: the greedy and the verified figures,
    per category and for one- vs multi-instruction prompts, seconds per answer for both, in
    the summary, the metrics and the side-by-side table of the run log."""
    from riscv_ft.assistant import Assistant
    from riscv_ft.evaluate.model_eval import compare_table, describe, evaluate_model, headline_metrics

    assistant = Assistant.from_adapter(None, model="tiny", prompt_format="chat")
    rows = [{"description": "Put the sum of a1 and a2 into a0.", "instructions": "add a0, a1, a2", "category": "arith"},
            {"description": "a0 = a1 * 4 + a2 using t0", "instructions": "slli t0, a1, 2\nadd a0, t0, a2",
             "category": "arith", "scratch": ["t0"]},
            {"description": "a0 = max(a1, a2)", "instructions": "mv a0, a1\nbge a0, a2, 1f\nmv a0, a2\n1:",
             "category": "min/max"}]
    scored, summary = evaluate_model(assistant.model, assistant.tokenizer, rows, "chat", 6, decode="verify", samples=2,
                                     seed=0)
    assert [r["category"] for r in scored] == ["arith", "arith", "min/max"] and scored[1]["scratch"] == ["t0"]
    assert all(isinstance(r["verified"]["prediction"], str) for r in scored)
    for block in (summary, summary["verified"]):
        assert block["instructions"]["one"]["functional_n"] == 1 and block["instructions"]["multi"]["functional_n"] == 2
        assert block["categories"]["arith"]["rows"] == 2 and block["categories"]["min/max"]["rows"] == 1
        assert block["seconds_per_answer"] > 0
    assert summary["verified"]["seconds_per_answer"] > summary["seconds_per_answer"]  # it includes greedy's
    metrics = headline_metrics(summary, "eval_user_")
    for name in ("one_functional_rate", "multi_functional_rate", "category_arith_functional_rate",
                 "category_min_max_functional_rate", "seconds_per_answer", "functional_rate"):
        assert name in {k[len("eval_user_"):] for k in metrics}, name
        assert f"eval_user_verified_{name}" in metrics, name
    table = compare_table([("base", summary), ("tuned", summary), ("tuned verified", summary["verified"])], "User")
    assert table.splitlines()[0] == "User, functional: base | tuned | tuned verified"
    assert any(line.split()[:2] == ["category", "min/max"] for line in table.splitlines())
    assert "verified decoding (2 samples)" in describe(summary)


def test_eval_decode_and_samples_are_config_keys():
    from riscv_ft.cli import compose
    from riscv_ft.config import ConfigError

    cfg = compose(["experiment=smoke", "eval.decode=verify", "eval.samples=4"])
    assert (cfg.eval.decode, cfg.eval.samples) == ("verify", 4)
    assert compose(["experiment=smoke"]).eval.decode == "greedy"
    for override, message in (("eval.decode=beam", "eval.decode"), ("eval.samples=0", "eval.samples")):
        with pytest.raises(ConfigError, match=message):
            compose(["experiment=smoke", override])


def test_scratch_registers_do_not_split_a_group():
    via_t0, via_t1 = "slli t0, a1, 2\nadd a0, t0, a2", "slli t1, a1, 2\nadd a0, t1, a2"
    candidates = [via_t0, via_t1, via_t1, "add a0, a1, a2"]
    # every register counts: t1's group (2) is as large as greedy's add (1 + greedy): greedy wins
    assert pick_by_behaviour(candidates, greedy="add a0, a2, a1") == "add a0, a2, a1"
    # t0 and t1 are scratch: the three shift-and-add answers are one group
    assert pick_many([candidates], ["add a0, a2, a1"], scratch=[["t0", "t1"]]) == [via_t1]

"""What every evaluation answers: the held-out split (whole, or a sample stratified by reference
class), the shipped user-style prompts, and both again with the base model without adapter."""

import json
from collections import Counter
from pathlib import Path

from omegaconf import OmegaConf

from riscv_ft.data.user_prompts import load_user_prompts
from riscv_ft.evaluate.model_eval import select_rows
from riscv_ft.rv.reference import classify
from riscv_ft.evaluate.scorer import score_rows

HEADLINE = ("exact_match_rate", "assembles_rate", "functional_rate")


def _rows(classes: dict[str, int]) -> list[dict]:
    examples = {"assembly": "add a0, a1, a{}", "mnemonic": "fmax{}", "pseudo-code": "x[rd] = x[rs1] + {}"}
    rows = [{"description": f"{cls} {i}", "instructions": examples[cls].format(i % 7)}
            for cls, n in classes.items() for i in range(n)]
    assert Counter(classify(r["instructions"]) for r in rows) == Counter(classes)
    return rows


def test_a_small_split_is_evaluated_whole():
    rows = _rows({"assembly": 10, "mnemonic": 5})
    chosen, selection = select_rows(rows, 64, seed=0)
    assert chosen == rows and selection == {"method": "whole split", "rows": 15, "split_rows": 15}
    assert select_rows(rows, -1, seed=0)[0] == rows


def test_a_large_split_is_sampled_by_class_shares_with_the_seed():
    # the first rows are all assembly: taking the first 20 would say 100% assembly
    rows = _rows({"assembly": 50, "mnemonic": 30, "pseudo-code": 20})
    chosen, selection = select_rows(rows, 20, seed=3)
    assert selection["method"] == "stratified sample" and selection["rows"] == 20 and selection["split_rows"] == 100
    assert Counter(classify(r["instructions"]) for r in chosen) == {"assembly": 10, "mnemonic": 6, "pseudo-code": 4}
    assert selection["classes"] == {"assembly": 10, "mnemonic": 6, "pseudo-code": 4}
    assert chosen == sorted(chosen, key=rows.index)  # in the split's order
    assert select_rows(rows, 20, seed=3)[0] == chosen and select_rows(rows, 20, seed=4)[0] != chosen
    # shares that do not divide evenly still add up to the number asked for
    assert len(select_rows(rows, 7, seed=0)[0]) == 7


def test_every_user_prompt_reference_is_runnable_assembly():
    rows = load_user_prompts()
    assert len(rows) >= 50 and len({r["description"] for r in rows}) == len(rows)
    scored = score_rows([{"reference": r["instructions"], "prediction": r["instructions"]} for r in rows])
    assert all(r["reference_class"] == "assembly" and r["functional"] for r in scored), \
        [r for r in scored if not r["functional"]][:2]


def test_metrics_and_summary_carry_the_base_and_the_user_prompts_beside_the_tuned_model(smoke_run):
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    for prefix in ("eval_", "base_eval_", "eval_user_", "base_eval_user_"):
        assert all(0.0 <= metrics[prefix + k] <= 1.0 for k in HEADLINE), prefix
    summary = json.loads((smoke_run / "eval_summary.json").read_text())
    assert summary["selection"]["method"] in ("whole split", "stratified sample")
    assert summary["baseline"]["rows"] == summary["rows"]
    assert summary["user_prompts"]["rows"] == summary["baseline_user_prompts"]["rows"] == 8  # experiment=smoke
    assert summary["baseline"]["functional_rate"] == metrics["base_eval_functional_rate"]
    for name in ("eval.jsonl", "eval_user.jsonl", "base_eval.jsonl", "base_eval_user.jsonl"):
        assert (smoke_run / name).is_file(), name
    # one- vs multi-instruction prompts and the cost of an answer, base beside tuned
    for key, prefix in (("user_prompts", "eval_user_"), ("baseline_user_prompts", "base_eval_user_")):
        sizes = summary[key]["instructions"]
        assert sizes["one"]["rows"] + sizes["multi"]["rows"] == summary[key]["classes"]["assembly"]["rows"]
        assert metrics[prefix + "one_functional_rate"] == sizes["one"]["functional_rate"]
        assert metrics[prefix + "seconds_per_answer"] > 0
    log = (smoke_run / "train.log").read_text()
    assert "User-style prompts, functional: base | tuned" in log and "one-instruction" in log


def test_base_answers_are_the_base_models_own(smoke_run):
    """base_eval.jsonl holds what the base model without adapter answers (not the tuned model)."""
    from mlx_lm import load

    from riscv_ft.inference import generate_answers

    adapter = json.loads((smoke_run / "adapters" / "adapter_config.json").read_text())
    base = [json.loads(line) for line in (smoke_run / "base_eval.jsonl").read_text().splitlines()][:3]
    tuned = [json.loads(line) for line in (smoke_run / "eval.jsonl").read_text().splitlines()][:3]
    max_tokens = OmegaConf.load(smoke_run / "config.yaml").eval.max_tokens
    model, tokenizer = load(adapter["model"])
    answers = generate_answers(model, tokenizer, [r["description"] for r in base], "chat", max_tokens)
    assert answers == [r["prediction"] for r in base]
    assert answers != [r["prediction"] for r in tuned]


def test_the_mlflow_run_has_the_base_metrics(smoke_run):
    import os

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{Path(os.environ['RISCV_FT_MLRUNS']) / 'mlflow.db'}")
    run_id = json.loads((smoke_run / "metrics.json").read_text())["mlflow_run_id"]
    logged = mlflow.tracking.MlflowClient().get_run(run_id).data.metrics
    assert {"final_eval_functional_rate", "final_base_eval_functional_rate",
            "final_eval_user_functional_rate", "final_base_eval_user_functional_rate",
            "final_eval_user_one_functional_rate", "final_base_eval_user_one_functional_rate",
            "final_eval_user_seconds_per_answer"} <= set(logged)

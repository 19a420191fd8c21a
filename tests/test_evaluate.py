"""Evaluating a finished run on its held-out split: batched answers, real scoring, outputs."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

from riscv_ft.evaluate.model_eval import select_rows
from tests.conftest import REPO, run_train


def test_evaluate_a_finished_run_writes_scored_rows_and_a_summary(smoke_run, tmp_path):
    # A copy: evaluating rewrites the run's eval files, which other tests read.
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    (run / "eval.jsonl").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "riscv_ft.evaluate", f"run={run}", "rows=5", "max_tokens=8"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 5 and summary["exact_match_n"] == 5 and "classes" in summary
    scored = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    test_rows = [{"instructions": json.loads(line)["messages"][1]["content"]}
                 for line in (run / "test.jsonl").read_text().splitlines()]
    chosen, selection = select_rows(test_rows, 5, seed=0)  # the smoke run's trainer.seed
    assert [r["reference"] for r in scored] == [r["instructions"] for r in chosen]
    assert summary["selection"] == selection and selection["method"] == "stratified sample"
    assert all(isinstance(r["prediction"], str) and r["assembles"] in (True, False) for r in scored)


def test_evaluate_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "riscv_ft.evaluate", f"run={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_tiny_demo_preset_trains_and_scores_synthetic_pairs(tmp_path):
    """The offline demo's path at a few steps: the tiny model, full fine-tune, verified
    synthetic pairs, and every held-out reference scored as runnable assembly."""
    run = tmp_path / "demo"
    result = run_train("experiment=tiny_demo", "data.synthetic_rows=300", "trainer.iters=3", "trainer.eval_every=3",
                       "trainer.save_every=3", "eval.num_rows=8", "eval.max_tokens=8", "eval.user_prompts=0", "tracking.enabled=false",
                       f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 3 and 0.0 <= metrics["eval_functional_rate"] <= 1.0
    adapter = json.loads((run / "adapters" / "adapter_config.json").read_text())
    assert adapter["fine_tune_type"] == "full"
    assert json.loads((Path(adapter["model"]) / "config.json").read_text())["model_type"] == "mistral"
    scored = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert len(scored) == 8 and all(r["reference_class"] == "assembly" for r in scored)
    assert all(r["functional"] in (True, False) for r in scored)

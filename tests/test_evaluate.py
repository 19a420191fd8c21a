"""Evaluating a finished run on its held-out split: batched answers, real scoring, outputs."""

import json
import subprocess
import sys

from tests.conftest import REPO


def test_evaluate_a_finished_run_writes_scored_rows_and_a_summary(smoke_run):
    (smoke_run / "eval.jsonl").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "riscv_ft.evaluate", f"run={smoke_run}", "rows=5", "max_tokens=8"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 5 and summary["exact_match_n"] == 5 and "classes" in summary
    scored = [json.loads(line) for line in (smoke_run / "eval.jsonl").read_text().splitlines()]
    test_rows = [json.loads(line) for line in (smoke_run / "test.jsonl").read_text().splitlines()][:5]
    assert [r["reference"] for r in scored] == [r["messages"][1]["content"] for r in test_rows]
    assert all(isinstance(r["prediction"], str) and r["assembles"] in (True, False) for r in scored)


def test_evaluate_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "riscv_ft.evaluate", f"run={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr

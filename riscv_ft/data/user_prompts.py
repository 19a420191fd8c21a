"""The shipped user-style prompts (user_prompts.jsonl): requests with reference assembly, written
by hand (not by synthetic.py or tasks/), a second test set answered in every evaluation next to
the held-out split. Training never reads it (tests/test_user_prompts.py checks).
"""

from __future__ import annotations

import json
from pathlib import Path

USER_PROMPTS = Path(__file__).resolve().parent / "user_prompts.jsonl"
# Row fields that travel from an evaluation set to the scorer: a row's kind of task (summary per
# category) and its scratch registers (whose final value does not count).
ROW_FIELDS = ("category", "scratch")


def load_user_prompts(path: Path = USER_PROMPTS) -> list[dict]:
    """The shipped user-style prompt set as rows of {description, instructions[, category, scratch]}."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{k: r[k] for k in ("description", "instructions", *ROW_FIELDS) if k in r} for r in rows]

"""Where a developer's local copy of the dataset lives, for the tests and benchmarks.

`$RISCV_FT_SNAPSHOT` when set (the GPU machine's run.sh sets it), else the shared folder beside
the checkout that CI and the development machines have. Training never looks here: it reads
`data.path` or the hub.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "RISCV_FT_SNAPSHOT"
BESIDE_CHECKOUT = Path(__file__).resolve().parents[3] / "shared" / "data" / "riscv-instruction-specification" / "train.jsonl"


def snapshot_file() -> Path:
    """The snapshot's train.jsonl (it may not exist: callers check and skip or fall back)."""
    return Path(os.environ.get(ENV) or BESIDE_CHECKOUT)

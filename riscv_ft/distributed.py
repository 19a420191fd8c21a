"""Data parallelism with MLX's own distributed layer (`mlx.launch -n N -- python -m riscv_ft.train ...`).

Each process takes its share of every global batch; gradients, token counts and losses are
summed across processes with `mx.distributed.all_sum`. Because the loss is a sum over answer
tokens divided once by the global token count, N processes with global batch B compute the
same update as one process with batch B (up to float summation order). Without a launcher the
group has one member and every function here is a no-op.

Only rank 0 reads and writes the run folder. To resume, rank 0 reads the checkpoint and
sends it to the others with `broadcast` / `broadcast_json` (an all_sum of rank 0's values
and zeros elsewhere), so the hosts need no shared disk.
"""

from __future__ import annotations

import json
from functools import lru_cache

import mlx.core as mx
import numpy as np


@lru_cache(maxsize=1)
def group():
    return mx.distributed.init()


def world_size() -> int:
    return group().size()


def rank() -> int:
    return group().rank()


def is_main() -> bool:
    """Only rank 0 writes files, checkpoints and the MLflow run."""
    return rank() == 0


def all_sum(x: mx.array) -> mx.array:
    return mx.distributed.all_sum(x, group=group()) if world_size() > 1 else x


def broadcast(x: mx.array) -> mx.array:
    """Rank 0's `x` on every rank. Every rank passes an array of the same shape and dtype
    (its own value is ignored): the sum of rank 0's array and zeros is rank 0's array."""
    if world_size() == 1:
        return x
    return all_sum(x if is_main() else mx.zeros_like(x))


def broadcast_json(value):
    """Rank 0's JSON-serializable `value` on every rank (the others pass anything, e.g. None)."""
    if world_size() == 1:
        return value
    data = json.dumps(value).encode() if is_main() else b""
    size = int(broadcast(mx.array([len(data)], dtype=mx.int32)).item())
    codes = np.frombuffer(data, dtype=np.uint8).astype(np.int32) if is_main() else np.zeros(size, dtype=np.int32)
    received = np.array(broadcast(mx.array(codes))).astype(np.uint8)
    return json.loads(received.tobytes().decode())

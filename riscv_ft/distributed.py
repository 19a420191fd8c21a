"""Data parallelism with MLX's own distributed layer (`mlx.launch -n N -- python -m riscv_ft.train ...`).

Each process takes its share of every global batch; gradients, token counts and losses are
summed across processes with `mx.distributed.all_sum`. Because the loss is a sum over answer
tokens divided once by the global token count, N processes with global batch B compute the
same update as one process with batch B (up to float summation order). Without a launcher the
group has one member and every function here is a no-op.
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx


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

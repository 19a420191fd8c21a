"""riscv_ft: fine-tune Mistral-7B with LoRA/QLoRA on Apple MLX into a RISC-V assembly
generator, and track every run in MLflow.

Data flow: data (riscv_ft.data) -> model (riscv_ft.model) -> training loop
(riscv_ft.trainer) -> evaluation (riscv_ft.evaluate) -> tracking (riscv_ft.tracking), put
together for one run by riscv_ft.experiment and started by `python -m riscv_ft.train`.
"""

import os as _os

__version__ = "0.1.0"

# MLX's CUDA backend replays steps as CUDA graphs from an LRU cache. A training run meets a
# few batch widths plus evaluation and generation shapes; with the default cache size the
# graphs of a 7B step were re-instantiated every step (H200: median bf16 step 0.30 s with 14
# widths, 0.136 s with this size, same peak memory; benchmarks/NOTES.md section 8). Set before
# MLX loads (every entry point imports this package first); a user's own value wins.
_os.environ.setdefault("MLX_CUDA_GRAPH_CACHE_SIZE", "20000")


def __getattr__(name):
    """`from riscv_ft import Assistant` without importing MLX up front (entry points must
    set up the BLAS before MLX loads)."""
    if name == "Assistant":
        from riscv_ft.assistant import Assistant

        return Assistant
    raise AttributeError(name)

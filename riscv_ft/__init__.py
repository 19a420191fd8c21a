"""riscv_ft: fine-tune Mistral-7B with LoRA/QLoRA on Apple MLX into a RISC-V assembly
generator, and track every run in MLflow.

Data flow: data (riscv_ft.data) -> model (riscv_ft.model) -> training loop
(riscv_ft.trainer) -> evaluation (riscv_ft.evaluate) -> tracking (riscv_ft.track), put
together for one run by riscv_ft.experiment and started by `python -m riscv_ft.train`.
"""

__version__ = "0.1.0"


def __getattr__(name):
    """`from riscv_ft import Assistant` without importing MLX up front (entry points must
    set up the BLAS before MLX loads)."""
    if name == "Assistant":
        from riscv_ft.assistant import Assistant

        return Assistant
    raise AttributeError(name)

"""What MLX computes on, and the defaults that depend on it: all in one place.

Three settings default differently per device; each was measured where it is used:

    data.pad_to_multiple: null         64 on CUDA, 8 elsewhere       (data.batch.batch_multiple)
    trainer.select_loss_positions: null  on the CPU only             (trainer.Trainer)
    model.dequantize: auto             a float copy of a quantized   (sources.local.wants_float_copy)
                                       base on the CPU only
"""

from __future__ import annotations

import mlx.core as mx


def backend() -> str:
    """'cuda', 'metal' or 'cpu': where MLX's default device computes."""
    if mx.default_device() == mx.cpu:
        return "cpu"
    cuda, metal = getattr(mx, "cuda", None), getattr(mx, "metal", None)
    if cuda is not None and cuda.is_available():
        return "cuda"
    if metal is not None and metal.is_available():
        return "metal"
    return "cpu"


def default_batch_multiple() -> int:
    """Batch widths are rounded up to buckets of this (data.pad_to_multiple: null).

    Measured on an H200 (benchmarks/NOTES.md, section 8): the real data in widths of 8's
    buckets met 14 batch shapes in 60 steps against mlx-lm's 5 (multiples of 32). Each new
    shape traced the step again (about 0.8 s), and past a few shapes MLX's CUDA graph cache
    thrashed: the median bf16 step took 0.30-0.38 s against mlx-lm's 0.13-0.18 s. A step
    there costs about the same at 80 and 128 tokens per row, so coarser widths are cheap.
    On a CPU (and, unmeasured, a Mac's GPU) padding costs compute: 8.
    """
    return 64 if backend() == "cuda" else 8


def default_select_loss_positions() -> bool:
    """Compute the output head only at answer positions (trainer.select_loss_positions: null):
    on the CPU the 32,768-wide output layer dominates a step; on a GPU it costs little, and the
    gather would double the number of step shapes to compile."""
    return backend() == "cpu"


def quantized_matmul_is_fast() -> bool:
    """Metal or CUDA. On the CPU, MLX's quantized matmuls have no BLAS path and train about 6x
    slower than float32 (issue 13), so model.dequantize=auto makes a float copy there."""
    return backend() != "cpu"


LOG2_E = 1.4426950408889634


def exp(x: mx.array) -> mx.array:
    """e**x as 2**(x log2 e). MLX's CPU exp is a scalar polynomial: on this project's 2-core x86
    machine 30 x (32, 1536) values took 17.7 ms with mx.exp and 6.4 ms this way
    (benchmarks/exp_cpu.py), with the same error against float64 (1.7e-6 relative). Used where exp is a
    measurable part of a CPU step: the training loss over the vocabulary, and the CPU decoder's
    SiLU and attention softmax."""
    return mx.power(2.0, x * LOG2_E)

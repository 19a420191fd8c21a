"""What one training batch is (Sample, Batch) and how a list of samples becomes one padded batch.

Both the length-bucketed batcher (pipeline.py) and sequence packing (packing.py) build Batches
from Samples, so these live below both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig


@dataclass
class Sample:
    tokens: list[int]
    prompt_len: int  # tokens [0, prompt_len) are the prompt


@dataclass
class Batch:
    inputs: np.ndarray  # (B, L) token ids
    targets: np.ndarray  # (B, L) next-token ids
    mask: np.ndarray  # (B, L) 1.0 where the target counts in the loss
    real_tokens: int  # input positions that hold a real token (not padding)
    # Packed rows only (riscv_ft.data.packing), else None: per position, which sample of the
    # row it belongs to (1, 2, ...; 0 for padding).
    segment_ids: np.ndarray | None = None

    @property
    def loss_tokens(self) -> int:
        return int(self.mask.sum())

    @property
    def samples(self) -> int:
        """How many samples the batch trains on (a packed row holds several)."""
        if self.segment_ids is None:
            return len(self.inputs)
        return int(self.segment_ids.max(axis=1, initial=0).sum())

    @property
    def padded_tokens(self) -> int:
        return self.inputs.size


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def shape_bucket(n: int, multiple: int) -> int:
    """n rounded up to a multiple of `multiple` or of a quarter of the power of two below n,
    whichever is larger: ..., 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, ...

    Batch widths and loss-position counts are rounded up to these, so a run compiles a
    handful of step shapes (each new shape traces and compiles the whole step again) while
    padding stays under a fifth of a row.
    """
    n = max(n, 1)
    return round_up(n, max(multiple, 1 << max((n - 1).bit_length() - 3, 0)))


def batch_multiple(data_cfg: DictConfig) -> int:
    """data.pad_to_multiple, resolved: null means the device's default (riscv_ft.device)."""
    if data_cfg.get("pad_to_multiple") is not None:
        return int(data_cfg.pad_to_multiple)
    from riscv_ft.device import default_batch_multiple

    return default_batch_multiple()


def batch_width(samples: list[Sample], pad_to_multiple: int, min_width: int = 0) -> int:
    """The width a batch of these samples is padded to: the longest input, rounded up to a shape
    bucket, and at least min_width."""
    width = shape_bucket(max((len(s.tokens) - 1 for s in samples), default=1), pad_to_multiple)
    return max(width, round_up(min_width, pad_to_multiple))


def make_batch(samples: list[Sample], pad_to_multiple: int, pad_id: int = 0, min_width: int = 0) -> Batch:
    """Pad to the longest sample, rounded up to a shape bucket, and mask prompt and padding.

    Inputs are tokens[:-1] and targets tokens[1:], so the loss never trains a padding token
    (mlx-lm's `steps <= lengths` trains one per sequence).
    """
    width = batch_width(samples, pad_to_multiple, min_width)
    inputs = np.full((len(samples), width), pad_id, dtype=np.int32)
    targets = np.full((len(samples), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(samples), width), dtype=np.float32)
    real = 0
    for i, s in enumerate(samples):
        n = len(s.tokens) - 1
        inputs[i, :n] = s.tokens[:-1]
        targets[i, :n] = s.tokens[1:]
        # Target j is token j+1: it counts when token j+1 is part of the answer.
        mask[i, max(s.prompt_len - 1, 0) : n] = 1.0
        real += n
    return Batch(inputs, targets, mask, real)


def widest_width(samples: list[Sample], data_cfg: DictConfig) -> int:
    """The width of the widest batch these samples make, which a step's memory depends on;
    packed rows are data.max_seq_length wide."""
    if data_cfg.get("pack"):
        return int(data_cfg.max_seq_length)
    return batch_width(samples, batch_multiple(data_cfg), data_cfg.get("min_width") or 0)


def padding_share(batches: list[Batch]) -> float:
    total = sum(b.padded_tokens for b in batches)
    return 1.0 - sum(b.real_tokens for b in batches) / total if total else 0.0

"""Sequence packing (`data.pack=true`): several samples per row of a fixed width.

Rows are filled first-fit-decreasing: samples sorted longest first (equal lengths in an
order drawn from (seed, epoch)), each put into the first row with room. Every row has the
same width, so a packed run compiles one batch shape. Each token carries the number of its
sample within the row (`segment_ids`, 0 for padding), from which the packed forward
(riscv_ft.packed_forward) builds a block-diagonal causal mask. Every sample is trained once
per epoch: a short last batch is filled with empty rows (all masked), which add nothing.
"""

from __future__ import annotations

import random
from typing import Iterator

import numpy as np

from riscv_ft.data.batch import Batch, Sample


def first_fit_decreasing(lengths: list[int], capacity: int, seed: int, epoch: int = 0) -> list[list[int]]:
    """Rows of sample indices whose lengths add up to at most `capacity`, in an order
    shuffled by (seed, epoch).

    The number of rows depends only on the multiset of lengths, so it is the same in every
    epoch (resume counts steps per epoch); which of several equal-length samples goes where,
    and the order of the rows, change with the epoch.
    """
    if any(n > capacity for n in lengths):
        raise ValueError(f"a sample of {max(lengths)} positions does not fit a row of {capacity}")
    rng = random.Random(seed * 1_000_003 + epoch)
    tie_break = list(range(len(lengths)))
    rng.shuffle(tie_break)
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], tie_break[i]))
    room = np.full(len(lengths), capacity, dtype=np.int64)  # at most one row per sample
    rows: list[list[int]] = []
    for i in order:
        # The first open row with room; a new one when none has (numpy: rows are many).
        fits = np.flatnonzero(room[: len(rows)] >= lengths[i])
        row = int(fits[0]) if len(fits) else len(rows)
        if row == len(rows):
            rows.append([])
        rows[row].append(i)
        room[row] -= lengths[i]
    rng.shuffle(rows)
    return rows


def make_packed_batch(samples: list[Sample], rows: list[list[int]], width: int, pad_id: int = 0) -> Batch:
    """One batch of packed rows, each `width` positions wide.

    Each sample is laid out as in `make_batch` (inputs tokens[:-1], targets tokens[1:],
    prompt masked), one after another; an empty row is all padding and masked out.
    """
    shape = (len(rows), width)
    inputs = np.full(shape, pad_id, dtype=np.int32)
    targets = np.full(shape, pad_id, dtype=np.int32)
    mask = np.zeros(shape, dtype=np.float32)
    segment_ids = np.zeros(shape, dtype=np.int32)
    real = 0
    for r, row in enumerate(rows):
        start = 0
        for segment, index in enumerate(row, start=1):
            s = samples[index]
            n = len(s.tokens) - 1
            end = start + n
            if end > width:
                raise ValueError(f"row {r} holds {end} positions, more than its width {width}")
            inputs[r, start:end] = s.tokens[:-1]
            targets[r, start:end] = s.tokens[1:]
            mask[r, start + max(s.prompt_len - 1, 0) : end] = 1.0
            segment_ids[r, start:end] = segment
            start = end
        real += start
    return Batch(inputs, targets, mask, real, segment_ids=segment_ids)


def packed_epoch(samples: list[Sample], rows_per_batch: int, width: int, seed: int, epoch: int = 0) -> list[list[list[int]]]:
    """One epoch of global batches, each `rows_per_batch` rows of sample indices; the last
    one is filled up with empty rows so that every sample is trained once."""
    rows = first_fit_decreasing([len(s.tokens) - 1 for s in samples], width, seed, epoch)
    batches = [rows[i : i + rows_per_batch] for i in range(0, len(rows), rows_per_batch)]
    batches[-1] = batches[-1] + [[] for _ in range(rows_per_batch - len(batches[-1]))]
    return batches


def packed_batches(
    samples: list[Sample], rows_per_batch: int, width: int, seed: int, epoch: int = 0,
    rank: int = 0, world_size: int = 1,
) -> list[Batch]:
    """One epoch of this rank's packed batches: every world_size-th row from `rank`."""
    return [make_packed_batch(samples, batch[rank::world_size], width) for batch in packed_epoch(samples, rows_per_batch, width, seed, epoch)]


def iterate_packed_batches(
    samples: list[Sample], rows_per_batch: int, width: int, seed: int, start_step: int = 0,
    rank: int = 0, world_size: int = 1,
) -> Iterator[Batch]:
    """Endless stream of this rank's share of each packed global batch, epoch after epoch,
    from micro-batch `start_step`: the order is a function of (seed, step), so a resumed run
    sees the batches the uninterrupted one would have."""
    epoch, skip = 0, start_step
    while True:
        batches = packed_epoch(samples, rows_per_batch, width, seed, epoch)
        if skip >= len(batches):
            skip, epoch = skip - len(batches), epoch + 1
            continue
        for batch in batches[skip:]:
            yield make_packed_batch(samples, batch[rank::world_size], width)
        skip, epoch = 0, epoch + 1


def samples_before(samples: list[Sample], rows_per_batch: int, width: int, seed: int, micro_steps: int) -> int:
    """How many samples the first `micro_steps` packed global batches hold (all ranks
    together): what a run resumed at that point has already trained on."""
    total, epoch = 0, 0
    while micro_steps > 0:
        batches = packed_epoch(samples, rows_per_batch, width, seed, epoch)
        total += sum(len(row) for batch in batches[:micro_steps] for row in batch)
        micro_steps, epoch = micro_steps - len(batches), epoch + 1
    return total

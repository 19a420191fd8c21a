"""Length-bucketed training batches see every sample every epoch (the longest included), stay
length-homogeneous, and resume exactly."""

import numpy as np
import pytest

from riscv_ft.cli import compose
from riscv_ft.data.batch import padding_share
from riscv_ft.data.pipeline import iterate_training_batches, prepare
from riscv_ft.model import load_base


@pytest.fixture(scope="module")
def tokenizer():
    return load_base(compose(["model=tiny"]).model).tokenizer


def _epochs(samples, batch_size: int, epochs: int, pad_to_multiple: int = 8):
    """The training stream cut into epochs: per epoch its batches and the sample indices seen."""
    index = {}
    for i, s in enumerate(samples):
        index.setdefault(tuple(s.tokens[:-1]), i)
    per_epoch = -(-len(samples) // batch_size)
    stream = iterate_training_batches(samples, batch_size, pad_to_multiple, seed=0)
    out = []
    for _ in range(epochs):
        batches = [next(stream) for _ in range(per_epoch)]
        seen = set()
        for b in batches:
            assert len(b.inputs) == batch_size  # whole batches only
            for row, mask in zip(b.inputs, b.mask):
                n = int(np.flatnonzero(mask).max()) + 1  # inputs are tokens[:-1]: n real positions
                seen.add(index[tuple(int(t) for t in row[:n])])
        out.append((batches, seen))
    return out


def test_the_two_longest_rows_of_the_real_split_are_trained_every_epoch(snapshot_path, tokenizer):
    cfg = compose(["model=tiny", f"data.path={snapshot_path}"])
    train = prepare(cfg.data, tokenizer, seed=0).samples["train"]
    assert len(train) % 4, "the snapshot's training split fills whole batches of 4: nothing left over to test"
    longest = sorted(range(len(train)), key=lambda i: len(train[i].tokens))[-2:]
    for epoch, (batches, seen) in enumerate(_epochs(train, 4, 2)):
        assert set(longest) <= seen, f"epoch {epoch}: the longest rows {longest} were not trained"
        assert len(seen) == len(train), f"epoch {epoch}: {len(train) - len(seen)} rows not trained"
        assert padding_share(batches) < 0.12  # still sorted by length: 0.102 when written (0.0985 before)


def test_every_smoke_row_is_trained_in_each_of_five_epochs_at_batch_8(tokenizer):
    train = prepare(compose(["experiment=smoke"]).data, tokenizer, seed=0).samples["train"]
    train = train[: len(train) // 8 * 8 - 5]  # a remainder of 3: the short group must not be dropped
    longest = max(range(len(train)), key=lambda i: len(train[i].tokens))
    epochs = _epochs(train, 8, 5)
    for epoch, (_, seen) in enumerate(epochs):
        assert longest in seen and len(seen) == len(train), (
            f"epoch {epoch}: rows never trained: {sorted(set(range(len(train))) - seen)}")
    # Ties and the place of the short group change between epochs: not the same batches each time.
    first, second = ({tuple(sorted(map(tuple, b.inputs.tolist()))) for b in batches} for batches, _ in epochs[:2])
    assert first != second


def test_a_stream_started_mid_epoch_continues_the_same_batches(tokenizer):
    train = prepare(compose(["experiment=smoke"]).data, tokenizer, seed=0).samples["train"]
    per_epoch = -(-len(train) // 8)
    full = iterate_training_batches(train, 8, 8, seed=0)
    reference = [next(full) for _ in range(2 * per_epoch + 3)]
    start = per_epoch + 2
    resumed = iterate_training_batches(train, 8, 8, seed=0, start_step=start)
    for expected in reference[start:]:
        assert np.array_equal(next(resumed).inputs, expected.inputs)

"""Sequence packing (data.pack=true): rows filled first-fit-decreasing, every sample once per
epoch, whole rows dealt to data-parallel ranks, resumable; and the packed forward, whose
per-sample losses and gradients equal the unpacked ones on the tiny model."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

from riscv_ft.cli import compose
from riscv_ft.data.packing import first_fit_decreasing, make_packed_batch, packed_batches, packed_epoch, samples_before
from riscv_ft.data.batch import Sample, make_batch, padding_share
from riscv_ft.data.pipeline import iterate_training_batches, length_bucketed_batches, prepare
from riscv_ft.model import apply_adapters, load_base
from riscv_ft.packed_forward import block_diagonal_causal_mask
from riscv_ft.trainer import Trainer, batch_arrays, masked_loss
from tests.conftest import run_train


@pytest.fixture(scope="module")
def smoke():
    """The tiny model in float32 with LoRA whose B is not zero, and the smoke data."""
    cfg = compose(["experiment=smoke", "model.dtype=float32"])
    loaded = load_base(cfg.model)
    data = prepare(cfg.data, loaded.tokenizer, seed=0)
    mx.random.seed(0)
    apply_adapters(loaded.model, cfg.lora)
    # LoRA B starts at zero: give the adapters weight so their gradients and outputs count.
    loaded.model.update(tree_map(lambda p: mx.random.normal(p.shape) * 0.02, loaded.model.trainable_parameters()))
    return cfg, loaded, data


def _samples(lengths, prompt=3):
    return [Sample(list(range(10, 10 + n)), prompt) for n in lengths]


# ---------------------------------------------------------------- the data layer


def test_first_fit_decreasing_fills_rows_within_the_width_and_keeps_their_count_per_epoch():
    lengths = [int(n) for n in np.random.default_rng(0).integers(10, 150, 300)]
    rows = first_fit_decreasing(lengths, 256, seed=1)
    assert sorted(i for row in rows for i in row) == list(range(300))
    assert all(sum(lengths[i] for i in row) <= 256 for row in rows)
    # Close to the lower bound: at most one row more than the lengths need, rounded up.
    assert len(rows) <= -(-sum(lengths) // 256) + 1
    assert first_fit_decreasing(lengths, 256, seed=1) == rows  # deterministic by seed
    other_epoch = first_fit_decreasing(lengths, 256, seed=1, epoch=1)
    assert other_epoch != rows and len(other_epoch) == len(rows)


def test_packed_epoch_trains_every_sample_once_dealt_as_whole_rows_to_each_rank():
    samples = _samples([int(n) for n in np.random.default_rng(1).integers(8, 60, 101)])
    width, rows_per_batch = 128, 4
    epoch = packed_epoch(samples, rows_per_batch, width, seed=3)
    assert all(len(batch) == rows_per_batch for batch in epoch)  # the last one filled with empty rows
    per_rank = [packed_batches(samples, rows_per_batch, width, seed=3, rank=r, world_size=2) for r in range(2)]
    assert {b.inputs.shape for batches in per_rank for b in batches} == {(2, width)}  # one shape only
    assert sum(b.samples for batches in per_rank for b in batches) == len(samples)
    # Each rank holds whole rows: the global batch's rows, every second one from the rank.
    for step, batch in enumerate(epoch):
        for rank in range(2):
            expected = make_packed_batch(samples, batch[rank::2], width)
            assert np.array_equal(per_rank[rank][step].inputs, expected.inputs)


def test_packed_stream_resumes_where_the_uninterrupted_one_was_and_changes_order_by_epoch():
    samples = _samples([int(n) for n in np.random.default_rng(2).integers(8, 60, 50)])
    per_epoch = len(packed_epoch(samples, 2, 96, seed=0))

    def stream(start, count):
        it = iterate_training_batches(samples, 2, 8, seed=0, start_step=start, pack_length=96)
        return [next(it) for _ in range(count)]

    full = stream(0, 2 * per_epoch + 3)
    resumed = stream(per_epoch + 1, per_epoch + 2)
    assert all(np.array_equal(a.inputs, b.inputs) for a, b in zip(full[per_epoch + 1 :], resumed))
    assert sum(b.samples for b in full[:per_epoch]) == len(samples)
    assert samples_before(samples, 2, 96, 0, per_epoch + 1) == sum(b.samples for b in full[: per_epoch + 1])
    assert not all(np.array_equal(a.inputs, b.inputs) for a, b in zip(full[:per_epoch], full[per_epoch : 2 * per_epoch]))


def test_packed_row_lays_out_each_sample_as_unpacked():
    samples = [Sample([1, 5, 6, 7, 8, 2], 3), Sample([1, 9, 9, 2], 2), Sample([1, 4, 2], 0)]
    packed = make_packed_batch(samples, [[0, 1, 2]], width=16)
    start = 0
    for k, s in enumerate(samples):
        alone = make_batch([s], 1)
        n = len(s.tokens) - 1
        part = slice(start, start + n)
        assert np.array_equal(packed.inputs[0, part], alone.inputs[0])
        assert np.array_equal(packed.targets[0, part], alone.targets[0])
        assert np.array_equal(packed.mask[0, part], alone.mask[0])
        assert list(packed.segment_ids[0, part]) == [k + 1] * n
        start += n
    assert not packed.mask[0, start:].any() and not packed.segment_ids[0, start:].any()  # padding never trained
    assert packed.samples == 3 and packed.real_tokens == start


def test_packing_the_real_snapshot_leaves_little_padding(snapshot_path, smoke):
    _, loaded, _ = smoke
    cfg = compose(["model=tiny", f"data.path={snapshot_path}", "data.max_seq_length=512"])
    train = prepare(cfg.data, loaded.tokenizer, seed=0).samples["train"]
    packed = packed_batches(train, 4, 512, seed=0)
    # Measured (benchmarks/packing.py): 0.6% padding, 9.6 samples per 512-position row;
    # length-bucketed batches of 4 samples: 6.6%.
    assert padding_share(packed) < 0.02
    assert padding_share(packed) < padding_share(length_bucketed_batches(train, 4, 8, seed=0)) / 5
    assert sum(b.samples for b in packed) == len(train)


# ---------------------------------------------------------------- the packed forward


def test_a_sample_far_into_a_row_has_its_unpacked_loss(smoke):
    """Rotary positions run on across a packed row (they are not restarted per sample):
    RoPE's scores depend only on query-key distance, which the mask keeps within a sample."""
    _, loaded, data = smoke
    sample = data.samples["train"][0]
    filler = Sample([int(t) for t in np.random.default_rng(0).integers(10, 1000, 900)], 1)
    packed, unpacked = _per_sample_losses(loaded.model, [filler, sample], [[0, 1]], 900 + len(sample.tokens))
    assert packed[1] == pytest.approx(unpacked[1], rel=1e-5)


def test_block_diagonal_mask_keeps_attention_inside_each_sample():
    mask = np.array(block_diagonal_causal_mask(mx.array([[1, 1, 2, 2, 0]])))[0, 0]
    assert mask.tolist() == [
        [True, False, False, False, False],
        [True, True, False, False, False],
        [False, False, True, False, False],
        [False, False, True, True, False],
        [False, False, False, False, True],
    ]


def _per_sample_losses(model, samples, rows, width):
    packed = make_packed_batch(samples, rows, width)
    arrays = batch_arrays(packed)
    packed_losses, unpacked_losses = [], []
    for r, row in enumerate(rows):
        for segment, index in enumerate(row, start=1):
            only = packed.mask * (packed.segment_ids == segment) * (np.arange(len(rows))[:, None] == r)
            loss, count = masked_loss(model, **{**arrays, "mask": mx.array(only), "positions": None})
            alone, alone_count = masked_loss(model, **batch_arrays(make_batch([samples[index]], 8)))
            assert count.item() == alone_count.item()
            packed_losses.append(loss.item())
            unpacked_losses.append(alone.item())
    return packed_losses, unpacked_losses


def test_each_sample_has_its_unpacked_loss_when_packed(smoke):
    _, loaded, data = smoke
    samples = data.samples["train"][:7]
    width = sum(len(s.tokens) - 1 for s in samples[:4]) + 5  # padding at the end of row 0
    packed, unpacked = _per_sample_losses(loaded.model, samples, [[0, 1, 2, 3], [4, 5, 6]], width)
    assert packed == pytest.approx(unpacked, rel=1e-5)


def test_packed_batch_gives_the_unpacked_loss_sum_and_gradients_compiled(smoke):
    cfg, loaded, data = smoke
    model, samples = loaded.model, data.samples["train"][:8]
    value_and_grad = nn.value_and_grad(model, masked_loss)
    loss_and_grad = mx.compile(lambda batch: value_and_grad(model, **batch), inputs=model.state, outputs=model.state)
    (unpacked_loss, unpacked_count), unpacked_grads = loss_and_grad(batch_arrays(make_batch(samples, 8)))
    rows = first_fit_decreasing([len(s.tokens) - 1 for s in samples], 96, seed=0)
    packed_batch = make_packed_batch(samples, rows, 96)
    assert len(rows) < len(samples)  # several samples share a row
    (packed_loss, packed_count), packed_grads = loss_and_grad(batch_arrays(packed_batch))
    assert packed_count.item() == unpacked_count.item()
    assert packed_loss.item() == pytest.approx(unpacked_loss.item(), rel=1e-5)
    flat_unpacked, flat_packed = dict(tree_flatten(unpacked_grads)), dict(tree_flatten(packed_grads))
    assert len(flat_packed) == 2 * 7 * cfg.model.tiny.num_hidden_layers  # lora_a and lora_b everywhere
    for name, grad in flat_unpacked.items():
        scale = float(mx.abs(grad).max())
        assert scale > 0 and float(mx.abs(flat_packed[name] - grad).max()) <= 1e-4 * scale, name


def test_packing_works_on_a_4bit_base():
    cfg = compose(["experiment=smoke", "model.dtype=float32", "model.quantize.enabled=true", "model.quantize.group_size=32",
                   "model.tiny.num_hidden_layers=1", "model.tiny.hidden_size=64", "lora.rank=4"])
    loaded = load_base(cfg.model)
    assert type(loaded.model.layers[0].self_attn.q_proj).__name__ == "QuantizedLinear"
    data = prepare(cfg.data, loaded.tokenizer, seed=0)
    mx.random.seed(0)
    apply_adapters(loaded.model, cfg.lora)
    samples = data.samples["train"][:3]
    packed, unpacked = _per_sample_losses(loaded.model, samples, [[0, 1, 2]], sum(len(s.tokens) - 1 for s in samples))
    assert packed == pytest.approx(unpacked, rel=1e-5)


def test_trainer_fits_packed_rows_and_reports_samples_per_step(smoke):
    cfg, loaded, data = smoke
    cfg.trainer.iters, cfg.trainer.report_every, cfg.trainer.eval_every = 3, 1, 0
    metrics = []
    trainer = Trainer(loaded.model, cfg.trainer, 8, pack_length=128)
    summary = trainer.fit(data.samples["train"], data.samples["valid"][:8], lambda step, m: metrics.append(m), lambda step: None)
    per_step = [m["samples_per_step"] for m in metrics if "samples_per_step" in m]
    expected = [b.samples for b in packed_batches(data.samples["train"], cfg.trainer.batch_size, 128, cfg.trainer.seed)[:3]]
    assert per_step == expected and min(per_step) > cfg.trainer.batch_size
    assert summary["samples_seen"] == sum(expected)
    # Resumed at step 2, the count goes on from the samples of the first two steps.
    trainer.state.step, cfg.trainer.iters = 2, 3
    summary = trainer.fit(data.samples["train"], data.samples["valid"][:8], lambda step, m: None, lambda step: None)
    assert summary["samples_seen"] == sum(expected)
    assert np.isfinite(summary["val_loss"])


def test_packing_works_with_gradient_checkpointing():
    from riscv_ft.trainer import enable_grad_checkpoint

    cfg = compose(["experiment=smoke", "model.dtype=float32", "model.tiny.num_hidden_layers=2"])
    loaded = load_base(cfg.model)
    samples = prepare(cfg.data, loaded.tokenizer, seed=0).samples["train"][:4]
    mx.random.seed(0)
    apply_adapters(loaded.model, cfg.lora)
    enable_grad_checkpoint(loaded.model)
    value_and_grad = nn.value_and_grad(loaded.model, masked_loss)
    (unpacked, _), unpacked_grads = value_and_grad(loaded.model, **batch_arrays(make_batch(samples, 8)))
    packed_batch = make_packed_batch(samples, [[0, 1], [2, 3]], 64)
    (packed, _), packed_grads = value_and_grad(loaded.model, **batch_arrays(packed_batch))
    assert packed.item() == pytest.approx(unpacked.item(), rel=1e-5)
    for (name, a), (_, b) in zip(tree_flatten(unpacked_grads), tree_flatten(packed_grads)):
        assert float(mx.abs(a - b).max()) <= 1e-4 * float(mx.abs(a).max()) + 1e-9, name


def test_packing_refuses_a_model_it_cannot_pack_and_accepts_the_tiny_mistral(smoke):
    from mlx_lm.models import qwen2

    from riscv_ft.packed_forward import packing_problem

    assert packing_problem(smoke[1].model) is None
    other = qwen2.Model(qwen2.ModelArgs(model_type="qwen2", hidden_size=32, num_hidden_layers=1, intermediate_size=64,
                                        num_attention_heads=2, rms_norm_eps=1e-5, vocab_size=64, num_key_value_heads=2))
    assert "'qwen2'" in packing_problem(other)


def test_a_packed_run_from_the_command_line_logs_its_samples_per_step(tmp_path):
    result = run_train("experiment=smoke", "data.pack=true", "data.max_seq_length=128", "trainer.iters=4",
                       "trainer.report_every=2", "trainer.eval_every=0", "eval.num_rows=1", "eval.max_tokens=4",
                       "tracking.enabled=false", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    config = (tmp_path / "config.yaml").read_text()
    assert "pack: true" in config
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    # Four 128-position rows hold more than four samples: the trainer packed them.
    assert metrics["samples_seen"] > 4 * 4
    assert all(h["samples_per_step"] > 4 for h in history if "samples_per_step" in h)

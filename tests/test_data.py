"""The data pipeline on the real snapshot and on hand-made files: cleaning, de-duplication,
the split by description, prompt masking and the padding of length-bucketed batches."""

import json
import random
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from omegaconf import OmegaConf

from riscv_ft.cli import compose
from riscv_ft.data.batch import Sample, make_batch, padding_share
from riscv_ft.data.pipeline import (
    DataError,
    DataReport,
    clean_rows,
    clean_text,
    drop_duplicates,
    length_bucketed_batches,
    load_rows,
    prepare,
    split_by_description,
    tokenize_row,
)
from riscv_ft.model import load_base
from riscv_ft.trainer import masked_loss

LIGATURES = [chr(c) for c in range(0xFB00, 0xFB07)]


@pytest.fixture(scope="module")
def tiny():
    return load_base(compose(["model=tiny"]).model)


@pytest.fixture(scope="module")
def snapshot_rows(snapshot_path):
    report = DataReport()
    cfg = OmegaConf.create({"path": str(snapshot_path), "source": "file"})
    rows = load_rows(cfg, 0, report)
    return rows, report


def test_cleaning_turns_pdf_ligatures_and_odd_spaces_into_plain_text():
    assert clean_text("Speci\ufb01es the  \u00a0 o\ufb00set\t ") == "Specifies the offset"
    assert clean_text("li a0, 1\r\n\r\n  addi a0, a0, 1 ") == "li a0, 1\naddi a0, a0, 1"


def test_snapshot_cleaning_and_dedup(snapshot_rows):
    rows, report = snapshot_rows
    assert report.rows_loaded == 2094
    assert sum("".join(r.values()).count(l) for r in rows for l in LIGATURES) > 0
    cleaned = clean_rows(rows, report)
    assert not any(l in r["description"] + r["instructions"] for r in cleaned for l in LIGATURES)
    unique = drop_duplicates(cleaned, report)
    # 109 exact duplicates in the raw file; NFKC and whitespace tidying can only merge more.
    assert report.dropped_duplicates >= 109
    assert len({(r["description"], r["instructions"]) for r in unique}) == len(unique)


def test_split_keeps_each_description_in_one_split_and_is_deterministic(snapshot_rows):
    rows, _ = snapshot_rows
    rows = drop_duplicates(clean_rows(rows, DataReport()), DataReport())
    splits = split_by_description(rows, 0.1, 0.1, seed=0)
    seen = [{r["description"] for r in splits[k]} for k in ("train", "valid", "test")]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert sum(len(v) for v in splits.values()) == len(rows)
    assert splits == split_by_description(rows, 0.1, 0.1, seed=0)
    assert splits["valid"] != split_by_description(rows, 0.1, 0.1, seed=1)["valid"]
    distinct = len({r["description"] for r in rows})
    assert abs(len(seen[1]) - 0.1 * distinct) <= 1


def test_prompt_mask_covers_exactly_the_prompt(tiny):
    row = {"description": "Adds a1 and a2 into a0.", "instructions": "add a0, a1, a2"}
    tokens, prompt_len = tokenize_row(row, tiny.tokenizer, "chat")
    text = tiny.tokenizer.decode(tokens[prompt_len:])
    assert text.strip().startswith("add a0, a1, a2") and tokens[-1] == tiny.tokenizer.eos_token_id
    assert "[/INST]" in tiny.tokenizer.decode(tokens[:prompt_len])
    batch = make_batch([Sample(tokens, prompt_len)], pad_to_multiple=8)
    # Targets that count are the answer tokens and EOS, nothing of the prompt or padding.
    assert batch.mask.sum() == len(tokens) - prompt_len
    assert batch.inputs.shape[1] % 8 == 0


def test_masked_tokens_change_nothing_in_the_loss(tiny):
    rows = [
        {"description": "Adds a1 and a2 into a0.", "instructions": "add a0, a1, a2"},
        {"description": "Copies t1 into t0, a longer description to force padding.", "instructions": "mv t0, t1"},
    ]
    samples = [Sample(*tokenize_row(r, tiny.tokenizer, "chat")) for r in rows]
    batch = make_batch(samples, pad_to_multiple=8)
    inputs, targets, mask = mx.array(batch.inputs), mx.array(batch.targets), mx.array(batch.mask)
    loss, ntok = masked_loss(tiny.model, inputs, targets, mask)

    scrambled = np.array(batch.targets)
    rng = np.random.default_rng(0)
    masked = batch.mask == 0
    scrambled[masked] = rng.integers(5, 32000, size=int(masked.sum()))
    loss2, _ = masked_loss(tiny.model, inputs, mx.array(scrambled), mask)
    assert loss.item() == pytest.approx(loss2.item(), rel=1e-6)

    changed = np.array(batch.targets)
    answer = np.argwhere(batch.mask == 1)[0]
    changed[tuple(answer)] = (changed[tuple(answer)] + 7) % 32000
    loss3, _ = masked_loss(tiny.model, inputs, mx.array(changed), mask)
    assert loss3.item() != pytest.approx(loss.item(), rel=1e-6)
    assert ntok.item() == batch.mask.sum()


def test_padding_share_on_the_real_snapshot(snapshot_path, tiny):
    cfg = compose(["model=tiny", f"data.path={snapshot_path}"])
    data = prepare(cfg.data, tiny.tokenizer, seed=0)
    train = data.samples["train"]
    batches = length_bucketed_batches(train, 4, 8, seed=0)
    ours = padding_share(batches)
    widths = {b.inputs.shape[1] for b in batches}

    # mlx-lm's way for comparison: random order, padded to 32k+1.
    order = list(range(len(train)))
    random.Random(0).shuffle(order)
    padded = real = 0
    for i in range(0, len(order) - 3, 4):
        lengths = [len(train[j].tokens) for j in order[i : i + 4]]
        width = 32 * -(-max(lengths) // 32) + 1
        padded, real = padded + 4 * width, real + sum(lengths)
    theirs = 1 - real / padded
    gpu_widths = {b.inputs.shape[1] for b in length_bucketed_batches(train, 4, 64, seed=0)}
    print(f"padding share: ours {ours:.3f} over {len(widths)} widths ({sorted(gpu_widths)} in a CUDA GPU's buckets of 64), "
          f"random order padded to 32k+1 {theirs:.3f}")
    # Widths come from shape buckets (a quarter of the power of two below): 0.100 over 15
    # widths when written; a CUDA GPU's multiple of 64 leaves four (max sample 295 tokens).
    assert ours < 0.12 and theirs > 0.30 and len(widths) <= 16
    assert gpu_widths == {64, 128, 192, 320}


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_file_with_some_bad_lines_keeps_the_good_rows(tmp_path):
    good = [json.dumps({"description": f"Adds {i} to a0.", "instructions": f"addi a0, a0, {i}"}) for i in range(6)]
    bad = ["{not json", json.dumps({"description": "x"}), json.dumps({"description": 3, "instructions": "nop"}),
           json.dumps({"description": " ", "instructions": "nop"})]
    path = _write(tmp_path / "mixed.jsonl", good[:3] + bad + good[3:])
    report = DataReport()
    rows = load_rows(OmegaConf.create({"path": str(path), "source": "file"}), 0, report)
    assert len(rows) == 6
    assert report.skipped == {"not JSON": 1, "missing instructions": 1, "non-string description": 1, "empty description": 1}


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.jsonl", None, "no such file"),
        ("empty.jsonl", b"", "the file is empty"),
        ("latin1.jsonl", '{"description": "caf\xe9", "instructions": "nop"}\n'.encode("latin-1"), "not UTF-8"),
        ("allbad.jsonl", b'{"a": 1}\n{"b": 2}\n', "no usable rows"),
        ("table.csv", b"description,instructions\n", "expected a .jsonl, .json or .parquet"),
    ],
)
def test_unusable_data_files_fail_with_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as err:
        load_rows(OmegaConf.create({"path": str(path), "source": "file"}), 0, DataReport())
    assert message in str(err.value) and "\n" not in str(err.value)


def test_parquet_file_in_the_dataset_schema(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"description": ["Adds a1 to a0.", "Clears a0."], "instructions": ["add a0, a0, a1", "li a0, 0"]}), path)
    rows = load_rows(OmegaConf.create({"path": str(path), "source": "file"}), 0, DataReport())
    assert rows[1] == {"description": "Clears a0.", "instructions": "li a0, 0"}


def test_too_long_samples_are_dropped_or_truncated_as_asked_and_counted(tiny, tmp_path):
    """10 rows whose prompt alone is over the limit (always dropped), 10 whose answer is
    (data.too_long decides), 20 that fit."""
    eos = tiny.tokenizer.eos_token_id
    rows = [json.dumps({"description": f"Row {i} " + "word " * (200 if i % 4 == 0 else 3),
                        "instructions": "addi a0, a0, 1\n" * (40 if i % 4 == 1 else 1)}) for i in range(40)]
    path = _write(tmp_path / "long.jsonl", rows)
    for mode, kept in (("drop", 20), ("truncate", 30), ("truncate_keep_eos", 30)):
        cfg = compose(["model=tiny", f"data.path={path}", "data.max_seq_length=64", f"data.too_long={mode}"])
        data = prepare(cfg.data, tiny.tokenizer, seed=0)
        assert sum(data.report.prompt_too_long.values()) == 10
        assert sum(data.report.too_long.values()) == 10
        assert data.report.as_params()["data.train_prompt_too_long"] == data.report.prompt_too_long["train"]
        samples = [s for split in data.samples.values() for s in split]
        assert len(samples) == kept and max(len(s.tokens) for s in samples) <= 64
        assert all(s.prompt_len < len(s.tokens) for s in samples)  # every kept sample has an answer to train
        cut = [s for s in samples if len(s.tokens) == 64]
        assert len(cut) == (0 if mode == "drop" else 10)
        # EOS ends a cut answer only when asked for
        assert all((s.tokens[-1] == eos) == (mode == "truncate_keep_eos") for s in cut)
    assert all(s.tokens[-1] == eos for s in samples if len(s.tokens) < 64)


@pytest.mark.parametrize("prompt_format", ["chat", "completion"])
def test_written_splits_read_back_as_the_same_rows(tmp_path, prompt_format):
    from riscv_ft.data.pipeline import read_split, write_splits

    rows = [{"description": "Adds a1 and a2 into a0.", "instructions": "add a0, a1, a2"},
            {"description": "Loads 5 into t0,\nthen clears a0.", "instructions": "li t0, 5\nli a0, 0"}]
    write_splits({"train": rows, "valid": [], "test": rows[:1]}, tmp_path, prompt_format)
    assert read_split(tmp_path / "train.jsonl") == rows
    assert read_split(tmp_path / "test.jsonl") == rows[:1]


def test_batch_widths_resolve_per_device_and_the_cuda_graph_cache_is_raised_unless_set():
    """data.pad_to_multiple null: 8 on this CPU (64 only on CUDA, benchmarks/NOTES.md section 8);
    a value given wins. Importing riscv_ft raises MLX's CUDA graph cache unless the user set it."""
    import os
    import subprocess
    import sys

    from riscv_ft.data.batch import batch_multiple

    assert batch_multiple(compose(["model=tiny"]).data) == (64 if mx.cuda.is_available() else 8)
    assert batch_multiple(compose(["model=tiny", "data.pad_to_multiple=32"]).data) == 32
    probe = "import os, riscv_ft; print(os.environ['MLX_CUDA_GRAPH_CACHE_SIZE'])"
    env = {k: v for k, v in os.environ.items() if k != "MLX_CUDA_GRAPH_CACHE_SIZE"}
    assert subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout.strip() == "20000"
    env["MLX_CUDA_GRAPH_CACHE_SIZE"] = "77"
    assert subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout.strip() == "77"


def test_a_run_folder_written_with_min_width_null_still_loads():
    """Earlier versions wrote data.min_width: null ("auto") into config.yaml; resume merges that
    file into the schema, which must accept it (null now means no floor)."""
    from riscv_ft.config import TrainConfig

    saved = OmegaConf.to_yaml(compose(["model=tiny"])).replace("min_width: 0", "min_width: null")
    assert "min_width: null" in saved
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.create(saved))
    assert cfg.data.min_width is None


def test_the_snapshot_is_found_beside_the_checkout_unless_the_environment_names_another(monkeypatch, tmp_path):
    from riscv_ft.data.snapshot import BESIDE_CHECKOUT, ENV, snapshot_file

    repo = Path(__file__).resolve().parent.parent
    assert BESIDE_CHECKOUT == repo.parent / "shared" / "data" / "riscv-instruction-specification" / "train.jsonl"
    monkeypatch.delenv(ENV, raising=False)
    assert snapshot_file() == BESIDE_CHECKOUT
    monkeypatch.setenv(ENV, str(tmp_path / "mine.jsonl"))
    assert snapshot_file() == tmp_path / "mine.jsonl"

"""Data pipeline: load -> clean -> de-duplicate -> split by description -> format -> tokenize -> batch.

Each step returns its output and counts what it dropped, so a run can log exactly what
happened to the data (`DataReport`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig

from riscv_ft.data.batch import Batch, Sample, make_batch

log = logging.getLogger(__name__)

FIELDS = ("description", "instructions")
COMPLETION_TEMPLATE = "User: {description}\nAssistant: "


class DataError(ValueError):
    """The data cannot be used. Its message is one line for the user."""


@dataclass
class DataReport:
    """What each step kept and dropped, for the log and MLflow."""

    source: str = ""
    digest: str = ""
    rows_loaded: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> rows skipped while loading
    dropped_empty_after_cleaning: int = 0
    dropped_duplicates: int = 0
    split_sizes: dict = field(default_factory=dict)
    too_long: dict = field(default_factory=dict)  # split -> samples over the limit (truncated or dropped)
    prompt_too_long: dict = field(default_factory=dict)  # split -> samples dropped: the prompt alone is over the limit
    mixed: dict = field(default_factory=dict)  # kind -> training rows added (data/mixing.py)

    def as_params(self) -> dict:
        params = {
            "data.source_resolved": self.source,
            "data.digest": self.digest,
            "data.rows_loaded": self.rows_loaded,
            "data.rows_skipped": sum(self.skipped.values()),
            "data.dropped_empty": self.dropped_empty_after_cleaning,
            "data.dropped_duplicates": self.dropped_duplicates,
        }
        params.update({f"data.{k}_rows": v for k, v in self.split_sizes.items()})
        params.update({f"data.{k}_too_long": v for k, v in self.too_long.items()})
        params.update({f"data.{k}_prompt_too_long": v for k, v in self.prompt_too_long.items()})
        params.update({f"data.mixed_{k}_rows": v for k, v in self.mixed.items()})
        return params


# ---------------------------------------------------------------- load


def load_rows(data_cfg: DictConfig, seed: int, report: DataReport) -> list[dict]:
    """Rows of {description, instructions} from the hub, a local file, or the generator."""
    source = "file" if data_cfg.path else data_cfg.source
    if source == "file":
        rows = _read_file(Path(data_cfg.path).expanduser(), report)
        report.source = str(Path(data_cfg.path).expanduser().resolve())
    elif source == "synthetic":
        from riscv_ft.data.synthetic import synthetic_rows

        rows = synthetic_rows(data_cfg.synthetic_rows, seed=seed, max_instructions=data_cfg.synthetic_max_instructions)
        report.source = (f"synthetic(rows={data_cfg.synthetic_rows}, seed={seed}, "
                         f"max_instructions={data_cfg.synthetic_max_instructions})")
    else:
        rows = _load_hub(data_cfg.hub_id, data_cfg.hub_split, report)
        report.source = f"hf://{data_cfg.hub_id}[{data_cfg.hub_split}]"
    report.rows_loaded = len(rows)
    report.digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]
    return rows


def _load_hub(hub_id: str, split: str, report: DataReport) -> list[dict]:
    import datasets

    datasets.logging.set_verbosity_error()
    try:
        dataset = datasets.load_dataset(hub_id, split=split)
    except Exception as err:  # noqa: BLE001 - the hub client raises many kinds
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise DataError(
            f"cannot load dataset {hub_id!r} from the Hugging Face hub ({first}); "
            "use data.path=FILE for a local JSONL/Parquet file, or experiment=smoke to try offline"
        ) from err
    return _validated(list(dataset), hub_id, report)


def _read_file(path: Path, report: DataReport) -> list[dict]:
    if path.is_dir():
        raise DataError(f"data.path={str(path)!r} is a folder; expected a .jsonl, .json or .parquet file")
    if not path.is_file():
        raise DataError(f"data.path={str(path)!r}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"data.path={str(path)!r}: the file is empty")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            records = pq.read_table(path).to_pylist()
        except Exception as err:  # noqa: BLE001
            raise DataError(f"data.path={str(path)!r}: not a readable Parquet file ({err})") from err
        return _validated(records, str(path), report)
    if suffix not in (".jsonl", ".json"):
        raise DataError(f"data.path={str(path)!r}: expected a .jsonl, .json or .parquet file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"data.path={str(path)!r}: not UTF-8 text (byte {err.start}); save it as UTF-8") from err
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            return _validated(json.loads(text), str(path), report)
        except json.JSONDecodeError as err:
            raise DataError(f"data.path={str(path)!r}: not valid JSON ({err})") from err
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            report.skipped["not JSON"] += 1
    return _validated(records, str(path), report)


def _validated(records: list, where: str, report: DataReport) -> list[dict]:
    rows = []
    for record in records:
        reason = _row_problem(record)
        if reason:
            report.skipped[reason] += 1
        else:
            rows.append({k: record[k] for k in FIELDS})
    if not rows:
        reasons = ", ".join(f"{n} {r}" for r, n in report.skipped.most_common()) or "no rows"
        raise DataError(f"{where}: no usable rows ({reasons}); each row needs string fields {list(FIELDS)}")
    if report.skipped:
        log.warning(
            "Skipped %d rows of %s: %s", sum(report.skipped.values()), where,
            ", ".join(f"{n} {r}" for r, n in report.skipped.most_common()),
        )
    return rows


def _row_problem(record) -> str | None:
    if not isinstance(record, dict):
        return "not an object"
    for key in FIELDS:
        if key not in record:
            return f"missing {key}"
        if not isinstance(record[key], str):
            return f"non-string {key}"
        if not record[key].strip():
            return f"empty {key}"
    return None


# ---------------------------------------------------------------- clean, de-duplicate, split

_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")


def clean_text(text: str) -> str:
    """NFKC (PDF ligatures such as U+FB01 become 'fi'), then tidy whitespace line by line."""
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return "\n".join(line for line in lines if line)


def clean_rows(rows: list[dict], report: DataReport) -> list[dict]:
    cleaned = []
    for row in rows:
        row = {k: clean_text(row[k]) for k in FIELDS}
        if row["description"] and row["instructions"]:
            cleaned.append(row)
    report.dropped_empty_after_cleaning = len(rows) - len(cleaned)
    return cleaned


def drop_duplicates(rows: list[dict], report: DataReport) -> list[dict]:
    seen, unique = set(), []
    for row in rows:
        key = (row["description"], row["instructions"])
        if key not in seen:
            seen.add(key)
            unique.append(row)
    report.dropped_duplicates = len(rows) - len(unique)
    return unique


def split_by_description(
    rows: list[dict], valid_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[dict]]:
    """Deterministic train/valid/test split in which no description lands in two splits.

    Rows sharing a description (the dataset has many, with different targets) go together,
    so validation measures descriptions the model has not seen.
    """
    descriptions = sorted({row["description"] for row in rows})
    random.Random(seed).shuffle(descriptions)
    n = len(descriptions)
    n_valid = max(1, round(n * valid_fraction))
    n_test = round(n * test_fraction) if test_fraction > 0 else 0
    if n - n_valid - n_test < 1:
        raise DataError(f"only {n} distinct descriptions: too few to split into train/valid/test")
    where = {}
    for i, description in enumerate(descriptions):
        where[description] = "valid" if i < n_valid else "test" if i < n_valid + n_test else "train"
    splits = {"train": [], "valid": [], "test": []}
    for row in rows:
        splits[where[row["description"]]].append(row)
    return splits


# ---------------------------------------------------------------- format and tokenize


def to_record(row: dict, prompt_format: str) -> dict:
    """The mlx-lm data format of one row: chat messages or prompt/completion."""
    if prompt_format == "chat":
        return {"messages": [
            {"role": "user", "content": row["description"]},
            {"role": "assistant", "content": row["instructions"]},
        ]}
    return {"prompt": COMPLETION_TEMPLATE.format(description=row["description"]), "completion": row["instructions"]}


def prompt_text(description: str, tokenizer, prompt_format: str) -> str:
    """The text a model sees before it answers: used for training and for generation."""
    if prompt_format == "chat":
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": description}], tokenize=False, add_generation_prompt=True
        )
    return COMPLETION_TEMPLATE.format(description=description)


def tokenize_row(row: dict, tokenizer, prompt_format: str) -> tuple[list[int], int]:
    """Token ids of prompt + answer (+ EOS), and how many of them belong to the prompt."""
    if prompt_format == "chat":
        record = to_record(row, "chat")
        full = tokenizer.apply_chat_template(record["messages"], tokenize=True)
        prompt = tokenizer.apply_chat_template(record["messages"][:1], tokenize=True, add_generation_prompt=True)
    else:
        prompt = tokenizer.encode(COMPLETION_TEMPLATE.format(description=row["description"]))
        full = prompt + tokenizer.encode(row["instructions"], add_special_tokens=False) + [tokenizer.eos_token_id]
    full, prompt = list(full), list(prompt)
    if full[: len(prompt)] != prompt:
        # A template that re-tokenizes the boundary differently: fall back to the longest
        # common prefix so the mask never covers answer tokens.
        n = 0
        while n < min(len(full), len(prompt)) and full[n] == prompt[n]:
            n += 1
        return full, n
    return full, len(prompt)


def tokenize_split(
    rows: list[dict], tokenizer, data_cfg: DictConfig, split: str, report: DataReport
) -> list[Sample]:
    """Tokenized samples of one split, with `data.max_seq_length` enforced.

    A sample whose prompt alone fills the limit leaves no answer to train: always dropped.
    A longer answer follows `data.too_long`: drop the sample (default); truncate it without
    its EOS (the start of the answer is trained, but not stopping there); or truncate_keep_eos
    (the cut answer ends with EOS: the model learns to stop where the answer was cut).
    """
    limit, eos = data_cfg.max_seq_length, tokenizer.eos_token_id
    samples, too_long, prompt_too_long = [], 0, 0
    for row in rows:
        tokens, prompt_len = tokenize_row(row, tokenizer, data_cfg.prompt_format)
        if len(tokens) > limit:
            if prompt_len >= limit:
                prompt_too_long += 1
                continue
            too_long += 1
            if data_cfg.too_long == "drop":
                continue
            tokens = tokens[: limit - 1] + [eos] if data_cfg.too_long == "truncate_keep_eos" else tokens[:limit]
        samples.append(Sample(tokens, prompt_len if data_cfg.mask_prompt else 0))
    report.too_long[split] = too_long
    report.prompt_too_long[split] = prompt_too_long
    if prompt_too_long:
        log.warning("%s: %d samples dropped: the prompt alone is longer than data.max_seq_length=%d", split, prompt_too_long, limit)
    if too_long:
        verb = {"drop": "dropped", "truncate": "truncated (no EOS)", "truncate_keep_eos": "truncated, ending with EOS"}[data_cfg.too_long]
        log.warning("%s: %d samples longer than data.max_seq_length=%d were %s (data.too_long=%s)",
                    split, too_long, limit, verb, data_cfg.too_long)
    return samples


# ---------------------------------------------------------------- batches


def length_buckets(samples: list[Sample], batch_size: int, seed: int, epoch: int = 0,
                   whole_batches: bool = False) -> list[list[int]]:
    """One epoch of global batches as sample indices: sorted by length so each batch pads
    little, then the order of batches shuffled. Depends only on (seed, epoch), so a resumed
    run sees the same batches.

    Each epoch breaks ties in length at random and puts the one short group (len % batch_size
    samples) at a random place in the length order, so neither which samples share a batch
    nor which group is short is the same every epoch. With whole_batches (training: every
    step is one full global batch) the short group is filled up with its neighbours in length
    order, which are then seen twice that epoch: every sample is trained every epoch, the
    longest included, and the batch still pads little.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    tiebreak = [rng.random() for _ in samples]
    order = sorted(range(len(samples)), key=lambda i: (len(samples[i].tokens), tiebreak[i]))
    short = len(order) % batch_size
    start = rng.randrange(len(order) // batch_size + 1) * batch_size if short else len(order)
    groups = [order[i : i + batch_size] for i in range(0, start, batch_size)]
    if short:
        first, size = (min(start, len(order) - batch_size), batch_size) if whole_batches else (start, short)
        groups.append(order[first : first + size])
    groups += [order[i : i + batch_size] for i in range(start + short, len(order), batch_size)]
    rng.shuffle(groups)
    return groups


def length_bucketed_batches(
    samples: list[Sample], batch_size: int, pad_to_multiple: int, seed: int, epoch: int = 0,
    rank: int = 0, world_size: int = 1, min_width: int = 0,
) -> list[Batch]:
    """One epoch of padded batches. With several processes each global batch is dealt out:
    this rank keeps every world_size-th sample from position `rank` (a short last batch may
    leave a rank nothing)."""
    shares = [group[rank::world_size] for group in length_buckets(samples, batch_size, seed, epoch)]
    return [make_batch([samples[i] for i in share], pad_to_multiple, min_width=min_width) for share in shares if share]


def check_batch_size(train: list, batch_size: int) -> None:
    """The training split (rows or samples) must fill at least one batch."""
    if len(train) < batch_size:
        raise DataError(
            f"trainer.batch_size={batch_size} is larger than the training split ({len(train)} examples); "
            "lower trainer.batch_size"
        )


def iterate_training_batches(
    samples: list[Sample], batch_size: int, pad_to_multiple: int, seed: int, start_step: int = 0,
    rank: int = 0, world_size: int = 1, pack_length: int = 0, min_width: int = 0,
) -> Iterator[Batch]:
    """Endless stream of this rank's share of each global batch, epoch after epoch, from start_step.

    With pack_length > 0 (data.pack=true) a batch is batch_size rows of pack_length positions,
    each packed with several samples (riscv_ft.data.packing)."""
    if pack_length > 0:
        from riscv_ft.data.packing import iterate_packed_batches

        yield from iterate_packed_batches(samples, batch_size, pack_length, seed, start_step, rank, world_size)
        return
    check_batch_size(samples, batch_size)
    # Whole batches only: a short batch would weigh its few samples more (and would leave
    # some ranks without a share); length_buckets fills the short group up instead.
    per_epoch = -(-len(samples) // batch_size)
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        for group in length_buckets(samples, batch_size, seed, epoch, whole_batches=True)[skip:]:
            yield make_batch([samples[i] for i in group[rank::world_size]], pad_to_multiple, min_width=min_width)
        skip, epoch = 0, epoch + 1


# ---------------------------------------------------------------- the whole pipeline


@dataclass
class PreparedData:
    splits: dict[str, list[dict]]  # cleaned rows per split
    samples: dict[str, list[Sample]]  # tokenized samples per split
    report: DataReport


def prepare_rows(data_cfg: DictConfig, seed: int) -> tuple[dict[str, list[dict]], DataReport]:
    """Load, clean, de-duplicate and split: everything that needs no tokenizer, so bad data
    fails before a model is loaded."""
    report = DataReport()
    rows = load_rows(data_cfg, seed, report)
    rows = clean_rows(rows, report)
    rows = drop_duplicates(rows, report)
    splits = split_by_description(rows, data_cfg.valid_fraction, data_cfg.test_fraction, seed)
    from riscv_ft.data.mixing import mix_training_rows  # extra rows go to the training split only

    splits["train"], report.mixed = mix_training_rows(splits["train"], data_cfg, seed)
    report.split_sizes = {k: len(v) for k, v in splits.items()}
    return splits, report


def prepare(data_cfg: DictConfig, tokenizer, seed: int, rows: tuple | None = None) -> PreparedData:
    """The whole pipeline; pass `rows` from prepare_rows to skip loading again."""
    splits, report = rows or prepare_rows(data_cfg, seed)
    samples = {k: tokenize_split(v, tokenizer, data_cfg, k, report) for k, v in splits.items()}
    if not samples["train"]:
        raise DataError("no training samples left after cleaning and the length limit")
    log.info(
        "Data %s: %d rows loaded, %d skipped, %d empty after cleaning, %d duplicates dropped; "
        "split train/valid/test = %d/%d/%d rows",
        report.source, report.rows_loaded, sum(report.skipped.values()), report.dropped_empty_after_cleaning,
        report.dropped_duplicates, len(splits["train"]), len(splits["valid"]), len(splits["test"]),
    )
    return PreparedData(splits, samples, report)


def write_splits(splits: dict[str, list[dict]], folder: Path, prompt_format: str) -> None:
    """train.jsonl / valid.jsonl / test.jsonl in mlx-lm's format (`mlx_lm.lora --data` reads them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(to_record(row, prompt_format), ensure_ascii=False) + "\n")


def read_split(path: Path) -> list[dict]:
    """Rows {description, instructions} of a split that write_splits wrote (either format)."""
    prefix = COMPLETION_TEMPLATE.split("{description}")[0]
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "messages" in record:
            rows.append({"description": record["messages"][0]["content"], "instructions": record["messages"][1]["content"]})
        else:
            rows.append({"description": record["prompt"].removeprefix(prefix).rsplit("\nAssistant:", 1)[0],
                         "instructions": record["completion"]})
    return rows

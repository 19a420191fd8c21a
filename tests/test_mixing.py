"""Extra training rows: verified user-style requests, synthetic pairs and oversampled assembly
rows go into the training split only, and never copy the user-style evaluation set."""

from collections import Counter

from omegaconf import OmegaConf

from riscv_ft.data.mixing import _mask, user_style_rows
from riscv_ft.data.pipeline import prepare_rows
from riscv_ft.data.user_prompts import load_user_prompts
from riscv_ft.rv.reference import classify
from riscv_ft.evaluate.scorer import score_rows


def test_user_style_rows_run_and_do_not_copy_the_evaluation_set():
    rows = user_style_rows(300, seed=0)
    assert len(rows) == 300 and rows == user_style_rows(300, seed=0)
    held_out = {_mask(r["description"]) for r in load_user_prompts()}
    assert not {_mask(r["description"]) for r in rows} & held_out
    assert sum("\n" in r["instructions"] for r in rows) > 30  # some two-instruction requests
    scored = score_rows([{"reference": r["instructions"], "prediction": r["instructions"]} for r in rows])
    assert all(r["functional"] for r in scored)


def test_mixing_adds_to_the_training_split_only(snapshot_path):
    base = {"source": "file", "path": str(snapshot_path), "valid_fraction": 0.1, "test_fraction": 0.1,
            "synthetic_max_instructions": 3}
    plain, _ = prepare_rows(OmegaConf.create(base), seed=0)
    mixed, report = prepare_rows(OmegaConf.create({**base, "mix_user_style": 50, "mix_synthetic": 40,
                                                   "oversample_assembly": 3}), seed=0)
    assert mixed["valid"] == plain["valid"] and mixed["test"] == plain["test"]
    assembly = sum(classify(r["instructions"]) == "assembly" for r in plain["train"])
    assert report.mixed == {"oversampled_assembly": 2 * assembly, "synthetic": 40, "user_style": 50}
    assert len(mixed["train"]) == len(plain["train"]) + 2 * assembly + 90
    counts = Counter(r["description"] for r in mixed["train"])
    assert all(counts[r["description"]] >= 3 for r in plain["train"] if classify(r["instructions"]) == "assembly")

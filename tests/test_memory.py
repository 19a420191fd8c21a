"""riscv_ft.memory: the estimate moves the right way with each knob, matches peaks measured in the test,
and the warning names the changes that help."""

import json
import logging

import pytest
from omegaconf import OmegaConf

from riscv_ft.cli import compose
from riscv_ft.memory import estimate_memory_gb
from riscv_ft.memory_plan import warn_if_too_big


@pytest.fixture(autouse=True)
def empty_hub_cache(monkeypatch, tmp_path):
    """No cached config.json: the estimate falls back to the known Mistral-7B numbers."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def total(*overrides: str) -> float:
    return estimate_memory_gb(compose(["model=mistral7b_4bit", *overrides]))["total_gb"]


def test_estimate_grows_with_batch_size_rank_and_sequence_length():
    assert total("trainer.batch_size=1") < total("trainer.batch_size=2") < total("trainer.batch_size=8")
    assert total("lora.rank=4") < total("lora.rank=16") < total("lora.rank=64")
    assert total("data.max_seq_length=128") < total("data.max_seq_length=512")


# Peaks of Mistral-7B's shape, 4-bit, LoRA r16 on all seven kinds, the real data's widest batch
# (320 positions), measured on one H200 with MLX 0.32.4 (benchmarks/NOTES.md section 12):
# (batch, checkpointing, accumulation) -> GB.
H200_PEAKS = {(4, False, 1): 22.47, (4, True, 1): 19.75, (2, True, 2): 13.49, (1, True, 4): 9.15, (1, False, 4): 10.51}


@pytest.mark.parametrize("setting", list(H200_PEAKS))
def test_estimate_on_cuda_covers_the_measured_h200_peaks_and_checkpointing_counts_little_there(setting):
    batch, checkpointing, accumulation = setting
    cfg = compose(["model=mistral7b_4bit", f"trainer.batch_size={batch}", f"trainer.grad_checkpoint={str(checkpointing).lower()}",
                   f"trainer.grad_accumulation={accumulation}", "data.max_seq_length=320"])
    on_cuda = estimate_memory_gb(cfg, backend="cuda")
    arrays = on_cuda["total_gb"] - on_cuda["overhead_gb"]  # MLX's counter does not see the process overhead
    # Never under the measurement (a plan must not overrun), at most a fifth over.
    assert 1.0 <= arrays / H200_PEAKS[setting] <= 1.2
    if checkpointing:  # where MLX frees temporaries as it goes, checkpointing counts far more
        elsewhere = estimate_memory_gb(cfg, backend="metal")
        assert elsewhere["activations_gb"] < 0.5 * on_cuda["activations_gb"]


# The same shape and batch, checkpointed, with MLX held to a limit (riscv_ft.memory.mlx_memory_limit),
# on one H100 (NOTES 22): MLX's limit -> peak, GB. (4, 1) is batch 4; (2, 2) batch 2 x 2.
H100_PEAKS_UNDER_LIMIT = {((4, 1), 8.0): 8.29, ((4, 1), 8.5): 8.55, ((4, 1), 9.0): 9.07, ((2, 2), 9.0): 9.02}


@pytest.mark.parametrize("setting", list(H100_PEAKS_UNDER_LIMIT))
def test_estimate_on_cuda_under_a_limit_fills_up_to_it_as_measured(setting):
    """Held to a limit, MLX's evaluation waits for work in flight, so a checkpointed step uses
    what the limit leaves, not the 0.85 of its activations it keeps when it may."""
    from riscv_ft.memory import OVERHEAD_GB
    from riscv_ft.memory_plan import at_width

    (batch, accumulation), mlx_limit = setting
    cfg = at_width(compose(["model=mistral7b_4bit", "trainer.grad_checkpoint=true", f"trainer.batch_size={batch}",
                            f"trainer.grad_accumulation={accumulation}"]), 320)
    run_limit = mlx_limit + OVERHEAD_GB  # what trainer.memory_limit_gb would be
    held = estimate_memory_gb(cfg, backend="cuda", limit_gb=run_limit)
    free = estimate_memory_gb(cfg, backend="cuda")
    arrays = held["total_gb"] - held["overhead_gb"]
    assert 0.95 <= H100_PEAKS_UNDER_LIMIT[setting] / arrays <= 1.05
    assert free["total_gb"] > 1.5 * held["total_gb"]  # unheld, the same step keeps far more
    assert held["least_gb"] < held["total_gb"] and "least_gb" not in free  # what the plan's line says it needs
    # where even the least the step needs is over the limit, the estimate says so
    assert estimate_memory_gb(cfg, backend="cuda", limit_gb=2.0)["total_gb"] > 2.0


def test_estimate_shrinks_with_grad_checkpointing_and_4bit_weights():
    assert total("trainer.grad_checkpoint=true") < total("trainer.grad_checkpoint=false")
    bf16 = estimate_memory_gb(compose(["model=mistral7b"]))
    four_bit = estimate_memory_gb(compose(["model=mistral7b_4bit"]))
    assert four_bit["weights_gb"] < bf16["weights_gb"] / 3
    assert four_bit["total_gb"] < bf16["total_gb"]


def test_estimate_parts_add_up_and_use_the_known_mistral_shape():
    est = estimate_memory_gb(compose(["model=mistral7b"]))
    parts = ("weights_gb", "lora_gb", "update_gb", "activations_gb", "logits_gb", "overhead_gb")
    assert est["total_gb"] == pytest.approx(sum(est[p] for p in parts), abs=0.01)
    assert est["parameters"] == pytest.approx(7.25e9, rel=0.01)
    assert est["weights_gb"] == pytest.approx(14.5, rel=0.02)  # bf16
    assert "Mistral-7B" in est["model_config"]


@pytest.mark.parametrize("overrides", [
    ["trainer.batch_size=4", "data.max_seq_length=256"],
    ["trainer.batch_size=4", "data.max_seq_length=256", "trainer.grad_checkpoint=true"],
    ["trainer.batch_size=1", "data.max_seq_length=256", "trainer.grad_accumulation=4"],
    ["trainer.batch_size=4", "data.max_seq_length=256", "trainer.fuse_lora=true"],
    ["trainer.batch_size=1", "data.max_seq_length=128", "lora.fine_tune_type=full", "model.dtype=bfloat16"],
], ids=["lora", "lora-checkpointed", "lora-acc4", "lora-fused", "full-bf16"])
def test_estimate_is_within_10_percent_of_the_trainers_own_step(overrides):
    """Loading, the run's Trainer and two of its own optimizer steps on the tiny model, every
    position a loss position (the estimate's logits term assumes that): MLX's peak against the
    estimate without the process overhead. Measured here 0.22-0.64 GB, estimate 0.98-1.07x."""
    cfg = compose(["model=tiny", *overrides])
    measured = _measured_run_gb(cfg)
    est = estimate_memory_gb(cfg)
    assert est["total_gb"] - est["overhead_gb"] == pytest.approx(measured, rel=0.10), f"measured {measured:.3f} GB"


def test_a_cached_config_json_is_used(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    small = {"hidden_size": 512, "num_hidden_layers": 2, "intermediate_size": 1024, "num_attention_heads": 8,
             "num_key_value_heads": 8, "vocab_size": 1000, "tie_word_embeddings": True}
    (folder / "config.json").write_text(json.dumps(small))
    est = estimate_memory_gb(compose(["model=mistral7b", f"model.path={folder}"]))
    assert est["model_config"] == str(folder / "config.json")
    assert est["parameters"] == 2 * (4 * 512 * 512 + 3 * 512 * 1024) + 1000 * 512 + 5 * 512


def test_warning_names_the_changes_that_save_most(caplog):
    cfg = compose(["model=mistral7b"])
    with caplog.at_level(logging.WARNING, logger="riscv_ft.memory"):
        est = warn_if_too_big(cfg, limit_gb=8.0)
    assert est["too_big"]
    message = caplog.records[-1].getMessage()
    assert "trainer.grad_checkpoint=true" in message and "trainer.batch_size=2" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="riscv_ft.memory"):
        assert not warn_if_too_big(cfg, limit_gb=1000.0)["too_big"]
    assert not caplog.records


# ---------------------------------------------------------------- the trainer's own step


def _random_batch(rng, width: int, rows: int = 1):
    """Every position a loss position: the widest loss the estimate assumes."""
    import numpy as np

    from riscv_ft.data.batch import Batch

    tokens = rng.integers(0, 32768, (rows, width + 1)).astype(np.int32)
    return Batch(tokens[:, :-1], tokens[:, 1:], np.ones((rows, width), np.float32), rows * width)


def _tiny_trainer(*overrides: str):
    """The tiny model (float32 unless overridden) with its adapters and the run's own Trainer."""
    import mlx.core as mx

    from riscv_ft.model import apply_adapters, load_base
    from riscv_ft.trainer import Trainer

    cfg = compose(["model=tiny", "trainer.batch_size=1", *overrides])
    model = load_base(cfg.model).model
    mx.random.seed(0)
    apply_adapters(model, cfg.lora)
    trainer = Trainer.for_run(model, cfg)
    mx.eval(model.parameters(), trainer.optimizer.state)
    return cfg, model, trainer


def _peak_of_step(model, trainer, micro, step: int) -> float:
    """GB above what was allocated before: one optimizer step, update included."""
    import gc

    import mlx.core as mx

    gc.collect()
    mx.clear_cache()
    resting = mx.get_active_memory()
    mx.reset_peak_memory()
    totals = trainer._queue_step(micro, step)
    mx.eval(totals, model.trainable_parameters(), trainer.optimizer.state)
    return (mx.get_peak_memory() - resting) / 1e9


def test_accumulated_update_is_the_update_of_all_micro_batches_summed_at_once():
    """Micro-batch by micro-batch (each evaluated before the next) against the sum built in
    one graph (the step before this change): the same weights and moments after two steps."""
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten, tree_map

    rng = np.random.default_rng(0)
    steps = [[_random_batch(rng, 32) for _ in range(4)] for _ in range(2)]
    _, model, trainer = _tiny_trainer("trainer.grad_accumulation=4")
    _, ref_model, ref = _tiny_trainer("trainer.grad_accumulation=4")
    for step, micro in enumerate(steps, 1):
        mx.eval(trainer._queue_step(micro, step))
        counts = mx.array([sum(b.real_tokens for b in micro), sum(b.padded_tokens for b in micro), len(micro)], dtype=mx.float32)
        parts = [ref._grad_step(ref._arrays(b)) for b in micro]
        grads = parts[0][2]
        for _, _, g in parts[1:]:
            grads = tree_map(mx.add, grads, g)
        local = mx.concatenate([mx.stack([sum(p[0] for p in parts), sum(p[1] for p in parts)]), counts])
        mx.eval(ref._apply_step(grads, local, mx.array(step, dtype=mx.int32)))
    ours = dict(tree_flatten([model.trainable_parameters(), trainer.optimizer.state]))
    theirs = dict(tree_flatten([ref_model.trainable_parameters(), ref.optimizer.state]))
    assert ours.keys() == theirs.keys()
    moved = [k for k in ours if k.endswith("lora_b")]
    assert moved and all(float(mx.abs(ours[k]).max()) > 0 for k in moved)  # the update did something
    worst = max(float(mx.abs(ours[k] - theirs[k]).max()) for k in ours)
    assert worst < 1e-6, f"largest difference {worst:.3g}"


def test_grad_accumulation_holds_one_micro_batch_of_activations():
    """Peak above resting of one optimizer step at grad_accumulation=8 against 1, same
    micro-batch (1 x 256 tokens). Measured here: 1.00x; all micro-batches in one graph: 3.4x."""
    import numpy as np

    rng = np.random.default_rng(0)
    micro = [_random_batch(rng, 256) for _ in range(8)]
    peaks = {}
    for acc in (1, 8):
        _, model, trainer = _tiny_trainer(f"trainer.grad_accumulation={acc}")
        _peak_of_step(model, trainer, micro[:acc], 1)  # compiles
        peaks[acc] = _peak_of_step(model, trainer, micro[:acc], 2)
    assert peaks[8] <= 1.2 * peaks[1], f"acc=8 {peaks[8]:.3f} GB, acc=1 {peaks[1]:.3f} GB"


@pytest.mark.parametrize("fine_tune_type", ["lora", "full"])
def test_chunked_loss_equals_the_whole_loss_and_its_gradients(fine_tune_type):
    """trainer.loss_chunk: the same summed loss and the same gradient for every trainable
    weight (full fine-tuning includes the output layer's, which flows through the chunks)."""
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from mlx.utils import tree_flatten

    from riscv_ft.model import apply_adapters, load_base
    from riscv_ft.trainer import masked_loss

    cfg = compose(["model=tiny", f"lora.fine_tune_type={fine_tune_type}"])
    model = load_base(cfg.model).model
    mx.random.seed(0)
    apply_adapters(model, cfg.lora)
    model.load_weights([(k, 0.02 * mx.random.normal(v.shape)) for k, v in tree_flatten(model.trainable_parameters())
                        if k.endswith("lora_b")], strict=False)
    batch = _random_batch(np.random.default_rng(0), 40, rows=2)
    mask = batch.mask.copy()
    mask[:, :7] = 0  # a masked prompt
    args = (mx.array(batch.inputs), mx.array(batch.targets), mx.array(mask))
    results = []
    for chunk in (0, 24):  # 80 positions: chunks of 24, 24, 24, 8
        (loss, count), grads = nn.value_and_grad(model, masked_loss)(model, *args, loss_chunk=chunk)
        results.append((loss.item(), count.item(), dict(tree_flatten(grads))))
    (whole, n, g_whole), (chunked, m, g_chunked) = results
    assert n == m == 66
    assert chunked == pytest.approx(whole, rel=1e-5)
    assert g_whole.keys() == g_chunked.keys()
    if fine_tune_type == "full":
        assert "lm_head.weight" in g_whole
    worst = max(float(mx.abs(g_whole[k] - g_chunked[k]).max() / (mx.abs(g_whole[k]).max() + 1e-12)) for k in g_whole)
    assert worst < 1e-4, f"largest relative gradient difference {worst:.3g}"


def _measured_run_gb(cfg, steps: int = 2) -> float:
    """Peak of loading the model, its adapters and the run's Trainer, and `steps` optimizer
    steps of the widest batch (data.max_seq_length, every position a loss position), above
    what this process held before: what the estimate counts without its process overhead."""
    import gc

    import mlx.core as mx
    import numpy as np

    from riscv_ft.model import apply_adapters, load_base
    from riscv_ft.trainer import Trainer

    gc.collect()
    mx.clear_cache()
    elsewhere = mx.get_active_memory()  # arrays other tests of this process still hold
    mx.reset_peak_memory()
    model = load_base(cfg.model).model
    mx.random.seed(0)
    apply_adapters(model, cfg.lora)
    trainer = Trainer.for_run(model, cfg)
    rng = np.random.default_rng(0)
    for step in range(1, steps + 1):
        micro = [_random_batch(rng, cfg.data.max_seq_length, cfg.trainer.batch_size) for _ in range(cfg.trainer.grad_accumulation)]
        mx.eval(trainer._queue_step(micro, step), model.trainable_parameters(), trainer.optimizer.state)
    peak = (mx.get_peak_memory() - elsewhere) / 1e9
    del model, trainer
    return peak


# ---------------------------------------------------------------- the memory policy


def test_policy_picks_checkpointing_then_micro_batches_as_the_limit_shrinks():
    """Limits between the tiny model's estimates (validated against its measured peaks above):
    as configured, then checkpointing of fewer then all blocks, then micro-batches with the
    same effective batch; a key set by the user is never changed."""
    from riscv_ft.memory_plan import MemoryPlanError, memory_candidates, plan_memory

    cfg = compose(["model=tiny", "trainer.batch_size=4", "data.max_seq_length=512"])
    need = lambda changes: estimate_memory_gb(plan_memory(cfg, limit_gb=1e9) if not changes else _with(cfg, changes))["total_gb"]  # noqa: E731
    ladder = memory_candidates(cfg, set())
    assert [c.get("trainer.grad_checkpoint_every") for c in ladder[1:3]] == [2, 1]  # 4 blocks: every 2nd, all
    assert ladder[-1]["trainer.batch_size"] == 1 and ladder[-1]["trainer.grad_accumulation"] == 4
    picked = {}
    for label, limit in (("configured", need({}) + 0.01), ("every 2nd", need(ladder[1]) + 0.001),
                         ("all blocks", need(ladder[2]) + 0.001), ("micro-batches", need(ladder[-1]) + 0.001)):
        planned = plan_memory(cfg, limit_gb=limit)
        picked[label] = (planned.trainer.grad_checkpoint, planned.trainer.grad_checkpoint_every, planned.trainer.batch_size,
                         planned.trainer.grad_accumulation)
        assert planned.trainer.batch_size * planned.trainer.grad_accumulation == 4  # the effective batch
        assert planned.trainer.memory_plan and f"{limit:.2f}" in planned.trainer.memory_plan
    assert picked == {"configured": (False, 1, 4, 1), "every 2nd": (True, 2, 4, 1), "all blocks": (True, 1, 4, 1),
                      "micro-batches": (True, 1, 1, 4)}
    # the user's batch size wins: no micro-batches, so that limit cannot be met
    with pytest.raises(MemoryPlanError, match="trainer.batch_size=1 .* lora.rank=.* data.max_seq_length=256"):
        plan_memory(cfg, {"trainer.batch_size"}, limit_gb=need(ladder[-1]) + 0.001)


def test_a_run_plans_again_at_the_width_its_tokenized_data_reaches(tmp_path):
    """Before loading, the plan sizes a batch at data.max_seq_length (512 here); the smoke data's
    widest batch is far narrower once tokenized, and at 1.2 GB that allows the configured batch
    of 4 instead of micro-batches (estimates 1.10 GB at 512 wide, 0.68 at the data's width)."""
    from riscv_ft.experiment import run_experiment
    from riscv_ft.memory_plan import plan_memory

    cfg = compose(["experiment=smoke", "trainer.iters=2", "trainer.eval_every=0", "trainer.save_every=0",
                   "eval.enabled=false", "eval.print_samples=0", "tracking.enabled=false", "trainer.memory_limit_gb=1.2"])
    assert plan_memory(cfg, limit_gb=1.2).trainer.batch_size < 4  # what the plan before loading picks
    run_experiment(cfg, tmp_path / "run")
    saved = OmegaConf.load(tmp_path / "run" / "config.yaml").trainer
    assert (saved.batch_size, saved.grad_accumulation, saved.grad_checkpoint) == (4, 1, False)
    assert "as configured" in saved.memory_plan and "wide" in saved.memory_plan


def _with(cfg, changes):
    from riscv_ft.memory_plan import _apply

    return _apply(cfg, changes)


def test_an_impossible_limit_stops_before_loading_with_one_line(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "riscv_ft.train", "experiment=smoke", "trainer.memory_limit_gb=0.001",
                             "tracking.enabled=false", f"experiments_dir={tmp_path}"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "trainer.batch_size=" in lines[0] and "lora.rank=" in lines[0] and "data.max_seq_length=" in lines[0]
    assert "GB" in lines[0]
    assert not list(tmp_path.rglob("*.safetensors"))  # nothing loaded, nothing written


def test_out_of_memory_in_a_step_saves_a_resumable_checkpoint_and_ends_with_advice(tmp_path):
    """MLX's own out-of-memory message raised when step 5 is queued (the test hook): the run
    saves step 4, ends with one line of advice and exit 1, and `resume=` finishes it."""
    import json
    import os
    import subprocess
    import sys

    from riscv_ft.trainer import FAIL_AT_STEP_ENV

    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "riscv_ft.train", "experiment=smoke", "trainer.iters=8", "trainer.eval_every=0",
            "trainer.save_every=0", "eval.enabled=false", "tracking.enabled=false", f"hydra.run.dir={run_dir}"]
    failed = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, FAIL_AT_STEP_ENV: "5"})
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith("error: out of memory at step 5") and "step 4 was saved" in line
    assert "trainer.batch_size=1" in line and "lora.rank=" in line and "data.max_seq_length=" in line
    assert [p.name for p in (run_dir / "checkpoints").glob("step-*")] == ["step-000004"]
    resumed = subprocess.run([sys.executable, "-m", "riscv_ft.train", f"resume={run_dir}"], capture_output=True, text=True,
                             timeout=300, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 8
    assert "Resuming" in (run_dir / "train.log").read_text()


@pytest.mark.parametrize("who", ["tuned", "base"])
def test_out_of_memory_while_answering_says_so_and_resume_answers_without_training_again(tmp_path, who):
    """MLX's out-of-memory message raised when a model starts answering the evaluation prompts
    (the test hook). Seen on the H200 with two runs evaluating side by side: the run ended with
    the training step's advice (trainer.batch_size, lora.rank), which cannot help there. Now one
    line names the evaluation, what to lower for it, and for the tuned model that `resume=`
    answers again from the last checkpoint, which it does without training a step."""
    import json
    import os
    import subprocess
    import sys

    from riscv_ft.trainer import FAIL_IN_EVAL_ENV

    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "riscv_ft.train", "experiment=smoke", "trainer.iters=4", "trainer.eval_every=0",
            "eval.num_rows=2", "eval.user_prompts=2", "eval.baseline=true", "eval.cache_base_answers=false", "eval.decode=verify", "eval.samples=2", "eval.max_tokens=8",
            "tracking.enabled=false", f"hydra.run.dir={run_dir}"]
    failed = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, FAIL_IN_EVAL_ENV: who})
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr[-2000:]
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: out of memory while the {who} model answered the evaluation prompts"), line
    assert "trainer.batch_size" not in line and "lora.rank" not in line and "eval.max_tokens=4" in line
    assert not (run_dir / "metrics.json").exists()
    if who == "base":
        assert "eval.baseline=false" in line and not (run_dir / "checkpoints").exists()
        return
    assert [p.name for p in (run_dir / "checkpoints").glob("step-*")] == ["step-000004"]
    # The line's own command: resume= with the lowered evaluation settings beside it.
    advised = line.split("to answer with less: ", 1)[1].split()
    assert advised == [f"resume={run_dir}", "eval.samples=1", "eval.max_tokens=4"], line
    saved_config = (run_dir / "config.yaml").read_text()
    refused = subprocess.run([sys.executable, "-m", "riscv_ft.train", *advised, "trainer.iters=8"], capture_output=True,
                             text=True, timeout=300, cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert refused.stderr.strip().splitlines() == [
        f"error: resume={run_dir}: 'trainer.iters=8' cannot change on resume (a resumed run keeps its saved config); "
        "only evaluation settings can: eval.enabled=..., eval.split=..., eval.num_rows=..., eval.baseline=..., "
        "eval.cache_base_answers=..., eval.user_prompts=..., eval.max_tokens=..., eval.print_samples=..., "
        "eval.decode=..., eval.samples=..."]
    assert (run_dir / "config.yaml").read_text() == saved_config
    resumed = subprocess.run([sys.executable, "-m", "riscv_ft.train", *advised], capture_output=True, text=True,
                             timeout=300, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    import yaml

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (saved["eval"]["samples"], saved["eval"]["max_tokens"], saved["trainer"]["iters"]) == (1, 4, 4)
    summary = json.loads((run_dir / "eval_summary.json").read_text())
    assert summary["verified"]["samples"] == 1, summary["verified"]
    # A second resume that skips the user-style prompts: the first evaluation's files go aside, so
    # the folder holds only what this evaluation answered.
    again = subprocess.run([sys.executable, "-m", "riscv_ft.train", f"resume={run_dir}", "eval.user_prompts=0"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert not (run_dir / "eval_user.jsonl").exists() and (run_dir / "previous_eval" / "eval_user.jsonl").is_file()
    assert (run_dir / "eval.jsonl").is_file() and "user_prompts" not in json.loads((run_dir / "eval_summary.json").read_text())
    def refuse(constant):  # strict JSON: no NaN from a process that trained no step
        raise AssertionError(f"metrics.json holds {constant}")

    metrics = json.loads((run_dir / "metrics.json").read_text(), parse_constant=refuse)
    assert metrics["steps"] == 4 and "eval_verified_functional_rate" in metrics
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert metrics["peak_memory_gb"] == max(h["peak_memory_gb"] for h in history if "peak_memory_gb" in h)
    assert metrics["train_loss"] == [h["train_loss"] for h in history if "train_loss" in h][-1]
    assert metrics["val_loss"] == [h["val_loss"] for h in history if "val_loss" in h][-1]
    assert metrics["tokens_per_s"] is None  # this process measured no training speed
    log = (run_dir / "train.log").read_text()
    assert "Resuming" in log and "step 1/4" not in log.split("Resuming", 1)[1]


def test_every_evaluation_setting_but_the_assembler_can_change_on_resume():
    """A new eval.* field must be classified on purpose: it either acts only on the evaluation
    after training (resumable) or, like eval.assembler (GRPO's rewards), on training too."""
    import dataclasses

    from riscv_ft.config import EvalConfig
    from riscv_ft.train import RESUMABLE_KEYS

    assert set(RESUMABLE_KEYS) == {f"eval.{f.name}" for f in dataclasses.fields(EvalConfig)} - {"eval.assembler"}


def test_full_fine_tuning_keeps_no_second_copy_of_the_weights_across_steps():
    """fit()'s peak for full fine-tuning (float32 tiny model) against the estimate: the copy of
    the last complete step kept for out-of-memory recovery is for LoRA only. Measured here
    0.55 GB against an estimate of 0.55 GB; with the copy kept, 0.84 GB."""
    import gc

    import mlx.core as mx

    from riscv_ft.data.pipeline import prepare
    from riscv_ft.model import apply_adapters, load_base
    from riscv_ft.trainer import Trainer

    cfg = compose(["experiment=smoke", "lora.fine_tune_type=full", "model.dtype=float32", "trainer.iters=4",
                   "trainer.eval_every=0", "trainer.save_every=0", "trainer.val_batches=1", "trainer.batch_size=1",
                   "data.max_seq_length=64"])
    gc.collect()
    mx.clear_cache()
    elsewhere = mx.get_active_memory() / 1e9  # arrays other tests of this process still hold
    loaded = load_base(cfg.model)
    data = prepare(cfg.data, loaded.tokenizer, 0)
    apply_adapters(loaded.model, cfg.lora)
    trainer = Trainer.for_run(loaded.model, cfg)
    result = trainer.fit(data.samples["train"], data.samples["valid"], lambda s, m: None, lambda s: None)
    peak = result["peak_memory_gb"] - elsewhere
    est = estimate_memory_gb(cfg)
    assert peak <= 1.2 * (est["total_gb"] - est["overhead_gb"]), f"peak {peak:.3f} GB"


def test_a_run_holds_mlx_to_its_memory_limit_and_gives_the_old_one_back(tmp_path):
    """MLX's evaluation waits for work in flight above the run's limit (trainer.memory_limit_gb)
    while the run trains; MLX's own limit is never raised, and it comes back afterwards."""
    import mlx.core as mx

    from riscv_ft.experiment import run_experiment
    from riscv_ft.memory import mlx_memory_limit

    default = mx.get_memory_limit()
    with mlx_memory_limit(1.5) as inside:  # MLX counts arrays: the process's 0.5 GB come off
        assert inside == mx.get_memory_limit() == int(1.0e9)
    assert mx.get_memory_limit() == default
    with mlx_memory_limit(default / 1e9 * 4) as inside:  # above MLX's default: left as it is
        assert inside == mx.get_memory_limit() == default
    with mlx_memory_limit(None):
        assert mx.get_memory_limit() == default

    cfg = compose(["experiment=smoke", "trainer.iters=2", "trainer.eval_every=0", "trainer.save_every=0",
                   "eval.enabled=false", "eval.print_samples=0", "tracking.enabled=false", "trainer.memory_limit_gb=7.5"])
    metrics = run_experiment(cfg, tmp_path / "run")
    assert metrics["mlx_memory_limit_gb"] == round(min(7.0, default / 1e9), 2)  # read inside the run
    assert mx.get_memory_limit() == default


def test_under_the_runs_limit_a_training_step_peaks_lower():
    """What the limit is for: MLX's evaluation waits for work in flight above it, which lets go
    of the buffers that work holds. The tiny model, LoRA, one forward and backward of 4 x 512
    tokens on the CPU: about 1.39 GB above the weights without, about 1.08 GB with a limit
    0.25 GB above them (NOTES 21; a 7B-shaped step: 30-36% lower)."""
    import mlx.core as mx
    import mlx.nn as nn

    from riscv_ft.memory import OVERHEAD_GB, mlx_memory_limit
    from riscv_ft.model import apply_adapters, load_base

    cfg = compose(["model=tiny"])
    model = load_base(cfg.model).model
    apply_adapters(model, cfg.lora)
    step = nn.value_and_grad(model, lambda m, x, y: nn.losses.cross_entropy(m(x).astype(mx.float32), y).mean())
    x, y = (mx.random.randint(0, 1000, (4, 512), key=mx.random.key(i)) for i in (1, 2))
    mx.eval(model.parameters(), step(model, x, y))

    def peak_above_start(limit_above: float | None) -> float:
        mx.clear_cache()
        mx.reset_peak_memory()
        start = mx.get_active_memory()
        with mlx_memory_limit(None if limit_above is None else start / 1e9 + OVERHEAD_GB + limit_above):
            mx.eval(step(model, x, y))
        return (mx.get_peak_memory() - start) / 1e9

    free = max(peak_above_start(None) for _ in range(2))
    held = min(peak_above_start(0.25) for _ in range(2))
    assert held < 0.9 * free, (held, free)

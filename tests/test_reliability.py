"""Nothing a user did is lost: kill-and-resume gives the same weights, Ctrl-C/SIGTERM save a
checkpoint, and every bad input ends in one line, exit 2, no traceback."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from riscv_ft.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from tests.conftest import REPO, run_train

# Dropout on, so the test also covers the random stream after a resume.
RUN = ["experiment=smoke", "trainer.iters=16", "trainer.save_every=4", "trainer.eval_every=8",
       "trainer.report_every=2", "lora.dropout=0.1", "eval.num_rows=2", "eval.max_tokens=4", "eval.print_samples=1"]


def _start(run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "riscv_ft.train", *RUN, f"hydra.run.dir={run_dir}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for_checkpoint(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = latest_checkpoint(run_dir / "checkpoints")
        if done is not None and done.step >= step:
            return
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint at step {step} within {timeout} s")


def _mlflow_run(run_id: str):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{Path(os.environ['RISCV_FT_MLRUNS']) / 'mlflow.db'}")
    return mlflow.tracking.MlflowClient().get_run(run_id)


def test_sigkill_then_resume_ends_with_the_same_weights(tmp_path):
    left_alone = tmp_path / "left_alone"
    result = run_train(*RUN, f"hydra.run.dir={left_alone}")
    assert result.returncode == 0, result.stderr[-2000:]

    killed = tmp_path / "killed"
    proc = _start(killed)
    _wait_for_checkpoint(killed, 8, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert latest_checkpoint(killed / "checkpoints").step < 16

    resumed = run_train(f"resume={killed}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a = mx.load(str(left_alone / "adapters" / "adapters.safetensors"))
    b = mx.load(str(killed / "adapters" / "adapters.safetensors"))
    assert a.keys() == b.keys()
    largest = max(float(mx.abs(a[k] - b[k]).max()) for k in a)
    print(f"largest weight difference after SIGKILL + resume: {largest:.3g}")
    assert largest == 0.0  # every step seeded from (seed, step): bit-identical
    assert any(float(mx.abs(v).max()) > 0 for k, v in a.items() if k.endswith("lora_b"))

    # The resumed run continued the same MLflow run, whose loss history reaches the end.
    run_id = json.loads((killed / "metrics.json").read_text())["mlflow_run_id"]
    run = _mlflow_run(run_id)
    assert run.info.status == "FINISHED"
    from mlflow.tracking import MlflowClient

    steps = [m.step for m in MlflowClient().get_metric_history(run_id, "train_loss")]
    assert max(steps) == 16 and 2 in steps


def test_early_stopping_restores_the_best_adapter_after_sigkill_and_resume(tmp_path):
    """lr 1.0 (uncorrected AdamW) makes the validation loss best at step 8 and worse after; the
    run is killed after its step-12 checkpoint and resumed, stops early at 14 and must end with
    step 8's weights, which only the best-000008 checkpoint still holds (not a save step's)."""
    run_dir = tmp_path / "run"
    overrides = ["experiment=smoke", "trainer.iters=16", "trainer.save_every=12", "trainer.eval_every=2",
                 "trainer.learning_rate=1.0", "trainer.bias_correction=false", "trainer.early_stopping_patience=3", "trainer.keep_checkpoints=1",
                 "eval.enabled=false", "eval.print_samples=0", "tracking.enabled=false", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen([sys.executable, "-m", "riscv_ft.train", *overrides], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(run_dir, 12, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert latest_checkpoint(run_dir / "checkpoints").step == 12
    best = run_dir / "checkpoints" / "best-000008"
    assert (best / "adapter_config.json").is_file()  # kept, though no step checkpoint was saved at 8
    at_12 = mx.load(str(run_dir / "checkpoints" / "step-000012" / "adapters.safetensors"))

    resumed = run_train(f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    log = (run_dir / "train.log").read_text()
    assert "early stopping at step 14" in log and "restoring the best adapter (step 8," in log
    final = mx.load(str(run_dir / "adapters" / "adapters.safetensors"))
    kept = mx.load(str(best / "adapters.safetensors"))
    assert final.keys() == kept.keys()
    assert max(float(mx.abs(final[k] - kept[k]).max()) for k in final) == 0.0
    assert max(float(mx.abs(final[k] - at_12[k]).max()) for k in final) > 0  # the best is not where it resumed


def test_sigterm_saves_a_checkpoint_marks_killed_and_exits_130(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(run_dir)
    _wait_for_checkpoint(run_dir, 4, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    assert checkpoint is not None and 4 <= checkpoint.step < 16
    log = (run_dir / "train.log").read_text()
    assert f"resume={run_dir}" in log
    assert _mlflow_run(checkpoint.state["mlflow_run_id"]).info.status == "KILLED"


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    weights = {"w": mx.ones((2, 2))}
    state = {"step": mx.array(1), "m": mx.zeros((2,))}
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, weights, state, {"best_step": 2, "history": []}, keep=2)
    names = sorted(p.name for p in list_checkpoints(tmp_path))
    assert names == ["step-000002", "step-000003", "step-000004"]  # newest two + the best
    # A folder without state.json (a crash mid-write) is never taken as a checkpoint.
    (tmp_path / "step-000009").mkdir()
    assert latest_checkpoint(tmp_path).step == 4


def test_nan_loss_stops_with_a_clear_message_and_keeps_weights():
    from riscv_ft.cli import compose
    from riscv_ft.data.pipeline import prepare
    from riscv_ft.model import apply_adapters, load_base, trainable_parameters
    from riscv_ft.trainer import Trainer, TrainingDiverged

    cfg = compose(["experiment=smoke", "trainer.iters=3"])
    loaded = load_base(cfg.model)
    data = prepare(cfg.data, loaded.tokenizer, seed=0)
    apply_adapters(loaded.model, cfg.lora)
    layer = loaded.model.layers[0].self_attn.q_proj
    layer.lora_b = mx.full(layer.lora_b.shape, np.nan)
    before = np.array(layer.lora_a)
    saves = []
    with pytest.raises(TrainingDiverged, match="learning rate"):
        Trainer(loaded.model, cfg.trainer, 8).fit(data.samples["train"], data.samples["valid"], lambda *a: None, saves.append)
    assert saves == []
    after = trainable_parameters(loaded.model)["model.layers.0.self_attn.q_proj.lora_a"]  # mlx-lm's layout
    assert np.array_equal(np.array(after), before)


def _data_file(tmp_path: Path, name: str, content: bytes | None) -> str:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    return str(path)


THREE_ROWS = b"".join(json.dumps({"description": f"Adds {i} to a0.", "instructions": f"addi a0, a0, {i}"}).encode() + b"\n" for i in range(12))

BAD_INPUTS = [
    # (overrides, files {name: content}, expected words in the one line)
    (["lora.alpha=abc"], {}, "lora.alpha='abc' is not allowed"),
    (["lora.rank=-4"], {}, "lora.rank=-4 is not allowed"),
    (["trainer.batch_size=0"], {}, "trainer.batch_size=0"),
    (["trainer.learning_rate=-1"], {}, "trainer.learning_rate=-1.0"),
    (["lora.dropout=1.5"], {}, "lora.dropout=1.5"),
    (["model=no_such_model"], {}, "model=no_such_model is not an option"),
    (["lora.rnak=4"], {}, "unknown key lora.rnak"),
    (["data.path={tmp}/missing.jsonl"], {}, "no such file"),
    (["data.path={tmp}/empty.jsonl"], {"empty.jsonl": b""}, "the file is empty"),
    (["data.path={tmp}/latin1.jsonl"], {"latin1.jsonl": '{"description": "caf\xe9"}\n'.encode("latin-1")}, "not UTF-8"),
    (["data.path={tmp}/allbad.jsonl"], {"allbad.jsonl": b'{"a": 1}\nnot json\n'}, "no usable rows"),
    (["data.path={tmp}/few.jsonl", "trainer.batch_size=64"], {"few.jsonl": THREE_ROWS}, "larger than the training split"),
    (["model.source=hub", "model.path={tmp}/no_model"], {}, "no such folder"),
    (["model.source=hub", "model.path={tmp}/not_a_model"], {"not_a_model": None}, "model=tiny"),
    (["resume={tmp}"], {}, "not a run folder"),
    (["data.path={tmp}/a_folder"], {"a_folder": None}, "a_folder' is a folder; expected a .jsonl"),
    (["eval.num_rows=-5"], {}, "eval.num_rows=-5 is not allowed: expected -1 (all) or an integer >= 1"),
    (["model.path={tmp}/x.safetensors"], {}, "would be ignored with experiment=smoke: model.source=tiny builds the tiny model"),
    (["lora.fine_tune_type=full", "model.quantize.enabled=true"], {}, "cannot train a quantized base (model.quantize.enabled=true)"),
]


@pytest.mark.parametrize("overrides, files, expected", BAD_INPUTS, ids=[" ".join(b[0]).replace("{tmp}/", "") for b in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_no_traceback(tmp_path, overrides, files, expected):
    for name, content in files.items():
        if content is None:
            (tmp_path / name).mkdir()
        else:
            _data_file(tmp_path, name, content)
    args = [o.replace("{tmp}", str(tmp_path)) for o in overrides]
    if not args[0].startswith("resume="):
        args = ["experiment=smoke", *args, f"hydra.run.dir={tmp_path}/run"]
    result = run_train(*args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert not (tmp_path / "run" / "adapters").exists()


def test_full_fine_tune_of_a_pre_quantized_base_is_one_line(tmp_path):
    from mlx_lm.utils import quantize_model, save_config, save_model

    from riscv_ft.cli import compose
    from riscv_ft.model import load_base
    from riscv_ft.sources.tiny import tiny_model_dir

    tiny = compose(["model=tiny"]).model
    source, folder = tiny_model_dir(tiny.tiny), tmp_path / "tiny-4bit"
    folder.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json"):
        (folder / name).write_bytes((source / name).read_bytes())
    model, config = quantize_model(load_base(tiny).model, json.loads((source / "config.json").read_text()), 64, 4)
    save_model(folder, model)
    save_config(config, folder / "config.json")
    result = run_train("experiment=smoke", "model.source=hub", f"model.path={folder}", "lora.fine_tune_type=full",
                       "tracking.enabled=false", f"hydra.run.dir={tmp_path}/run")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1 and "cannot train a quantized base" in lines[0] and "lora.fine_tune_type=lora" in lines[0], lines


def test_resume_of_a_run_without_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.yaml").write_text("model: {}\n")
    result = run_train(f"resume={tmp_path}")
    assert result.returncode == 2 and "no complete checkpoint" in result.stderr and "Traceback" not in result.stderr


def test_a_failed_run_is_failed_in_mlflow_with_the_reason(tmp_path):
    import mlflow

    few = _data_file(tmp_path, "few.jsonl", THREE_ROWS)
    result = run_train("experiment=smoke", f"data.path={few}", "trainer.batch_size=64", f"hydra.run.dir={tmp_path}/run",
                       "tracking.experiment_name=failures")
    assert result.returncode == 2
    mlflow.set_tracking_uri(f"sqlite:///{Path(os.environ['RISCV_FT_MLRUNS']) / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["failures"])
    # The batch-size check runs before the MLflow run starts, so nothing half-made is left
    # as if it were good: either no run, or a FAILED one with the reason.
    for _, run in runs.iterrows():
        assert run.status == "FAILED" and "larger than the training split" in run["tags.failure_reason"]

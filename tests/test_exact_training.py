"""The optimizer does what the config says, a run stopped at any step resumes exactly, and a
non-finite gradient stops training with the weights of the step before it."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import pytest

from riscv_ft.checkpoint import latest_checkpoint
from riscv_ft.cli import compose
from riscv_ft.data.batch import batch_multiple
from riscv_ft.data.pipeline import prepare
from riscv_ft.model import apply_adapters, load_base, trainable_parameters
from riscv_ft.trainer import Trainer, TrainingDiverged, learning_rate_schedule, masked_loss
from tests.conftest import REPO, run_train

# Dropout on and no save step before the end: only the per-step seed can make the resume exact.
RUN = ["experiment=smoke", "trainer.iters=12", "trainer.save_every=0", "trainer.eval_every=0",
       "trainer.report_every=1", "lora.dropout=0.1", "eval.num_rows=1", "eval.max_tokens=2", "eval.print_samples=0",
       "tracking.enabled=false"]


def _largest_difference(a_dir: Path, b_dir: Path) -> float:
    a = mx.load(str(a_dir / "adapters" / "adapters.safetensors"))
    b = mx.load(str(b_dir / "adapters" / "adapters.safetensors"))
    assert a.keys() == b.keys()
    return max(float(mx.abs(a[k] - b[k]).max()) for k in a)


@pytest.mark.parametrize("fuse", ["false", "true"], ids=["unfused", "fuse_lora"])
def test_ctrl_c_at_a_step_that_is_not_a_save_step_then_resume_is_exact(tmp_path, fuse):
    # fuse_lora: the checkpoint holds mlx-lm's layout, the optimizer state the fused layers'.
    run = [*RUN, f"trainer.fuse_lora={fuse}"]
    left_alone = tmp_path / "left_alone"
    result = run_train(*run, f"hydra.run.dir={left_alone}")
    assert result.returncode == 0, result.stderr[-2000:]

    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "riscv_ft.train", *run, f"hydra.run.dir={stopped}"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while "step 3/12" not in ((stopped / "train.log").read_text() if (stopped / "train.log").exists() else ""):
        assert proc.poll() is None and time.time() < deadline, "the run ended before step 3"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, proc.stderr.read()[-2000:]
    step = latest_checkpoint(stopped / "checkpoints").step
    assert 3 <= step < 12

    resumed = run_train(f"resume={stopped}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    largest = _largest_difference(left_alone, stopped)
    print(f"stopped at step {step}, resumed: largest adapter difference {largest}")
    assert largest == 0.0


@pytest.fixture(scope="module")
def tiny_setup():
    cfg = compose(["experiment=smoke", "trainer.iters=3", "trainer.eval_every=0", "trainer.save_every=0",
                   "trainer.report_every=1", "trainer.compile=false", "trainer.val_batches=1"])
    loaded = load_base(cfg.model)
    data = prepare(cfg.data, loaded.tokenizer, cfg.trainer.seed)
    return cfg, data


def _fresh_model(cfg):
    model = load_base(cfg.model).model
    mx.random.seed(0)
    apply_adapters(model, cfg.lora)
    return model


@mx.custom_function
def _zero_with_infinite_gradient(x):
    return (x * 0).sum()


@_zero_with_infinite_gradient.vjp
def _infinite(primals, cotangent, output):
    return mx.full(primals[0].shape, mx.inf, dtype=primals[0].dtype)


def test_a_finite_loss_with_an_infinite_gradient_keeps_the_weights_of_the_step_before(tiny_setup):
    cfg, data = tiny_setup
    train, valid = data.samples["train"], data.samples["valid"]

    reference = _fresh_model(cfg)
    trainer = Trainer(reference, cfg.trainer.copy(), batch_multiple(cfg.data))
    trainer.cfg.iters = 2  # stop after two steps of the same 3-step schedule
    trainer.fit(train, valid, lambda s, m: None, lambda s: None)
    after_two = trainable_parameters(reference)

    calls = []

    def spiking_loss(model, **batch):
        loss, ntok = masked_loss(model, **batch)
        calls.append(1)
        if len(calls) == 3:  # the third step: loss unchanged, one gradient infinite
            loss = loss + _zero_with_infinite_gradient(model.layers[0].self_attn.o_proj.lora_b)
        return loss, ntok

    model = _fresh_model(cfg)
    saved = []
    with pytest.raises(TrainingDiverged, match="step 3"):
        Trainer(model, cfg.trainer, batch_multiple(cfg.data), loss_fn=spiking_loss).fit(
            train, valid, lambda s, m: None, saved.append)
    assert saved == []  # nothing was saved from a diverged step
    weights = trainable_parameters(model)
    assert all(bool(mx.isfinite(v).all()) for v in weights.values())
    largest = max(float(mx.abs(weights[k] - after_two[k]).max()) for k in weights)
    assert largest == 0.0, largest


def test_warm_up_starts_above_zero_and_the_logged_rate_is_the_one_used(tiny_setup):
    cfg, data = tiny_setup
    trainer_cfg = cfg.trainer.copy()
    trainer_cfg.learning_rate, trainer_cfg.warmup_steps, trainer_cfg.iters = 1e-3, 4, 10
    schedule = learning_rate_schedule(trainer_cfg)
    rates = [schedule(mx.array(n)).item() for n in range(5)]
    assert rates == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])

    logged = {}
    model = _fresh_model(cfg)
    trainer = Trainer(model, trainer_cfg, batch_multiple(cfg.data))
    assert trainer.optimizer.bias_correction is True
    trainer.cfg.iters = 3
    trainer.fit(data.samples["train"], data.samples["valid"],
                lambda s, m: logged.__setitem__(s, m["learning_rate"]) if "learning_rate" in m else None, lambda s: None)
    # Step n used schedule(n - 1): the optimizer's own record after the last update agrees.
    assert logged[1] == pytest.approx(2.5e-4) and logged[3] == pytest.approx(7.5e-4)
    assert trainer.optimizer.learning_rate.item() == pytest.approx(logged[3])

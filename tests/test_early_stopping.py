"""Early stopping and best-* with scripted validation losses (the real run_experiment, the tiny
model, the shipped data): step 0's loss is a candidate best, and the checkpoint written when
training stops early holds that step's own state, not the best weights beside it."""

import json
from pathlib import Path

import mlx.core as mx

from riscv_ft.checkpoint import latest_checkpoint
from riscv_ft.cli import compose
from riscv_ft.experiment import run_experiment
from riscv_ft.trainer import Trainer

QUIET = ["experiment=smoke", "trainer.eval_every=1", "trainer.report_every=1", "trainer.save_every=0",
         "trainer.keep_checkpoints=5", "eval.enabled=false", "eval.print_samples=0", "tracking.enabled=false"]


def _scripted(monkeypatch, losses: list[float]) -> list[float]:
    """Trainer.evaluate returns `losses` in order (one per evaluation), then 9.0; returns the
    list of the losses it handed out."""
    given: list[float] = []

    def evaluate(self, samples, max_batches=-1):
        given.append(losses[len(given)] if len(given) < len(losses) else 9.0)
        return given[-1]

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    return given


def _adapters(folder: Path) -> dict:
    return mx.load(str(folder / "adapters.safetensors"))


def _largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(mx.abs(a[k] - b[k]).max()) for k in a)


def _run(run_dir: Path, *overrides: str, resume: bool = False) -> dict:
    cfg = compose([*QUIET, *overrides])
    return run_experiment(cfg, run_dir, resume=resume)


def test_the_untrained_weights_win_when_training_only_makes_the_loss_worse(tmp_path, monkeypatch):
    """Losses 5.0 (step 0), 6.0, 7.0, 8.0 with patience 3: the run stops at step 3 and its final
    adapter is step 0's: LoRA B still zero."""
    run_dir = tmp_path / "run"
    given = _scripted(monkeypatch, [5.0, 6.0, 7.0, 8.0])
    metrics = _run(run_dir, "trainer.iters=10", "trainer.early_stopping_patience=3")
    assert metrics["best_val_loss"] == 5.0 and metrics["val_loss"] == 5.0, metrics
    assert given == [5.0, 6.0, 7.0, 8.0] and metrics["steps"] == 3
    final = _adapters(run_dir / "adapters")
    assert (run_dir / "checkpoints" / "best-000000" / "state.json").is_file()
    assert _largest_difference(final, _adapters(run_dir / "checkpoints" / "best-000000")) == 0.0
    lora_b = [k for k in final if k.endswith("lora_b")]
    assert lora_b and all(float(mx.abs(final[k]).max()) == 0.0 for k in lora_b)  # no update in it


def test_the_checkpoint_written_at_early_stopping_is_that_steps_own_state(tmp_path, monkeypatch):
    """Best at step 1 (4.0), worse at 2 and 3, patience 2: training stops at step 3. step-000003
    must hold step 3's weights (those of an uninterrupted 3-step run), its optimizer count and
    patience; only adapters/ gets the best weights. Resuming from that checkpoint (a crash in
    the final evaluation) trains no further and ends with the best weights again."""
    reference = tmp_path / "left_alone"  # the same run without early stopping: step 3's own state
    _scripted(monkeypatch, [5.0, 4.0, 6.0, 7.0] + [8.0] * 7)
    _run(reference, "trainer.iters=10", "trainer.save_every=3")

    run_dir, stopping = tmp_path / "run", ["trainer.iters=10", "trainer.early_stopping_patience=2"]
    _scripted(monkeypatch, [5.0, 4.0, 6.0, 7.0])
    metrics = _run(run_dir, *stopping)
    assert metrics["steps"] == 3 and metrics["best_val_loss"] == 4.0
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    assert checkpoint.step == 3
    assert checkpoint.state["best_step"] == 1 and checkpoint.state["evals_without_improvement"] == 2
    own = _adapters(reference / "checkpoints" / "step-000003")
    best = _adapters(run_dir / "checkpoints" / "best-000001")
    assert _largest_difference(_adapters(checkpoint.folder), own) == 0.0, "step-000003 does not hold step 3's weights"
    assert _largest_difference(own, best) > 0
    optimizer = mx.load(str(checkpoint.folder / "optimizer.safetensors"))
    assert int(optimizer["step"].item()) == 3
    assert _largest_difference(_adapters(run_dir / "adapters"), best) == 0.0

    given = _scripted(monkeypatch, [])  # nothing may be trained or evaluated after this resume
    resumed = _run(run_dir, *stopping, resume=True)
    assert given == [] and resumed["steps"] == 3 and resumed["val_loss"] == 4.0, resumed
    assert latest_checkpoint(run_dir / "checkpoints").step == 3
    assert _largest_difference(_adapters(run_dir / "adapters"), best) == 0.0
    assert json.loads((run_dir / "metrics.json").read_text())["best_val_loss"] == 4.0

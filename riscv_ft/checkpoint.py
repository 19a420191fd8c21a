"""Checkpoints: everything needed to continue a run exactly, written atomically.

    RUN/checkpoints/step-000100/
        adapters.safetensors   trainable weights
        optimizer.safetensors  AdamW state (moments, step = schedule position)
        state.json             step, best validation loss, MLflow run id, metric history
    RUN/checkpoints/best-000080/
        adapters.safetensors, adapter_config.json   the adapter at the best validation loss
        state.json             its step and validation loss

The best adapter is written whenever the validation loss improves, whatever the save
schedule, and is never pruned by keep_checkpoints: early stopping restores it, also after a
resume. Older best-* folders are removed once no kept step checkpoint refers to them.

No random state is saved: the trainer seeds every optimizer step from (seed, step)
(`trainer.step_seed`), so a run resumed after any step draws what one left alone draws.

A checkpoint is written into a hidden temporary folder and renamed into place, so it is
either complete or absent; `latest_checkpoint` only ever sees complete ones.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from riscv_ft import distributed

PREFIX = "step-"
BEST_PREFIX = "best-"


@dataclass
class Checkpoint:
    folder: Path
    step: int
    state: dict


def save_checkpoint(root: Path, step: int, weights: dict, optimizer_state, state: dict, keep: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{PREFIX}{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    mx.save_safetensors(str(tmp / "adapters.safetensors"), weights)
    mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer_state)))
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1))
    _fsync_dir(tmp)
    if final.exists():  # the same step saved again (an interrupt right after a save)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _prune(root, keep, best_step=state.get("best_step"))
    return final


def _fsync_dir(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def _prune(root: Path, keep: int, best_step: int | None) -> None:
    """Keep the newest `keep` checkpoints and the best one by validation loss."""
    complete = sorted(list_checkpoints(root), key=lambda p: p.name)
    protected = {root / f"{PREFIX}{best_step:06d}"} if best_step else set()
    for folder in complete[:-keep] if keep > 0 else []:
        if folder not in protected:
            shutil.rmtree(folder, ignore_errors=True)
    for stale in root.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    _prune_best(root)


def save_best(root: Path, step: int, val_loss: float, write_adapter) -> Path:
    """Write the best adapter (`write_adapter(folder)` writes its files) as best-NNNNNN/,
    atomically, then remove best folders nothing refers to any more."""
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / f"{BEST_PREFIX}{step:06d}", root / f".tmp-{BEST_PREFIX}{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_adapter(tmp)
    (tmp / "state.json").write_text(json.dumps({"step": step, "val_loss": val_loss}))
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _prune_best(root)
    return final


def best_adapter(root: Path, step: int) -> Path | None:
    """The best-* folder written at `step` (what a checkpoint's best_step names), if complete."""
    folder = root / f"{BEST_PREFIX}{step:06d}"
    return folder if (folder / "state.json").is_file() else None


def _prune_best(root: Path) -> None:
    """Keep the newest best folder and any that a kept step checkpoint names as its best (a
    resume from that checkpoint restores it)."""
    bests = sorted(p for p in root.glob(f"{BEST_PREFIX}*") if (p / "state.json").is_file())
    wanted = {root / f"{BEST_PREFIX}{json.loads((c / 'state.json').read_text()).get('best_step') or 0:06d}"
              for c in list_checkpoints(root)}
    for folder in bests[:-1]:
        if folder not in wanted:
            shutil.rmtree(folder, ignore_errors=True)
    for stale in root.glob(f".tmp-{BEST_PREFIX}*"):  # left by a crash mid-write
        shutil.rmtree(stale, ignore_errors=True)


def list_checkpoints(root: Path) -> list[Path]:
    return [p for p in root.glob(f"{PREFIX}*") if (p / "state.json").is_file()] if root.is_dir() else []


def latest_checkpoint(root: Path) -> Checkpoint | None:
    folders = sorted(list_checkpoints(root), key=lambda p: p.name)
    if not folders:
        return None
    folder = folders[-1]
    state = json.loads((folder / "state.json").read_text())
    return Checkpoint(folder, int(state["step"]), state)


def load_checkpoint(checkpoint: Checkpoint, model, optimizer) -> None:
    """Put weights and optimizer state back as they were at the checkpoint."""
    from riscv_ft.model import load_trainable

    load_trainable(model, mx.load(str(checkpoint.folder / "adapters.safetensors")))
    # Leaf by leaf into the initialized state: the compiled training step holds on to these
    # very containers, and flattening drops the empty ones the optimizer expects.
    for dotted, value in mx.load(str(checkpoint.folder / "optimizer.safetensors")).items():
        *path, last = dotted.split(".")
        node = optimizer.state
        for part in path:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = value
    mx.eval(model.parameters(), optimizer.state)


def share_checkpoint(model, optimizer) -> None:
    """After rank 0 loaded a checkpoint: its weights and optimizer state on every rank, sent
    with mx.distributed (no shared disk needed). Leaf by leaf, as in load_checkpoint."""
    if distributed.world_size() == 1:
        return
    weights = [(name, distributed.broadcast(value)) for name, value in tree_flatten(model.trainable_parameters())]
    model.load_weights(weights, strict=False)

    def share(node) -> None:
        keys = range(len(node)) if isinstance(node, list) else list(node)
        for key in keys:
            if isinstance(node[key], mx.array):
                node[key] = distributed.broadcast(node[key])
            elif isinstance(node[key], (dict, list)):
                share(node[key])

    share(optimizer.state)
    mx.eval(model.parameters(), optimizer.state)

"""Our own MLX training loop: masked loss, compiled step, AdamW with warmup + cosine.

Reporting, evaluation and saving are separate functions around a small step; the loop
calls `on_metrics(step, metrics)` so tracking stays out of it.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map
from omegaconf import DictConfig

from riscv_ft import distributed
from riscv_ft.data.pipeline import Batch, Sample, iterate_training_batches, length_bucketed_batches

log = logging.getLogger(__name__)

MetricsCallback = Callable[[int, dict], None]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def masked_loss(model: nn.Module, inputs: mx.array, targets: mx.array, mask: mx.array, positions: mx.array | None = None):
    """Summed cross-entropy over the tokens the mask keeps, and how many it keeps.

    Returning the sum (not the mean) lets micro-batches and data-parallel ranks add up
    exactly and divide once by the total token count.

    `positions` (flat indices into the batch covering every kept position, see
    `loss_positions`) runs the output layer and the loss at those positions only: with the
    prompt masked that is a fifth of the batch, and the 32,768-wide output layer and its
    softmax were most of the tiny model's step (benchmarks/NOTES.md). Same sum, same gradients.
    """
    if positions is None:
        logits = model(inputs)
    else:
        logits = _logits_at(model, inputs, positions)
        targets, mask = targets.reshape(-1)[positions], mask.reshape(-1)[positions]
    losses = _cross_entropy(logits.astype(mx.float32), targets) * mask
    return losses.sum(), mask.sum()


def _logits_at(model: nn.Module, inputs: mx.array, positions: mx.array) -> mx.array:
    """Logits at flat `positions` of the batch: the transformer runs on every position, the
    output layer on the selected ones (mlx-lm's llama/mistral models; any other model computes
    all logits and keeps the selected rows)."""
    body = getattr(model, "model", None)
    if getattr(model, "model_type", None) in ("llama", "mistral") and body is not None:
        hidden = body(inputs)
        hidden = hidden.reshape(-1, hidden.shape[-1])[positions]
        head = getattr(model, "lm_head", None)
        return head(hidden) if head is not None else body.embed_tokens.as_linear(hidden)
    logits = model(inputs)
    return logits.reshape(-1, logits.shape[-1])[positions]


def _cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """nn.losses.cross_entropy per row (equal to float32 rounding), built on 2**x.

    MLX's CPU exp (and so logsumexp and softmax) is a scalar polynomial: ~30 ns a value on
    x86 against ~8 ns for mx.power, and a softmax over 32,768 logits per token was the single
    biggest cost of a CPU step. The row maximum cancels out of the gradient, so none flows
    through it.
    """
    peak = mx.stop_gradient(logits.max(axis=-1, keepdims=True))
    total = mx.power(2.0, (logits - peak) * 1.4426950408889634).sum(axis=-1)  # log2(e)
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
    return peak.squeeze(-1) + mx.log(total) - picked


def loss_positions(mask: np.ndarray, multiple: int = 8) -> np.ndarray:
    """Flat indices of the positions `mask` keeps, padded with masked-out positions to a
    multiple of `multiple` (fewer distinct shapes to compile); padding adds nothing to the loss."""
    flat = mask.reshape(-1)
    keep = np.flatnonzero(flat)
    count = min(-(-max(len(keep), 1) // multiple) * multiple, flat.size)
    fill = np.flatnonzero(flat == 0)[: count - len(keep)]
    return np.concatenate([keep, fill]).astype(np.int32)


def learning_rate_schedule(trainer: DictConfig):
    peak, iters, warmup = trainer.learning_rate, trainer.iters, min(trainer.warmup_steps, trainer.iters - 1)
    decay = optim.cosine_decay(peak, max(iters - warmup, 1), peak * trainer.min_lr_ratio)
    if warmup <= 0:
        return decay
    return optim.join_schedules([optim.linear_schedule(0.0, peak, warmup), decay], [warmup])


def enable_grad_checkpoint(model: nn.Module) -> None:
    """Recompute each transformer block's activations in the backward pass.

    mlx-lm's `grad_checkpoint` patches the block *class*, which leaks into every later run
    in the same process (Hydra multirun) and nests on a second call. Here each block gets
    its own subclass, so nothing outlives the model.
    """
    for layer in model.layers:
        base = type(layer)
        if getattr(base, "_riscv_ft_checkpointed", False):
            continue

        def checkpointed_call(self, *args, _base_call=base.__call__, **kwargs):
            def inner(params, *a, **kw):
                self.update(params)
                return _base_call(self, *a, **kw)

            return mx.checkpoint(inner)(self.trainable_parameters(), *args, **kwargs)

        layer.__class__ = type(base.__name__, (base,), {"__call__": checkpointed_call, "_riscv_ft_checkpointed": True})


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training after a checkpoint was saved."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


@dataclass
class TrainState:
    step: int = 0
    best_val_loss: float = math.inf
    best_step: int = 0
    evals_without_improvement: int = 0


class Trainer:
    # Called as on_best(step, val_loss) whenever the validation loss improves, while the model
    # holds those weights: the run checkpoints its best adapter there (riscv_ft.experiment).
    on_best: Callable[[int, float], None] | None = None

    def __init__(self, model: nn.Module, trainer_cfg: DictConfig, pad_to_multiple: int):
        self.model = model
        self.cfg = trainer_cfg
        self.pad_to_multiple = pad_to_multiple
        self.optimizer = optim.AdamW(learning_rate=learning_rate_schedule(trainer_cfg), weight_decay=trainer_cfg.weight_decay)
        self.optimizer.init(model.trainable_parameters())
        self.state = TrainState()
        self.best_weights: dict | None = None  # kept only for early stopping
        if trainer_cfg.grad_checkpoint:
            enable_grad_checkpoint(model)
        self._build_steps()

    def _build_steps(self) -> None:
        model, optimizer, cfg = self.model, self.optimizer, self.cfg
        loss_and_grad = nn.value_and_grad(model, masked_loss)
        compiled_state = [model.state, optimizer.state, mx.random.state]

        def grad_step(*batch):  # inputs, targets, mask, loss positions
            (loss_sum, ntok), grads = loss_and_grad(model, *batch)
            return loss_sum, ntok, grads

        def update_step(grads, ntok):
            # ntok is the global answer-token count; summing gradients over processes and
            # dividing once gives exactly the single-process update for the global batch.
            grads = tree_map(lambda g: distributed.all_sum(g) / ntok, grads)
            if cfg.max_grad_norm > 0:
                grads, _ = optim.clip_grad_norm(grads, cfg.max_grad_norm)
            optimizer.update(model, grads)

        def eval_step(*batch):
            return masked_loss(model, *batch)

        # Compiled functions belong to this Trainer, so a new run (or sweep job) never
        # reuses a graph traced for another model.
        if cfg.compile:
            grad_step = partial(mx.compile, inputs=compiled_state, outputs=compiled_state)(grad_step)
            update_step = partial(mx.compile, inputs=compiled_state, outputs=compiled_state)(update_step)
            eval_step = partial(mx.compile, inputs=compiled_state)(eval_step)
        self._grad_step, self._update_step, self._eval_step = grad_step, update_step, eval_step

    def reseed(self, step: int) -> None:
        """Reseed the random stream (dropout) from (seed, step) at each checkpoint, so a run
        resumed from step k draws what the uninterrupted run draws after step k."""
        mx.random.seed(self.cfg.seed * 1_000_003 + step)

    def _track_best(self, step: int, val_loss: float) -> bool:
        """Remember the best validation loss; True when early stopping says stop."""
        if val_loss < self.state.best_val_loss:
            self.state.best_val_loss, self.state.best_step = val_loss, step
            self.state.evals_without_improvement = 0
            if self.cfg.early_stopping_patience:
                # MLX arrays are immutable: keeping references is a snapshot, not a copy.
                self.best_weights = dict(tree_flatten(self.model.trainable_parameters()))
            if self.on_best is not None:
                self.on_best(step, val_loss)
            return False
        self.state.evals_without_improvement += 1
        patience = self.cfg.early_stopping_patience
        return bool(patience) and self.state.evals_without_improvement >= patience

    # ------------------------------------------------------------ evaluation

    def evaluate(self, samples: list[Sample], max_batches: int = -1) -> float:
        """Token-weighted mean loss over the split (or its first max_batches batches)."""
        self.model.eval()
        batches = length_bucketed_batches(samples, self.cfg.batch_size, self.pad_to_multiple, seed=0)
        if max_batches > 0:
            batches = batches[:max_batches]
        # Each process takes every world_size-th batch; one all_sum at the end, so ranks
        # with fewer batches never wait on a collective the others skip.
        total, count = mx.array(0.0), mx.array(0.0)
        for batch in batches[distributed.rank() :: distributed.world_size()]:
            loss_sum, ntok = self._eval_step(*_arrays(batch))
            total, count = total + loss_sum, count + ntok
            mx.eval(total, count)
        total, count = distributed.all_sum(total), distributed.all_sum(count)
        self.model.train()
        return (total / count).item() if count.item() > 0 else math.nan

    # ------------------------------------------------------------ training

    def fit(
        self,
        train: list[Sample],
        valid: list[Sample],
        on_metrics: MetricsCallback,
        on_save: Callable[[int], None],
    ) -> dict:
        """Train to trainer.iters (from state.step when resumed).

        Ctrl-C or SIGTERM finish the current step, call on_save, then raise Interrupted.
        """
        cfg = self.cfg
        mx.reset_peak_memory()
        self.model.train()
        batches = iterate_training_batches(
            train, cfg.batch_size, self.pad_to_multiple, cfg.seed, self.state.step * cfg.grad_accumulation,
            distributed.rank(), distributed.world_size(),
        )
        window = _Window()
        progress = _progress(cfg.iters, self.state.step)
        val_loss = math.nan
        start_step = self.state.step
        if start_step == 0:  # the baseline that later validation losses are compared with
            val_loss = self.evaluate(valid, cfg.val_batches)
            log.info("step 0/%d  val_loss %.4f", cfg.iters, val_loss)
            on_metrics(0, {"val_loss": val_loss})
        with _deferred_interrupts() as stop:
            for step in range(start_step + 1, cfg.iters + 1):
                loss_sum, ntok, grads = mx.array(0.0), mx.array(0.0), None
                micro = [next(batches) for _ in range(cfg.grad_accumulation)]
                for batch in micro:
                    ls, nt, g = self._grad_step(*_arrays(batch))
                    loss_sum, ntok = loss_sum + ls, ntok + nt
                    grads = g if grads is None else tree_map(mx.add, grads, g)
                # Loss, answer tokens, real and padded tokens of the global batch, in one collective.
                counts = mx.array([sum(b.real_tokens for b in micro), sum(b.padded_tokens for b in micro)], dtype=mx.float32)
                totals = distributed.all_sum(mx.concatenate([mx.stack([loss_sum, ntok]), counts]))
                mx.eval(totals, grads)
                loss_sum, ntok = totals[0], totals[1]
                loss = loss_sum.item() / max(ntok.item(), 1.0)
                if not math.isfinite(loss):  # checked before the update: the weights stay good
                    raise TrainingDiverged(
                        f"the training loss became {loss} at step {step}; the last checkpoint is kept. Usual causes: "
                        f"a learning rate too high (trainer.learning_rate={cfg.learning_rate}), float16 overflow "
                        "(use model.dtype=bfloat16 or float32), or bad rows in the data"
                    )
                lr = self.optimizer.learning_rate.item()
                self._update_step(grads, ntok)
                mx.eval(self.model.trainable_parameters(), self.optimizer.state)
                self.state.step = step
                window.add(*totals.tolist())
                progress.update(1)
                if step % cfg.report_every == 0 or step == cfg.iters:
                    metrics = window.flush()
                    metrics.update(learning_rate=lr, peak_memory_gb=mx.get_peak_memory() / 1e9)
                    progress.set_postfix(loss=f"{metrics['train_loss']:.3f}", refresh=False)
                    log.info(
                        "step %d/%d  train_loss %.4f  lr %.2e  %.0f answer tok/s  %.0f tok/s  pad %.1f%%  peak %.2f GB",
                        step, cfg.iters, metrics["train_loss"], lr, metrics["tokens_per_s"], metrics["all_tokens_per_s"],
                        100 * metrics["padding_share"], metrics["peak_memory_gb"],
                    )
                    on_metrics(step, metrics)
                stop_early = False
                if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.iters:
                    val_loss = self.evaluate(valid, cfg.val_batches)
                    stop_early = self._track_best(step, val_loss)
                    log.info("step %d/%d  val_loss %.4f", step, cfg.iters, val_loss)
                    on_metrics(step, {"val_loss": val_loss})
                    window.restart_clock()
                if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.iters or stop[0] or stop_early:
                    on_save(step)
                    self.reseed(step)
                    window.restart_clock()
                if stop[0]:
                    raise Interrupted(f"{stop[0]} at step {step}", step)
                if stop_early:
                    log.info("early stopping at step %d: no better validation loss for %d evaluations", step, cfg.early_stopping_patience)
                    break
        if self.best_weights is not None and cfg.early_stopping_patience:
            log.info("restoring the best adapter (step %d, val_loss %.4f)", self.state.best_step, self.state.best_val_loss)
            self.model.load_weights(list(self.best_weights.items()), strict=False)
            val_loss = self.state.best_val_loss
            on_save(self.state.step)
        progress.close()
        totals = window.totals()
        return {
            "train_loss": totals["train_loss"],
            "val_loss": val_loss,
            "best_val_loss": self.state.best_val_loss,
            "tokens_per_s": totals["tokens_per_s"],
            "all_tokens_per_s": totals["all_tokens_per_s"],
            "padding_share": totals["padding_share"],
            "peak_memory_gb": mx.get_peak_memory() / 1e9,
            "steps": self.state.step,
        }


@contextmanager
def _deferred_interrupts():
    """Turn the first Ctrl-C or SIGTERM into a request to stop after the current step.

    Yields a one-element list that holds the signal's name once one arrived. A second
    Ctrl-C interrupts at once.
    """
    stop: list = [None]
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request_stop(signum, frame):
        if stop[0] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop[0] = signal.Signals(signum).name
        log.warning("%s received: stopping after this step and saving a checkpoint (Ctrl-C again to stop now)", stop[0])

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _arrays(batch: Batch):
    positions = loss_positions(batch.mask)
    return mx.array(batch.inputs), mx.array(batch.targets), mx.array(batch.mask), mx.array(positions)


class _Window:
    """Loss and throughput since the last report, and over the whole run.

    Time spent evaluating or saving is excluded (restart_clock), so tokens/s is training
    speed only. The run's train_loss is the last report's: an average over the whole run
    would mostly measure the first steps.
    """

    def __init__(self):
        self.loss = self.ntok = self.real = self.padded = 0.0
        self.last_loss: float | None = None
        self.all = dict(loss=0.0, ntok=0.0, real=0.0, padded=0.0, seconds=0.0)
        self.t0 = time.perf_counter()

    def add(self, loss_sum: float, ntok: float, real: float, padded: float) -> None:
        self.loss += loss_sum
        self.ntok += ntok
        self.real += real
        self.padded += padded

    def restart_clock(self) -> None:
        self.t0 = time.perf_counter()

    def flush(self) -> dict:
        seconds = max(time.perf_counter() - self.t0, 1e-9)
        metrics = {
            "train_loss": self.loss / max(self.ntok, 1.0),
            "tokens_per_s": self.ntok / seconds,
            "all_tokens_per_s": self.real / seconds,
            "padding_share": 1.0 - self.real / max(self.padded, 1.0),
        }
        for key, value in (("loss", self.loss), ("ntok", self.ntok), ("real", self.real), ("padded", self.padded), ("seconds", seconds)):
            self.all[key] += value
        self.loss = self.ntok = self.real = self.padded = 0.0
        self.t0 = time.perf_counter()
        self.last_loss = metrics["train_loss"]
        return metrics

    def totals(self) -> dict:
        a, seconds = self.all, max(self.all["seconds"], 1e-9)
        return {
            "train_loss": self.last_loss if self.last_loss is not None else a["loss"] / max(a["ntok"], 1.0),
            "tokens_per_s": a["ntok"] / seconds,
            "all_tokens_per_s": a["real"] / seconds,
            "padding_share": 1.0 - a["real"] / max(a["padded"], 1.0),
        }


def _progress(total: int, initial: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=not sys.stderr.isatty(), leave=False)

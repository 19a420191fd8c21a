# One module on purpose: the compiled step, gradient accumulation, out-of-memory recovery and the
# loop share one Trainer's state (GrpoTrainer reuses them); the stateless loss is a few functions.
"""Our own MLX training loop: masked loss, compiled step, AdamW with warmup + cosine.

Reporting, evaluation and saving are separate functions around a small step; the loop
calls `on_metrics(step, metrics)` so tracking stays out of it.
"""

from __future__ import annotations

import logging
import math
import os
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
from mlx.nn.utils import average_gradients
from mlx.utils import tree_flatten, tree_map
from omegaconf import DictConfig

from riscv_ft import device, distributed
from riscv_ft.device import default_select_loss_positions
from riscv_ft.fused_lora import fuse_lora_projections
from riscv_ft.model import load_trainable, trainable_parameters
from riscv_ft.data.batch import Batch, Sample, batch_multiple, shape_bucket
from riscv_ft.data.pipeline import iterate_training_batches, length_bucketed_batches
from riscv_ft.packed_forward import packed_hidden, packing_problem

log = logging.getLogger(__name__)

MetricsCallback = Callable[[int, dict], None]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def masked_loss(
    model: nn.Module, inputs: mx.array, targets: mx.array, mask: mx.array, positions: mx.array | None = None,
    segment_ids: mx.array | None = None, loss_chunk: int = 0,
):
    """Summed cross-entropy over the tokens the mask keeps, and how many it keeps.

    Returning the sum (not the mean) lets micro-batches and data-parallel ranks add up
    exactly and divide once by the total token count.

    `positions` (flat indices into the batch covering every kept position, see
    `loss_positions`) runs the output layer and the loss at those positions only: with the
    prompt masked that is a fifth of the batch, and the 32,768-wide output layer and its
    softmax were most of the tiny model's step (benchmarks/NOTES.md). Same sum, same gradients.

    `segment_ids` (packed rows, see riscv_ft.data.packing) keeps each sample's attention
    within the sample, so every sample's loss is its unpacked loss.

    `loss_chunk` > 0 (trainer.loss_chunk): the output layer and the loss run on that many
    positions at a time, each chunk recomputed in the backward pass, so the float32
    (positions x vocabulary) logits and their gradient never exist whole (llama/mistral).
    """
    head = _output_layer(model) if loss_chunk > 0 else None
    if head is not None:
        hidden = _hidden_at(model, inputs, positions, segment_ids)
        targets, mask = targets.reshape(-1), mask.reshape(-1)
        if positions is not None:
            targets, mask = targets[positions], mask[positions]
        return _chunked_cross_entropy(head, hidden, targets, mask, loss_chunk), mask.sum()
    if positions is None and segment_ids is None:
        logits = model(inputs)
    else:
        logits = _logits_at(model, inputs, positions, segment_ids)
        targets, mask = targets.reshape(-1), mask.reshape(-1)
        if positions is not None:
            targets, mask = targets[positions], mask[positions]
    losses = _cross_entropy(logits.astype(mx.float32), targets) * mask
    return losses.sum(), mask.sum()


def _logits_at(
    model: nn.Module, inputs: mx.array, positions: mx.array | None,
    segment_ids: mx.array | None = None,
) -> mx.array:
    """Logits at flat `positions` of the batch (all of them when None), flattened to
    (positions, vocab): the transformer runs on every position, the output layer on the
    selected ones (mlx-lm's llama/mistral models; any other model computes all logits and
    keeps the selected rows). Packed rows (`segment_ids`) need a llama/mistral model."""
    head = _output_layer(model)
    if head is not None:
        return head[1](_hidden_at(model, inputs, positions, segment_ids))
    if segment_ids is not None:
        raise ValueError(packing_problem(model))
    logits = model(inputs)
    logits = logits.reshape(-1, logits.shape[-1])
    return logits if positions is None else logits[positions]


def _output_layer(model: nn.Module) -> tuple[nn.Module, Callable] | None:
    """(module holding the output weights, hidden -> logits) of an mlx-lm llama/mistral model
    (the tied embedding's as_linear when there is no lm_head); None for other models."""
    body = getattr(model, "model", None)
    if getattr(model, "model_type", None) not in ("llama", "mistral") or body is None:
        return None
    head = getattr(model, "lm_head", None)
    return (head, head) if head is not None else (body.embed_tokens, body.embed_tokens.as_linear)


def _hidden_at(model: nn.Module, inputs: mx.array, positions: mx.array | None,
               segment_ids: mx.array | None = None) -> mx.array:
    """The last hidden states of a llama/mistral model at flat `positions` (all when None): (positions, hidden)."""
    body = model.model
    hidden = body(inputs) if segment_ids is None else packed_hidden(body, inputs, segment_ids)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    return hidden if positions is None else hidden[positions]


def _chunked_cross_entropy(head: tuple[nn.Module, Callable], hidden: mx.array, targets: mx.array, mask: mx.array,
                           chunk: int) -> mx.array:
    """Summed masked cross-entropy of head(hidden), `chunk` rows at a time. Each chunk is an
    mx.checkpoint: the backward pass keeps only its hidden rows and recomputes its logits."""
    module, apply_head = head

    def chunk_loss(params, h, t, m):
        module.update(params)  # the head's trainable weights (full fine-tuning) get their gradient
        t, m = mx.stop_gradient(t), mx.stop_gradient(m)  # the checkpoint differentiates every input; indices have no VJP
        return (_cross_entropy(apply_head(h).astype(mx.float32), t) * m).sum()

    checkpointed = mx.checkpoint(chunk_loss)
    params = module.trainable_parameters()
    total = mx.array(0.0)
    for start in range(0, hidden.shape[0], chunk):
        end = start + chunk
        total = total + checkpointed(params, hidden[start:end], targets[start:end], mask[start:end])
    return total


def _cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """nn.losses.cross_entropy per row (equal to float32 rounding), built on 2**x.

    MLX's CPU exp (and so logsumexp and softmax) is a scalar polynomial (`device.exp` says
    why it goes through 2**x), and a softmax over 32,768 logits per token was the single
    biggest cost of a CPU step. The row maximum cancels out of the gradient, so none flows
    through it.
    """
    peak = mx.stop_gradient(logits.max(axis=-1, keepdims=True))
    total = device.exp(logits - peak).sum(axis=-1)
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
    return peak.squeeze(-1) + mx.log(total) - picked


def loss_positions(mask: np.ndarray, multiple: int = 8) -> np.ndarray:
    """Flat indices of the positions `mask` keeps, padded with masked-out positions up to a
    shape bucket (few distinct shapes to compile); padding adds nothing to the loss."""
    flat = mask.reshape(-1)
    keep = np.flatnonzero(flat)
    count = min(shape_bucket(max(len(keep), 1), multiple), flat.size)
    fill = np.flatnonzero(flat == 0)[: count - len(keep)]
    return np.concatenate([keep, fill]).astype(np.int32)


def learning_rate_schedule(trainer: DictConfig):
    """Linear warm-up to the peak, then cosine decay to peak * min_lr_ratio.

    The optimizer evaluates the schedule at 0, 1, 2, ... (the number of updates made so far),
    so the value at n is the rate of update n + 1. Warm-up runs peak/w, 2*peak/w, ..., peak
    over its w updates: the first update is not wasted on a rate of 0.
    """
    peak, iters, warmup = trainer.learning_rate, trainer.iters, min(trainer.warmup_steps, trainer.iters - 1)
    decay = optim.cosine_decay(peak, max(iters - warmup, 1), peak * trainer.min_lr_ratio)
    if warmup <= 0:
        return decay
    return optim.join_schedules([optim.linear_schedule(peak / warmup, peak, max(warmup - 1, 1)), decay], [warmup])


def step_seed(seed: int, step: int) -> int:
    """The random seed of optimizer step `step` (dropout): a function of (seed, step) alone, so a
    run resumed after any step draws exactly what the uninterrupted run draws."""
    return seed * 1_000_003 + step


def enable_grad_checkpoint(model: nn.Module, every: int = 1) -> None:
    """Recompute each transformer block's activations in the backward pass (with `every` = k,
    only every k-th block's: blocks 0, k, 2k, ...; the others keep theirs).

    mlx-lm's `grad_checkpoint` patches the block *class*, which leaks into every later run
    in the same process (Hydra multirun) and nests on a second call. Here each block gets
    its own subclass, so nothing outlives the model.
    """
    for layer in model.layers[:: max(every, 1)]:
        base = type(layer)
        if getattr(base, "_riscv_ft_checkpointed", False):
            continue

        def checkpointed_call(self, *args, _base_call=base.__call__, **kwargs):
            def inner(params, *a, **kw):
                self.update(params)
                return _base_call(self, *a, **kw)

            return mx.checkpoint(inner)(self.trainable_parameters(), *args, **kwargs)

        layer.__class__ = type(base.__name__, (base,), {"__call__": checkpointed_call, "_riscv_ft_checkpointed": True})


class OutOfMemory(RuntimeError):
    """MLX could not allocate memory in a training step; the last complete step was saved
    (`saved_step`, None when no checkpoint could be written)."""

    def __init__(self, message: str, saved_step: int | None):
        super().__init__(message)
        self.saved_step = saved_step


def is_out_of_memory(err: BaseException) -> bool:
    """MLX's allocation failures are RuntimeErrors: "[metal::malloc] Attempting to allocate ...",
    "[cuda] out of memory", "[malloc] Unable to allocate ..."."""
    text = str(err).lower()
    return isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and ("alloc" in text or "out of memory" in text))


class EvaluationOutOfMemory(RuntimeError):
    """MLX ran out of memory while a model answered evaluation prompts: the message says which
    model, what is kept and what to lower (evaluation settings, not the training step's)."""


# Tests only: raise MLX's own out-of-memory message when this optimizer step is queued.
FAIL_AT_STEP_ENV = "RISCV_FT_TEST_OOM_AT_STEP"
# Tests only: raise it when the named model ("base" or "tuned") starts answering evaluation prompts.
FAIL_IN_EVAL_ENV = "RISCV_FT_TEST_OOM_IN_EVAL"
SIMULATED_OOM = ("[metal::malloc] Attempting to allocate 17179869184 bytes which is greater than the maximum allowed "
                 "buffer size of 12884901888 bytes.")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training after a checkpoint was saved."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step

    def __reduce__(self):  # picklable (a process pool sends exceptions back): both arguments
        return type(self), (str(self), self.step)


@dataclass
class TrainState:
    step: int = 0
    best_val_loss: float = math.inf
    best_step: int = 0
    evals_without_improvement: int = 0


class Trainer:
    """Owns the compiled step, the optimizer and the loop's state for one run.

    The loop keeps the device busy: it never waits on a step's result inside the loop. Each
    step is queued with `mx.async_eval` and the host prepares the next batch and builds the
    next graph while the device computes (at most one step ahead, which bounds memory). The
    loss, token counts and the non-finite guard stay on the device and are read only at
    report, evaluation and save steps.
    """

    # Called as on_best(step, val_loss) whenever the validation loss improves (step 0's, before
    # any update, included), while the model holds those weights: the run checkpoints its best
    # adapter there (riscv_ft.experiment).
    on_best: Callable[[int, float], None] | None = None
    # Called as on_restored(best_step) once early stopping has put the best weights back: the
    # run writes them as its final adapter. Not on_save: step N's checkpoint must keep step N's
    # own weights beside step N's optimizer state and patience, never a mix of two steps.
    on_restored: Callable[[int], None] | None = None

    def __init__(self, model: nn.Module, trainer_cfg: DictConfig, pad_to_multiple: int, pack_length: int = 0,
                 min_width: int = 0, loss_fn: Callable = masked_loss):
        self.model = model
        self.cfg = trainer_cfg
        # Batch widths: shape buckets of pad_to_multiple, at least min_width (data.min_width).
        self.pad_to_multiple, self.min_width = pad_to_multiple, min_width
        # data.pack: training batches are batch_size rows of pack_length positions, each
        # holding several samples; 0 trains one sample per row. Validation is never packed.
        self.pack_length = pack_length
        select = trainer_cfg.get("select_loss_positions")
        self.select_positions = default_select_loss_positions() if select is None else bool(select)
        self.schedule = learning_rate_schedule(trainer_cfg)
        self.optimizer = optim.AdamW(
            learning_rate=self.schedule, weight_decay=trainer_cfg.weight_decay,
            bias_correction=trainer_cfg.bias_correction,
        )
        if trainer_cfg.fuse_lora:
            fuse_lora_projections(model)
        self.optimizer.init(model.trainable_parameters())
        trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
        self._keep_last_complete = trainable < 0.1 * sum(v.size for _, v in tree_flatten(model.parameters()))
        self.state = TrainState()
        self.best_weights: dict | None = None  # kept only for early stopping
        # The step whose gradients were first not finite (0: none yet). Once set, no later
        # update is applied, so the weights stay those of the step before it.
        self.bad_step = [mx.array(0, dtype=mx.int32)]
        if trainer_cfg.grad_checkpoint:
            enable_grad_checkpoint(model, trainer_cfg.get("grad_checkpoint_every", 1))
        loss_chunk = trainer_cfg.get("loss_chunk", 0)
        self._eval_loss = partial(masked_loss, loss_chunk=loss_chunk) if loss_chunk else masked_loss
        if loss_chunk and loss_fn is masked_loss:
            loss_fn = self._eval_loss
        self._build_steps(loss_fn)

    @classmethod
    def for_run(cls, model: nn.Module, cfg: DictConfig, **kwargs) -> "Trainer":
        """The Trainer a run of the whole config `cfg` uses: batch shapes and packing from cfg.data."""
        return cls(model, cfg.trainer, batch_multiple(cfg.data), pack_length=cfg.data.max_seq_length if cfg.data.pack else 0,
                   min_width=cfg.data.min_width or 0, **kwargs)

    def _build_steps(self, loss_fn: Callable) -> None:
        model, optimizer, cfg, bad_step = self.model, self.optimizer, self.cfg, self.bad_step
        loss_and_grad = nn.value_and_grad(model, loss_fn)
        compiled_state = [model.state, optimizer.state, mx.random.state, bad_step]

        def grad_step(batch):  # masked_loss's arrays by name: inputs, targets, mask, [positions, segments]
            (loss_sum, ntok), grads = loss_and_grad(model, **batch)
            return loss_sum, ntok, grads

        def apply_step(grads, local, step):
            """local = [loss sum, answer tokens, real tokens, padded tokens, samples] of this process.

            Gradients and counts are summed over processes and divided once by the global
            answer-token count: exactly the single-process update for the global batch. The
            update (weights and AdamW moments) is applied only while every gradient and the
            loss are finite; the first step that is not is remembered in `bad_step`.
            """
            totals = distributed.all_sum(local)
            ntok = mx.maximum(totals[1], 1.0)
            if distributed.world_size() > 1:
                # One all-reduce per 32 MB bucket, not one per LoRA array; average * N = sum.
                grads = average_gradients(grads, group=distributed.group())
                factor = distributed.world_size() / ntok
            else:
                factor = 1.0 / ntok
            # The mean gradient is grads * factor: its norm comes from the summed gradients,
            # and the division and the clipping fold into one scalar applied inside the update.
            norm = global_norm(grads) * factor
            if cfg.max_grad_norm > 0:
                factor = factor * mx.minimum(cfg.max_grad_norm / (norm + 1e-6), 1.0)
            ok = mx.isfinite(totals[0]) & mx.isfinite(norm) & (bad_step[0] == 0)
            model.update(adamw_update(optimizer, self.schedule, model.trainable_parameters(), grads, factor, ok))
            bad_step[0] = mx.where(ok | (bad_step[0] > 0), bad_step[0], step)
            return totals

        def accumulate_step(sums, batch):
            """sums = (loss sum, answer tokens, gradients) of the micro-batches before this one."""
            loss_sum, ntok, grads = grad_step(batch)
            return sums[0] + loss_sum, sums[1] + ntok, tree_map(mx.add, sums[2], grads)

        def train_step(batch, local_counts, step):  # one micro-batch per optimizer step
            loss_sum, ntok, grads = grad_step(batch)
            return apply_step(grads, mx.concatenate([mx.stack([loss_sum, ntok]), local_counts]), step)

        def eval_step(batch):
            return self._eval_loss(model, **batch)

        # Compiled functions belong to this Trainer, so a new run (or sweep job) never
        # reuses a graph traced for another model.
        if cfg.compile:
            compiled = partial(mx.compile, inputs=compiled_state, outputs=compiled_state)
            accumulate_step = compiled(accumulate_step)
            grad_step, apply_step, train_step = compiled(grad_step), compiled(apply_step), compiled(train_step)
            eval_step = partial(mx.compile, inputs=compiled_state)(eval_step)
        self._grad_step, self._apply_step, self._train_step, self._eval_step = grad_step, apply_step, train_step, eval_step
        self._accumulate_step = accumulate_step

    def _queue_step(self, micro: list[Batch], step: int) -> mx.array:
        """Build optimizer step `step` on the device and return its summed
        [loss, answer tokens, real tokens, padded tokens, samples]; nothing is waited for."""
        mx.random.seed(step_seed(self.cfg.seed, step))
        counts = mx.array([sum(b.real_tokens for b in micro), sum(b.padded_tokens for b in micro),
                           sum(b.samples for b in micro)], dtype=mx.float32)
        step_array = mx.array(step, dtype=mx.int32)
        if len(micro) == 1:
            return self._train_step(self._arrays(micro[0]), counts, step_array)
        # Each micro-batch's sums are evaluated before the next one's graph is built on them:
        # queued together, every micro-batch's activations were alive at once (acc=8 peaked
        # at 4.7x acc=1 on the tiny model), and accumulation saved no memory.
        sums = self._grad_step(self._arrays(micro[0]))
        for batch in micro[1:]:
            mx.eval(sums)
            sums = self._accumulate_step(sums, self._arrays(batch))
        loss_sum, ntok, grads = sums
        return self._apply_step(grads, mx.concatenate([mx.stack([loss_sum, ntok]), counts]), step_array)

    def _queue_and_wait(self, micro: list[Batch], step: int, window: "_Window", previous: tuple | None,
                        on_save: Callable[[int], None]) -> tuple:
        """Queue optimizer step `step`, then wait for the step before it (the device is at most one
        step behind the host). Returns what the next call waits for: (step, totals, weights, AdamW
        state), the last two kept only when small (LoRA) to go back to after an out-of-memory error.

        MLX's out-of-memory error: the weights and moments go back to the last step known complete,
        on_save saves it (resumable), and OutOfMemory is raised."""
        try:
            if os.environ.get(FAIL_AT_STEP_ENV) == str(step):
                raise RuntimeError(SIMULATED_OOM)
            totals = self._queue_step(micro, step)
            window.add(totals)
            weights, moments = self.model.trainable_parameters(), self.optimizer.state
            # The new weights and AdamW moments are named too: otherwise this step's update
            # stays pending into the next step, and both steps' copies are alive at once.
            mx.async_eval(totals, window.sums, self.bad_step[0], weights, moments)
            if previous is not None:
                mx.eval(previous[1])
                self._complete = previous
            # A reference (no copy) to this step's results, to go back to after an out-of-memory
            # error; only when the trainable weights are a small part of the model (LoRA): for full
            # fine-tuning it keeps a second copy of every weight and moment through the next update
            # (tiny model, float32: peak 0.55 -> 0.84 GB).
            if self._keep_last_complete:
                return step, totals, weights, tree_map(lambda a: a, moments)
            return step, totals, None, None
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            raise self._save_after_out_of_memory(err, step, previous, on_save) from None

    def _save_after_out_of_memory(self, err: RuntimeError, step: int, previous: tuple | None,
                                  on_save: Callable[[int], None]) -> OutOfMemory:
        mx.clear_cache()
        complete = getattr(self, "_complete", None)
        if previous is not None:
            try:
                mx.eval(previous[1])  # the step before the failed one may well have finished
                complete = previous
            except RuntimeError:
                pass
        saved = None
        if complete is not None and complete[2] is not None:
            done, _, weights, moments = complete
            self.model.update(weights)
            self.optimizer.state = moments
            self.state.step = done
            try:
                on_save(done)
                saved = done
            except RuntimeError:
                pass
        where = f"a checkpoint of step {saved} was saved" if saved else "no new checkpoint could be saved"
        first = str(err).splitlines()[0][:160]
        return OutOfMemory(f"out of memory at step {step} ({first}); {where}", saved)

    def _arrays(self, batch: Batch) -> dict:
        return batch_arrays(batch, self.select_positions)

    def check_finite(self) -> None:
        """Raise TrainingDiverged if a step met a non-finite loss or gradient (reads the device)."""
        bad = int(self.bad_step[0].item())
        if bad:
            cfg = self.cfg
            raise TrainingDiverged(
                f"the loss or gradients became NaN or infinite at step {bad}; no update was applied from then on, "
                f"so the weights are those of step {bad - 1} and the last checkpoint is kept. Usual causes: "
                f"a learning rate too high (trainer.learning_rate={cfg.learning_rate}), float16 overflow "
                "(use model.dtype=bfloat16 or float32), or bad rows in the data"
            )

    def learning_rate_at(self, step: int) -> float:
        """The learning rate that optimizer step `step` (1-based) used."""
        return float(self.schedule(mx.array(step - 1)).item())

    def _track_best(self, step: int, val_loss: float) -> bool:
        """Remember the best validation loss; True when early stopping says stop."""
        if val_loss < self.state.best_val_loss:
            self.state.best_val_loss, self.state.best_step = val_loss, step
            self.state.evals_without_improvement = 0
            if self.cfg.early_stopping_patience:
                # MLX arrays are immutable: keeping references is a snapshot, not a copy.
                self.best_weights = trainable_parameters(self.model)
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
        batches = length_bucketed_batches(samples, self.cfg.batch_size, self.pad_to_multiple, seed=0, min_width=self.min_width)
        if max_batches > 0:
            batches = batches[:max_batches]
        # Each process takes every world_size-th batch; one all_sum at the end, so ranks
        # with fewer batches never wait on a collective the others skip.
        total, count = mx.array(0.0), mx.array(0.0)
        for batch in batches[distributed.rank() :: distributed.world_size()]:
            loss_sum, ntok = self._eval_step(self._arrays(batch))
            total, count = total + loss_sum, count + ntok
            mx.async_eval(total, count)
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
        A non-finite loss or gradient raises TrainingDiverged at the next report, evaluation
        or save, with the weights of the step before it.
        """
        cfg = self.cfg
        mx.reset_peak_memory()
        self.model.train()
        batches = iterate_training_batches(
            train, cfg.batch_size, self.pad_to_multiple, cfg.seed, self.state.step * cfg.grad_accumulation,
            distributed.rank(), distributed.world_size(), pack_length=self.pack_length, min_width=self.min_width,
        )
        window = _Window()
        window.samples_seen = _samples_before(train, cfg, self.state.step * cfg.grad_accumulation, self.pack_length)
        progress = _progress(cfg.iters, self.state.step)
        val_loss = math.nan
        start_step = self.state.step
        if start_step == 0:  # the baseline that later validation losses are compared with
            val_loss = self.evaluate(valid, cfg.val_batches)
            log.info("step 0/%d  val_loss %.4f", cfg.iters, val_loss)
            on_metrics(0, {"val_loss": val_loss})
            # The untrained weights are a candidate too: when training only makes things worse,
            # early stopping and best-* must be able to choose them.
            if math.isfinite(val_loss):
                self._track_best(0, val_loss)
        # A checkpoint written when early stopping stopped (resumed after a crash in the final
        # evaluation) is not trained further: only the best weights are restored.
        patience = cfg.early_stopping_patience
        last_step = start_step if patience and self.state.evals_without_improvement >= patience else cfg.iters
        window.restart_clock()
        previous = None  # the last queued step's outputs
        with _deferred_interrupts() as stop:
            for step in range(start_step + 1, last_step + 1):
                micro = [next(batches) for _ in range(cfg.grad_accumulation)]
                previous = self._queue_and_wait(micro, step, window, previous, on_save)
                self.state.step = step
                progress.update(1)
                if step % cfg.report_every == 0 or step == cfg.iters:
                    self.check_finite()
                    metrics = window.flush()
                    metrics.update(learning_rate=self.learning_rate_at(step), peak_memory_gb=mx.get_peak_memory() / 1e9)
                    progress.set_postfix(loss=f"{metrics['train_loss']:.3f}", refresh=False)
                    log.info(
                        "step %d/%d  train_loss %.4f  lr %.2e  %.0f answer tok/s  %.0f tok/s  pad %.1f%%  peak %.2f GB",
                        step, cfg.iters, metrics["train_loss"], metrics["learning_rate"], metrics["tokens_per_s"],
                        metrics["all_tokens_per_s"], 100 * metrics["padding_share"], metrics["peak_memory_gb"],
                    )
                    on_metrics(step, metrics)
                stop_early = False
                if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.iters:
                    self.check_finite()
                    window.pause()
                    val_loss = self.evaluate(valid, cfg.val_batches)
                    stop_early = self._track_best(step, val_loss)
                    log.info("step %d/%d  val_loss %.4f", step, cfg.iters, val_loss)
                    on_metrics(step, {"val_loss": val_loss, "samples_seen": window.samples_seen})
                    window.resume()
                if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.iters or stop[0] or stop_early:
                    self.check_finite()
                    window.pause()
                    on_save(step)
                    window.resume()
                if stop[0]:
                    raise Interrupted(f"{stop[0]} at step {step}", step)
                if stop_early:
                    log.info("early stopping at step %d: no better validation loss for %d evaluations", step, cfg.early_stopping_patience)
                    break
        if self.best_weights is not None and cfg.early_stopping_patience:
            log.info("restoring the best adapter (step %d, val_loss %.4f)", self.state.best_step, self.state.best_val_loss)
            load_trainable(self.model, self.best_weights)
            val_loss = self.state.best_val_loss
            if self.on_restored is not None:
                self.on_restored(self.state.best_step)
        progress.close()
        totals = window.totals()
        return {
            "train_loss": totals["train_loss"],
            "val_loss": val_loss,
            "best_val_loss": self.state.best_val_loss,
            "tokens_per_s": totals["tokens_per_s"],
            "all_tokens_per_s": totals["all_tokens_per_s"],
            "padding_share": totals["padding_share"],
            "samples_seen": window.samples_seen,
            "peak_memory_gb": mx.get_peak_memory() / 1e9,
            "steps": self.state.step,
        }


# Gradients up to this many values (256 MB in float32) are laid end to end for the norm; LoRA's
# are far smaller (rank 16 on a 7B model: 42 million). Above it (full fine-tuning) a copy of
# every gradient would cost more memory than the per-array reductions cost time.
_NORM_IN_ONE_REDUCTION = 1 << 26


def global_norm(grads: dict) -> mx.array:
    """The L2 norm of all gradients together, in float32.

    One reduction over the gradients laid end to end, not one per array: a LoRA model has
    hundreds of small gradient arrays, and per array the square, the sum and the reshape are
    three more graph nodes (and two more GPU kernels) in a step bound by their number.
    """
    flat = [g.reshape(-1) for _, g in tree_flatten(grads)]
    if sum(g.size for g in flat) > _NORM_IN_ONE_REDUCTION:
        return mx.sqrt(sum((g.astype(mx.float32).square().sum() for g in flat), mx.array(0.0)))
    return mx.sqrt(mx.concatenate(flat).astype(mx.float32).square().sum())


def adamw_update(optimizer: optim.AdamW, schedule: Callable, params: dict, grads: dict, scale: mx.array,
                 ok: mx.array) -> dict:
    """MLX's AdamW step on `grads * scale`, applied only where `ok` (a scalar) is true; returns the
    new parameters and updates `optimizer.state` (same layout and arithmetic as optim.AdamW, in
    float32).

    Why not optimizer.update: composed with the gradient scaling and a skip (mx.where on every
    parameter and moment), MLX's compiler splits each array's update into seven kernels (it
    fuses only shallow chains through single consumers); one GPU step launches thousands of
    them (benchmarks/NOTES.md). Here the skip acts through scalars (a zero rate, moments kept
    by factors 1 and 0, a zeroed gradient), so each array's update stays one fused kernel.
    When not ok, every parameter and moment keeps its value exactly.
    """
    state = optimizer.state
    count = state["step"]
    lr = schedule(count)
    b1, b2 = optimizer.betas
    gate = ok.astype(mx.float32)
    lr_ok = lr * gate
    keep1, take1 = mx.where(ok, b1, 1.0), (1 - b1) * gate
    keep2, take2 = mx.where(ok, b2, 1.0), (1 - b2) * gate
    if optimizer.bias_correction:  # at count + 1, the update this step makes
        c1, c2 = lr_ok / (1 - b1 ** (count + 1)), mx.rsqrt(1 - b2 ** (count + 1))
    else:
        c1, c2 = lr_ok, mx.array(1.0)
    decay = 1 - lr_ok * optimizer.weight_decay

    def update(gradient: mx.array, parameter: mx.array, moments: dict) -> mx.array:
        # In float32 whatever the parameter's dtype: a bfloat16 update of a bfloat16 weight
        # loses every step smaller than half its spacing (most of them at fine-tuning rates),
        # so full fine-tuning keeps float32 weights and moments from the first step on, as it
        # did when the gradients were divided by the float32 token count before the update.
        g = mx.where(ok, gradient.astype(mx.float32) * scale, 0.0)
        m = keep1 * moments["m"] + take1 * g
        v = keep2 * moments["v"] + take2 * mx.square(g)
        moments["m"], moments["v"] = m, v
        return parameter * decay - c1 * m / (mx.sqrt(v) * c2 + optimizer.eps)

    new_params = tree_map(update, grads, params, state)
    state["learning_rate"] = lr
    state["step"] = count + ok.astype(count.dtype)
    return new_params


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


def _samples_before(train: list[Sample], cfg: DictConfig, micro_steps: int, pack_length: int) -> int:
    """Samples trained on before micro-batch `micro_steps` (a resumed run counts on from there)."""
    if not pack_length:
        return micro_steps * cfg.batch_size
    from riscv_ft.data.packing import samples_before

    return samples_before(train, cfg.batch_size, pack_length, cfg.seed, micro_steps)


PACKED_LOSS_BUCKETS = 16


def batch_arrays(batch: Batch, select_positions: bool = True) -> dict:
    """masked_loss's arguments after the model, as MLX arrays by name."""
    arrays = {"inputs": mx.array(batch.inputs), "targets": mx.array(batch.targets), "mask": mx.array(batch.mask)}
    if select_positions:
        # Packed rows have one shape, so the loss-position count is the only one that varies:
        # coarse buckets (a sixteenth of the batch) keep the compiled shapes to a handful.
        multiple = 8 if batch.segment_ids is None else max(8, batch.inputs.size // PACKED_LOSS_BUCKETS)
        arrays["positions"] = mx.array(loss_positions(batch.mask, multiple))
    if batch.segment_ids is not None:
        arrays["segment_ids"] = mx.array(batch.segment_ids)
    return arrays


class _Window:
    """Loss and throughput since the last report, and over the whole run.

    The sums [loss, answer tokens, real tokens, padded tokens, samples] stay on the device and
    are read only at a report (flush), so counting them never stalls the loop. Time spent
    evaluating or saving is excluded (pause/resume), so tokens/s is training speed only. The
    run's train_loss is the last report's: an average over the whole run would mostly measure
    the first steps.
    """

    def __init__(self):
        self.sums = mx.zeros(5, dtype=mx.float32)
        self.steps = 0
        self.samples_flushed = 0  # samples trained before this window; fit sets where a resumed run starts
        self.last_loss: float | None = None
        self.all = dict(loss=0.0, ntok=0.0, real=0.0, padded=0.0, seconds=0.0)
        self.seconds = 0.0  # training time in this window before the last pause
        self.t0: float | None = time.perf_counter()

    @property
    def samples_seen(self) -> int:
        """Samples trained on so far (packing changes how many a step takes: compare runs at equal samples_seen)."""
        return self.samples_flushed + int(self.sums[4].item())

    @samples_seen.setter
    def samples_seen(self, value: int) -> None:
        self.samples_flushed = value

    def add(self, totals: mx.array) -> None:
        self.sums = self.sums + totals
        self.steps += 1

    def restart_clock(self) -> None:
        self.seconds, self.t0 = 0.0, time.perf_counter()

    def pause(self) -> None:
        mx.eval(self.sums)  # the queued steps belong to training time
        if self.t0 is not None:
            self.seconds += time.perf_counter() - self.t0
        self.t0 = None

    def resume(self) -> None:
        self.t0 = time.perf_counter()

    def flush(self) -> dict:
        loss, ntok, real, padded, samples = self.sums.tolist()
        seconds = max(self.seconds + (time.perf_counter() - self.t0 if self.t0 is not None else 0.0), 1e-9)
        self.samples_flushed += int(samples)
        metrics = {
            "train_loss": loss / max(ntok, 1.0),
            "tokens_per_s": ntok / seconds,
            "all_tokens_per_s": real / seconds,
            "padding_share": 1.0 - real / max(padded, 1.0),
            "answer_tokens": ntok,  # of the global batch, since the last report
            "samples_per_step": samples / max(self.steps, 1),
            "samples_seen": self.samples_flushed,
        }
        for key, value in (("loss", loss), ("ntok", ntok), ("real", real), ("padded", padded), ("seconds", seconds)):
            self.all[key] += value
        self.sums = mx.zeros(5, dtype=mx.float32)
        self.steps = 0
        self.restart_clock()
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

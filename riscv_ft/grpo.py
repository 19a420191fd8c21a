# One module on purpose: the GRPO objective, its rewards and GrpoTrainer (a Trainer subclass,
# most of the file) change together; none of it is used without the others.
"""GRPO: training rewarded by the assembler and emulator (`trainer.objective=grpo`).

Each optimizer step takes `grpo.prompts_per_step` prompts (each process its share) and, for
each, samples a group of `grpo.group_size` answers with mlx-lm's BatchGenerator. The scorer
(riscv_ft.evaluate.scorer) rewards each answer against the prompt's reference: functional,
assembles but wrong, or neither (`grpo.reward_*`). An answer's advantage is its reward
normalized within its group, A = (r - mean) / (std + eps). Per answer token t:

    ratio_t = exp(logp_t - logp_old_t)                    (current / sampling policy)
    kl_t    = exp(ref_t - logp_t) - (ref_t - logp_t) - 1  (k3 estimator, >= 0)
    loss_t  = -(min(ratio_t * A, clip(ratio_t, 1-e, 1+e) * A) - beta * kl_t)

summed over every answer token of the global batch and divided once by their count (as SFT's
loss: ranks and micro-batches add up exactly). Log-probabilities are those of the sampling
distribution (logits / temperature). The reference policy `ref` is the same model with its
LoRA/DoRA layers swapped for their base linear layers (`adapters_off`): no second copy of
the base; or, with grpo.kl_reference=init, the trainable weights GRPO started from, swapped in
for the reference pass.

The loop reuses the SFT Trainer's optimizer, learning-rate schedule, AdamW update, non-finite
guard, validation loss, checkpoints (through riscv_ft.experiment) and Ctrl-C handling. Every
step's prompts and samples depend only on (seed, step), so a resumed run is exact.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.nn.utils import average_gradients
from mlx.utils import tree_flatten, tree_map, tree_unflatten
from omegaconf import DictConfig

from riscv_ft import distributed
from riscv_ft.config import ConfigError
from riscv_ft.data.batch import Sample, batch_multiple, make_batch
from riscv_ft.data.pipeline import prompt_text
from riscv_ft.trainer import (Interrupted, MetricsCallback, Trainer, _cross_entropy, _deferred_interrupts, _logits_at,
                              adamw_update, global_norm, loss_positions, step_seed)

log = logging.getLogger(__name__)

ADVANTAGE_EPSILON = 1e-4  # keeps a group whose rewards barely differ from blowing up its advantages
SAMPLES_FILE = "grpo_samples.jsonl"

# rows (dicts with description, reference, prediction, answer_tokens) -> one dict per row with
# at least "reward" (and, from the scorer, "functional" / "assembles").
RewardFn = Callable[[list[dict]], list[dict]]


# ------------------------------------------------------------ the objective


def group_advantages(rewards: np.ndarray) -> np.ndarray:
    """Rewards (groups, group_size) -> advantages normalized within each group (population std)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    mean = rewards.mean(axis=1, keepdims=True)
    std = rewards.std(axis=1, keepdims=True)
    return ((rewards - mean) / (std + ADVANTAGE_EPSILON)).astype(np.float32)


def grpo_token_losses(logp: mx.array, old_logp: mx.array, ref_logp: mx.array | None, advantages: mx.array,
                      clip_epsilon: float, beta: float) -> tuple[mx.array, mx.array, mx.array]:
    """Per answer token: the loss, the KL estimate to the reference, and whether the clip acted."""
    ratio = mx.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = mx.clip(ratio, 1.0 - clip_epsilon, 1.0 + clip_epsilon) * advantages
    objective = mx.minimum(unclipped, clipped)
    if ref_logp is None:
        kl = mx.zeros_like(logp)
    else:
        log_ref_ratio = ref_logp - logp
        kl = mx.exp(log_ref_ratio) - log_ref_ratio - 1.0
    return -(objective - beta * kl), kl, (clipped < unclipped).astype(mx.float32)


def token_logprobs(model: nn.Module, inputs: mx.array, targets: mx.array, positions: mx.array,
                   temperature: float) -> mx.array:
    """log p(target) at the flat `positions` of the batch under logits / temperature (the
    distribution the answers were sampled from). The output layer runs at those positions only."""
    logits = _logits_at(model, inputs, positions).astype(mx.float32) / temperature
    return -_cross_entropy(logits, targets.reshape(-1)[positions])


def grpo_loss(model: nn.Module, inputs: mx.array, targets: mx.array, mask: mx.array, positions: mx.array,
              advantages: mx.array, ref_logp: mx.array | None = None, old_logp: mx.array | None = None, *,
              clip_epsilon: float, beta: float, temperature: float):
    """Summed GRPO loss over the kept answer tokens, their count, and the summed KL and clip counts.

    advantages / ref_logp / old_logp are per position of `positions`. Without old_logp the
    sampling policy is the current one (one update per sampled batch): ratio 1, same gradient.
    """
    logp = token_logprobs(model, inputs, targets, positions, temperature)
    old = mx.stop_gradient(logp) if old_logp is None else old_logp
    keep = mask.reshape(-1)[positions]
    losses, kl, clipped = grpo_token_losses(logp, old, ref_logp, advantages, clip_epsilon, beta)
    return (losses * keep).sum(), keep.sum(), (kl * keep).sum(), (clipped * keep).sum()


@contextmanager
def adapters_off(model: nn.Module):
    """The model without its adapters: every LoRA/DoRA layer is swapped for the base linear
    layer it wraps, then put back. The reference policy of the KL term, with no second copy."""
    from mlx_lm.tuner.dora import DoRALinear
    from mlx_lm.tuner.lora import LoRALinear

    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, (LoRALinear, DoRALinear))]
    model.update_modules(tree_unflatten([(name, m.linear) for name, m in wrapped]))
    try:
        yield model
    finally:
        model.update_modules(tree_unflatten(wrapped))


# ------------------------------------------------------------ rewards


@dataclass
class RewardWeights:
    functional: float = 1.0
    assembles: float = 0.1
    other: float = 0.0


def scorer_rewards(rows: list[dict], weights: RewardWeights, assembler: str = "auto") -> list[dict]:
    """The product reward: the real assembler and emulator score each answer against its reference."""
    from riscv_ft.evaluate.scorer import score_rows

    scored = score_rows([{"reference": r["reference"], "prediction": r["prediction"], "scratch": r.get("scratch")}
                         for r in rows], assembler)
    out = []
    for row in scored:
        functional, assembles = bool(row.get("functional")), bool(row.get("assembles"))
        reward = weights.functional if functional else weights.assembles if assembles else weights.other
        out.append({"reward": float(reward), "functional": functional, "assembles": assembles, "error": row.get("error")})
    return out


# ------------------------------------------------------------ prompts


def grpo_prompts(splits: dict[str, list[dict]], cfg: DictConfig) -> list[dict]:
    """{description, reference, scratch} prompts: the training split's assembly-class rows (unless
    grpo.split_prompts=false), grpo.synthetic_prompts verified synthetic tasks and
    grpo.task_prompts verified multi-instruction tasks, minus any description of an evaluation set
    (the valid and test splits, the user-style prompts)."""
    from riscv_ft.data.user_prompts import load_user_prompts
    from riscv_ft.rv.reference import classify

    held_out = {r["description"] for name in ("valid", "test") for r in splits.get(name, [])}
    held_out |= {r["description"] for r in load_user_prompts()}
    rows = [r for r in splits["train"] if classify(r["instructions"]) == "assembly"] if cfg.grpo.split_prompts else []
    if cfg.grpo.synthetic_prompts:
        from riscv_ft.data.synthetic import synthetic_rows

        # Another seed than data.mix_synthetic's, so GRPO sees tasks SFT did not.
        rows += synthetic_rows(cfg.grpo.synthetic_prompts, seed=cfg.trainer.seed + 7919, assembler=cfg.eval.assembler,
                               max_instructions=cfg.grpo.synthetic_max_instructions)
    if cfg.grpo.task_prompts:
        from riscv_ft.data.tasks import task_rows

        # Another seed than data.mix_tasks' (seed + 3), for the same reason.
        rows += task_rows(cfg.grpo.task_prompts, seed=cfg.trainer.seed + 7927, assembler=cfg.eval.assembler)
    prompts, seen = [], set()
    for r in rows:
        if r["description"] not in held_out and r["description"] not in seen:
            seen.add(r["description"])
            prompt = {"description": r["description"], "reference": r["instructions"]}
            if r.get("scratch"):
                prompt["scratch"] = list(r["scratch"])  # registers the answer may clobber, as in the evaluation
            prompts.append(prompt)
    if not prompts:
        raise ConfigError("trainer.objective=grpo: no prompts (no assembly-class rows of the training split"
                          f"{'' if cfg.grpo.split_prompts else ' with grpo.split_prompts=false'}, "
                          "grpo.synthetic_prompts=0, grpo.task_prompts=0); set either count to a positive number")
    return prompts


def load_init_adapters(model: nn.Module, folder: str, lora_meta: dict) -> None:
    """Load an SFT run's adapters (grpo.init_adapters) into the freshly adapted model; the LoRA
    settings must be the ones it was trained with."""
    from riscv_ft.model import load_trainable

    path = Path(folder).expanduser()
    config_file, weights_file = path / "adapter_config.json", path / "adapters.safetensors"
    if not (config_file.is_file() and weights_file.is_file()):
        raise ConfigError(f"grpo.init_adapters={folder}: no adapters.safetensors and adapter_config.json there "
                          "(give an SFT run's RUN/adapters folder)")
    saved = json.loads(config_file.read_text())
    ours, theirs = lora_meta["lora_parameters"], saved.get("lora_parameters", {})
    for key in ("rank", "scale", "keys"):
        if theirs.get(key) != ours[key]:
            raise ConfigError(f"grpo.init_adapters={folder}: its lora {key} is {theirs.get(key)!r}, this run's is "
                              f"{ours[key]!r}; set lora.* as in the run that wrote it")
    if saved.get("num_layers") != lora_meta["num_layers"]:
        raise ConfigError(f"grpo.init_adapters={folder}: adapters on {saved.get('num_layers')} layers, this run puts "
                          f"them on {lora_meta['num_layers']}; set lora.num_layers as in the run that wrote it")
    load_trainable(model, mx.load(str(weights_file)))
    log.info("GRPO starts from the adapters in %s", path)


# ------------------------------------------------------------ sampling


def sample_answers(model: nn.Module, tokenizer, prompts: list[list[int]], max_tokens: int, temperature: float,
                   top_p: float = 0.0) -> list[tuple[list[int], bool]]:
    """One sampled answer per prompt: its token ids (ending with EOS when the model stopped) and
    whether it stopped. mlx-lm's batch_generate drops the EOS and the finish reason, which
    training needs (stopping is part of the answer), so this drives its BatchGenerator."""
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.sample_utils import make_sampler

    generator = BatchGenerator(model, max_tokens=max_tokens, stop_tokens=[[t] for t in tokenizer.eos_token_ids],
                               sampler=make_sampler(temp=temperature, top_p=top_p),
                               completion_batch_size=len(prompts), prefill_batch_size=len(prompts))
    try:
        uids = generator.insert(prompts, [max_tokens] * len(prompts))
        tokens = {uid: [] for uid in uids}
        stopped = {uid: False for uid in uids}
        while responses := generator.next_generated():
            for r in responses:
                tokens[r.uid].append(int(r.token))
                if r.finish_reason == "stop":
                    stopped[r.uid] = True
    finally:
        generator.close()
    return [(tokens[uid], stopped[uid]) for uid in uids]


# ------------------------------------------------------------ the loop


class GrpoTrainer(Trainer):
    """The SFT Trainer's optimizer, schedule, guard, validation and state, with a GRPO step."""

    def __init__(self, model: nn.Module, tokenizer, cfg: DictConfig, prompts: list[dict],
                 reward_fn: RewardFn | None = None, samples_path: Path | None = None):
        super().__init__(model, cfg.trainer, batch_multiple(cfg.data), min_width=cfg.data.min_width or 0)
        self.grpo, self.tokenizer, self.prompt_format = cfg.grpo, tokenizer, cfg.data.prompt_format
        self.prompts = prompts
        weights = RewardWeights(cfg.grpo.reward_functional, cfg.grpo.reward_assembles, cfg.grpo.reward_other)
        self.reward_fn = reward_fn or partial(scorer_rewards, weights=weights, assembler=cfg.eval.assembler)
        self.samples_path = samples_path
        per_rank, world = cfg.grpo.prompts_per_step // distributed.world_size(), distributed.world_size()
        if per_rank * world != cfg.grpo.prompts_per_step:
            raise ConfigError(f"grpo.prompts_per_step={cfg.grpo.prompts_per_step} must divide by the number of processes ({world})")
        # kl_reference=init: the starting weights, kept as they are (MLX updates make new arrays).
        self._reference = (dict(tree_flatten(model.trainable_parameters())) if cfg.grpo.kl_reference == "init" else None)
        self._build_grpo_steps()

    @contextmanager
    def _reference_policy(self):
        """The KL term's reference policy, for as long as the block runs (graphs built in it keep it)."""
        if self._reference is None:
            with adapters_off(self.model):
                yield
            return
        current = self.model.trainable_parameters()
        self.model.update(tree_unflatten(list(self._reference.items())))
        try:
            yield
        finally:
            self.model.update(current)

    def _build_grpo_steps(self) -> None:
        model, optimizer, cfg, bad_step, g = self.model, self.optimizer, self.cfg, self.bad_step, self.grpo
        loss = partial(grpo_loss, clip_epsilon=g.clip_epsilon, beta=g.beta, temperature=g.temperature)
        loss_and_grad = nn.value_and_grad(model, loss)

        def grad_step(batch):
            (loss_sum, ntok, kl_sum, clipped), grads = loss_and_grad(model, **batch)
            return mx.stack([loss_sum, ntok, kl_sum, clipped]), grads

        def apply_step(grads, local, step):
            """As the SFT step: sums over processes, one division by the global answer-token count,
            clipping folded into the update, no update once anything is not finite."""
            totals = distributed.all_sum(local)
            ntok = mx.maximum(totals[1], 1.0)
            if distributed.world_size() > 1:
                grads = average_gradients(grads, group=distributed.group())
                factor = distributed.world_size() / ntok
            else:
                factor = 1.0 / ntok
            norm = global_norm(grads) * factor
            if cfg.max_grad_norm > 0:
                factor = factor * mx.minimum(cfg.max_grad_norm / (norm + 1e-6), 1.0)
            ok = mx.isfinite(totals[0]) & mx.isfinite(norm) & (bad_step[0] == 0)
            model.update(adamw_update(optimizer, self.schedule, model.trainable_parameters(), grads, factor, ok))
            bad_step[0] = mx.where(ok | (bad_step[0] > 0), bad_step[0], step)
            return totals

        def logprobs(batch):
            return token_logprobs(model, batch["inputs"], batch["targets"], batch["positions"], g.temperature)

        if cfg.compile:
            state = [model.state, optimizer.state, mx.random.state, bad_step]
            grad_step = mx.compile(grad_step, inputs=state, outputs=state)
            apply_step = mx.compile(apply_step, inputs=state, outputs=state)
        # Not compiled: the reference pass swaps modules, which a traced graph would not see.
        self._grpo_grad, self._grpo_apply, self._logprobs = grad_step, apply_step, logprobs

    def step_prompts(self, step: int) -> list[dict]:
        """This process's share of step `step`'s prompts (prompts_per_step x grpo.oversample in all):
        a seeded permutation per pass over the pool, a function of (seed, step) alone so a resumed
        run takes the same prompts."""
        total, n = self.grpo.prompts_per_step * self.grpo.oversample, len(self.prompts)
        chosen = []
        for k in range((step - 1) * total, step * total):
            epoch = k // n
            order = np.random.default_rng([self.cfg.seed, epoch]).permutation(n)
            chosen.append(self.prompts[int(order[k % n])])
        return chosen[distributed.rank():: distributed.world_size()]

    def sample_step(self, step: int) -> tuple[list[dict], list[dict], list[list[int]]]:
        """Sample and reward this process's groups for step `step`. Returns every sampled answer
        row (prompt-major, group_size per prompt, each marked `trained`), and the rows to train on
        with their prompt token ids.

        With grpo.oversample = m > 1 this is DAPO's dynamic sampling, in one batch: m times the
        prompts are sampled and only groups whose answers earn different rewards are trained on,
        the first prompts_per_step of them (fewer where fewer are found), since a group of equal
        rewards has zero advantages and teaches nothing but the KL term. From SFT adapters 18 of 20
        recorded task groups were all right or all wrong (NOTES 16), so plain GRPO learnt from few
        groups a step; NOTES 17 measures the share as it falls. One batch, not rounds until enough are found: a decoding step costs about the same
        at 64 answers as at 256 on a GPU, so rounds would multiply the sampling time."""
        g, tokenizer = self.grpo, self.tokenizer
        prompts = self.step_prompts(step)
        encoded = [tokenizer.encode(prompt_text(p["description"], tokenizer, self.prompt_format),
                                    add_special_tokens=self.prompt_format != "chat") for p in prompts]
        repeated = [ids for ids in encoded for _ in range(g.group_size)]
        # Each process draws its own samples; with one process this is the step's own seed.
        mx.random.seed(step_seed(self.cfg.seed, step) * distributed.world_size() + distributed.rank())
        self.model.eval()
        answers = sample_answers(self.model, tokenizer, repeated, g.max_tokens, g.temperature, g.top_p)
        self.model.train()
        rows = []
        for k, (tokens, stopped) in enumerate(answers):
            prompt = prompts[k // g.group_size]
            text = tokenizer.decode(tokens[:-1] if stopped else tokens).strip()
            rows.append({"step": step, "group": k // g.group_size, "description": prompt["description"],
                         "reference": prompt["reference"], "prediction": text, "answer_tokens": tokens, "stopped": stopped,
                         **({"scratch": prompt["scratch"]} if prompt.get("scratch") else {})})
        for row, verdict in zip(rows, self.reward_fn(rows)):
            row.update(verdict)
        rewards = np.array([r["reward"] for r in rows], dtype=np.float32).reshape(len(prompts), g.group_size)
        for row, advantage in zip(rows, group_advantages(rewards).reshape(-1)):
            row["advantage"] = float(advantage)
        share = len(prompts) // g.oversample
        groups = [range(k * g.group_size, (k + 1) * g.group_size) for k in range(len(prompts))]
        if g.oversample > 1:
            informative = [grp for grp in groups if len({rows[i]["reward"] for i in grp}) > 1]
            # none found: the first share of groups (their advantages are zero: the KL term alone)
            groups = informative[:share] or groups[:share]
        trained = [i for grp in groups for i in grp]
        chosen = set(trained)
        for i, row in enumerate(rows):
            row["trained"] = i in chosen
        return rows, [rows[i] for i in trained], [repeated[i] for i in trained]

    def _micro_batches(self, rows: list[dict], prompt_ids: list[list[int]]) -> list[dict]:
        """The answers as training batches of trainer.batch_size sequences, with each answer's
        advantage at its answer positions."""
        out = []
        size = self.cfg.batch_size
        for start in range(0, len(rows), size):
            chunk = rows[start:start + size]
            samples = [Sample(prompt_ids[start + i] + r["answer_tokens"], len(prompt_ids[start + i])) for i, r in enumerate(chunk)]
            batch = make_batch(samples, self.pad_to_multiple, min_width=self.min_width)
            positions = loss_positions(batch.mask)
            width = batch.inputs.shape[1]
            advantages = np.array([r["advantage"] for r in chunk], dtype=np.float32)[positions // width]
            out.append({"inputs": mx.array(batch.inputs), "targets": mx.array(batch.targets), "mask": mx.array(batch.mask),
                        "positions": mx.array(positions), "advantages": mx.array(advantages)})
        return out

    def _queue_grpo_step(self, batches: list[dict], step: int) -> mx.array:
        """One optimizer step over the micro-batches: [loss, answer tokens, KL, clipped] summed."""
        mx.random.seed(step_seed(self.cfg.seed, step))
        local, grads = mx.zeros(4), None
        for batch in batches:
            sums, g = self._grpo_grad(batch)
            local = local + sums
            grads = g if grads is None else tree_map(mx.add, grads, g)
        return self._grpo_apply(grads, local, mx.array(step, dtype=mx.int32))

    def train_on(self, rows: list[dict], prompt_ids: list[list[int]], step: int) -> mx.array:
        """The updates of one sampled batch (grpo.updates_per_batch of them)."""
        batches = self._micro_batches(rows, prompt_ids)
        if self.grpo.beta > 0:
            with self._reference_policy():
                for batch in batches:
                    batch["ref_logp"] = mx.stop_gradient(self._logprobs(batch))
        if self.grpo.updates_per_batch > 1:  # later updates need the sampling policy's own values
            for batch in batches:
                batch["old_logp"] = mx.stop_gradient(self._logprobs(batch))
        mx.eval([list(b.values()) for b in batches])
        totals = mx.zeros(4)
        for _ in range(self.grpo.updates_per_batch):
            totals = totals + self._queue_grpo_step(batches, step)
            mx.eval(totals)
        return totals / self.grpo.updates_per_batch

    def fit(self, train: list, valid: list, on_metrics: MetricsCallback, on_save: Callable[[int], None]) -> dict:
        """GRPO to trainer.iters (from state.step when resumed); `train` is unused (the prompts
        were given at construction), `valid` gives the validation loss on references."""
        cfg, g = self.cfg, self.grpo
        mx.reset_peak_memory()
        self.model.train()
        self._trim_samples(self.state.step)
        window: dict[str, float] = {}
        val_loss, t0 = math.nan, time.perf_counter()
        last: dict = {}
        with _deferred_interrupts() as stop:
            for step in range(self.state.step + 1, cfg.iters + 1):
                t_sample = time.perf_counter()
                rows, train_rows, prompt_ids = self.sample_step(step)
                sample_seconds = time.perf_counter() - t_sample
                totals = self.train_on(train_rows, prompt_ids, step)
                self.state.step = step
                self._add(window, rows, totals, sample_seconds)
                if self.samples_path is not None and g.samples_every and (step % g.samples_every == 0 or step == cfg.iters):
                    self._write_samples(rows)
                if step % cfg.report_every == 0 or step == cfg.iters:
                    self.check_finite()
                    last = self._flush(window, time.perf_counter() - t0)
                    last.update(learning_rate=self.learning_rate_at(step), peak_memory_gb=mx.get_peak_memory() / 1e9)
                    log.info("step %d/%d  reward %.3f  functional %.3f  kl %.4f  loss %.4f  answer %.1f tok  %.1f s/step",
                             step, cfg.iters, last["reward_mean"], last["functional_fraction"], last["kl"],
                             last["train_loss"], last["answer_length"], last["seconds_per_step"])
                    on_metrics(step, last)
                    window, t0 = {}, time.perf_counter()
                if valid and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.iters):
                    self.check_finite()
                    val_loss = self.evaluate(valid, cfg.val_batches)
                    log.info("step %d/%d  val_loss %.4f", step, cfg.iters, val_loss)
                    on_metrics(step, {"val_loss": val_loss})
                if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.iters or stop[0]:
                    self.check_finite()
                    on_save(step)
                if stop[0]:
                    raise Interrupted(f"{stop[0]} at step {step}", step)
        return {"train_loss": last.get("train_loss", math.nan), "val_loss": val_loss,
                "best_val_loss": None,  # GRPO keeps its last adapters: no best by validation loss (not Infinity in JSON)
                "reward_mean": last.get("reward_mean", math.nan), "functional_fraction": last.get("functional_fraction", math.nan),
                "peak_memory_gb": mx.get_peak_memory() / 1e9, "steps": self.state.step}

    # ------------------------------------------------------------ reporting

    def _add(self, window: dict, rows: list[dict], totals: mx.array, sample_seconds: float) -> None:
        loss_sum, ntok, kl_sum, clipped = totals.tolist()
        groups: dict[int, set] = {}
        for r in rows:
            groups.setdefault(r["group"], set()).add(r["reward"])
        # A group whose answers all earn the same reward has zero advantages: it teaches nothing
        # but the KL term (a base that never earns a reward never learns).
        local = [sum(r["reward"] for r in rows), sum(bool(r.get("functional")) for r in rows),
                 sum(bool(r.get("assembles")) for r in rows), len(rows), sum(len(r["answer_tokens"]) for r in rows),
                 sum(r["stopped"] for r in rows), sum(len(v) > 1 for v in groups.values()), len(groups),
                 sum(bool(r.get("trained", True)) for r in rows)]
        # Rewards are per process; the loss sums were already summed over processes.
        rewards = distributed.all_sum(mx.array(local, dtype=mx.float32)).tolist()
        for key, value in zip(("reward", "functional", "assembles", "answers", "tokens", "stopped", "informative", "groups",
                               "trained", "loss", "ntok", "kl",
                               "clipped", "sample_s", "steps"),
                              [*rewards, loss_sum, ntok, kl_sum, clipped, sample_seconds, 1]):
            window[key] = window.get(key, 0.0) + value

    @staticmethod
    def _flush(window: dict, seconds: float) -> dict:
        answers, ntok = max(window["answers"], 1.0), max(window["ntok"], 1.0)
        return {"reward_mean": window["reward"] / answers, "functional_fraction": window["functional"] / answers,
                "assembles_fraction": window["assembles"] / answers, "answer_length": window["tokens"] / answers,
                "stopped_fraction": window["stopped"] / answers,
                "informative_groups": window["informative"] / max(window["groups"], 1.0),
                # answers sampled a step (more than prompts_per_step x group_size with grpo.oversample > 1)
                # and the share of them trained on
                "sampled_answers": answers / window["steps"], "trained_fraction": window["trained"] / answers,
                "train_loss": window["loss"] / ntok, "kl": window["kl"] / ntok,
                "clip_fraction": window["clipped"] / ntok, "seconds_per_step": seconds / window["steps"],
                "sampling_share": window["sample_s"] / max(seconds, 1e-9)}

    def _write_samples(self, rows: list[dict]) -> None:
        with open(self.samples_path, "a", encoding="utf-8") as f:
            for r in rows:
                keep = {k: v for k, v in r.items() if k != "answer_tokens"}
                f.write(json.dumps(keep, ensure_ascii=False) + "\n")

    def _trim_samples(self, step: int) -> None:
        """A resumed run drops the sample lines written after its checkpoint (they are written again)."""
        if self.samples_path is None or not self.samples_path.is_file():
            return
        lines = self.samples_path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        self.samples_path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def plot_rewards(history: list[dict], path: Path, title: str) -> Path | None:
    """Mean reward, fraction functional and the share of groups that teach something (answers
    with different rewards) against step, saved as a PNG. The last falls as sampling grows
    certain, and with it what GRPO can learn (NOTES 17)."""
    points = [(h["step"], h["reward_mean"], h["functional_fraction"], h.get("informative_groups", math.nan))
              for h in history if "reward_mean" in h]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, reward, functional, informative = zip(*points)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, reward, "-", label="mean reward")
    ax.plot(steps, functional, "--", label="fraction functional")
    ax.plot(steps, informative, ":", label="groups with differing rewards")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("per sampled answer / group")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

"""The memory policy: the cheapest setting whose estimate (riscv_ft.memory) fits the run's limit.

    plan_memory(cfg, explicit) the cheapest setting whose estimate fits trainer.memory_limit_gb
                             (checkpointing every k-th then every block, the chunked loss when
                             uncompiled, micro-batches); MemoryPlanError naming what to lower if none
    warn_if_too_big(cfg)     logs a warning naming the two changes that save the most, when the
                             estimate exceeds the memory this machine has available
    plan_for_data(cfg, ...)  the same once the data is tokenized, at its widest batch
    oom_advice(cfg)          the one line an out-of-memory failure ends with
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from riscv_ft.config import ConfigError
from riscv_ft.data.batch import widest_width
from riscv_ft.memory import estimate_memory_gb, memory_limit_gb, model_config

log = logging.getLogger(__name__)


class MemoryPlanError(ConfigError):
    """No setting the policy may choose fits trainer.memory_limit_gb."""


def configured_limit_gb(cfg: DictConfig) -> float | None:
    """trainer.memory_limit_gb as a number: auto -> memory_limit_gb(); off -> None."""
    value = str(cfg.trainer.get("memory_limit_gb", "auto")).strip().lower()
    if value == "auto":
        return memory_limit_gb()
    if value in ("off", "none", "null"):
        return None
    return float(value)


def _setting(changes: dict) -> str:
    return " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in changes.items())


def memory_candidates(cfg: DictConfig, explicit: set[str]) -> list[dict]:
    """The settings the policy tries, cheapest first (each a dict of changed keys, cumulative):
    as configured; gradient checkpointing of every 4th, every 2nd, then every block; the
    chunked loss; micro-batches (batch halved, accumulation doubled: same effective batch).
    A key the user set (`explicit`) is never changed."""
    t = cfg.trainer
    free = lambda key: key not in explicit  # noqa: E731
    ladder: list[dict] = [{}]
    current: dict = {}
    if not t.grad_checkpoint and free("trainer.grad_checkpoint"):
        layers = model_config(cfg.model)[0]["num_hidden_layers"]
        for every in ((4, 2, 1) if free("trainer.grad_checkpoint_every") else (t.grad_checkpoint_every,)):
            if every < layers or every == 1:
                current = {**current, "trainer.grad_checkpoint": True, "trainer.grad_checkpoint_every": every}
                ladder.append(current)
    # Compiled (the default), the chunked loss measured no saving in MLX 0.32: tried only uncompiled.
    if not t.get("loss_chunk") and free("trainer.loss_chunk") and not t.get("compile", True):
        current = {**current, "trainer.loss_chunk": 256}
        ladder.append(current)
    if free("trainer.batch_size") and free("trainer.grad_accumulation"):
        batch, acc = t.batch_size, t.grad_accumulation
        while batch > 1 and batch % 2 == 0:
            batch, acc = batch // 2, acc * 2
            current = {**current, "trainer.batch_size": batch, "trainer.grad_accumulation": acc}
            ladder.append(current)
    return ladder


def _apply(cfg: DictConfig, changes: dict) -> DictConfig:
    copy = cfg.copy()
    for key, value in changes.items():
        OmegaConf.update(copy, key, value, merge=False)
    return copy


def plan_memory(cfg: DictConfig, explicit: set[str] = frozenset(), limit_gb: float | None = None,
                width: int | None = None) -> DictConfig:
    """The cheapest setting whose estimate fits the limit (trainer.memory_limit_gb, or
    `limit_gb`), logged in one line and written into the returned config (the changed keys
    and trainer.memory_plan). Raises MemoryPlanError naming what to lower when none fits.
    `width`: the widest batch the tokenized data makes; before tokenizing, data.max_seq_length
    bounds it."""
    limit = limit_gb if limit_gb is not None else configured_limit_gb(cfg)
    if limit is None:
        return cfg
    if model_config(cfg.model)[1].startswith("assumed"):
        return cfg  # no config.json to size the model by (loading reports why): nothing to plan with
    tried = []
    for changes in memory_candidates(cfg, explicit):
        candidate = _apply(cfg, changes)
        sized = candidate if width is None else at_width(candidate, width)
        estimate = estimate_memory_gb(sized, limit_gb=limit)
        need = estimate["total_gb"]
        tried.append((changes, candidate, need))
        if need <= limit:
            what = _setting(changes) or "as configured"
            at = "" if width is None else f" at the data's widest batch, {width} wide"
            least = f"; it needs {estimate['least_gb']:.2f} GB and fills up to the limit" if "least_gb" in estimate else ""
            note = f"{what} (estimate {need:.2f} GB of {limit:.2f} GB{at}{least})"
            log.info("memory: %s", note)
            OmegaConf.update(candidate, "trainer.memory_plan", note, merge=False)
            return candidate
    changes, lowest, need = tried[-1]
    raise MemoryPlanError(
        f"this run needs about {need:.2f} GB{' with ' + _setting(changes) if changes else ''} but trainer.memory_limit_gb "
        f"allows {limit:.3g} GB; lower " + ", ".join(f"{k}={v} ({gb:.2f} GB)" for k, v, gb in lower_options(lowest, limit)))


def plan_for_data(configured: DictConfig, explicit: set[str], limit_gb: float | None, samples: list) -> tuple[DictConfig, float]:
    """plan_memory again once the data is tokenized: its widest batch is often far narrower than
    the data.max_seq_length the plan before loading had to assume, which can allow a faster
    setting. The config, and its estimate at that width."""
    width = widest_width(samples, configured.data)
    cfg = plan_memory(configured, explicit, limit_gb, width=width)
    return cfg, estimate_memory_gb(at_width(cfg, width), limit_gb=limit_gb)["total_gb"]


def at_width(cfg: DictConfig, width: int) -> DictConfig:
    """cfg sized for a batch `width` wide (what estimate_memory_gb reads as data.max_seq_length)."""
    return _apply(cfg, {"data.max_seq_length": width})


def lower_options(cfg: DictConfig, limit_gb: float | None = None) -> list[tuple[str, object, float]]:
    """(key, smaller value, estimate with it under `limit_gb`) for the batch size, the LoRA rank and
    the longest sample."""
    options = [("trainer.batch_size", 1)]
    if cfg.lora.fine_tune_type != "full":
        options.append(("lora.rank", max(cfg.lora.rank // 2, 1)))
    options.append(("data.max_seq_length", max(cfg.data.max_seq_length // 2, 8)))
    return [(k, v, estimate_memory_gb(_apply(cfg, {k: v}), limit_gb=limit_gb)["total_gb"])
            for k, v in options if OmegaConf.select(cfg, k) != v]


def oom_advice(cfg: DictConfig) -> str:
    """The one line an out-of-memory failure ends with: what to lower and the estimate for each."""
    return "lower " + ", ".join(f"{k}={v} (estimate {gb:.2f} GB)" for k, v, gb in lower_options(cfg))


def savings_gb(cfg: DictConfig) -> list[tuple[str, float]]:
    """(override, GB it saves) for each change that would lower the estimate, best first."""
    total = estimate_memory_gb(cfg)["total_gb"]
    options = []
    if cfg.trainer.batch_size > 1:
        options.append(("trainer.batch_size", max(cfg.trainer.batch_size // 2, 1)))
    if not cfg.trainer.grad_checkpoint:
        options.append(("trainer.grad_checkpoint", True))
    if cfg.lora.fine_tune_type != "full" and cfg.lora.rank > 1:
        options.append(("lora.rank", max(cfg.lora.rank // 2, 1)))
    if cfg.model.source != "tiny" and not cfg.model.quantize.enabled:
        options.append(("model.quantize.enabled", True))
    saved = [(f"{k}={str(v).lower() if isinstance(v, bool) else v}", total - estimate_memory_gb(_apply(cfg, {k: v}))["total_gb"])
             for k, v in options]
    return sorted((s for s in saved if s[1] > 0), key=lambda s: -s[1])


def warn_if_too_big(cfg: DictConfig, limit_gb: float | None = None) -> dict:
    """Estimate; if the estimate exceeds `limit_gb` (default: what this machine has available),
    log a warning that names the two changes saving the most. Returns the estimate with
    `limit_gb` and `too_big` added."""
    limit = limit_gb if limit_gb is not None else configured_limit_gb(cfg)
    estimate = estimate_memory_gb(cfg, limit_gb=limit)
    estimate["limit_gb"] = limit
    estimate["too_big"] = bool(limit and estimate["total_gb"] > limit)
    if estimate["too_big"]:
        best = savings_gb(cfg)[:2]
        advice = " or ".join(f"{k} (saves {gb:.1f} GB)" for k, gb in best) or "a smaller model"
        log.warning(
            "This run needs about %.1f GB but %.1f GB is available (weights %.1f, LoRA and optimizer %.1f, "
            "activations %.1f, logits %.1f GB; model shape from %s). What helps most: %s.",
            estimate["total_gb"], limit, estimate["weights_gb"], estimate["lora_gb"], estimate["activations_gb"],
            estimate["logits_gb"], estimate["model_config"], advice,
        )
    return estimate

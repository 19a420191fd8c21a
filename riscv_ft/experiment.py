"""One training run from start to finish: data -> model -> train -> samples -> outputs + MLflow.

`run_experiment(cfg, run_dir)` is what `python -m riscv_ft.train` calls for each run (and
each job of a sweep). Everything it leaves is in `run_dir`:

    config.yaml        the resolved configuration
    train.log          the log
    train.jsonl, valid.jsonl, test.jsonl   the prepared splits, in mlx-lm's data format
    adapters/          adapters.safetensors + adapter_config.json (mlx_lm.load reads them)
    checkpoints/       step-NNNNNN/: weights, optimizer and RNG state, to resume exactly;
                       best-NNNNNN/: the adapter at the best validation loss so far
    metrics.json       final figures
    history.jsonl      every reported metric by step
    loss_curve.png     train and validation loss
    eval.jsonl         held-out prompts, references, the model's answers and their scores
    eval_user.jsonl    the same for the shipped user-style prompts (data/user_prompts.jsonl)
    base_eval.jsonl, base_eval_user.jsonl   the same rows answered by the base without adapter
    eval_summary.json  exact match / assembles / functional rates, overall and per class, for
                       the split (and how its rows were chosen), the user prompts and the base
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from omegaconf import DictConfig, OmegaConf

from riscv_ft.checkpoint import Checkpoint, best_adapter, latest_checkpoint, load_checkpoint, save_best, save_checkpoint, share_checkpoint
from riscv_ft import distributed
from riscv_ft.config import ConfigError, lora_scale
from riscv_ft.data.packing import packed_batches
from riscv_ft.data.batch import padding_share
from riscv_ft.data.pipeline import check_batch_size, length_bucketed_batches, prepare, prepare_rows, write_splits
from riscv_ft.data.user_prompts import load_user_prompts
from riscv_ft.evaluate.model_eval import (answer_rows, compare_table, describe, evaluate_model, headline_metrics,
                                         select_rows, write_scored)
from riscv_ft.answer_cache import model_identity
from riscv_ft.memory import GB, mlx_memory_limit
from riscv_ft.memory_plan import configured_limit_gb, plan_for_data, plan_memory, warn_if_too_big
from riscv_ft.model import apply_adapters, load_base, save_adapters, trainable_parameters
from riscv_ft.packed_forward import packing_problem
from riscv_ft.plots import plot_losses
from riscv_ft.runtime import INSTALL_HINT, blas_in_use
from riscv_ft.sources.cache import file_sha256
from riscv_ft.trainer import (FAIL_IN_EVAL_ENV, SIMULATED_OOM, EvaluationOutOfMemory, Interrupted, Trainer, TrainState,
                              is_out_of_memory)
from riscv_ft.tracking.run import environment_tags, tracked_run
from riscv_ft.tracking.store import PARENT_ENV, check_reachable, flatten

log = logging.getLogger(__name__)


def run_name(cfg: DictConfig) -> str:
    method = "full" if cfg.lora.fine_tune_type == "full" else f"r{cfg.lora.rank}"
    parts = [cfg.run_name or cfg.model.name, method, f"bs{cfg.trainer.batch_size}"]
    return "-".join(str(p) for p in parts)


def seed_everything(seed: int) -> None:
    mx.random.seed(seed)
    np.random.seed(seed)


def run_experiment(cfg: DictConfig, run_dir: Path, resume: bool = False, explicit: frozenset[str] = frozenset(),
                   resume_changes: tuple[str, ...] = ()) -> dict:
    """Train one run into run_dir; with resume=True, continue from its newest checkpoint.
    `explicit`: the keys the user set, which the memory policy never changes. MLX keeps to the
    run's memory limit meanwhile (`mlx_memory_limit`)."""
    limit_gb = configured_limit_gb(cfg)  # auto reads the machine once: the plan, the warning and MLX agree
    with mlx_memory_limit(limit_gb):
        return _run_experiment(cfg, run_dir, resume, explicit, resume_changes, limit_gb)


def _run_experiment(cfg: DictConfig, run_dir: Path, resume: bool, explicit: frozenset[str],
                    resume_changes: tuple[str, ...], limit_gb: float | None) -> dict:
    started = time.perf_counter()
    main_process = distributed.is_main()  # only rank 0 writes files and the MLflow run
    if cfg.trainer.batch_size % distributed.world_size():
        raise ConfigError(
            f"trainer.batch_size={cfg.trainer.batch_size} must divide by the number of processes ({distributed.world_size()})"
        )
    checkpoint = latest_checkpoint(run_dir / "checkpoints") if resume and main_process else None
    if resume and distributed.world_size() > 1:  # the other ranks get rank 0's checkpoint: no shared disk needed
        state = distributed.broadcast_json(checkpoint.state if checkpoint else None)
        if not main_process and state is not None:
            checkpoint = Checkpoint(None, int(state["step"]), state)
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.trainer.seed)
    if main_process:
        log.info("MLX %s on %s; BLAS: %s", mx.__version__, mx.default_device(), blas_in_use())
        if "bundled" in blas_in_use():
            log.warning("MLX's bundled reference BLAS is about 30x slower than OpenBLAS: %s", INSTALL_HINT)

    rows = prepare_rows(cfg.data, cfg.trainer.seed)  # bad data fails before the model loads
    check_batch_size(rows[0]["train"], cfg.trainer.batch_size)
    configured = cfg
    if not resume:  # before loading: the cheapest setting that fits trainer.memory_limit_gb, saved with the config
        cfg = plan_memory(cfg, explicit, limit_gb)
        if main_process:
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    memory = warn_if_too_big(cfg, limit_gb)  # say which knobs help if it will not fit
    if main_process and cfg.tracking.enabled and not cfg.tracking.offline:
        # One line now, not a traceback after minutes of loading. A sweep job waits out a restart.
        check_reachable(cfg.tracking.uri, wait_s=90.0 if os.environ.get(PARENT_ENV) else 0.0)
    loaded = load_base(cfg.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    data = prepare(cfg.data, tokenizer, cfg.trainer.seed, rows)
    if not resume and cfg.trainer.objective == "sft":  # the tokenized data's widest batch may allow a faster setting
        cfg, memory["total_gb"] = plan_for_data(configured, explicit, limit_gb, data.samples["train"])
        if main_process:
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if main_process:
        write_splits(data.splits, run_dir, cfg.data.prompt_format)
    check_batch_size(data.samples["train"], cfg.trainer.batch_size)

    # The base's answers to the same rows, before any adapter exists: exact for LoRA, DoRA and full.
    baseline = (evaluate_sets(model, tokenizer, evaluation_sets(data.splits, cfg), cfg, "base", run_dir, resumed=resume)
                if main_process and cfg.eval.enabled and cfg.eval.baseline else {})
    seed_everything(cfg.trainer.seed)  # LoRA init does not depend on how much data was read
    lora_meta = apply_adapters(model, cfg.lora)
    n_trainable = sum(p.size for p in trainable_parameters(model).values())
    reference_digest = None  # GRPO with kl_reference=init: the reference adapters' SHA-256
    if cfg.trainer.objective == "grpo":  # rewarded by the scorer; the rest of the run is as for SFT
        from riscv_ft.grpo import SAMPLES_FILE, GrpoTrainer, grpo_prompts, load_init_adapters

        if cfg.grpo.init_adapters:
            load_init_adapters(model, cfg.grpo.init_adapters, lora_meta)
            if cfg.grpo.kl_reference == "init":  # the KL reference for every step: a resume checks it is the same file
                reference_digest = file_sha256(Path(cfg.grpo.init_adapters).expanduser() / "adapters.safetensors")
        trainer = GrpoTrainer(model, tokenizer, cfg, grpo_prompts(data.splits, cfg),
                              samples_path=run_dir / SAMPLES_FILE if main_process else None)
    else:
        trainer = Trainer.for_run(model, cfg)  # its batch shapes (packing, widths) also describe the epoch below
    if trainer.pack_length:
        problem = packing_problem(model)
        if problem:
            raise ConfigError(f"data.pack=true: {problem}; set data.pack=false")
        epoch_batches = packed_batches(data.samples["train"], cfg.trainer.batch_size, trainer.pack_length, cfg.trainer.seed)
    else:
        epoch_batches = length_bucketed_batches(data.samples["train"], cfg.trainer.batch_size, trainer.pad_to_multiple,
                                                cfg.trainer.seed, min_width=trainer.min_width)
    derived = {
        "lora.scale": lora_scale(cfg.lora), "trainable_parameters": n_trainable, "base_model": loaded.base_ref,
        "batches_per_epoch": len(epoch_batches),
        "epochs": round(cfg.trainer.iters * cfg.trainer.grad_accumulation / max(len(epoch_batches), 1), 3),
        "data.padding_share_epoch": round(padding_share(epoch_batches), 4),
        "data.samples_per_batch": round(len(data.samples["train"]) / max(len(epoch_batches), 1), 2),
        "memory.estimate_gb": memory["total_gb"], "memory.mlx_limit_gb": round(mx.get_memory_limit() / GB, 2),
        **data.report.as_params(),
    }
    method = (cfg.lora.fine_tune_type if cfg.lora.fine_tune_type == "full"
              else f"{cfg.lora.fine_tune_type}, rank {cfg.lora.rank}, scale {derived['lora.scale']:.3g}")
    log.info("Model %s: %d trainable parameters (%s); %d batches per epoch, padding %.1f%%",
             loaded.base_ref, n_trainable, method, len(epoch_batches), 100 * derived["data.padding_share_epoch"])

    history: list[dict] = []
    if checkpoint is not None:
        if main_process:
            load_checkpoint(checkpoint, model, trainer.optimizer)
        share_checkpoint(model, trainer.optimizer)
        saved = checkpoint.state
        if reference_digest and saved.get("grpo_reference_digest", reference_digest) != reference_digest:
            raise ConfigError(f"grpo.init_adapters={cfg.grpo.init_adapters}: adapters.safetensors changed since this run "
                              "started; with grpo.kl_reference=init it is the KL reference, so the resumed run would "
                              "not go on as it began: put the original file back, or start a new run")
        trainer.state = TrainState(step=checkpoint.step, best_val_loss=saved["best_val_loss"], best_step=saved["best_step"],
                                   evals_without_improvement=saved["evals_without_improvement"])
        history = saved["history"]
        best = best_adapter(run_dir / "checkpoints", saved["best_step"]) if main_process else None
        if cfg.trainer.early_stopping_patience and best is not None:  # what early stopping restores at the end
            trainer.best_weights = mx.load(str(best / "adapters.safetensors"))
        log.info("Resuming %s from step %d (%s)", run_dir, checkpoint.step, f"step-{checkpoint.step:06d}")

    adapters_dir = run_dir / "adapters"
    mlflow_run_id = checkpoint.state.get("mlflow_run_id") if checkpoint else None
    tracking_key = checkpoint.state.get("tracking_key") if checkpoint else None  # an offline run's outbox
    with tracked_run(cfg, run_dir, run_name(cfg), run_id=mlflow_run_id, enabled=main_process, key=tracking_key) as tracker:
        if checkpoint is None:
            tracker.log_params({**flatten(cfg), **derived})
            tracker.set_tags(environment_tags(run_dir))
            tracker.log_dataset(data.splits["train"], data.report.source, data.report.digest, cfg.data.name)
        elif resume_changes:
            # MLflow keeps a param's first value: the evaluation settings in effect go in a tag, all
            # of them, so that earlier resumes' changes are not lost from view.
            tracker.set_tags({"riscv_ft.eval_settings": " ".join(f"eval.{k}={v}" for k, v in cfg.eval.items())})

        def on_metrics(step: int, metrics: dict) -> None:
            history.append({"step": step, **metrics})
            tracker.log_metrics(step, metrics)

        def on_save(step: int) -> None:
            if not main_process:
                return
            state = trainer.state
            save_checkpoint(
                run_dir / "checkpoints", step, trainable_parameters(model), trainer.optimizer.state,
                {"best_val_loss": state.best_val_loss, "best_step": state.best_step,
                 "evals_without_improvement": state.evals_without_improvement,
                 "mlflow_run_id": tracker.run_id, "tracking_key": tracker.key, "history": history,
                 "grpo_reference_digest": reference_digest},
                keep=cfg.trainer.keep_checkpoints,
            )
            save_adapters(model, adapters_dir, loaded.base_ref, cfg.lora, lora_meta)

        def on_best(step: int, val_loss: float) -> None:
            if main_process:
                save_best(run_dir / "checkpoints", step, val_loss,
                          lambda folder: save_adapters(model, folder, loaded.base_ref, cfg.lora, lora_meta))

        def on_restored(best_step: int) -> None:  # early stopping: the best weights are the run's adapter
            if main_process:
                save_adapters(model, adapters_dir, loaded.base_ref, cfg.lora, lora_meta)

        trainer.on_best, trainer.on_restored = on_best, on_restored
        try:
            metrics = trainer.fit(data.samples["train"], data.samples["valid"], on_metrics, on_save)
        except Interrupted as stop:
            if main_process:
                log.warning("Stopped (%s); checkpoint saved. Resume with:\n  python -m riscv_ft.train resume=%s", stop, run_dir)
            raise
        metrics["initial_val_loss"] = next((h["val_loss"] for h in history if "val_loss" in h), None)
        if checkpoint is not None and metrics["steps"] == checkpoint.step:
            # Nothing trained in this process (a run resumed to answer again): its empty window has no train
            # loss, and what it could not measure (NaN) is the history's last; this process measured no speed.
            # A validation loss it did give stays (early stopping's restored best).
            for key in ("train_loss", "val_loss", "reward_mean", "functional_fraction"):
                if key in metrics and (key == "train_loss" or metrics[key] is None or not np.isfinite(metrics[key])):
                    metrics[key] = next((h[key] for h in reversed(history) if h.get(key) is not None), None)
            for key in ("tokens_per_s", "all_tokens_per_s", "padding_share", "samples_seen"):
                if key in metrics:
                    metrics[key] = None
        # A resumed run's process saw only its own steps (none, when it only evaluates): the history
        # holds the earlier processes' peaks too.
        metrics["peak_memory_gb"] = max([metrics.get("peak_memory_gb") or 0.0,
                                         *(h["peak_memory_gb"] for h in history if h.get("peak_memory_gb") is not None)])

        metrics["mlx_memory_limit_gb"] = round(mx.get_memory_limit() / GB, 2)  # what MLX's evaluation kept to
        metrics["processes"] = distributed.world_size()
        if not main_process:
            return metrics
        # What training left in MLX's buffer cache goes back first: generation needs other shapes, and
        # on a GPU shared by several runs (a sweep side by side) cached buffers starve the others.
        mx.clear_cache()
        if resume:  # an earlier evaluation's files (perhaps of sets this one skips) go aside, not mixed in
            _set_aside_earlier_evaluation(run_dir)
        scored, summary = evaluate_run(model, tokenizer, data.splits, cfg, baseline, run_dir)
        if summary:
            metrics.update(evaluation_metrics(summary))
            (run_dir / "eval_summary.json").write_text(json.dumps(summary, indent=2))
        metrics["wall_time_s"] = round(time.perf_counter() - started, 1)
        write_outputs(run_dir, metrics, history, run_name(cfg))
        if cfg.trainer.objective == "grpo":
            from riscv_ft.grpo import plot_rewards

            plot_rewards(history, run_dir / "reward_curve.png", run_name(cfg))
        tracker.log_metrics(trainer.state.step, {f"final_{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None})
        tracker.log_table(scored, "samples.json")
        for name in ("config.yaml", "metrics.json", "history.jsonl", "loss_curve.png", "eval.jsonl", "eval_summary.json", "train.log",
                     "eval_user.jsonl", "base_eval.jsonl", "base_eval_user.jsonl", "grpo_samples.jsonl", "reward_curve.png"):
            tracker.log_artifact(run_dir / name)
        tracker.log_artifact(adapters_dir, "adapters")
        log_model(tracker, run_dir, model, tokenizer)  # servable: mlflow models serve -m runs:/<id>/model
        metrics["mlflow_run_id"] = tracker.run_id
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def log_model(tracker, run_dir: Path, model, tokenizer) -> None:
    """Save the run's adapter as an MLflow model in the run folder and hand it to the tracker,
    which logs it through the run's outbox like every other call. A failure is said, not
    raised: the run itself is complete by then. On an offline machine without MLflow the call
    is still journaled, and `push` saves the model before sending it."""
    if not tracker.enabled:
        return
    try:
        from riscv_ft.mlflow_model import SAVED_MODEL, save_run_model
    except ImportError:  # tracking.offline without MLflow here
        tracker.log_model(run_dir / "mlflow_model")
        return
    try:
        save_run_model(run_dir, model, tokenizer)
    except Exception as err:  # noqa: BLE001 - MLflow raises many kinds; the adapter is logged anyway
        log.warning("could not save the run's MLflow model: %s: %s", type(err).__name__, str(err).strip().splitlines()[0][:300] if str(err).strip() else "")
        return
    tracker.log_model(run_dir / SAVED_MODEL)


def evaluation_sets(splits: dict, cfg: DictConfig) -> dict[str, tuple[list[dict], dict]]:
    """name -> (rows, how they were chosen): the held-out split ("split": the whole split or a
    stratified sample) and, with eval.user_prompts, the shipped user-style prompts ("user")."""
    rows = splits[cfg.eval.split] or splits["valid"]
    if not cfg.eval.enabled:
        return {"split": (rows[: cfg.eval.print_samples], {"method": "first rows", "rows": cfg.eval.print_samples})}
    sets = {"split": select_rows(rows, cfg.eval.num_rows, cfg.trainer.seed)}
    if cfg.eval.user_prompts:
        user = load_user_prompts()
        count = len(user) if cfg.eval.user_prompts == -1 else min(cfg.eval.user_prompts, len(user))
        sets["user"] = (user[:count], {"method": "whole set" if count == len(user) else "first rows", "rows": count,
                                       "set_rows": len(user), "source": "riscv_ft/data/user_prompts.jsonl"})
    return sets


def evaluate_sets(model, tokenizer, sets: dict, cfg: DictConfig, who: str, run_dir: Path | None = None,
                  resumed: bool = False) -> dict[str, tuple[list[dict], dict | None]]:
    """Each set answered (batched, greedy) and, with eval.enabled, scored: name -> (rows, summary).
    MLX running out of memory here ends the run with EvaluationOutOfMemory, whose one line says
    what is kept, whether `resume=` answers again without training, and what to lower."""
    try:
        if os.environ.get(FAIL_IN_EVAL_ENV) == who:
            raise RuntimeError(SIMULATED_OOM)
        return _evaluate_sets(model, tokenizer, sets, cfg, who)
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        raise EvaluationOutOfMemory(_evaluation_oom_line(err, cfg, who, run_dir, resumed)) from err


def _set_aside_earlier_evaluation(run_dir: Path) -> None:
    """Move RUN's evaluation files to RUN/previous_eval/ (replacing what an earlier resume put there)."""
    names = [n for n in (*FILES.values(), "eval_summary.json") if (run_dir / n).is_file()]
    if not names:
        return
    previous = run_dir / "previous_eval"
    shutil.rmtree(previous, ignore_errors=True)
    previous.mkdir()
    for name in names:
        (run_dir / name).replace(previous / name)
    log.info("The earlier evaluation's files are in %s", previous)


def _evaluation_oom_line(err: BaseException, cfg: DictConfig, who: str, run_dir: Path | None, resumed: bool) -> str:
    first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
    if who == "base" and not resumed:
        where = "before training, nothing trained yet; eval.baseline=false skips the base model's answers"
    else:  # a resumed run answers with the base again before its checkpoint loads
        where = (f"the last checkpoint is kept: python -m riscv_ft.train resume={run_dir} answers again"
                 + (" without training again" if who == "tuned" else ""))
    lower = [f"eval.max_tokens={cfg.eval.max_tokens // 2}"] if cfg.eval.max_tokens > 1 else []
    if cfg.eval.decode == "verify" and who == "tuned" and cfg.eval.samples > 1:
        lower.insert(0, f"eval.samples={cfg.eval.samples // 2}")
    if who == "base" and not resumed:  # nothing to resume: these are a new run's settings
        advice = f"; a new run can lower {', '.join(lower)}" if lower else ""
    else:  # resume= takes evaluation settings beside it
        if who == "base":  # skipping the base's answers is enough; shorter tuned answers would score differently
            lower = ["eval.baseline=false"]
        advice = f"; to answer with less: resume={run_dir} {' '.join(lower)}" if lower else ""
    return (f"out of memory while the {who} model answered the evaluation prompts ({first}); {where}; other processes "
            f"on the same accelerator hold memory too{advice}")


def _evaluate_sets(model, tokenizer, sets: dict, cfg: DictConfig, who: str) -> dict[str, tuple[list[dict], dict | None]]:
    out = {}
    # The base model's answers depend only on it and the rows: cached, so a sweep answers them once.
    identity = model_identity(cfg.model) if who == "base" and cfg.eval.cache_base_answers else None
    for name, (rows, selection) in sets.items():
        if not rows:
            continue
        log.info("Answering %d %s rows with the %s model", len(rows), "held-out" if name == "split" else "user-style", who)
        if cfg.eval.enabled:
            # verified decoding for the tuned model only: the base is the greedy point of reference
            decode = cfg.eval.decode if who == "tuned" else "greedy"
            scored, summary = evaluate_model(model, tokenizer, rows, cfg.data.prompt_format, cfg.eval.max_tokens,
                                             cfg.eval.assembler, decode=decode, samples=cfg.eval.samples,
                                             seed=cfg.trainer.seed, identity=identity)
            summary["selection"] = selection
        else:
            scored, summary = answer_rows(model, tokenizer, rows, cfg.data.prompt_format, cfg.eval.max_tokens, identity=identity), None
        out[name] = (scored, summary)
    return out


FILES = {("tuned", "split"): "eval.jsonl", ("tuned", "user"): "eval_user.jsonl",
         ("base", "split"): "base_eval.jsonl", ("base", "user"): "base_eval_user.jsonl"}


def evaluate_run(model, tokenizer, splits: dict, cfg: DictConfig, baseline: dict | None = None,
                 run_dir: Path | None = None) -> tuple[list[dict], dict | None]:
    """Answer and score held-out rows and the user-style prompts (or, with eval.enabled=false,
    just a few to print), print some beside their references and the base's answers.

    Returns the split's scored rows and the combined summary: the split's figures at the top,
    with `user_prompts`, `baseline` and `baseline_user_prompts` blocks beside them. The scored
    rows of every set are written to run_dir (FILES) when given.
    """
    tuned = evaluate_sets(model, tokenizer, evaluation_sets(splits, cfg), cfg, "tuned", run_dir)
    baseline = baseline or {}
    if "split" not in tuned:
        return [], None
    scored, summary = tuned["split"]
    if run_dir is not None:
        for who, results in (("tuned", tuned), ("base", baseline)):
            for name, (rows, _) in results.items():
                write_scored(run_dir / FILES[who, name], rows)
    base_rows = {r["description"]: r["prediction"] for r in baseline.get("split", ([], None))[0]}
    selection = summary["selection"] if summary else None
    what = "" if not selection else f" ({selection['method']}, {selection['rows']} of {selection.get('split_rows', selection['rows'])} rows)"
    lines = [f"Answers on held-out prompts{what}:"]
    for row in scored[: cfg.eval.print_samples]:
        verdict = "" if row.get("functional") is None else f"   [functional: {row['functional']}]"
        # multi-line answers stay in their column
        lines += [f"  prompt:    {row['description'][:100]}",
                  "  reference: " + row["reference"][:100].replace("\n", "\n             ")]
        if row["description"] in base_rows:
            lines.append("  base:      " + base_rows[row["description"]][:100].replace("\n", "\n             "))
        lines += ["  generated: " + row["prediction"][:100].replace("\n", "\n             ") + verdict, ""]
    if summary:
        summary = dict(summary)
        for key, who, name in (("user_prompts", tuned, "user"), ("baseline", baseline, "split"),
                               ("baseline_user_prompts", baseline, "user")):
            if who.get(name) and who[name][1]:
                summary[key] = who[name][1]
        for key, title in (("baseline", "base, held-out"), (None, "tuned, held-out"),
                           ("baseline_user_prompts", "base, user-style prompts"), ("user_prompts", "tuned, user-style prompts")):
            block = summary if key is None else summary.get(key)
            if block:
                lines.append(f"{title:>26}: {describe(block)}")
        for base_key, tuned_block, title in (("baseline", summary, "Held-out"), ("baseline_user_prompts",
                                             summary.get("user_prompts"), "User-style prompts")):
            if tuned_block:
                table = compare_table([("base", summary.get(base_key)), ("tuned", tuned_block),
                                       ("tuned verified", tuned_block.get("verified"))], title)
                lines += ["", table]
    log.info("\n".join(lines))
    return scored, summary


def evaluation_metrics(summary: dict) -> dict:
    """eval_* (split), eval_user_*, base_eval_*, base_eval_user_* from evaluate_run's summary."""
    metrics = headline_metrics(summary, "eval_")
    for key, prefix in (("user_prompts", "eval_user_"), ("baseline", "base_eval_"), ("baseline_user_prompts", "base_eval_user_")):
        if summary.get(key):
            metrics.update(headline_metrics(summary[key], prefix))
    return metrics


def write_outputs(run_dir: Path, metrics: dict, history: list[dict], title: str) -> None:
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with open(run_dir / "history.jsonl", "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
    plot_losses(history, run_dir / "loss_curve.png", title)

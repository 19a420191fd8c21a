"""`python -m riscv_ft.train [overrides]`: fine-tune with LoRA/QLoRA, one run or a sweep (-m).

    python -m riscv_ft.train experiment=smoke                 # offline, tiny model, ~1 minute
    python -m riscv_ft.train lora.rank=8 trainer.batch_size=2 # Mistral-7B, 4-bit base
    python -m riscv_ft.train -m lora.rank=4,8,16 trainer.batch_size=2,4
    python -m riscv_ft.train resume=experiments/runs/RUN      # continue a stopped run
    python -m riscv_ft.train resume=experiments/runs/RUN eval.samples=4   # ... answering with other eval.* settings

The configuration is checked before any model loads; a bad value ends with one line on
stderr and exit code 2. Ctrl-C or SIGTERM save a checkpoint and exit with 130.
"""

from riscv_ft.runtime import use_fast_blas

use_fast_blas()  # before MLX is imported anywhere

import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from riscv_ft import distributed  # noqa: E402
from riscv_ft.cli import CONF_DIR, USER_ERRORS, fail, preflight  # noqa: E402
from riscv_ft.config import ConfigError, TrainConfig, validate  # noqa: E402
from riscv_ft.sources.cache import write_text_atomically  # noqa: E402
from riscv_ft.trainer import EvaluationOutOfMemory, OutOfMemory, TrainingDiverged, is_out_of_memory  # noqa: E402

log = logging.getLogger("riscv_ft")


def run_and_report(cfg: DictConfig, run_dir: Path, in_sweep: bool, resume: bool = False,
                   explicit: frozenset[str] = frozenset(), resume_changes: tuple[str, ...] = ()) -> float | None:
    """Run one training job; user errors become one line (exit 2), or a failed job in a sweep.
    `explicit`: the keys set on the command line, which the memory policy never changes (a
    resumed run keeps the settings its saved config holds)."""
    from riscv_ft.experiment import run_experiment
    from riscv_ft.sweep import job_interrupted_in_worker, stopped_worker

    try:
        if in_sweep and stopped_worker():
            log.warning("job skipped: the sweep was stopped (%s)", stopped_worker())
            return None
        validate(cfg)
        metrics = run_experiment(cfg, run_dir, resume=resume, explicit=explicit, resume_changes=resume_changes)
    except KeyboardInterrupt as stop:
        # In a parallel sweep's worker the job returns: joblib would kill the other workers mid-save.
        if in_sweep and job_interrupted_in_worker(stop):
            log.warning("job stopped (%s)", stopped_worker())
            return None
        raise
    except (*USER_ERRORS, TrainingDiverged, MemoryError, RuntimeError) as err:
        message, code = _explain(err, cfg, run_dir)
        if in_sweep:  # recorded (MLflow run FAILED, log); the other jobs go on
            log.error("job failed: %s", message)
            return None
        fail(message, code)
    log.info("Run folder: %s", run_dir)
    return metrics.get("val_loss")  # the value a sweeper minimizes


def _explain(err: Exception, cfg: DictConfig, run_dir: Path) -> tuple[str, int]:
    from riscv_ft.memory_plan import oom_advice

    if isinstance(err, USER_ERRORS):
        return str(err), 2
    if isinstance(err, (TrainingDiverged, EvaluationOutOfMemory)):  # each says what to do next
        return str(err), 1
    if isinstance(err, OutOfMemory):  # the trainer saved the last complete step
        resume = f" (resume={run_dir})" if err.saved_step else ""
        return f"{err}{resume}; {oom_advice(cfg)}", 1
    text = str(err)
    if is_out_of_memory(err):
        return f"out of memory ({text.splitlines()[0][:200] if text else 'MemoryError'}); the last checkpoint is kept; {oom_advice(cfg)}", 1
    raise err


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    explicit = frozenset(o.split("=", 1)[0].lstrip("+~") for o in hydra_cfg.overrides.task)
    return run_and_report(cfg, Path(hydra_cfg.runtime.output_dir), hydra_cfg.mode == RunMode.MULTIRUN, explicit=explicit)


def _resume_problem(argument: str, run_dir: Path) -> str | None:
    from riscv_ft.checkpoint import latest_checkpoint

    if not (run_dir / "config.yaml").is_file():
        return f"resume={argument}: not a run folder (no config.yaml in {run_dir})"
    if latest_checkpoint(run_dir / "checkpoints") is None:
        return f"resume={argument}: no complete checkpoint under {run_dir / 'checkpoints'}"
    return None


# Settings a resumed run may change: they act only on the evaluation after training (the steps,
# weights and data are those of the saved config, so exact resume holds). eval.assembler is not
# among them: GRPO's rewards use it during training.
RESUMABLE_KEYS = ("eval.enabled", "eval.split", "eval.num_rows", "eval.baseline", "eval.cache_base_answers",
                  "eval.user_prompts", "eval.max_tokens", "eval.print_samples", "eval.decode", "eval.samples")


def resume_overrides(argument: str, other_args: list[str]) -> list[str]:
    """The KEY=VALUE evaluation settings given beside resume=; one line (exit 2) for anything else."""
    for arg in other_args:
        key = arg.split("=", 1)[0]
        if "=" not in arg or key not in RESUMABLE_KEYS:
            fail(f"resume={argument}: {arg!r} cannot change on resume (a resumed run keeps its saved config); only "
                 f"evaluation settings can: {', '.join(k + '=...' for k in RESUMABLE_KEYS)}")
    return list(other_args)


def resume(argument: str, other_args: list[str]) -> None:
    """Continue RUN_DIR from its newest complete checkpoint, with the config it was started with
    (evaluation settings given as KEY=VALUE beside it replace the saved ones, also in its config.yaml).

    Under mlx.launch only rank 0 needs RUN_DIR: it sends the config (and, in run_experiment,
    the checkpoint) to the other ranks."""
    run_dir = Path(argument).expanduser().resolve()
    overrides = resume_overrides(argument, other_args)
    found = None
    if distributed.is_main():
        problem = _resume_problem(argument, run_dir)
        found = {"problem": problem, "config": None if problem else (run_dir / "config.yaml").read_text()}
    found = distributed.broadcast_json(found)
    if found["problem"]:
        fail(found["problem"])
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.create(found["config"]))
    except Exception as err:  # noqa: BLE001 - OmegaConf's validation errors
        fail(f"resume={argument}: its config.yaml does not match the schema ({str(err).splitlines()[0]})")
    if overrides:
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
            validate(cfg)  # here too: a bad value is then the only line, before the run's log begins
        except ConfigError as err:
            fail(str(err))
        except Exception as err:  # noqa: BLE001 - OmegaConf's type errors, e.g. eval.samples=many
            fail(f"resume={argument}: {' '.join(overrides)}: {str(err).splitlines()[0]}")
    formatter = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    handlers = [logging.StreamHandler()] + ([logging.FileHandler(run_dir / "train.log")] if distributed.is_main() else [])
    for handler in handlers:
        handler.setFormatter(formatter)
        logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO if distributed.is_main() else logging.WARNING)
    if overrides:
        log.info("Resuming with %s", " ".join(overrides))
    run_and_report(cfg, run_dir, in_sweep=False, resume=True, resume_changes=tuple(overrides))
    if overrides and distributed.is_main():
        # Only once the run is complete: the folder's config then says what produced its evaluation
        # (written whole or not at all); after a failure it still says what produced the old one.
        try:
            write_text_atomically(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        except OSError as err:
            log.warning("%s not updated with %s (%s); the run itself is complete", run_dir / "config.yaml",
                        " ".join(overrides), err.strerror or err)


def cli() -> None:
    args = sys.argv[1:]
    resume_args = [a for a in args if a.startswith("resume=")]
    try:
        if resume_args:
            resume(resume_args[0].split("=", 1)[1], [a for a in args if a != resume_args[0]])
        else:
            preflight(args)
            if distributed.rank() > 0:
                # Under mlx.launch only rank 0 keeps a run folder and a log.
                sys.argv += [f"hydra.run.dir={tempfile.mkdtemp(prefix='riscv_ft_rank')}", "hydra.output_subdir=null",
                             "hydra.job_logging.root.level=WARNING"]
            main()
    except KeyboardInterrupt:
        sys.exit(130)
    except ConfigError as err:
        fail(str(err))


if __name__ == "__main__":
    cli()

"""`python -m riscv_ft.train [overrides]`: fine-tune with LoRA/QLoRA, one run or a sweep (-m).

    python -m riscv_ft.train experiment=smoke                 # offline, tiny model, ~1 minute
    python -m riscv_ft.train lora.rank=8 trainer.batch_size=2 # Mistral-7B, 4-bit base
    python -m riscv_ft.train -m lora.rank=4,8,16 trainer.batch_size=2,4

The configuration is checked before any model loads; a bad value ends with one line on
stderr and exit code 2.
"""

from riscv_ft.runtime import use_fast_blas

use_fast_blas()  # before MLX is imported anywhere

import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from riscv_ft.cli import CONF_DIR, USER_ERRORS, fail, preflight  # noqa: E402
from riscv_ft.config import validate  # noqa: E402

log = logging.getLogger("riscv_ft")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from riscv_ft.experiment import run_experiment

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        validate(cfg)
        metrics = run_experiment(cfg, run_dir)
    except USER_ERRORS as err:
        if in_sweep:  # recorded (MLflow run FAILED, log); the other jobs go on
            log.error("job failed: %s", err)
            return None
        fail(str(err))
    log.info("Run folder: %s", run_dir)
    return metrics.get("val_loss")  # the value a sweeper minimizes


if __name__ == "__main__":
    preflight(sys.argv[1:])
    main()

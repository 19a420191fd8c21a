"""`python -m riscv_ft.tracking push RUN_DIR... [--uri URI]` (see riscv_ft/tracking/push.py).

This entry point is the one file of the package that reaches the model code, and only as a
program at the top of the layers (nothing imports it): a run that was offline on a machine
without MLflow could not save its MLflow model, so push saves it from the run folder first.
"""

import sys

from riscv_ft.tracking.push import main


def _build_model(run_dir):
    from riscv_ft.mlflow_model import save_run_model

    save_run_model(run_dir)


main(sys.argv[1:], build_model=_build_model)

"""`python -m riscv_ft.tracking push RUN_DIR...` (see riscv_ft/tracking/push.py)."""

import sys

from riscv_ft.tracking.push import main

main(sys.argv[1:])

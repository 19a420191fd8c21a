"""python -m riscv_ft.data.tasks --rows N --seed S --out FILE"""

import sys

from riscv_ft.data.tasks import main

sys.exit(main())

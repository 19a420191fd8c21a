"""`python -m riscv_ft.compare`: a sweep's runs (or an experiment's) side by side, best first.

    python -m riscv_ft.compare                         # the latest sweep of the default experiment
    python -m riscv_ft.compare 3f2a...                 # the sweep with this parent run id
    python -m riscv_ft.compare --experiment riscv-asm-lora --metric final_best_val_loss
    python -m riscv_ft.compare --tracking-uri http://127.0.0.1:5000 3f2a...

Columns: each setting that differs between the runs (a sweep's overrides, or otherwise the
params), then the final metrics, the chosen one first. A bad run id, experiment or metric
ends with one line on stderr and exit code 2.

`comparison_table` is also what the sweep callback logs on the parent run at a sweep's end.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from riscv_ft.config import TrackingConfig
from riscv_ft.tracking.store import FAILURE_TAG, PARENT_TAG, RunRecord, TrackingError

MAIN_METRICS = (
    "final_val_loss", "final_best_val_loss", "final_train_loss",
    "final_eval_functional_rate", "final_eval_exact_match_rate",  # scored answers, when the run evaluated
    "final_tokens_per_s", "final_peak_memory_gb", "final_wall_time_s",
)


def config_keys() -> set[str]:
    """Every key of the config schema: the params a user sets, not those a run derives."""
    from omegaconf import OmegaConf

    from riscv_ft.config import DataConfig, LoraConfig, ModelConfig, TrainConfig, TrainerConfig
    from riscv_ft.tracking.store import flatten

    full = TrainConfig(model=ModelConfig(), lora=LoraConfig(), data=DataConfig(), trainer=TrainerConfig())
    return set(flatten(OmegaConf.to_container(OmegaConf.structured(full))))


def setting(run: RunRecord, key: str):
    """A setting's value in a run: the logged param, else the override (`experiment=smoke`)."""
    value = run.params.get(key)
    return value if value is not None else (run.overrides or {}).get(key)


def varying_settings(runs: list[RunRecord]) -> list[str]:
    """Settings whose value differs between the runs, among a sweep's overrides when every
    run has them, else among the config's keys."""
    if runs and all(r.overrides is not None for r in runs):
        candidates = list(dict.fromkeys(k for r in runs for k in r.overrides))
    else:
        schema = config_keys()
        candidates = sorted({k for r in runs for k in r.params if k in schema})
    return [k for k in candidates if len({setting(r, k) for r in runs}) > 1]


def metric_value(run: RunRecord, metric: str) -> float | None:
    value = run.metrics.get(metric)
    return None if value is None or math.isnan(value) else value


def comparison_table(runs: list[RunRecord], metric: str = "final_val_loss", maximize: bool = False) -> tuple[list[str], list[dict]]:
    """(columns, rows): one row per run, best `metric` first, runs without it last."""
    keys = varying_settings(runs)
    metrics = [metric] + [m for m in MAIN_METRICS if m != metric and any(m in r.metrics for r in runs)]
    any_failed = any(r.tags.get(FAILURE_TAG) for r in runs)

    def order(run: RunRecord):
        value = metric_value(run, metric)
        return (value is None, 0.0 if value is None else (-value if maximize else value), run.start_time)

    rows = []
    for run in sorted(runs, key=order):
        row = {"job": run.job, "run": run.name, "status": run.status}
        row.update({k: setting(run, k) for k in keys})
        row.update({m: metric_value(run, m) for m in metrics})
        if any_failed:
            row["failure"] = run.tags.get(FAILURE_TAG, "")
        row["run_id"] = run.run_id
        rows.append(row)
    columns = ["job", "run", "status", *keys, *metrics, *(["failure"] if any_failed else []), "run_id"]
    if len({r.tags.get(PARENT_TAG) for r in runs}) != 1 or all(r["job"] is None for r in rows):
        columns.remove("job")  # job numbers only mean something within one sweep
    return columns, rows


def cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def format_text(columns: list[str], rows: list[dict], max_width: int = 60) -> str:
    """An aligned plain-text table for the terminal."""
    cells = [[cell(r.get(c))[:max_width] for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def format_markdown(columns: list[str], rows: list[dict]) -> str:
    def escape(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(escape(cell(r.get(c))) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(columns: list[str], rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({c: "" if r.get(c) is None else r.get(c) for c in columns} for r in rows)
    return path


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="python -m riscv_ft.compare", description="Print a sweep's (or an experiment's) runs as a table, best first.")
    parser.add_argument("parent_run_id", nargs="?", help="the sweep's parent run id (default: the latest sweep)")
    parser.add_argument("--experiment", help="compare every training run of this MLflow experiment instead")
    parser.add_argument("--metric", default="final_val_loss", help="sort by this metric (default: final_val_loss)")
    parser.add_argument("--maximize", action="store_true", help="higher is better (e.g. final_tokens_per_s)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: the project's mlruns/ store)")
    args = parser.parse_args(argv)
    if args.parent_run_id and args.experiment:
        parser.error("give a sweep's parent run id or --experiment, not both")
    return args


def select_runs(args: argparse.Namespace) -> tuple[str, list[RunRecord]]:
    """(title, runs) for the arguments; TrackingError names what is wrong."""
    from riscv_ft.tracking.store import child_runs, experiment_runs, get_run, latest_sweep

    uri = args.tracking_uri
    if args.experiment:
        runs = experiment_runs(uri, args.experiment)
        if not runs:
            raise TrackingError(f"experiment {args.experiment!r} has no runs")
        return f"experiment {args.experiment}: {len(runs)} runs", runs
    if args.parent_run_id:
        parent = get_run(uri, args.parent_run_id)
    else:
        default_experiment = TrackingConfig().experiment_name
        parent = latest_sweep(uri, default_experiment)
        if parent is None:
            raise TrackingError(f"no sweep in experiment {default_experiment!r}; pass a parent run id or --experiment NAME")
    runs = child_runs(uri, parent.run_id)
    if not runs:
        raise TrackingError(f"run {parent.run_id} has no child runs: not a sweep's parent (use --experiment to compare single runs)")
    return f"sweep {parent.name} ({parent.run_id}, {parent.status}): {len(runs)} runs", runs


def main(argv: list[str] | None = None) -> int:
    from riscv_ft.cli import fail

    args = parse_args(argv)
    try:
        title, runs = select_runs(args)
    except TrackingError as err:
        fail(str(err))
    except Exception as err:  # noqa: BLE001 - MLflow raises many kinds (server down, bad URI)
        fail(f"cannot read runs from {args.tracking_uri or 'the project store'}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    if not any(args.metric in r.metrics for r in runs) and any(r.metrics for r in runs):
        available = sorted({m for r in runs for m in r.metrics if m.startswith("final_")}) or sorted({m for r in runs for m in r.metrics})
        fail(f"no run has metric {args.metric!r}; available: {', '.join(available) or 'none'}")
    columns, rows = comparison_table(runs, args.metric, args.maximize)
    print(title)
    print(format_text(columns, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

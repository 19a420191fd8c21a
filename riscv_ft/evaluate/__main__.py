"""`python -m riscv_ft.evaluate run=RUN_DIR [rows=N] [split=test|valid] [max_tokens=64] [assembler=auto]
    [decode=greedy|verify] [samples=8]`

Answers a finished run's held-out split with its model (batched, greedy), scores the answers
with a real assembler and emulator, prints the summary, writes RUN/eval.jsonl and
RUN/eval_summary.json, and logs the figures to the run's MLflow run when it has one. With
decode=verify the rows are also answered by verified decoding (riscv_ft/evaluate/verified.py)
and scored: the summary's `verified` block, with seconds per answer beside greedy's.
`run=` also takes an MLflow run id.
"""

from riscv_ft.runtime import use_fast_blas

use_fast_blas()

import json  # noqa: E402
import sys  # noqa: E402

from riscv_ft.cli import as_number, fail, parse_args, wants_help  # noqa: E402

USAGE = __doc__


def main(argv: list[str]) -> None:
    if wants_help(argv):
        print(USAGE)
        return
    args = parse_args(argv, {"run", "rows", "split", "max_tokens", "assembler", "decode", "samples"})
    if "run" not in args:
        fail("run=RUN_DIR (or an MLflow run id) is required")
    rows_wanted = as_number(args, "rows", int, 64, low=-1, what="-1 (all) or a positive integer")
    max_tokens = as_number(args, "max_tokens", int, 64, low=1, what="a positive integer")
    samples = as_number(args, "samples", int, 8, low=1, high=256, what="an integer from 1 to 256")
    decode = args.get("decode", "greedy")
    if decode not in ("greedy", "verify"):
        fail(f"decode={decode!r} is not allowed: expected greedy or verify")
    split = args.get("split", "test")
    if split not in ("test", "valid", "train"):
        fail(f"split={split!r} is not allowed: expected test, valid or train")

    from riscv_ft.assistant import AssistantError, load_with_adapter, source_from_run
    from riscv_ft.data.pipeline import read_split
    from riscv_ft.evaluate.model_eval import describe, evaluate_model, select_rows, write_evaluation

    try:
        source = source_from_run(args["run"])
    except AssistantError as err:
        fail(str(err))
    split_file = source.run_dir / f"{split}.jsonl"
    if not split_file.is_file():
        fail(f"{split_file} not found: the run wrote no {split} split")
    rows = read_split(split_file)
    # the whole split when small, else a sample stratified by reference class (as after training)
    seed = int(getattr(getattr(source.run_config, "trainer", None), "seed", 0) or 0)
    rows, selection = select_rows(rows, rows_wanted, seed)
    if not rows:
        fail(f"{split_file} is empty")
    try:
        loaded = load_with_adapter(source)
    except AssistantError as err:
        fail(str(err))
    scored, summary = evaluate_model(loaded.model, loaded.tokenizer, rows, source.prompt_format, max_tokens,
                                     args.get("assembler", "auto"), decode=decode, samples=samples, seed=seed)
    summary["selection"] = selection
    write_evaluation(source.run_dir, scored, summary)
    print(describe(summary), file=sys.stderr)
    if source.mlflow_run_id:
        _log_to_mlflow(source, scored, summary)
    print(json.dumps(summary))


def _log_to_mlflow(source, scored: list[dict], summary: dict) -> None:
    """Add the figures, the scored table and the files to the run's own MLflow run."""
    from riscv_ft.evaluate.model_eval import headline_metrics
    from riscv_ft.tracking.run import tracked_run

    cfg = source.run_config
    step = json.loads((source.run_dir / "metrics.json").read_text()).get("steps", 0)
    with tracked_run(cfg, source.run_dir, source.run_dir.name, run_id=source.mlflow_run_id) as tracker:
        tracker.log_metrics(step, {f"final_{k}": v for k, v in headline_metrics(summary).items()})
        tracker.log_table(scored, "eval_samples.json")
        for name in ("eval.jsonl", "eval_summary.json"):
            tracker.log_artifact(source.run_dir / name)


def cli() -> None:
    """The `riscv-ft-evaluate` command ([project.scripts])."""
    main(sys.argv[1:])


if __name__ == "__main__":
    cli()

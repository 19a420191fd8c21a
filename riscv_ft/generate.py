"""`python -m riscv_ft.generate`: answer descriptions with a fine-tuned model.

    python -m riscv_ft.generate run=RUN_DIR prompt="Add a1 and a2 into a0"
    python -m riscv_ft.generate run=MLFLOW_RUN_ID prompt="..."          # run folder or its artifacts
    python -m riscv_ft.generate run=RUN_DIR input=prompts.jsonl output=answers.jsonl
    python -m riscv_ft.generate run=RUN_DIR                             # interactive (on a terminal)
    python -m riscv_ft.generate adapter=ADAPTER_DIR model=REPO_OR_DIR prompt="..."
    python -m riscv_ft.generate model=EXPORT_DIR prompt="..."           # a fused export, or a bare base

Options (key=value):
    run=RUN_DIR|MLFLOW_RUN_ID   a training run; its config.yaml gives base model and prompt format
    adapter=DIR  model=REPO_OR_DIR|tiny   an adapter (ours or mlx_lm.lora's) and/or a base model;
                                with run=, model= replaces the run's model.path (a base kept elsewhere)
    prompt=TEXT                 one description; the answer is streamed on a terminal
    input=FILE.jsonl            rows with `description`, `prompt` or chat `messages`; answered in batches
    output=FILE.jsonl           where the answered rows go (default: stdout)
    max_tokens=256  temperature=0 (greedy)  top_p=0 (off)  seed=N  batch_size=16
    decode=greedy|verify        verify: sample `samples` answers besides the greedy one, drop those
                                that do not assemble, answer with the largest group that behaves the
                                same in the emulator (ties: greedy); temperature= is the sampling one
                                (0.7 when 0). See riscv_ft/evaluate/verified.py
    samples=8                   sampled answers per prompt with decode=verify
    check=true                  score each answer with riscv_ft.evaluate.scorer (assembles? runs?)
    prompt_format=chat|completion   only without run=: the format the adapter was trained with
    dtype=float32|bfloat16|float16  only without run=: compute dtype of the base
    tracking_uri=URI            MLflow store that run=MLFLOW_RUN_ID is looked up in

Interactive mode keeps a history (arrow keys) in ~/.cache/riscv_ft/generate_history; Ctrl-C
stops an answer, Ctrl-D leaves. Bad input ends with one line on stderr and exit code 2.
"""

from riscv_ft.runtime import use_fast_blas

use_fast_blas()  # before MLX is imported anywhere

import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from riscv_ft.cli import as_bool, as_number, fail, parse_args, wants_help  # noqa: E402

KEYS = {
    "run", "adapter", "model", "prompt", "input", "output", "max_tokens", "temperature", "top_p",
    "seed", "batch_size", "check", "prompt_format", "dtype", "tracking_uri", "decode", "samples",
}


# ---------------------------------------------------------------- arguments


# ---------------------------------------------------------------- input rows


def read_prompt_rows(path: Path) -> list[dict]:
    """Rows of a JSONL file with a description (`description`, `prompt`, or a chat's first user turn).

    Each row keeps its fields; `_description` and `_reference` (when the row has an answer) are added.
    """
    if not path.is_file():
        fail(f"input={str(path)!r}: no such file")
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        fail(f"input={str(path)!r}: not UTF-8 text (byte {err.start})")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            fail(f"input={str(path)!r} line {number}: not JSON ({err.msg})")
        if not isinstance(row, dict):
            fail(f"input={str(path)!r} line {number}: expected a JSON object")
        description, reference = _description_of(row)
        if not description:
            fail(f"input={str(path)!r} line {number}: no non-empty `description`, `prompt` or user message")
        rows.append({**row, "_description": description, "_reference": reference})
    if not rows:
        fail(f"input={str(path)!r}: no rows")
    return rows


def _untemplated(prompt: str) -> str:
    """The description inside a completion-format prompt (a run's own test.jsonl), else the text."""
    from riscv_ft.data.pipeline import COMPLETION_TEMPLATE

    head, tail = (part.strip(" ") for part in COMPLETION_TEMPLATE.split("{description}"))  # "User:", "\nAssistant:"
    text = prompt.strip()
    if text.startswith(head) and text.endswith(tail):
        return text[len(head) : -len(tail)].strip()
    return prompt


def _description_of(row: dict) -> tuple[str | None, str | None]:
    reference = next((row[k] for k in ("instructions", "reference", "completion") if isinstance(row.get(k), str)), None)
    for key in ("description", "prompt"):
        if isinstance(row.get(key), str) and row[key].strip():
            return _untemplated(row[key]).strip(), reference
    messages = row.get("messages")
    if isinstance(messages, list):
        user = next((m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"), None)
        answer = next((m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "assistant"), None)
        if isinstance(user, str) and user.strip():
            return user.strip(), answer if isinstance(answer, str) else reference
    return None, reference


# ---------------------------------------------------------------- checking answers


def load_scorer():
    """riscv_ft.evaluate.scorer.score_rows, imported only when check=true is asked for, and tried
    once on no rows so that a missing assembler is reported before the model loads."""
    try:
        from riscv_ft.evaluate.scorer import score_rows
    except ImportError as err:
        fail(f"check=true needs riscv_ft.evaluate.scorer.score_rows, which this installation does not have ({err}); run without check=true")
    try:
        score_rows([])
    except Exception as err:  # noqa: BLE001 - e.g. AssemblerNotFound, whose message says what to install
        fail(f"check=true: {_first_line(err)}")
    return score_rows


CHECK_FIELDS = ("reference_class", "exact_match", "mnemonic_match", "assembles", "same_encoding", "functional", "error")


def check_answers(score_rows, answers: list[str], references: list[str | None]) -> list[dict]:
    """The scorer's verdict on each answer: its metric fields (see riscv_ft.evaluate.scorer).

    Without a reference the answer is scored against itself, which tells whether it
    assembles; same_encoding and functional are then meaningless and dropped.
    """
    rows = [{"reference": r if r is not None else a, "prediction": a} for a, r in zip(answers, references)]
    try:
        scored = score_rows(rows)
    except Exception as err:  # noqa: BLE001
        fail(f"check=true: the scorer failed: {_first_line(err)}")
    results = []
    for row, reference in zip(scored, references):
        result = {k: row.get(k) for k in CHECK_FIELDS}
        if reference is None:
            # The answer was its own reference: report its own assembler error once.
            error = result["error"] or ""
            prefix = "reference does not assemble: "
            if error.startswith(prefix):
                result["error"] = error[len(prefix):].split("; prediction: ")[0]
            result = {"reference_class": result["reference_class"], "assembles": result["assembles"],
                      "error": result["error"], "reference": None}
        results.append(result)
    return results


def describe_check(result: dict) -> str:
    """`# check: assembles yes, ...` - a comment line, so the output stays assembly."""
    def yes(value) -> str:
        return "yes" if value else "no"

    if result.get("assembles") is None:
        text = f"not scored as assembly (reads as {result.get('reference_class')})"
    elif "reference" in result and result["reference"] is None:
        text = f"assembles {yes(result['assembles'])} (no reference to run it against)"
    else:
        parts = [f"assembles {yes(result['assembles'])}"]
        for key, name in (("same_encoding", "same encoding as the reference"), ("functional", "behaves like the reference"),
                          ("exact_match", "exact match")):
            if result.get(key) is not None:
                parts.append(f"{name} {yes(result[key])}")
        text = ", ".join(parts)
    if result.get("error"):
        text += f"; {str(result['error']).splitlines()[0][:200]}"
    return f"# check: {text}"


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:400]


# ---------------------------------------------------------------- modes


def answer_one(assistant, description: str, options: dict, scorer, stream: bool = False) -> str:
    out = sys.stdout
    if stream and options.get("decode", "greedy") == "greedy":  # a verified answer is known only at the end
        pieces = []
        for piece in assistant.stream(description, options["max_tokens"], options["temperature"], options["top_p"]):
            pieces.append(piece)
            out.write(piece)
            out.flush()
        answer = "".join(pieces).strip()
        out.write("\n")
    else:
        answer = assistant.ask(description, **options)
        out.write(answer + "\n")
    if scorer is not None:
        out.write(describe_check(check_answers(scorer, [answer], [None])[0]) + "\n")
    out.flush()
    return answer


def answer_file(assistant, rows: list[dict], output: Path | None, options: dict, batch_size: int, scorer) -> None:
    """Answer every row in batches; write them (with `generated`, and `check`) atomically."""
    handle, tmp_name = (None, None)
    if output is not None:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent)
        handle = os.fdopen(fd, "w", encoding="utf-8")
    out = handle or sys.stdout
    started = time.perf_counter()
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            descriptions = [r["_description"] for r in chunk]
            answers = assistant.ask_many(descriptions, batch_size=batch_size, **options)
            checks = check_answers(scorer, answers, [r["_reference"] for r in chunk]) if scorer else [None] * len(chunk)
            for row, answer, check in zip(chunk, answers, checks):
                record = {k: v for k, v in row.items() if not k.startswith("_")}
                record["generated"] = answer
                if check is not None:
                    record["check"] = check
                out.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            out.flush()
            done = start + len(chunk)
            print(f"answered {done}/{len(rows)} ({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)
        if handle is not None:
            handle.close()
            os.replace(tmp_name, output)
            print(f"wrote {output}", file=sys.stderr)
    finally:
        if handle is not None:
            handle.close()
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)


def interactive(assistant, options: dict, scorer) -> None:
    """A prompt loop on a terminal: readline history, Ctrl-C stops an answer, Ctrl-D leaves."""
    from riscv_ft.sources.cache import cache_dir

    history = cache_dir() / "generate_history"
    try:
        import readline

        history.parent.mkdir(parents=True, exist_ok=True)
        if history.is_file():
            readline.read_history_file(history)
        readline.set_history_length(1000)
    except (ImportError, OSError):
        readline = None
    print(f"{assistant.source.describe() if assistant.source else ''}", file=sys.stderr)
    print("Describe an instruction (Ctrl-D to leave, Ctrl-C to stop an answer).", file=sys.stderr)
    try:
        while True:
            try:
                line = input("riscv> ")
            except EOFError:
                print()
                return
            except KeyboardInterrupt:
                print()
                continue
            if not line.strip():
                continue
            try:
                answer_one(assistant, line.strip(), options, scorer, stream=True)
            except KeyboardInterrupt:
                print("\n(stopped)", flush=True)
    finally:
        if readline is not None:
            try:
                readline.write_history_file(history)
            except OSError:
                pass


# ---------------------------------------------------------------- main


def require_model(args: dict) -> None:
    if not any(k in args for k in ("run", "adapter", "model")):
        fail("name a model: run=RUN_DIR (or an MLflow run id), adapter=DIR [model=BASE], or model=DIR (--help for more)")


def source_from_args(args: dict):
    """The Source named by run= / adapter= / model= (shared with riscv_ft.export)."""
    from riscv_ft.assistant import source_from_adapter, source_from_run

    if "run" in args:
        if "adapter" in args:
            fail("give run= or adapter=, not both")
        for key in ("prompt_format", "dtype"):
            if key in args:
                fail(f"{key}= cannot be combined with run=: the run's config.yaml decides it")
        return source_from_run(args["run"], args.get("tracking_uri"), args.get("model"))
    return source_from_adapter(args.get("adapter"), args.get("model"), args.get("prompt_format"), args.get("dtype"))


def main(argv: list[str]) -> None:
    if wants_help(argv):
        print(__doc__)
        return
    args = parse_args(argv, KEYS)
    require_model(args)
    options = {
        "max_tokens": as_number(args, "max_tokens", int, 256, 1, None, "an integer >= 1"),
        "temperature": as_number(args, "temperature", float, 0.0, 0.0, 10.0, "a number from 0 (greedy) to 10"),
        "top_p": as_number(args, "top_p", float, 0.0, 0.0, 1.0, "a number in [0, 1] (0 turns it off)"),
        "decode": args.get("decode", "greedy"),
        "samples": as_number(args, "samples", int, 8, 1, 256, "an integer from 1 to 256"),
    }
    if options["decode"] not in ("greedy", "verify"):
        fail(f"decode={options['decode']!r} is not allowed: expected greedy or verify")
    if options["decode"] == "verify":
        load_scorer()  # an answer is verified with the assembler: a missing one is said before the model loads
    batch_size = as_number(args, "batch_size", int, 16, 1, 4096, "an integer >= 1")
    seed = as_number(args, "seed", int, None, 0, None, "an integer >= 0")
    if "prompt" in args and "input" in args:
        fail("give prompt= or input=, not both")
    if "output" in args and "input" not in args:
        fail("output= needs input=FILE.jsonl")
    if "prompt" in args and not args["prompt"].strip():
        fail("prompt= is empty")
    rows = read_prompt_rows(Path(args["input"]).expanduser()) if "input" in args else None
    output = None
    if "output" in args:
        output = Path(args["output"]).expanduser()
        if not output.parent.is_dir():
            fail(f"output={args['output']!r}: folder {output.parent} does not exist")
        if output.exists() and output.resolve() == Path(args["input"]).expanduser().resolve():
            fail("output= must not be the input file")
    interactive_mode = "prompt" not in args and rows is None
    if interactive_mode and not sys.stdin.isatty():
        fail("no prompt: give prompt=TEXT or input=FILE.jsonl (the interactive prompt needs a terminal)")
    scorer = load_scorer() if as_bool(args, "check") else None

    from riscv_ft.assistant import Assistant, AssistantError

    try:
        source = source_from_args(args)
        for note in source.notes:
            print(f"note: {note}", file=sys.stderr)
        # mlx-lm prints while it quantizes ("[INFO] Quantized model ..."): keep stdout for answers.
        with contextlib.redirect_stdout(sys.stderr):
            assistant = Assistant.from_source(source)
    except AssistantError as err:
        fail(str(err))
    if seed is not None:
        import mlx.core as mx

        mx.random.seed(seed)

    if rows is not None:
        answer_file(assistant, rows, output, options, batch_size, scorer)
    elif interactive_mode:
        interactive(assistant, options, scorer)
    else:
        answer_one(assistant, args["prompt"].strip(), options, scorer, stream=sys.stdout.isatty())


def cli() -> None:
    """The `riscv-ft-generate` command ([project.scripts])."""
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `... | head`
        sys.stderr.close()
        sys.exit(0)


if __name__ == "__main__":
    cli()

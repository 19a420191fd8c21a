"""Using a finished run: `python -m riscv_ft.generate` (one prompt, a file of prompts, the
interactive prompt on a pseudo-terminal, MLflow run ids, bad input), the Assistant API, and
adapters passed both ways between riscv_ft and mlx-lm's own `lora` and `generate`."""

import dataclasses
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from riscv_ft.assistant import Assistant, run_folder_from_mlflow, source_from_run
from riscv_ft.model import resolve_base

PROMPTS = ["Add a1 and a2 into a0", "Shifts t1 left by 2 bits into a1.", "Load a word from 8(sp) into t0."]
MAX_TOKENS = 12


def run_module(module: str, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def mlx_lm_generate(model: Path, prompt: str, adapter: Path | None = None) -> str:
    """The answer upstream `python -m mlx_lm generate` prints (greedy, chat template)."""
    args = ["generate", "--model", str(model), "--prompt", prompt, "--max-tokens", str(MAX_TOKENS)]
    if adapter is not None:
        args += ["--adapter-path", str(adapter)]
    result = run_module("mlx_lm", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split("==========\n", 1)[1].split("\n==========", 1)[0].strip()


@pytest.fixture(scope="module")
def assistant(smoke_run) -> Assistant:
    return Assistant.from_run(smoke_run)


@pytest.fixture(scope="module")
def base_only(smoke_run) -> Assistant:
    """The run's base model without its adapter."""
    return Assistant.from_source(dataclasses.replace(source_from_run(smoke_run), adapter_dir=None))


@pytest.fixture(scope="module")
def tiny_dir(smoke_run) -> Path:
    return Path(resolve_base(source_from_run(smoke_run).model_cfg))


def test_generate_prints_the_runs_greedy_answer(smoke_run, assistant, base_only):
    expected = assistant.ask(PROMPTS[0], max_tokens=MAX_TOKENS)
    result = run_module("riscv_ft.generate", f"run={smoke_run}", f"prompt={PROMPTS[0]}", f"max_tokens={MAX_TOKENS}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == expected + "\n"
    # The adapter is really applied: the base alone answers otherwise.
    assert base_only.ask(PROMPTS[0], max_tokens=MAX_TOKENS) != expected


def test_prompt_format_comes_from_the_runs_config(smoke_run, assistant, tmp_path):
    assert source_from_run(smoke_run).prompt_format == "chat"
    chat = assistant.tokenizer.decode(assistant.prompt_tokens("Add a1 and a2"))
    assert "[INST]" in chat and "User:" not in chat
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run, ignore=shutil.ignore_patterns("*.png", "*.jsonl"))
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(config.replace("prompt_format: chat", "prompt_format: completion"))
    source = source_from_run(run)
    assert source.prompt_format == "completion"
    completion = Assistant(assistant.model, assistant.tokenizer, source.prompt_format)
    assert completion.tokenizer.decode(completion.prompt_tokens("Add a1 and a2")).rstrip().endswith("User: Add a1 and a2\nAssistant:")


def test_generate_answers_a_file_of_prompts_in_batches(smoke_run, assistant, tmp_path, capsys):
    from riscv_ft.generate import main

    rows = [
        {"description": PROMPTS[0], "id": 1},
        {"prompt": PROMPTS[1], "id": 2},
        {"messages": [{"role": "user", "content": PROMPTS[2]}, {"role": "assistant", "content": "lw t0, 8(sp)"}], "id": 3},
        {"prompt": f"User: {PROMPTS[0]}\nAssistant: ", "completion": "add a0, a1, a2", "id": 4},  # completion format
    ]
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    output = tmp_path / "answers.jsonl"
    # run= an MLflow run id: found through the run's `run_dir` tag.
    run_id = json.loads((smoke_run / "metrics.json").read_text())["mlflow_run_id"]
    main([f"run={run_id}", f"input={source}", f"output={output}", f"max_tokens={MAX_TOKENS}", "batch_size=2"])
    answered = [json.loads(line) for line in output.read_text().splitlines()]
    assert [a["id"] for a in answered] == [1, 2, 3, 4]
    assert answered[2]["messages"] == rows[2]["messages"]  # every input field is kept
    assert [a["generated"] for a in answered] == assistant.ask_many(PROMPTS + PROMPTS[:1], max_tokens=MAX_TOKENS)
    assert "answered 4/4" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial file left


def test_mlflow_run_id_finds_the_run_folder_or_downloads_its_artifacts(smoke_run, tmp_path, monkeypatch):
    run_id = json.loads((smoke_run / "metrics.json").read_text())["mlflow_run_id"]
    source = source_from_run(run_id)
    assert source.run_dir == smoke_run.resolve() and source.mlflow_run_id == run_id
    monkeypatch.setenv("RISCV_FT_CACHE", str(tmp_path))
    folder = run_folder_from_mlflow(run_id, prefer_local=False)
    assert folder.is_relative_to(tmp_path)
    for name in ("config.yaml", "adapters/adapters.safetensors", "adapters/adapter_config.json"):
        assert (folder / name).read_bytes() == (smoke_run / name).read_bytes()


def test_check_true_scores_each_answer(tmp_path):
    scorer = pytest.importorskip("riscv_ft.evaluate.scorer")
    from riscv_ft.generate import check_answers, describe_check, load_scorer

    try:
        score_rows = load_scorer()
    except SystemExit:
        pytest.skip("no RISC-V assembler installed")
    assert score_rows is scorer.score_rows
    good, bad, graded = check_answers(score_rows, ["add a0, a1, a2", "a a a", "add a0, a2, a1"], [None, None, "add a0, a1, a2"])
    assert good["assembles"] is True and describe_check(good).startswith("# check: assembles yes")
    assert bad["assembles"] is not True and "assembles yes" not in describe_check(bad)
    assert graded["functional"] is True and "behaves like the reference yes" in describe_check(graded)


def test_check_true_without_the_scorer_is_one_clear_line(monkeypatch, capsys):
    from riscv_ft.generate import load_scorer

    monkeypatch.setitem(sys.modules, "riscv_ft.evaluate.scorer", None)  # import fails
    with pytest.raises(SystemExit) as exit_info:
        load_scorer()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: check=true needs riscv_ft.evaluate.scorer") and err.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    ([], "name a model"),
    (["run=/no/such/run", "prompt=x"], "neither a run folder nor an MLflow run id"),
    (["run={run}", "prompt=x", "max_tokens=0"], "max_tokens='0' is not allowed"),
    (["run={run}", "prompt=x", "colour=red"], "unknown option 'colour'"),
    (["run={run}", "prompt=x", "input=x.jsonl"], "give prompt= or input=, not both"),
    (["run={run}", "input=/no/such.jsonl"], "no such file"),
    (["run={run}", "input={bad}"], "line 2: not JSON"),
    (["run={run}"], "the interactive prompt needs a terminal"),  # stdin is not a terminal here
    (["run={run}", "prompt=x", "prompt_format=completion"], "cannot be combined with run="),
    (["adapter={run}", "prompt=x"], "is a run folder: use run="),
    (["adapter={misfit}", "model=tiny", "prompt=x"], "does not fit base"),
])
def test_bad_input_ends_with_one_line_and_exit_2(smoke_run, tmp_path, capsys, args, message):
    from riscv_ft.generate import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"description": "ok"}\nnot json\n')
    misfit = tmp_path / "misfit"
    if "{misfit}" in " ".join(args):  # an adapter whose rank does not match its weights
        shutil.copytree(smoke_run / "adapters", misfit)
        config = json.loads((misfit / "adapter_config.json").read_text())
        config["lora_parameters"]["rank"] = 4
        (misfit / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(run=smoke_run, bad=bad, misfit=misfit) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_bad_input_from_the_command_line_has_no_traceback():
    result = run_module("riscv_ft.generate", "run=/no/such/run", "prompt=x")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr and result.stdout == ""


# ---------------------------------------------------------------- the interactive prompt


class Terminal:
    """A process on a pseudo-terminal (the stdlib's pty), read until expected text appears."""

    def __init__(self, argv: list[str], env: dict):
        self.fd, child = pty.openpty()
        # In a new session, make the terminal the controlling one (so Ctrl-C reaches the
        # process), then become `argv`: a small launcher instead of a preexec_fn.
        # SIGINT back to its default as a shell on a terminal would: a parent started in the
        # background (CI) ignores it, and an ignored signal stays ignored across exec.
        launcher = ("import fcntl, os, signal, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                    "signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])")
        self.proc = subprocess.Popen([sys.executable, "-c", launcher, *argv], stdin=child, stdout=child, stderr=child,
                                     env=env, start_new_session=True)
        os.close(child)
        self.seen = ""

    def expect(self, text: str, timeout: float = 60) -> str:
        """Everything read until `text` (which is consumed), \\r\\n turned into \\n."""
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None and not select.select([self.fd], [], [], 0)[0]:
                raise AssertionError(f"did not see {text!r} (exit code {self.proc.poll()}); output so far:\n{self.seen}")
            if select.select([self.fd], [], [], min(remaining, 0.5))[0]:
                try:
                    self.seen += os.read(self.fd, 4096).decode(errors="replace").replace("\r\n", "\n")
                except OSError:  # the process closed the terminal
                    pass
        before, _, self.seen = self.seen.partition(text)
        return before

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=30)
        finally:
            os.close(self.fd)


def test_interactive_prompt_on_a_terminal(smoke_run, assistant, tiny_dir, tmp_path):
    # A private cache for the history file, sharing the already built tiny model.
    (tmp_path / tiny_dir.name).symlink_to(tiny_dir)
    env = {**os.environ, "RISCV_FT_CACHE": str(tmp_path), "TERM": "dumb"}
    terminal = Terminal([sys.executable, "-m", "riscv_ft.generate", f"run={smoke_run}", f"max_tokens={MAX_TOKENS}"], env)
    try:
        terminal.expect("riscv> ", timeout=180)  # start-up loads the model: slow while the suite loads the machine
        terminal.send(PROMPTS[0] + "\r")
        first = terminal.expect("riscv> ")
        assert first.strip().endswith(assistant.ask(PROMPTS[0], max_tokens=MAX_TOKENS))
        terminal.send("\x03")  # Ctrl-C at the prompt: a fresh prompt, not the end
        terminal.expect("riscv> ")
        terminal.send("\x1b[A\r")  # arrow up recalls the last prompt (readline history)
        again = terminal.expect("riscv> ")
        assert again.strip().endswith(assistant.ask(PROMPTS[0], max_tokens=MAX_TOKENS))
        terminal.send("\x04")  # Ctrl-D leaves
        assert terminal.close() == 0
    finally:
        if terminal.proc.poll() is None:
            terminal.proc.kill()
    assert PROMPTS[0] in (tmp_path / "generate_history").read_text()


# ---------------------------------------------------------------- interop with mlx-lm


def test_our_adapters_work_with_mlx_lm_generate(smoke_run, assistant, tiny_dir):
    ours = assistant.ask(PROMPTS[1], max_tokens=MAX_TOKENS)
    assert mlx_lm_generate(tiny_dir, PROMPTS[1], adapter=smoke_run / "adapters") == ours


def test_an_mlx_lm_lora_adapter_works_with_riscv_ft_generate(smoke_run, base_only, tiny_dir, tmp_path, capsys):
    from riscv_ft.generate import main

    adapter = tmp_path / "mlx_lm_adapter"
    # mlx_lm.lora trains on the splits our run wrote (train.jsonl, valid.jsonl in its format).
    result = run_module("mlx_lm", "lora", "--model", str(tiny_dir), "--train", "--data", str(smoke_run),
                        "--iters", "3", "--batch-size", "2", "--num-layers", "4", "--learning-rate", "1e-2",
                        "--val-batches", "1", "--adapter-path", str(adapter))
    assert result.returncode == 0, result.stderr[-2000:]
    main([f"adapter={adapter}", f"model={tiny_dir}", f"prompt={PROMPTS[0]}", f"max_tokens={MAX_TOKENS}"])
    ours = capsys.readouterr().out.strip()
    assert ours == mlx_lm_generate(tiny_dir, PROMPTS[0], adapter=adapter)
    assert ours != base_only.ask(PROMPTS[0], max_tokens=MAX_TOKENS)  # its adapter is in use
    # The base recorded in its adapter_config.json is used when model= is left out.
    assert Assistant.from_adapter(adapter).ask(PROMPTS[0], max_tokens=MAX_TOKENS) == ours

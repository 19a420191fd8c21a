"""`python -m riscv_ft.export`: a fused model that upstream mlx-lm opens and that answers like
base + adapter; 4-bit bases re-quantized or de-quantized; GGUF; provenance; safe output folder."""

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest
from omegaconf import OmegaConf

from riscv_ft.assistant import Assistant, source_from_run

PROMPTS = ["Add a1 and a2 into a0", "Shifts t1 left by 2 bits into a1.", "Load a word from 8(sp) into t0.",
           "Branch to done if t0 is zero."]
MAX_TOKENS = 12


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300, env=dict(os.environ))


def last_logits(model, assistant: Assistant, prompt: str) -> mx.array:
    return model(mx.array([assistant.prompt_tokens(prompt)]))[0, -1]


def max_difference(a: mx.array, b: mx.array) -> float:
    return mx.abs(a - b).max().item()


@pytest.fixture(scope="module")
def assistant(smoke_run) -> Assistant:
    return Assistant.from_run(smoke_run)


@pytest.fixture(scope="module")
def export_dir(smoke_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "fused"
    result = run_module("riscv_ft.export", f"run={smoke_run}", f"out={out}", "gguf=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "equal base + adapter on 3/3" in result.stdout
    return out


def test_export_loads_in_upstream_mlx_lm_and_answers_like_base_plus_adapter(export_dir, smoke_run, assistant):
    from mlx_lm import load

    from riscv_ft.inference import generate_answers

    model, tokenizer = load(str(export_dir))
    assert not [name for name, m in model.named_modules() if hasattr(m, "fuse")]  # no adapter layers left
    assert generate_answers(model, tokenizer, PROMPTS, "chat", MAX_TOKENS) == assistant.ask_many(PROMPTS, max_tokens=MAX_TOKENS)
    base = Assistant.from_source(dataclasses.replace(source_from_run(smoke_run), adapter_dir=None))
    for prompt in PROMPTS[:2]:
        expected = last_logits(assistant.model, assistant, prompt)
        assert max_difference(last_logits(model, assistant, prompt), expected) < 1e-3
        assert max_difference(last_logits(base.model, assistant, prompt), expected) > 0.1  # the adapter matters


def test_export_opens_with_the_mlx_lm_generate_command(export_dir, assistant):
    result = run_module("mlx_lm", "generate", "--model", str(export_dir), "--prompt", PROMPTS[0], "--max-tokens", str(MAX_TOKENS))
    assert result.returncode == 0, result.stderr[-2000:]
    printed = result.stdout.split("==========\n", 1)[1].split("\n==========", 1)[0].strip()
    assert printed == assistant.ask(PROMPTS[0], max_tokens=MAX_TOKENS)


def test_generate_uses_an_export_with_its_recorded_prompt_format(export_dir, assistant):
    exported = Assistant.from_adapter(None, model=str(export_dir))
    assert exported.prompt_format == "chat" and exported.source.adapter_dir is None
    assert exported.ask(PROMPTS[1], max_tokens=MAX_TOKENS) == assistant.ask(PROMPTS[1], max_tokens=MAX_TOKENS)


def test_export_records_where_it_came_from(export_dir, smoke_run):
    record = json.loads((export_dir / "riscv_ft_export.json").read_text())
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    source = record["source"]
    assert source["run_dir"] == str(smoke_run.resolve())
    assert source["mlflow_run_id"] == metrics["mlflow_run_id"]
    assert source["adapter_sha256"] == hashlib.sha256((smoke_run / "adapters" / "adapters.safetensors").read_bytes()).hexdigest()
    assert source["training_git_commit"]  # from the run's MLflow tags
    assert "commit" in record["export_git"]
    assert record["config"] == OmegaConf.to_container(OmegaConf.load(smoke_run / "config.yaml"))
    assert record["prompt_format"] == "chat" and record["quantization"] is None
    assert record["verification"]["equal_greedy_answers"] == record["verification"]["prompts"] == 3
    assert record["usage"] in (export_dir / "README.md").read_text()


def test_gguf_holds_the_fused_weights(export_dir, smoke_run):
    from riscv_ft.model import resolve_base

    tensors, metadata = mx.load(str(export_dir / "model.gguf"), return_metadata=True)
    assert str(metadata["general.architecture"]) == "llama"
    fused = mx.load(str(export_dir / "model.safetensors"))
    base = mx.load(str(Path(resolve_base(source_from_run(smoke_run).model_cfg)) / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj.weight"
    assert mx.array_equal(tensors["blk.0.ffn_down.weight"], fused[name])
    assert not mx.allclose(fused[name], base[name])  # the merged adapter changed it


def quantized_run(smoke_run: Path, folder: Path) -> Path:
    """The smoke run as if trained on a 4-bit base (same shapes, so its adapter fits)."""
    shutil.copytree(smoke_run, folder, ignore=shutil.ignore_patterns("*.png", "history.jsonl", "samples.jsonl"))
    config = OmegaConf.load(folder / "config.yaml")
    config.model.quantize.enabled = True
    config.model.quantize.bits, config.model.quantize.group_size = 4, 64
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(config))
    return folder


def test_4bit_base_is_requantized_by_default_and_dequantized_on_request(smoke_run, tmp_path):
    from mlx_lm import load

    from riscv_ft.export import main
    from riscv_ft.model import load_base

    run = quantized_run(smoke_run, tmp_path / "q4run")
    main([f"run={run}", f"out={tmp_path / 'q4'}", "verify=0"])
    main([f"run={run}", f"out={tmp_path / 'float'}", "dequantize=true", "verify=0"])
    q4_config = json.loads((tmp_path / "q4" / "config.json").read_text())
    assert q4_config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    assert "quantization" not in json.loads((tmp_path / "float" / "config.json").read_text())
    assert any(k.endswith(".scales") for k in mx.load(str(tmp_path / "q4" / "model.safetensors")))

    assistant = Assistant.from_run(run)  # a 4-bit base + adapter, as in QLoRA training
    base = load_base(assistant.source.model_cfg).model
    requantized, _ = load(str(tmp_path / "q4"))
    dequantized, _ = load(str(tmp_path / "float"))
    for prompt in PROMPTS[:2]:
        expected = last_logits(assistant.model, assistant, prompt)
        without_adapter = max_difference(last_logits(base, assistant, prompt), expected)
        # Re-quantizing W + BA adds 4-bit rounding, smaller than the adapter's effect (measured
        # 1.06 against 4.59 with bias-corrected AdamW, whose smoke adapter moves less).
        assert max_difference(last_logits(requantized, assistant, prompt), expected) < 0.3 * without_adapter
        assert max_difference(last_logits(dequantized, assistant, prompt), expected) < 1e-3
    assert Assistant(dequantized, assistant.tokenizer, "chat").ask_many(PROMPTS, max_tokens=MAX_TOKENS) == \
        assistant.ask_many(PROMPTS, max_tokens=MAX_TOKENS)


def test_gguf_of_a_quantized_base_needs_dequantize(smoke_run, tmp_path, capsys):
    from riscv_ft.export import main

    run = quantized_run(smoke_run, tmp_path / "q4run")
    with pytest.raises(SystemExit) as exit_info:
        main([f"run={run}", f"out={tmp_path / 'out'}", "gguf=true"])
    assert exit_info.value.code == 2
    assert "add dequantize=true" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_out_dir_is_never_overwritten_unless_it_is_an_earlier_export(smoke_run, tmp_path, capsys):
    from riscv_ft.export import EXPORT_RECORD, main, move_into_place

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    for extra in ([], ["force=true"]):
        with pytest.raises(SystemExit) as exit_info:
            main([f"run={smoke_run}", f"out={busy}", *extra])
        assert exit_info.value.code == 2
        assert "not empty" in capsys.readouterr().err
    assert (busy / "notes.txt").read_text() == "mine"

    earlier, new = tmp_path / "earlier", tmp_path / ".new.partial"
    earlier.mkdir()
    (earlier / EXPORT_RECORD).write_text("{}")
    new.mkdir()
    (new / "model.safetensors").write_text("new")
    move_into_place(new, earlier, force=True)
    assert sorted(p.name for p in earlier.iterdir()) == ["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "earlier"]  # nothing left beside it


def test_a_failed_export_leaves_no_folder(smoke_run, tmp_path, monkeypatch):
    import riscv_ft.export as export_module

    def crash(folder, *args):
        (folder / "model.safetensors").write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "save_export", crash)
    with pytest.raises(OSError, match="disk full"):
        export_module.export(source_from_run(smoke_run), tmp_path / "out", dequantize=False, gguf=False, verify=0, force=False)
    assert list(tmp_path.iterdir()) == []

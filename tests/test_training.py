"""The training loop on the tiny model: loss falls, outputs are complete, and the adapter
round-trips through upstream mlx_lm.load with the same logits."""

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from riscv_ft.cli import PACKAGE_DATA, compose
from riscv_ft.data.batch import make_batch
from riscv_ft.data.pipeline import prepare
from riscv_ft.model import apply_adapters, load_base, save_adapters
from riscv_ft.trainer import Trainer, enable_grad_checkpoint, masked_loss


def test_smoke_run_leaves_a_complete_run_folder(smoke_run):
    for name in ("config.yaml", "train.log", "metrics.json", "history.jsonl", "loss_curve.png", "eval.jsonl", "eval_summary.json",
                 "train.jsonl", "valid.jsonl", "test.jsonl", "adapters/adapters.safetensors", "adapters/adapter_config.json"):
        assert (smoke_run / name).is_file(), name
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    for key in ("train_loss", "val_loss", "tokens_per_s", "peak_memory_gb", "padding_share"):
        assert isinstance(metrics[key], float) and metrics[key] > 0, key
    # train_loss is the end of training (the last report), not an average over the run
    reports = [json.loads(line) for line in (smoke_run / "history.jsonl").read_text().splitlines()]
    assert metrics["train_loss"] == [r for r in reports if "train_loss" in r][-1]["train_loss"]
    # The validation loss falls (the tiny model starts near ln(32768) = 10.4).
    assert metrics["val_loss"] < metrics["initial_val_loss"] - 0.3
    # The held-out answers were scored by the real assembler: rates exist, rows carry verdicts.
    assert 0.0 <= metrics["eval_exact_match_rate"] <= 1.0 and "eval_assembles_rate" in metrics
    scored = [json.loads(line) for line in (smoke_run / "eval.jsonl").read_text().splitlines()]
    assert scored and all({"prediction", "reference", "assembles", "functional", "reference_class"} <= set(r) for r in scored)
    first = json.loads((smoke_run / "valid.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]


def test_adapter_config_is_mlx_lm_format_with_the_configured_rank(smoke_run):
    config = json.loads((smoke_run / "adapters" / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == "lora" and config["num_layers"] == 4
    assert config["lora_parameters"]["rank"] == 8 and config["lora_parameters"]["scale"] == 2.0
    assert config["model"].startswith("/")  # the tiny model's folder
    weights = mx.load(str(smoke_run / "adapters" / "adapters.safetensors"))
    a = weights["model.layers.0.self_attn.q_proj.lora_a"]
    assert a.shape == (256, 8)
    assert len(weights) == 4 * 7 * 2


def test_upstream_mlx_lm_loads_and_generates_with_the_smoke_adapter(smoke_run):
    from mlx_lm import generate, load

    config = json.loads((smoke_run / "adapters" / "adapter_config.json").read_text())
    model, tokenizer = load(config["model"], adapter_path=str(smoke_run / "adapters"))
    text = generate(model, tokenizer, prompt="Adds a1 and a2 into a0.", max_tokens=5)
    assert isinstance(text, str)
    assert len(tokenizer.encode(text, add_special_tokens=False)) <= 6


@pytest.mark.parametrize("lora", ["default", "dora"])
def test_trained_adapter_gives_the_same_logits_in_upstream_mlx_lm(tmp_path, lora):
    from mlx_lm import load

    cfg = compose(["experiment=smoke", f"lora={lora}", "trainer.iters=4", "trainer.eval_every=0", "trainer.save_every=0"])
    loaded = load_base(cfg.model)
    data = prepare(cfg.data, loaded.tokenizer, seed=0)
    meta = apply_adapters(loaded.model, cfg.lora)
    Trainer(loaded.model, cfg.trainer, 8).fit(data.samples["train"], data.samples["valid"], lambda *a: None, lambda s: None)
    save_adapters(loaded.model, tmp_path, loaded.base_ref, cfg.lora, meta)
    # LoRA's B starts at zero: after training it must not be, or the test proves nothing.
    assert any(float(mx.abs(v).max()) > 0 for k, v in tree_flatten(loaded.model.trainable_parameters()) if k.endswith("lora_b"))

    batch = make_batch(data.samples["valid"][:3], 8)
    loaded.model.eval()
    ours = loaded.model(mx.array(batch.inputs))
    upstream, _ = load(loaded.base_ref, adapter_path=str(tmp_path))
    theirs = upstream(mx.array(batch.inputs))
    assert np.allclose(np.array(ours), np.array(theirs), atol=1e-4)


def test_grad_checkpoint_gives_the_same_gradients_and_leaks_into_no_other_model():
    """With lora_b non-zero (at init it is 0, and so is every lora_a gradient), checkpointed
    and plain backward passes give the same gradient for every adapter weight."""
    import mlx.nn as nn

    cfg = compose(["experiment=smoke"])
    results = []
    for checkpoint in (False, True):
        loaded = load_base(cfg.model)
        data = prepare(cfg.data, loaded.tokenizer, seed=0)
        mx.random.seed(0)
        apply_adapters(loaded.model, cfg.lora)
        loaded.model.load_weights([(k, 0.02 * mx.random.normal(v.shape, key=mx.random.key(i)))
                                   for i, (k, v) in enumerate(tree_flatten(loaded.model.trainable_parameters()))
                                   if k.endswith("lora_b")], strict=False)
        if checkpoint:
            block_class = type(loaded.model.layers[0])
            enable_grad_checkpoint(loaded.model)
            assert type(loaded.model.layers[0]) is not block_class
        batch = make_batch(data.samples["train"][:4], 8)
        (loss, _), grads = nn.value_and_grad(loaded.model, masked_loss)(
            loaded.model, mx.array(batch.inputs), mx.array(batch.targets), mx.array(batch.mask))
        results.append((loss.item(), {k: np.array(g) for k, g in tree_flatten(grads)}))
    (plain_loss, plain), (ckpt_loss, ckpt) = results
    assert plain_loss == pytest.approx(ckpt_loss, rel=1e-5)
    assert plain.keys() == ckpt.keys() and len(plain) == 4 * 7 * 2
    lora_a = [k for k in plain if k.endswith("lora_a")]
    assert all(np.abs(plain[k]).max() > 1e-6 for k in lora_a)  # the case this test exists for
    worst = max(float(np.abs(plain[k] - ckpt[k]).max() / (np.abs(plain[k]).max() + 1e-12)) for k in plain)
    assert worst < 1e-4, f"largest relative gradient difference {worst:.3g}"
    fresh = load_base(cfg.model)
    assert not getattr(type(fresh.model.layers[0]), "_riscv_ft_checkpointed", False)


def test_smoke_data_file_is_shipped_in_the_dataset_schema():
    rows = [json.loads(line) for line in (PACKAGE_DATA / "smoke.jsonl").read_text().splitlines()]
    assert len(rows) >= 100 and all(set(r) == {"description", "instructions"} for r in rows)


def test_loss_plot_turns_logarithmic_when_the_loss_spans_a_decade(tmp_path):
    from riscv_ft.plots import loss_figure, plot_losses

    falling = [{"step": 0, "val_loss": 10.6}] + [{"step": s, "train_loss": 10.0 / s} for s in range(1, 50)]
    flat = [{"step": s, "train_loss": 2.0 + 0.01 * s} for s in range(50)]
    assert loss_figure(falling, "t").axes[0].get_yscale() == "log"
    assert loss_figure(flat, "t").axes[0].get_yscale() == "linear"
    assert loss_figure([{"step": 0}], "t") is None
    png = plot_losses(falling, tmp_path / "loss.png", "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

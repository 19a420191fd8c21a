"""trainer.fuse_lora=true: q/k/v and gate/up LoRA layers run fused, with the arithmetic of
mlx-lm's LoRALinear, and adapters still saved in mlx-lm's layout. And the optimizer step:
MLX's AdamW on the clipped mean gradient, skipped exactly when not finite."""

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

from riscv_ft.cli import compose
from riscv_ft.data.batch import batch_multiple
from riscv_ft.data.pipeline import prepare
from riscv_ft.fused_lora import FusedLoRALinear, fuse_lora_projections, fused_layout, standard_layout
from riscv_ft.model import apply_adapters, load_base, save_adapters, trainable_parameters
from riscv_ft.trainer import Trainer, adamw_update, masked_loss


def _lora_model(overrides=(), random_b=True):
    cfg = compose(["experiment=smoke", "model.dtype=float32", *overrides])
    loaded = load_base(cfg.model)
    mx.random.seed(0)
    apply_adapters(loaded.model, cfg.lora)
    if random_b:  # LoRA B starts at zero: give the adapters weight so their outputs and gradients count
        loaded.model.update(tree_map(lambda p: mx.random.normal(p.shape) * 0.05, loaded.model.trainable_parameters()))
    mx.eval(loaded.model.parameters())
    return cfg, loaded


@pytest.mark.parametrize("quantized", [False, True], ids=["float", "4-bit"])
def test_fused_layers_give_the_same_logits_loss_and_gradients(quantized):
    overrides = ["model.quantize.enabled=true", "model.quantize.group_size=32"] if quantized else []
    _, plain = _lora_model(overrides)
    cfg, fused = _lora_model(overrides)
    assert fuse_lora_projections(fused.model) == 2 * cfg.model.tiny.num_hidden_layers
    assert isinstance(fused.model.layers[0].self_attn.qkv_proj, FusedLoRALinear)
    inputs = mx.array(np.random.default_rng(0).integers(5, 30000, (2, 12)), dtype=mx.int32)
    targets, mask = mx.roll(inputs, -1, axis=1), mx.ones((2, 12))

    assert float(mx.abs(plain.model(inputs) - fused.model(inputs)).max()) < 1e-5
    (loss_plain, _), grads_plain = nn.value_and_grad(plain.model, masked_loss)(plain.model, inputs, targets, mask)
    (loss_fused, _), grads_fused = nn.value_and_grad(fused.model, masked_loss)(fused.model, inputs, targets, mask)
    assert abs(loss_plain.item() - loss_fused.item()) < 1e-4 * abs(loss_plain.item())
    grads_plain = dict(tree_flatten(grads_plain))
    grads_fused = standard_layout(fused.model, dict(tree_flatten(grads_fused)))
    assert set(grads_plain) == set(grads_fused)
    for name, grad in grads_plain.items():
        assert float(mx.abs(grads_fused[name] - grad).max()) <= 1e-4 * float(mx.abs(grad).max()), name
    # Weights read back in mlx-lm's layout, exactly, and the layout conversion round-trips.
    weights = trainable_parameters(plain.model)
    assert all(mx.array_equal(trainable_parameters(fused.model)[k], v) for k, v in weights.items())
    back = standard_layout(fused.model, fused_layout(fused.model, weights))
    assert set(back) == set(weights) and all(mx.array_equal(back[k], v) for k, v in weights.items())


def test_a_fused_run_trains_as_an_unfused_one_and_its_adapters_load_in_mlx_lm(tmp_path):
    from mlx_lm import load
    from mlx_lm.models.cache import make_prompt_cache

    overrides = ["trainer.iters=3", "trainer.eval_every=0", "trainer.save_every=0", "trainer.val_batches=1"]
    results = {}
    for fuse in (False, True):
        cfg, loaded = _lora_model([*overrides, f"trainer.fuse_lora={str(fuse).lower()}"], random_b=False)
        data = prepare(cfg.data, loaded.tokenizer, seed=0)
        initial = trainable_parameters(loaded.model)
        Trainer(loaded.model, cfg.trainer, batch_multiple(cfg.data)).fit(
            data.samples["train"], data.samples["valid"], lambda *a: None, lambda s: None)
        results[fuse] = (cfg, loaded, trainable_parameters(loaded.model))
    (_, _, plain), (cfg, fused, weights) = results[False], results[True]
    assert set(plain) == set(weights)
    # Equal up to float rounding, which AdamW's normalisation amplifies where a gradient is
    # near zero: far below what three steps moved the weights.
    for name, value in plain.items():
        moved = float(mx.abs(value - initial[name]).max())
        assert moved > 0 and float(mx.abs(weights[name] - value).max()) <= 0.05 * moved, name
    # The blocks of B off the diagonal got no update: the fused layers are still the parts' layers.
    qkv = fused.model.layers[0].self_attn.qkv_proj
    assert float(mx.abs(qkv.lora_b * (1 - qkv.parts.mask)).max()) == 0.0

    save_adapters(fused.model, tmp_path, fused.base_ref, cfg.lora, {"num_layers": len(fused.model.layers),
                  "lora_parameters": {"rank": cfg.lora.rank, "scale": 1.0, "dropout": 0.0, "keys": [
                      "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                      "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]}})
    reference, _ = load(fused.base_ref, adapter_path=str(tmp_path))
    reference.set_dtype(mx.float32)
    prompt = mx.array([[1, 3, 1234, 567, 89, 4]])
    # Through the KV cache, as generation runs: the prompt, then one more token.
    for model in (fused.model, reference):
        model.eval()
    outputs = []
    for model in (fused.model, reference):
        cache = make_prompt_cache(model)
        model(prompt, cache=cache)
        outputs.append(model(mx.array([[42]]), cache=cache))
    assert float(mx.abs(outputs[0] - outputs[1]).max()) < 1e-4


def test_dora_partial_targets_and_mixed_quantization_stay_unfused():
    _, dora = _lora_model(["lora=dora"], random_b=False)
    assert fuse_lora_projections(dora.model) == 0
    _, partial = _lora_model(["lora.targets=[q_proj,v_proj]"], random_b=False)
    assert fuse_lora_projections(partial.model) == 0
    # Mixed-precision checkpoints quantize some projections with more bits: v_proj at 8 here.
    cfg = compose(["experiment=smoke", "model.dtype=float32"])
    model = load_base(cfg.model).model
    nn.quantize(model, group_size=32, bits=8, class_predicate=lambda path, m: path.endswith("v_proj"))
    nn.quantize(model, group_size=32, bits=4, class_predicate=lambda path, m: isinstance(m, nn.Linear) and "lm_head" not in path)
    model.freeze()
    apply_adapters(model, cfg.lora)
    assert fuse_lora_projections(model) == cfg.model.tiny.num_hidden_layers  # the MLPs only
    assert not hasattr(model.layers[0].self_attn, "qkv_proj")
    mx.eval(model(mx.array([[1, 3, 1234, 4]])))


def test_the_update_is_mlx_adamw_on_the_scaled_gradient_and_nothing_moves_when_not_ok():
    rng = np.random.default_rng(0)
    params = {"a": mx.array(rng.normal(size=(4, 3)), dtype=mx.float32), "b": mx.array(rng.normal(size=(5,)), dtype=mx.float32)}
    grads = [tree_map(lambda p: mx.array(rng.normal(size=p.shape), dtype=mx.float32), params) for _ in range(3)]
    schedule = optim.linear_schedule(1e-2, 3e-2, 3)
    ours = optim.AdamW(learning_rate=schedule, weight_decay=0.1, bias_correction=True)
    theirs = optim.AdamW(learning_rate=schedule, weight_decay=0.1, bias_correction=True)
    ours.init(params)
    ours_params, theirs_params = params, params
    for g in grads:
        ours_params = adamw_update(ours, schedule, ours_params, g, mx.array(0.3), mx.array(True))
        theirs_params = theirs.apply_gradients(tree_map(lambda x: x * 0.3, g), theirs_params)
        for k in params:
            assert float(mx.abs(ours_params[k] - theirs_params[k]).max()) < 1e-6, k
    assert ours.state["step"].item() == theirs.state["step"].item() == 3

    before = (dict(ours_params), tree_map(lambda x: x, ours.state))
    poisoned = tree_map(lambda x: x * mx.array(float("nan")), grads[0])
    after = adamw_update(ours, schedule, ours_params, poisoned, mx.array(0.3), mx.array(False))
    for k in params:
        assert mx.array_equal(after[k], before[0][k])
        assert mx.array_equal(ours.state[k]["m"], before[1][k]["m"]) and mx.array_equal(ours.state[k]["v"], before[1][k]["v"])
    assert ours.state["step"].item() == 3


def test_full_fine_tuning_of_a_bfloat16_model_moves_every_weight_in_float32():
    """A bfloat16 update of a bfloat16 weight of 0.02 drops any step under ~6e-5: the update runs
    in float32 and keeps float32 weights (as it did before the update was fused)."""
    rng = np.random.default_rng(2)
    params = {"w": mx.array(rng.normal(size=(64, 64)) * 0.02, dtype=mx.bfloat16)}
    schedule = optim.linear_schedule(2e-5, 2e-5, 1)
    optimizer = optim.AdamW(learning_rate=schedule, bias_correction=True)
    optimizer.init(params)
    start = params["w"].astype(mx.float32)
    for _ in range(20):
        grads = {"w": mx.array(rng.normal(size=(64, 64)), dtype=mx.bfloat16)}
        params = adamw_update(optimizer, schedule, params, grads, mx.array(1.0), mx.array(True))
    assert params["w"].dtype == mx.float32
    assert float((params["w"] != start).astype(mx.float32).mean()) > 0.99


@pytest.mark.parametrize("fuse, most", [(False, 0.95), (True, 0.70)], ids=["default", "fused"])
def test_a_step_runs_fewer_operations_than_mlx_lm_s(fuse, most):
    """On a GPU the step is bound by how many kernels it launches (benchmarks/NOTES.md, section 8):
    the count of one compiled step's graph nodes, ours against mlx-lm's, for Mistral's 32 blocks."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "step_graph.py"
    result = subprocess.run([sys.executable, str(script), *(["--fuse-lora"] if fuse else [])],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ratio = float(re.search(r"ratio \(Mistral-7B's 32 blocks\): ([0-9.]+)", result.stdout).group(1))
    assert ratio <= most, result.stdout


def test_packed_rows_through_fused_layers_give_each_sample_its_unpacked_loss():
    from tests.test_packing import _per_sample_losses

    cfg, loaded = _lora_model()
    assert fuse_lora_projections(loaded.model) > 0
    samples = prepare(cfg.data, loaded.tokenizer, seed=0).samples["train"][:7]
    width = sum(len(s.tokens) - 1 for s in samples[:4]) + 5
    packed, unpacked = _per_sample_losses(loaded.model, samples, [[0, 1, 2, 3], [4, 5, 6]], width)
    assert packed == pytest.approx(unpacked, rel=1e-5)


def test_the_global_norm_is_the_norm_of_all_gradients_in_one_reduction_or_per_array(monkeypatch):
    import riscv_ft.trainer as trainer

    rng = np.random.default_rng(1)
    grads = {"a": mx.array(rng.normal(size=(300, 7)), dtype=mx.float32),
             "b": [mx.array(rng.normal(size=(5,)), dtype=mx.float32), mx.array(rng.normal(size=(2, 3, 4)), dtype=mx.bfloat16)]}
    expected = np.sqrt(sum(float((np.array(g.astype(mx.float32)) ** 2).sum()) for _, g in tree_flatten(grads)))
    assert trainer.global_norm(grads).item() == pytest.approx(expected, rel=1e-5)
    monkeypatch.setattr(trainer, "_NORM_IN_ONE_REDUCTION", 10)  # the full fine-tuning path
    assert trainer.global_norm(grads).item() == pytest.approx(expected, rel=1e-5)

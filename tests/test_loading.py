"""Loading a float checkpoint with quantize-on-load never holds the whole float model."""

import gc
import json
import shutil

import mlx.core as mx
from mlx.utils import tree_flatten

from riscv_ft.cli import compose
from riscv_ft.model import _explain_load_failure, load_base
from riscv_ft.sources.tiny import tiny_model_dir


def test_quantize_on_load_peaks_near_the_quantized_size(tmp_path):
    from mlx_lm.models.llama import Model, ModelArgs

    folder = tmp_path / "float-model"
    shutil.copytree(tiny_model_dir(compose(["model=tiny"]).model.tiny), folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_size=512, num_hidden_layers=8, intermediate_size=1536, head_dim=64)
    model = Model(ModelArgs.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(folder / "model.safetensors"), weights)
    (folder / "config.json").write_text(json.dumps(config))
    float_bytes = sum(w.nbytes for w in weights.values())
    largest = max(w.nbytes for w in weights.values())
    del model, weights
    gc.collect()
    mx.clear_cache()

    cfg = compose(["model=mistral7b", f"model.path={folder}", "model.dtype=float32", "model.quantize.enabled=true"])
    elsewhere = mx.get_active_memory()  # arrays other tests of this process still hold
    mx.reset_peak_memory()
    loaded = load_base(cfg.model)
    peak = mx.get_peak_memory() - elsewhere
    quantized_bytes = sum(w.nbytes for _, w in tree_flatten(loaded.model.parameters()))
    print(f"float {float_bytes / 1e6:.0f} MB, quantized {quantized_bytes / 1e6:.0f} MB, "
          f"largest matrix {largest / 1e6:.0f} MB, peak while loading {peak / 1e6:.0f} MB")
    # Loading everything first (what mlx_lm.load does) peaks above the float size: 255 MB here.
    assert peak <= quantized_bytes + 1.2 * largest
    assert peak < 0.5 * float_bytes


def test_a_gated_repo_says_how_to_log_in():
    err = OSError("401 Client Error. Cannot access gated repo for url https://huggingface.co/...\nAccess to model is restricted.")
    message = _explain_load_failure("mistralai/Mistral-7B-Instruct-v0.3", err)
    assert "hf auth login" in message and "licence" in message and "\n" not in message

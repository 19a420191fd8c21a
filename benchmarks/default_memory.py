"""Peak memory of the default 7B run: loading (quantize-on-load, or the pre-quantized folder)
plus training at the default config, measured with MLX's own counter.

    python benchmarks/default_memory.py --folder /tmp/random-7b --iters 100   # on the GPU machine

Writes Mistral-7B's shape with random weights as a bf16 safetensors folder (the form of
Mistral's own repo, 14.5 GB), then in one process for each of the two default ways of
getting a 4-bit base:
  on-load        model=mistral7b_4bit_on_load model.path=FOLDER: read lazily, quantized one
                 matrix at a time
  pre-quantized  that model saved 4-bit (the form of mlx-community's repo), loaded as
                 model=mistral7b_4bit model.path=FOLDER-4bit
records the peak while loading (and, pre-quantized, with gradient checkpointing), then trains the default recipe (LoRA r16 on all seven
kinds, batch 4, the real data) for --iters steps plus one step on the four longest training
samples (the widest batch an epoch has), and records the peak of loading + training.
The last line is JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402

import mlx.core as mx  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from riscv_ft.cli import compose  # noqa: E402
from riscv_ft.data.pipeline import make_batch, prepare  # noqa: E402
from riscv_ft.memory import MISTRAL_7B, estimate_memory_gb  # noqa: E402
from riscv_ft.model import apply_adapters, load_base, tiny_model_dir  # noqa: E402
from riscv_ft.trainer import Trainer  # noqa: E402

SNAPSHOT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "riscv-instruction-specification" / "train.jsonl"
GB = 1e9
EXTRA: list[str] = []  # --override


# --small: the same script on a toy shape, to check it on a CPU.
SMALL = {"hidden_size": 256, "num_hidden_layers": 2, "intermediate_size": 512, "num_attention_heads": 8,
         "num_key_value_heads": 2, "head_dim": 32}


def write_random_bf16(folder: Path, small: bool) -> None:
    from mlx_lm.models.llama import Model, ModelArgs

    if (folder / "config.json").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    config = {**MISTRAL_7B, **(SMALL if small else {}), "model_type": "mistral", "torch_dtype": "bfloat16"}
    mx.random.seed(0)
    model = Model(ModelArgs.from_dict(config))
    model.set_dtype(mx.bfloat16)
    weights = dict(tree_flatten(model.parameters()))
    # Shards of about 5 GB, as the hub repos are.
    shard, size, index = {}, 0, 0
    for name, w in weights.items():
        shard[name] = w
        size += w.nbytes
        if size > 5 * GB:
            mx.save_safetensors(str(folder / f"model-{index:05d}.safetensors"), shard, {"format": "mlx"})
            shard, size, index = {}, 0, index + 1
    if shard:
        mx.save_safetensors(str(folder / f"model-{index:05d}.safetensors"), shard, {"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir(compose(["model=tiny"]).model.tiny) / name, folder / name)


def measure(overrides: list[str], iters: int, data_path: str) -> tuple[dict, object]:
    cfg = compose([*overrides, *EXTRA, f"data.path={data_path}", "tracking.enabled=false", f"trainer.iters={iters}",
                   "trainer.eval_every=0", "trainer.save_every=0", "trainer.val_batches=1"])
    mx.clear_cache()
    mx.reset_peak_memory()
    loaded = load_base(cfg.model)
    load_peak = mx.get_peak_memory()
    weights = sum(w.nbytes for _, w in tree_flatten(loaded.model.parameters()))
    data = prepare(cfg.data, loaded.tokenizer, cfg.trainer.seed)
    mx.random.seed(0)
    apply_adapters(loaded.model, cfg.lora)
    trainer = Trainer.for_run(loaded.model, cfg)
    trainer.fit(data.samples["train"], data.samples["valid"], lambda s, m: None, lambda s: None)
    longest = sorted(data.samples["train"], key=lambda s: len(s.tokens))[-cfg.trainer.batch_size:]
    widest = make_batch(longest, trainer.pad_to_multiple, min_width=trainer.min_width)
    mx.eval(trainer._queue_step([widest], iters + 1))
    train_peak = mx.get_peak_memory()  # fit resets the counter: this is training alone
    result = {
        "overrides": overrides, "weights_gb": round(weights / GB, 2), "load_peak_gb": round(load_peak / GB, 2),
        "train_peak_gb": round(train_peak / GB, 2), "peak_gb": round(max(load_peak, train_peak) / GB, 2),
        "widest_batch": list(widest.inputs.shape), "estimate_gb": estimate_memory_gb(cfg)["total_gb"],
    }
    print(json.dumps(result), flush=True)
    return result, loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default="/tmp/random-7b")
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--data", default=str(SNAPSHOT))
    parser.add_argument("--small", action="store_true", help="a toy shape instead of Mistral-7B's (a CPU check of the script)")
    parser.add_argument("--override", nargs="*", default=[], help="Hydra overrides for every measurement, e.g. data.min_width=0")
    args = parser.parse_args()
    EXTRA.extend(args.override)
    folder = Path(args.folder)
    write_random_bf16(folder, args.small)

    on_load, loaded = measure(["model=mistral7b_4bit_on_load", f"model.path={folder}"], args.iters, args.data)
    quantized = folder.with_name(folder.name + "-4bit")
    if not (quantized / "config.json").exists():
        from mlx_lm.utils import save_config, save_model

        model = load_base(compose(["model=mistral7b_4bit_on_load", f"model.path={folder}"]).model).model
        save_model(quantized, model)
        config = json.loads((folder / "config.json").read_text())
        save_config({**config, "quantization": {"group_size": 64, "bits": 4}}, quantized / "config.json")
        for name in ("tokenizer.model", "tokenizer_config.json"):
            shutil.copy(folder / name, quantized / name)
        del model
    del loaded
    pre = measure(["model=mistral7b_4bit", f"model.path={quantized}"], args.iters, args.data)[0]
    checkpointed = measure(["model=mistral7b_4bit", f"model.path={quantized}", "trainer.grad_checkpoint=true"], args.iters, args.data)[0]
    print(json.dumps({"on_load": on_load, "pre_quantized": pre, "pre_quantized_grad_checkpoint": checkpointed}))


if __name__ == "__main__":
    main()

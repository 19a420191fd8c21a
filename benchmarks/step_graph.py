"""How many operations one compiled training step runs: our step against mlx-lm's.

On a GPU a LoRA step of a 7B model is bound by the number of kernels it launches, not by
arithmetic (benchmarks/NOTES.md, section 8), and each graph node also costs the host time to
schedule it. This counts the nodes of one step *after* mx.compile (fused element-wise chains
count once), on any device, from a model of Mistral's architecture with small widths: the
count per transformer block does not depend on the widths, so it is measured as the
difference between a 4-block and an 8-block model.

    python benchmarks/step_graph.py                       # ours (as configured) against mlx-lm's
    python benchmarks/step_graph.py --fuse-lora           # ours with trainer.fuse_lora=true
    python benchmarks/step_graph.py --top 15              # also the most frequent node kinds

mlx-lm's step is the one `mlx_lm.tuner.trainer.train` compiles (value_and_grad, then the
optimizer), with AdamW clipping the global gradient norm as riscv_ft does (as in
benchmarks/train_vs_mlx_lm.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from riscv_ft.runtime import use_fast_blas  # noqa: E402

use_fast_blas()

import argparse  # noqa: E402
import collections  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
from functools import partial  # noqa: E402

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from riscv_ft.cli import compose  # noqa: E402
from riscv_ft.model import apply_adapters  # noqa: E402
from riscv_ft.trainer import Trainer  # noqa: E402

BATCH, WIDTH = 4, 80


def small_mistral(layers: int, lora_cfg):
    """Mistral-7B's block structure (GQA 4:1, SwiGLU) at small widths, frozen, with LoRA."""
    from mlx_lm.models.llama import Model, ModelArgs

    mx.random.seed(0)
    config = dict(model_type="mistral", hidden_size=256, num_hidden_layers=layers, num_attention_heads=8,
                  num_key_value_heads=2, intermediate_size=512, head_dim=32, vocab_size=1024, rms_norm_eps=1e-5,
                  rope_theta=1e6, tie_word_embeddings=False)
    model = Model(ModelArgs.from_dict(config))
    model.freeze()
    apply_adapters(model, lora_cfg)
    mx.eval(model.parameters())
    return model


def count_nodes(*outputs) -> collections.Counter:
    """Node kinds of the unevaluated graph behind `outputs` (mx.export_to_dot)."""
    with tempfile.NamedTemporaryFile(suffix=".dot") as dot:
        mx.export_to_dot(dot.name, *outputs)
        return collections.Counter(re.findall(r'label ="?([A-Za-z_]+)', Path(dot.name).read_text()))


def mlx_lm_step_nodes(layers: int, cfg) -> collections.Counter:
    from mlx_lm.tuner.trainer import default_loss

    model = small_mistral(layers, cfg.lora)

    class ClippedAdamW(optim.AdamW):
        def apply_gradients(self, gradients, parameters):
            gradients, _ = optim.clip_grad_norm(gradients, cfg.trainer.max_grad_norm)
            return super().apply_gradients(gradients, parameters)

    optimizer = ClippedAdamW(learning_rate=1e-4)
    loss_and_grad = nn.value_and_grad(model, default_loss)
    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(batch, lengths):
        (loss, ntoks), grads = loss_and_grad(model, batch, lengths)
        optimizer.update(model, grads)
        return loss, ntoks

    tokens = mx.array(np.random.default_rng(0).integers(5, 1000, (BATCH, WIDTH + 1)), dtype=mx.int32)
    lengths = mx.array([[20, WIDTH]] * BATCH)
    mx.eval(step(tokens, lengths), state)  # the first call traces and compiles
    outputs = step(tokens, lengths)
    return count_nodes(*outputs, *[v for _, v in tree_flatten(model.trainable_parameters())])


def our_step_nodes(layers: int, cfg) -> collections.Counter:
    model = small_mistral(layers, cfg.lora)
    trainer_cfg = OmegaConf.merge(cfg.trainer, {"select_loss_positions": False})
    trainer = Trainer(model, trainer_cfg, 8)
    tokens = mx.array(np.random.default_rng(0).integers(5, 1000, (BATCH, WIDTH + 1)), dtype=mx.int32)
    mask = np.zeros((BATCH, WIDTH), np.float32)
    mask[:, 20:] = 1
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mx.array(mask)}
    counts = mx.array([1.0, 1.0, 1.0])
    mx.eval(trainer._train_step(batch, counts, mx.array(1)), model.state, trainer.optimizer.state)
    outputs = trainer._train_step(batch, counts, mx.array(2))
    return count_nodes(outputs, *[v for _, v in tree_flatten(model.trainable_parameters())],
                       *[v for _, v in tree_flatten(trainer.optimizer.state)])


def per_block(counter_of) -> tuple[collections.Counter, int]:
    """(node kinds per transformer block, nodes outside the blocks)."""
    four, eight = counter_of(4), counter_of(8)
    block = collections.Counter({k: (eight[k] - four[k]) / 4 for k in set(four) | set(eight)})
    return block, sum(four.values()) - 4 * sum(block.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fuse-lora", action="store_true", help="ours with trainer.fuse_lora=true")
    parser.add_argument("--top", type=int, default=0, help="also print the N most frequent node kinds per block")
    args = parser.parse_args()
    cfg = compose(["model=tiny", f"trainer.fuse_lora={str(args.fuse_lora).lower()}"])
    rows = {"mlx-lm": per_block(lambda n: mlx_lm_step_nodes(n, cfg)), "riscv_ft": per_block(lambda n: our_step_nodes(n, cfg))}
    print(f"nodes of one compiled step (batch {BATCH} x {WIDTH}, LoRA rank {cfg.lora.rank} on {len(cfg.lora.targets)} "
          f"kinds, fuse_lora={args.fuse_lora}), {mx.default_device()}")
    print(f"{'':10}{'per block':>10}{'outside':>9}{'32 blocks':>11}")
    for name, (block, outside) in rows.items():
        print(f"{name:10}{sum(block.values()):>10.1f}{outside:>9.0f}{32 * sum(block.values()) + outside:>11.0f}")
    ours, theirs = (32 * sum(b.values()) + o for b, o in (rows["riscv_ft"], rows["mlx-lm"]))
    print(f"ratio (Mistral-7B's 32 blocks): {ours / theirs:.3f}")
    for name, (block, _) in rows.items():
        if args.top:
            print(f"{name} per block: " + ", ".join(f"{k} {v:g}" for k, v in block.most_common(args.top)))


if __name__ == "__main__":
    main()

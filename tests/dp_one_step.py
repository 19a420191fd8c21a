"""One optimizer step of the tiny model on a fixed global batch of 4 samples whose answers are
very unequal between the two halves that `mlx.launch -n 2` deals to its ranks: rank 0 gets 5
answer tokens, rank 1 gets 70. Rank 0 saves the gradient the step applied (averaged over the
ranks) to argv[1].

    python tests/dp_one_step.py OUT.safetensors                          # one process
    mlx.launch -n 2 --backend ring -- python tests/dp_one_step.py OUT   # two processes

Run by tests/test_distributed.py: token-weighted averaging gives the same gradient both ways.
The gradient is read from AdamW's first moment after its first update, m = (1 - beta1) * g
(it starts at zero), with clipping off: the weights after one Adam step move by about
lr * sign(g) and cannot show a gradient that is off by a factor.
"""

import sys

from riscv_ft.runtime import use_fast_blas

use_fast_blas()

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from riscv_ft import distributed  # noqa: E402
from riscv_ft.cli import compose  # noqa: E402
from riscv_ft.data.batch import Sample  # noqa: E402
from riscv_ft.model import apply_adapters, load_base, trainable_parameters  # noqa: E402
from riscv_ft.trainer import Trainer  # noqa: E402

# (prompt tokens, answer tokens). Batches are sorted by length and dealt out sample by sample,
# so rank 0 gets samples 0 and 2 (2 + 3 answer tokens), rank 1 samples 1 and 3 (30 + 40).
SHAPES = [(30, 2), (3, 30), (40, 3), (4, 40)]
ANSWER_TOKENS_PER_RANK = [5, 70]


def samples() -> list[Sample]:
    rng = np.random.default_rng(0)
    return [Sample(rng.integers(10, 32000, prompt + answer).tolist(), prompt) for prompt, answer in SHAPES]


def main(out: str) -> None:
    cfg = compose(["experiment=smoke", "trainer.iters=1", "trainer.batch_size=4", "trainer.warmup_steps=0",
                   "trainer.learning_rate=1e-4", "trainer.max_grad_norm=0", "trainer.eval_every=0", "trainer.save_every=0", "trainer.val_batches=1",
                   "lora.dropout=0.0"])
    model = load_base(cfg.model).model
    mx.random.seed(0)
    apply_adapters(model, cfg.lora)
    # lora_b starts at 0, which makes every lora_a gradient 0: start from non-zero B.
    model.load_weights([(k, 0.02 * mx.random.normal(v.shape, key=mx.random.key(i)))
                        for i, (k, v) in enumerate(trainable_parameters(model).items()) if k.endswith("lora_b")], strict=False)
    data = samples()

    trainer = Trainer(model, cfg.trainer, 8)
    beta1 = trainer.optimizer.betas[0]

    def save(step: int) -> None:
        if distributed.is_main():
            moments = {k.removesuffix(".m"): v for k, v in tree_flatten(trainer.optimizer.state) if k.endswith(".m")}
            mx.save_safetensors(out, {k: v / (1 - beta1) for k, v in moments.items()})

    trainer.fit(data, data, lambda *a: None, save)


if __name__ == "__main__":
    main(sys.argv[1])

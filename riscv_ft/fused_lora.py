"""Fused LoRA projections for training: q/k/v as one layer, gate/up as one layer.

Why: on a GPU a LoRA step of a 7B model is bound by how many kernels it launches, not by
arithmetic (benchmarks/NOTES.md, section 8: a bare step costs the same ~0.1 s at 80 and at 256
tokens per row). mlx-lm's LoRA layers run each of the seven projections of a block on its own:
a base matmul, two small LoRA matmuls, their backward passes, and an optimizer update for each
of their arrays. q, k and v read the same input, as do gate and up, so here each group runs
as one layer: one base matmul over the concatenated weights, one A matmul over the
concatenated A matrices, one B matmul over a block-diagonal B. Every projection still computes
exactly what its own LoRALinear computes: the blocks of B off the diagonal are held at zero by a
fixed mask, so they get no gradient and never change.

The fused layers live only inside the training loop's model. Adapters and checkpoints are
always written in mlx-lm's layout (one lora_a/lora_b per projection), through
`standard_layout`, so `mlx_lm.load(base, adapter_path=...)` reads them as before;
`fused_layout` turns such weights back into the fused layers' arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import mlx.core as mx
import mlx.nn as nn
import numpy as np

# The LoRA layers of mlx-lm's llama/mistral blocks, grouped by input: each group becomes one
# layer. o_proj and down_proj stay alone but take the same (2-D) path.
GROUPS = {
    "self_attn": {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "o_proj": ("o_proj",)},
    "mlp": {"gate_up_proj": ("gate_proj", "up_proj"), "down_proj": ("down_proj",)},
}


@dataclass(frozen=True)
class _Parts:
    """How a fused layer splits back into its projections (a plain object: not a parameter)."""

    names: tuple[str, ...]
    rank: int
    out_dims: tuple[int, ...]
    dtype: mx.Dtype  # of the LoRA matrices

    def blocks(self) -> list[tuple[str, slice, slice]]:
        """(projection, its columns of A = its rows of B, its columns of B) for each part."""
        starts = np.cumsum((0,) + self.out_dims)
        return [(name, slice(i * self.rank, (i + 1) * self.rank), slice(int(starts[i]), int(starts[i + 1])))
                for i, name in enumerate(self.names)]

    def block_diagonal(self, blocks: list[mx.array]) -> mx.array:
        """The fused B: each part's B on its own rows and columns, zero elsewhere."""
        fused = mx.zeros((self.rank * len(self.names), sum(self.out_dims)), dtype=self.dtype)
        for (_, rows, cols), block in zip(self.blocks(), blocks):
            fused[rows, cols] = block
        return fused

    @cached_property
    def mask(self) -> mx.array:
        """1 on the diagonal blocks of B, 0 elsewhere (evaluated once: a constant of the step)."""
        mask = self.block_diagonal([mx.ones((self.rank, out)) for out in self.out_dims])
        mx.eval(mask)
        return mask

    @property
    def split_at(self) -> list[int]:
        return list(np.cumsum(self.out_dims)[:-1])


class FusedLoRALinear(nn.Module):
    """Several LoRALinear layers with the same input, rank, scale and dropout, run as one.

    Returns one output per projection, in the order of `names`. The dropout mask (when
    lora.dropout > 0) is drawn once for the group's shared input, not once per projection.
    """

    def __init__(self, names: tuple[str, ...], parts: list):
        super().__init__()
        first = parts[0]
        self.parts = _Parts(names, first.lora_a.shape[1], tuple(p.lora_b.shape[1] for p in parts), first.lora_b.dtype)
        self.linear = _concatenated_base([p.linear for p in parts])
        self.dropout = first.dropout
        self.scale = first.scale
        self.lora_a = mx.concatenate([p.lora_a for p in parts], axis=1)
        self.lora_b = self.parts.block_diagonal([p.lora_b for p in parts])

    def __call__(self, x: mx.array) -> list[mx.array]:  # one output per projection
        # The arithmetic of mlx-lm's LoRALinear, for all parts at once, on the rows flattened
        # to a matrix (the backward of a 3-D matmul adds reshapes and transposes around each).
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        y = self.linear(x)
        lora_b = self.lora_b if len(self.parts.names) == 1 else self.lora_b * self.parts.mask
        z = (self.dropout(x) @ self.lora_a) @ lora_b
        y = (y + (self.scale * z).astype(x.dtype)).reshape(*shape[:-1], -1)
        return mx.split(y, self.parts.split_at, axis=-1) if len(self.parts.names) > 1 else [y]


def _concatenated_base(linears: list[nn.Module]) -> nn.Module:
    """One frozen base layer whose output is the parts' outputs side by side.

    A quantized layer is quantized row by row (groups run along the input), so concatenating
    the packed weights, scales and biases along the output gives exactly the parts' layers.
    The first part's module is reused so its type and quantization settings carry over.
    """
    fused = linears[0]
    for key in ("weight", "scales", "biases", "bias"):
        if key in fused:
            fused[key] = mx.concatenate([linear[key] for linear in linears], axis=0)
    fused.freeze()
    return fused


class _FusedAttention:
    """mlx-lm's llama Attention.__call__ with q/k/v from one fused layer (otherwise unchanged)."""

    def __call__(self, x: mx.array, mask=None, cache=None) -> mx.array:
        from mlx_lm.models.base import scaled_dot_product_attention

        B, L, _ = x.shape
        queries, keys, values = self.qkv_proj(x)
        queries = queries.reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        keys = keys.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        values = values.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        if cache is not None:
            queries = self.rope(queries, offset=cache.offset)
            keys = self.rope(keys, offset=cache.offset)
            keys, values = cache.update_and_fetch(keys, values)
        else:
            queries = self.rope(queries)
            keys = self.rope(keys)
        output = scaled_dot_product_attention(queries, keys, values, cache=cache, scale=self.scale, mask=mask)
        (output,) = self.o_proj(output.transpose(0, 2, 1, 3).reshape(B, L, -1))
        return output


class _FusedMLP:
    """mlx-lm's llama MLP.__call__ with gate/up from one fused layer."""

    def __call__(self, x: mx.array) -> mx.array:
        from mlx_lm.models.activations import swiglu

        gate, up = self.gate_up_proj(x)
        (output,) = self.down_proj(swiglu(gate, up))
        return output


_FORWARDS = {"self_attn": _FusedAttention, "mlp": _FusedMLP}


def _fusable(module: nn.Module, names: tuple[str, ...]) -> bool:
    from mlx_lm.tuner.lora import LoRALinear

    parts = [module.get(name) for name in names]
    if not all(type(p) is LoRALinear for p in parts):  # DoRA, full fine-tuning, untargeted projections
        return False
    first = parts[0]

    def base_layout(linear: nn.Module) -> tuple:  # what the concatenated base layer must share
        quantization = tuple(getattr(linear, key, None) for key in ("group_size", "bits", "mode"))
        return type(linear), quantization, "bias" in linear, "biases" in linear, linear.weight.dtype

    return all(p.lora_a.shape[1] == first.lora_a.shape[1] and p.scale == first.scale
               and p.dropout._p_1 == first.dropout._p_1 and base_layout(p.linear) == base_layout(first.linear)
               for p in parts)


def fuse_lora_projections(model: nn.Module) -> int:
    """Fuse the q/k/v and gate/up LoRA layers of mlx-lm llama/mistral blocks in place.

    Returns how many attention and MLP modules were fused (0 for other architectures, DoRA,
    full fine-tuning, partial targets or mixed quantization: those train unfused, with the
    same results). Each block is evaluated as it is fused, so the base weights are never held
    twice.
    """
    from mlx_lm.models import llama

    expected = {"self_attn": llama.Attention, "mlp": llama.MLP}
    fused = 0
    for layer in getattr(model, "layers", []):
        for kind, groups in GROUPS.items():
            module = getattr(layer, kind, None)
            if type(module) is not expected[kind] or not all(_fusable(module, names) for names in groups.values()):
                continue
            for fused_name, names in groups.items():
                setattr(module, fused_name, FusedLoRALinear(names, [module.pop(name) for name in names]))
            module.__class__ = type(f"Fused{type(module).__name__}", (_FORWARDS[kind], type(module)), {})
            mx.eval(module.parameters())
            fused += 1
    return fused


def _fused_modules(model: nn.Module) -> list[tuple[str, FusedLoRALinear]]:
    return [(path, m) for path, m in model.named_modules() if isinstance(m, FusedLoRALinear)]


def standard_layout(model: nn.Module, weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Flat trainable weights of `model` in mlx-lm's layout: each fused layer's lora_a and
    lora_b split into one pair per projection (the diagonal blocks of B)."""
    weights = dict(weights)
    for path, module in _fused_modules(model):
        lora_a, lora_b = weights.pop(f"{path}.lora_a"), weights.pop(f"{path}.lora_b")
        parent = path.rsplit(".", 1)[0]
        for name, rank_slice, out_slice in module.parts.blocks():
            weights[f"{parent}.{name}.lora_a"] = lora_a[:, rank_slice]
            weights[f"{parent}.{name}.lora_b"] = lora_b[rank_slice, out_slice]
    return weights


def fused_layout(model: nn.Module, weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """The inverse of `standard_layout`: mlx-lm-layout weights as `model`'s fused layers hold them."""
    weights = dict(weights)
    for path, module in _fused_modules(model):
        parent = path.rsplit(".", 1)[0]
        keys = [f"{parent}.{name}" for name in module.parts.names]
        if f"{keys[0]}.lora_a" not in weights:
            continue
        weights[f"{path}.lora_a"] = mx.concatenate([weights.pop(f"{k}.lora_a") for k in keys], axis=1)
        weights[f"{path}.lora_b"] = module.parts.block_diagonal([weights.pop(f"{k}.lora_b") for k in keys])
    return weights

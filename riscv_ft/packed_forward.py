"""The forward pass over packed rows (`data.pack=true`): several samples per row, each seeing
only itself.

mlx-lm's llama/mistral `LlamaModel` builds a plain causal mask and applies the rotary
embedding from position 0 of the row. Here its own modules run (embed_tokens, every
TransformerBlock with whatever LoRA or quantized layers it holds, norm) with two changes:
an explicit block-diagonal causal mask, which mlx-lm's attention passes on to
mx.fast.scaled_dot_product_attention, and rotary positions that restart at 0 for every
sample. mx.fast.rope takes one offset per batch entry, not per token, so each attention's
`rope` is wrapped, for the duration of the call, to rotate every token as its own entry at
its own position: the model's own RoPE (its base, scale, layout and frequencies), unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager

import mlx.core as mx
import mlx.nn as nn

PACKABLE_MODEL_TYPES = ("llama", "mistral")


def packing_problem(model: nn.Module) -> str | None:
    """Why packed rows cannot run through this model, or None when they can."""
    model_type = getattr(model, "model_type", None)
    body = getattr(model, "model", None)
    if model_type not in PACKABLE_MODEL_TYPES or body is None:
        return f"packing supports mlx-lm's {'/'.join(PACKABLE_MODEL_TYPES)} models; this one is {model_type!r}"
    if getattr(body, "swa_idx", None) is not None:
        return "packing does not support sliding-window attention layers"
    return None


def block_diagonal_causal_mask(segment_ids: mx.array) -> mx.array:
    """(B, 1, L, L) boolean: position i sees position j <= i of the same sample. Padding
    (segment 0) sees only padding, so no row of the softmax is empty."""
    length = segment_ids.shape[1]
    causal = mx.arange(length)[:, None] >= mx.arange(length)[None, :]
    same_sample = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (same_sample & causal)[:, None]


class _RoPEAtPositions:
    """The attention's own rope, applied at given per-token positions.

    A plain object (not an nn.Module): it holds no parameters, and swapping it in leaves
    the model's parameter tree as it was.
    """

    def __init__(self, rope, positions: mx.array):
        self.rope, self.positions = rope, positions.reshape(-1)

    def __call__(self, x: mx.array, offset=0) -> mx.array:
        # x: (B, heads, L, head_dim). Each token becomes a batch entry of length 1 whose
        # offset is its position: mx.fast.rope accepts a vector of offsets, one per entry.
        batch, heads, length, dims = x.shape
        tokens = x.transpose(0, 2, 1, 3).reshape(batch * length, heads, 1, dims)
        rotated = self.rope(tokens, offset=self.positions + offset)
        return rotated.reshape(batch, length, heads, dims).transpose(0, 2, 1, 3)


@contextmanager
def _rope_at_positions(layers, positions: mx.array):
    attentions = [layer.self_attn for layer in layers]
    originals = [attn.rope for attn in attentions]
    try:
        for attn, rope in zip(attentions, originals):
            attn.rope = _RoPEAtPositions(rope, positions)
        yield
    finally:
        for attn, rope in zip(attentions, originals):
            attn.rope = rope


def packed_hidden(body: nn.Module, inputs: mx.array, segment_ids: mx.array, rope_positions: mx.array) -> mx.array:
    """Final hidden states (after the norm) of an mlx-lm LlamaModel over packed rows.

    `segment_ids` and `rope_positions` are (B, L) as `make_packed_batch` builds them.
    """
    mask = block_diagonal_causal_mask(segment_ids)
    hidden = body.embed_tokens(inputs)
    with _rope_at_positions(body.layers, rope_positions):
        for layer in body.layers:
            hidden = layer(hidden, mask)
    return body.norm(hidden)

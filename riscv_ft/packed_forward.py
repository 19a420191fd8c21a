"""The forward pass over packed rows (`data.pack=true`): several samples per row, each seeing
only itself.

mlx-lm's llama/mistral `LlamaModel` builds a plain causal mask. Here its own modules run
(embed_tokens, every TransformerBlock with whatever LoRA or quantized layers it holds, norm)
with one change: an explicit block-diagonal causal mask, which mlx-lm's attention passes on
to mx.fast.scaled_dot_product_attention.

Rotary positions run on across the row (a sample starting at position 300 is rotated from
300): attention scores under RoPE depend only on the distance between query and key, and
the mask keeps both in one sample, so each sample's loss is its unpacked loss. Restarting
the positions per sample changed no loss by more than float32 rounding (largest relative
difference 1.4e-7 on the real data, issue 26 item 18a), so it is not done.
"""

from __future__ import annotations

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


def packed_hidden(body: nn.Module, inputs: mx.array, segment_ids: mx.array) -> mx.array:
    """Final hidden states (after the norm) of an mlx-lm LlamaModel over packed rows.

    `segment_ids` is (B, L) as `make_packed_batch` builds it.
    """
    mask = block_diagonal_causal_mask(segment_ids)
    hidden = body.embed_tokens(inputs)
    for layer in body.layers:
        hidden = layer(hidden, mask)
    return body.norm(hidden)

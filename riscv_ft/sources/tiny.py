"""The tiny test model: a Mistral-architecture model built locally from a seed, with the real
Mistral v3 tokenizer that the mistral-common package ships. No download; built once and cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from riscv_ft.sources.cache import atomic_folder, cache_dir

log = logging.getLogger(__name__)

MISTRAL_V3_TOKENIZER = "mistral_instruct_tokenizer_240323.model.v3"
# Mistral-7B-Instruct-v0.3's chat format: <s>[INST] user[/INST] assistant</s>
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + '[/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)


def tiny_config(tiny) -> dict:
    """config.json of the tiny model for a `model.tiny` config block."""
    return {
        "model_type": "mistral",
        "architectures": ["MistralForCausalLM"],
        "hidden_size": tiny.hidden_size,
        "num_hidden_layers": tiny.num_hidden_layers,
        "num_attention_heads": tiny.num_attention_heads,
        "num_key_value_heads": tiny.num_key_value_heads,
        "intermediate_size": tiny.intermediate_size,
        "head_dim": tiny.hidden_size // tiny.num_attention_heads,
        "vocab_size": 32768,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }


def tiny_model_dir(tiny) -> Path:
    """Build (once) and return the folder of the tiny Mistral-architecture model."""
    config = tiny_config(tiny)
    key = hashlib.sha256(json.dumps([config, tiny.seed], sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir() / f"tiny-mistral-{key}"
    with atomic_folder(folder) as tmp:
        if tmp is None:
            return folder
        from mlx_lm.models.llama import Model, ModelArgs

        mx.random.seed(tiny.seed)
        model = Model(ModelArgs.from_dict(config))
        # nn.Linear's default init keeps logits near uniform; small embeddings keep the
        # first loss near ln(32768) = 10.4 instead of far above it.
        model.model.embed_tokens.weight = mx.random.normal(model.model.embed_tokens.weight.shape) * 0.02
        mx.save_safetensors(str(tmp / "model.safetensors"), dict(tree_flatten(model.parameters())), {"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        _write_mistral_tokenizer(tmp)
    log.info("Built the tiny model in %s", folder)
    return folder


def _write_mistral_tokenizer(folder: Path) -> None:
    import mistral_common

    source = Path(mistral_common.__file__).parent / "data" / MISTRAL_V3_TOKENIZER
    shutil.copyfile(source, folder / "tokenizer.model")
    special = [(0, "<unk>"), (1, "<s>"), (2, "</s>"), (3, "[INST]"), (4, "[/INST]")]
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "model_max_length": 32768,
        "chat_template": MISTRAL_CHAT_TEMPLATE,
        # [INST] and [/INST] are control tokens of the v3 vocabulary; declaring them lets
        # the tokenizer emit ids 3 and 4 as the real model's tokenizer.json does.
        "added_tokens_decoder": {
            str(i): {"content": c, "special": True, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False}
            for i, c in special
        },
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))

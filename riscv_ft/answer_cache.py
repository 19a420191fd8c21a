"""The base model's answers, cached on disk: a sweep answers the base model's evaluation rows once.

The key is the model's identity (model_identity: its folder's files and the settings that change
the loaded weights), the descriptions, the prompt format, max_tokens and the decoder's version.
"""

from riscv_ft.inference import generate_answers

# Part of every cache key: bump it whenever a change to the decoder (inference.py) could change an answer.
DECODER_VERSION = 1


def model_identity(model_cfg) -> str | None:
    """A digest naming the base model as load_base builds it: every file of its folder (name,
    size, modification time) and the config fields that change the loaded weights. None for a
    hub repo id (no folder to look at): its answers are not cached."""
    from pathlib import Path

    from riscv_ft.sources import resolve_base

    folder = Path(resolve_base(model_cfg))
    if not folder.is_dir():
        return None
    files = sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file())
    settings = {k: _plain(model_cfg.get(k)) for k in ("dtype", "quantize", "dequantize", "tiny")}
    return _digest({"folder": str(folder.resolve()), "files": files, "settings": settings})


def cached_answers(identity: str | None, model, tokenizer, descriptions: list[str], prompt_format: str,
                   max_tokens: int, batch_size: int = 32, folder=None) -> tuple[list[str], float]:
    """generate_answers (greedy) and the seconds that answering took, remembered under
    ~/.cache/riscv_ft/answers (RISCV_FT_CACHE moves it) per (model identity, descriptions, prompt
    format, max_tokens, decoder version): a sweep answers the base model's evaluation rows once.
    A hit returns the stored seconds, so a report's cost per answer stays the cost of answering.
    identity=None: no cache."""
    import json
    import os
    import tempfile
    import time
    from pathlib import Path

    from riscv_ft.sources.cache import cache_dir

    def answer() -> tuple[list[str], float]:
        started = time.perf_counter()
        answers = generate_answers(model, tokenizer, descriptions, prompt_format, max_tokens, batch_size)
        return answers, time.perf_counter() - started

    if identity is None:
        return answer()
    key = _digest({"model": identity, "descriptions": descriptions, "prompt_format": prompt_format,
                   "max_tokens": max_tokens, "decoder": DECODER_VERSION, "temperature": 0.0})
    folder = Path(folder) if folder is not None else cache_dir() / "answers"
    path = folder / f"{key}.json"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        answers, seconds = stored["answers"], stored["seconds"]
        if (isinstance(answers, list) and len(answers) == len(descriptions) and all(isinstance(a, str) for a in answers)
                and isinstance(seconds, (int, float)) and seconds >= 0):
            return answers, float(seconds)
    except (OSError, ValueError, TypeError, KeyError):
        pass  # absent, unreadable or of another layout: answer again and rewrite it
    answers, seconds = answer()
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{key}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"answers": answers, "seconds": seconds}, f, ensure_ascii=False)
        os.replace(tmp, path)  # atomic: a reader sees the old file or the whole new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return answers, seconds


def _plain(value):
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def _digest(obj) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]

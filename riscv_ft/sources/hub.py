"""A Hugging Face hub repo id (owner/name): upstream mlx_lm.load downloads the repo or finds
it in the hub cache, so the id itself is what it opens (and what adapter_config.json names).
Load failures (offline, unknown repo) are explained by riscv_ft.model."""

from __future__ import annotations


def repo_id(path: str) -> str:
    return str(path)

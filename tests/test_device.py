"""The defaults that depend on the device all follow riscv_ft.device: batch widths, the loss
at answer positions only, and a float copy of a quantized base. The CPU is the real device
here; a CUDA or Metal device is what MLX would report on one (its device queries replaced)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest

from riscv_ft import device
from riscv_ft.cli import compose
from riscv_ft.data.batch import batch_multiple
from riscv_ft.sources.local import wants_float_copy
from riscv_ft.trainer import Trainer


def defaults() -> tuple:
    cfg = compose(["model=smollm2"])  # model.dequantize: auto
    trainer = Trainer(nn.Linear(4, 4), cfg.trainer, batch_multiple(cfg.data))
    return device.backend(), batch_multiple(cfg.data), trainer.select_positions, wants_float_copy(cfg.model)


@pytest.mark.parametrize("default_device, cuda, metal, expected", [
    ("cpu", False, False, ("cpu", 8, True, True)),
    ("gpu", True, False, ("cuda", 64, False, False)),
    ("gpu", False, True, ("metal", 8, False, False)),
])
def test_each_device_dependent_default_follows_the_device(monkeypatch, default_device, cuda, metal, expected):
    monkeypatch.setattr(mx, "default_device", lambda: getattr(mx, default_device))
    monkeypatch.setattr(mx.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(mx.metal, "is_available", lambda: metal)
    assert defaults() == expected


def test_a_value_given_wins_over_the_device_default(monkeypatch):
    monkeypatch.setattr(mx, "default_device", lambda: mx.gpu)
    monkeypatch.setattr(mx.cuda, "is_available", lambda: True)
    cfg = compose(["model=smollm2", "data.pad_to_multiple=16", "trainer.select_loss_positions=true", "model.dequantize=always"])
    assert batch_multiple(cfg.data) == 16
    assert Trainer(nn.Linear(4, 4), cfg.trainer, 16).select_positions is True
    assert wants_float_copy(cfg.model) is True

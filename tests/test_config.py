"""Every shipped config composes; every bad value fails before any model loads, in one line."""


import pytest

from riscv_ft.cli import CONF_DIR, compose
from riscv_ft.config import ConfigError, lora_scale
from tests.conftest import run_train


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["model", "lora", "data", "trainer"])
def test_every_group_option_composes(group):
    for option in _options(group):
        cfg = compose([f"{group}={option}"])
        assert cfg[group] is not None


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = compose([f"experiment={experiment}"])
    assert cfg.model.name and cfg.trainer.iters >= 1


def test_defaults_are_the_recipe():
    cfg = compose([])
    assert cfg.model.path == "mlx-community/Mistral-7B-Instruct-v0.3-4bit"
    assert cfg.model.quantize.enabled and cfg.model.quantize.bits == 4 and cfg.model.quantize.group_size == 64
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout) == (16, 16, 0.0)
    assert set(cfg.lora.targets) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert cfg.trainer.batch_size == 4 and cfg.trainer.iters == 600
    assert cfg.data.hub_id == "davidpirkl/riscv-instruction-specification"


def test_lora_scale_follows_peft_and_rslora():
    assert lora_scale(compose(["lora.rank=16", "lora.alpha=16"]).lora) == 1.0
    assert lora_scale(compose(["lora.rank=8", "lora.alpha=16"]).lora) == 2.0
    assert lora_scale(compose(["lora=rslora", "lora.rank=16", "lora.alpha=16"]).lora) == 4.0


@pytest.mark.parametrize(
    "override, names",
    [
        ("lora.rank=0", "lora.rank"),
        ("lora.rank=-4", "lora.rank"),
        ("trainer.learning_rate=-1", "trainer.learning_rate"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("lora.dropout=1.5", "lora.dropout"),
        ("model.quantize.bits=3", "model.quantize.bits"),
        ("lora.rnak=4", "lora.rnak"),
        ("lora.alpha=abc", "lora.alpha"),
        ("model=no_such_model", "model=no_such_model"),
        ("data.synthetic_max_instructions=4", "data.synthetic_max_instructions"),
        ("trainer.memory_limit_gb=inf", "trainer.memory_limit_gb"),  # MLX's limit is a whole number of bytes
    ],
)
def test_bad_config_is_one_clean_line(override, names):
    with pytest.raises(ConfigError) as err:
        compose([override])
    message = str(err.value)
    assert names in message and "\n" not in message


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["lora.rank=0"], "lora.rank=0 is not allowed: expected an integer from 1 to 4096"),
        (["experiment=smoke", "lora.rnak=4"], "unknown key lora.rnak"),
        (["-m", "experiment=smoke", "lora.rank=4,0"], "lora.rank=0 is not allowed"),
    ],
)
def test_cli_rejects_bad_config_before_loading_anything(overrides, expected, tmp_path):
    result = run_train(*overrides, f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {lines[0][7:]}"] and expected in lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()

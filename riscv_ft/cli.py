"""What every entry point shares: where the configs live, composing them, and failing cleanly.

A user error (bad config value, unusable data, a model that cannot load) ends with one line
on stderr, `error: ...`, and exit code 2: never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

from omegaconf import DictConfig, OmegaConf

from riscv_ft.config import ConfigError, register_configs, validate
from riscv_ft.data.pipeline import DataError
from riscv_ft.model import ModelLoadError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
PACKAGE_DATA = Path(__file__).resolve().parent / "data"
USER_ERRORS = (ConfigError, DataError, ModelLoadError)

register_configs()
if not OmegaConf.has_resolver("pkg_data"):
    OmegaConf.register_new_resolver("pkg_data", lambda name: str(PACKAGE_DATA / name))


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def compose(overrides: list[str], config_name: str = "train") -> DictConfig:
    """Compose a config as `python -m riscv_ft.train` would, raising ConfigError on any problem."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
    except Exception as err:  # noqa: BLE001 - Hydra and OmegaConf raise many kinds
        raise ConfigError(_one_line(err)) from err
    finally:
        GlobalHydra.instance().clear()
    validate(cfg)
    return cfg


def _one_line(err: Exception) -> str:
    """Hydra's messages span several lines; keep the informative ones on one."""
    text = str(err)
    cause = err.__cause__ or err.__context__
    if cause is not None and "full_key" in str(cause):
        text = str(cause)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    keep = [line for line in lines if not line.startswith(("object_type", "Set the environment", "reference_type"))]
    return " ".join(keep)[:400] or type(err).__name__


def preflight(argv: list[str]) -> None:
    """Check the overrides (each value of a sweep too) before Hydra starts any job."""
    if any(a in ("--help", "-h", "--hydra-help", "--info", "--cfg", "-c", "--resolve", "--shell-completion", "-sc") or a.startswith("--info") for a in argv):
        return
    overrides = [a for a in argv if not a.startswith("-")]
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        variants = [fixed]
        for o in parsed:
            if o.is_sweep_override() and not o.is_hydra_override():
                try:
                    values = list(o.sweep_string_iterator())
                except Exception:  # noqa: BLE001 - range/interval sweeps: checked per job
                    continue
                variants += [fixed + [f"{o.get_key_element()}={v}"] for v in values]
        for variant in variants:
            compose(variant)
    except ConfigError as err:
        fail(str(err))
    except Exception as err:  # noqa: BLE001 - override syntax errors
        fail(_one_line(err))

"""What every entry point shares: where the configs live, composing them, and failing cleanly.

A user error (bad config value, unusable data, a model that cannot load) ends with one line
on stderr, `error: ...`, and exit code 2: never a traceback.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import NoReturn

from omegaconf import DictConfig, OmegaConf

from riscv_ft import config as config_module
from riscv_ft.config import ConfigError, check_overrides_used, register_configs, validate
from riscv_ft.data.pipeline import DataError
from riscv_ft.sources.cache import ModelLoadError

CONF_DIR = Path(__file__).resolve().parent / "conf"
PACKAGE_DATA = Path(__file__).resolve().parent / "data"
USER_ERRORS = (ConfigError, DataError, ModelLoadError)

register_configs()
if not OmegaConf.has_resolver("pkg_data"):
    OmegaConf.register_new_resolver("pkg_data", lambda name: str(PACKAGE_DATA / name))


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def compose(overrides: list[str], config_name: str = "train", hydra_config: bool = False) -> DictConfig:
    """Compose a config as `python -m riscv_ft.train` would, raising ConfigError on any problem
    (with hydra_config=True, the `hydra` node too: launcher, sweeper, callbacks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=hydra_config)
    except Exception as err:  # noqa: BLE001 - Hydra and OmegaConf raise many kinds
        raise ConfigError(_one_line(err)) from err
    finally:
        GlobalHydra.instance().clear()
    validate(cfg)
    return cfg


_UNKNOWN_KEY = re.compile(r"Key '([^']+)' not in '(\w+)'.*?full_key: (\S+)", re.S)
_BAD_TYPE = re.compile(r"Value '([^']*)' of type '\w+' could not be converted to (\w+).*?full_key: (\S+)", re.S)
_NO_OPTION = re.compile(r"Could not find '([^'/]+)/([^']+)'\s*Available options in '[^']+':\s*(.*?)\s*Config search path", re.S)


def _one_line(err: Exception) -> str:
    """Hydra's messages span several lines; say the same thing in one, naming key and choices."""
    text = str(err)
    cause = err.__cause__ or err.__context__
    if cause is not None and "full_key" in str(cause):
        text = str(cause)
    if m := _UNKNOWN_KEY.search(text):
        schema = getattr(config_module, m.group(2), None)
        parent = m.group(3).rsplit(".", 1)[0] if "." in m.group(3) else "the top level"
        known = f"; {parent} has: {', '.join(f.name for f in dataclasses.fields(schema))}" if dataclasses.is_dataclass(schema) else ""
        return f"unknown key {m.group(3)}{known}"
    if m := _BAD_TYPE.search(text):
        return f"{m.group(3)}={m.group(1)!r} is not allowed: expected a value of type {m.group(2).lower()}"
    if m := _NO_OPTION.search(text):
        options = [o for o in m.group(3).split() if not o.endswith("_schema")]
        return f"{m.group(1)}={m.group(2)} is not an option; available: {', '.join(options)}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    keep = [line for line in lines if not line.startswith(("object_type", "Set the environment", "reference_type"))]
    return " ".join(keep)[:400] or type(err).__name__


def preflight(argv: list[str]) -> None:
    """Check the overrides (each value of a sweep too) before Hydra starts any job."""
    if any(a in ("--help", "-h", "--hydra-help", "--info", "--cfg", "-c", "--resolve", "--shell-completion", "-sc") or a.startswith("--info") for a in argv):
        return
    overrides, config_name = _search_path_overrides(argv)
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
            check_overrides_used(compose(variant, config_name), variant)
        if "-m" in argv or "--multirun" in argv:
            check_cluster_store(compose(fixed, config_name, hydra_config=True))
    except ConfigError as err:
        fail(str(err))
    except Exception as err:  # noqa: BLE001 - override syntax errors
        fail(_one_line(err))


def check_cluster_store(cfg: DictConfig) -> None:
    """Jobs that a Ray cluster runs on other hosts cannot write this machine's SQLite store:
    say so before the sweep starts rather than after every job failed to track."""
    launcher = str(OmegaConf.select(cfg, "hydra.launcher._target_") or "")
    address = OmegaConf.select(cfg, "hydra.launcher.ray.init.address")
    if not launcher.endswith("RayLauncher") or address in (None, "", "local"):
        return
    tracking = cfg.tracking
    if tracking.enabled and not tracking.offline and not str(tracking.uri or "").startswith(("http://", "https://")):
        where = tracking.uri or "the local SQLite file mlruns/mlflow.db"
        raise ConfigError(
            f"hydra.launcher.ray.init.address={address} runs the jobs on a cluster, whose other hosts cannot write "
            f"{where}: pass tracking.uri=http://HOST:5000 (an MLflow server every host reaches) or tracking.offline=true"
        )


def _search_path_overrides(argv: list[str]) -> tuple[list[str], str]:
    """The overrides and config name Hydra will compose, with `--config-dir DIR` (a folder of
    the user's own groups, searched before the package's) turned into hydra.searchpath."""
    overrides, extra_dirs, config_name = [], [], "train"
    args = iter(argv)
    for arg in args:
        flag, eq, value = arg.partition("=")
        if flag in ("--config-dir", "-cd", "--config-name", "-cn"):
            value = value if eq else next(args, "")
            if flag in ("--config-dir", "-cd"):
                extra_dirs.append(f"file://{Path(value).expanduser().resolve()}")
            else:
                config_name = value
        elif not arg.startswith("-"):
            overrides.append(arg)
    if extra_dirs and not any(o.lstrip("+").startswith("hydra.searchpath=") for o in overrides):
        overrides.append(f"hydra.searchpath=[{','.join(extra_dirs)}]")
    return overrides, config_name


# ---------------------------------------------------------------- key=value arguments
# (generate, export, evaluate: small commands that do not need Hydra)

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_args(argv: list[str], allowed: set[str]) -> dict[str, str]:
    """key=value arguments; a bad or unknown one ends the program with one line."""
    args: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.strip().lstrip("+")
        if not sep or not key:
            fail(f"expected key=value, got {arg!r} (keys: {', '.join(sorted(allowed))}; --help for more)")
        if key not in allowed:
            fail(f"unknown option {key!r}; expected one of {', '.join(sorted(allowed))}")
        if key in args:
            fail(f"{key}= given twice")
        args[key] = value
    return args


def as_bool(args: dict, key: str, default: bool = False) -> bool:
    value = args.get(key)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    fail(f"{key}={value!r} is not allowed: expected true or false")


def as_number(args: dict, key: str, kind, default, low=None, high=None, what: str = ""):
    value = args.get(key)
    if value is None:
        return default
    try:
        number = kind(value)
    except ValueError:
        number = None
    if number is None or (low is not None and number < low) or (high is not None and number > high):
        fail(f"{key}={value!r} is not allowed: expected {what}")
    return number


def wants_help(argv: list[str]) -> bool:
    return any(a in ("-h", "--help", "help") for a in argv)

"""Arguments shared by the subcommands."""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

from atss_tf import files
from atss_tf.config import Config, ConfigError, load_config

# The configs/ folder ships inside the package as atss_tf.configs (setup.py's
# package_dir); a source checkout that was not installed has it beside atss_tf/.
_SOURCE_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def shipped_configs_dir() -> Path:
    """The folder of the configs shipped with atss-tf (``configs/`` of the repo)."""
    spec = importlib.util.find_spec("atss_tf.configs")  # a namespace package: no __init__
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location).is_dir():
            return Path(location)
    return _SOURCE_CONFIGS


def find_config(name: str | os.PathLike) -> str | Path:
    """A config file: ``name`` itself when it exists or is remote
    (``gs://...``), else the shipped config it names
    (``configs/demo_shapes.yaml``, ``demo_shapes.yaml`` or ``demo_shapes``),
    so the README's commands work from any folder and from a wheel install."""
    if files.is_remote(name):
        return os.fspath(name)
    path = Path(name)
    if path.exists():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    shipped = shipped_configs_dir().joinpath(*parts) if parts else None
    for candidate in (shipped, shipped.with_suffix(".yaml") if shipped else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return path  # load_config names it as not found


def add_config_arguments(
    parser: argparse.ArgumentParser, required: bool = False, config_help: str = "YAML config file"
) -> None:
    """``--config FILE`` and repeatable ``--set key.sub=value`` (into ``args.overrides``)."""
    parser.add_argument("--config", required=required, default=None, help=config_help)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.head.num_convs=2 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(find_config(args.config) if args.config else None, args.overrides)


def shipped_config(name: str) -> Path:
    """A config shipped with atss-tf, by file name."""
    path = shipped_configs_dir() / name
    if not path.is_file():
        raise ConfigError(f"shipped config {name} not found in {shipped_configs_dir()}")
    return path

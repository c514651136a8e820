"""Arguments shared by the subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from atss_tf.config import (  # noqa: F401 (find_config, shipped_configs_dir: used by commands)
    Config,
    ConfigError,
    find_config,
    load_config,
    shipped_configs_dir,
)


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

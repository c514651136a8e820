"""Arguments shared by the subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from atss_tf.config import Config, ConfigError, load_config

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


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
    return load_config(args.config, args.overrides)


def shipped_config(name: str) -> Path:
    """A config of the repository's ``configs/`` folder (editable installs)."""
    path = REPO_CONFIGS / name
    if not path.exists():
        raise ConfigError(
            f"{path} not found: install atss-tf from a clone with `pip install -e .` "
            "or pass --config"
        )
    return path

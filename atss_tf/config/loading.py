"""Loading and saving configs: YAML files, ``base:`` files, ``--set`` overrides, shipped presets.

:func:`load_config` reads a YAML file (local or remote, or the name of a config
shipped with atss-tf, see :func:`find_config`), merges it over its ``base:``
file, applies ``key.sub=value`` overrides, builds the :class:`Config` (keys
that moved are renamed, with a warning) and validates it. :func:`save_config`
writes one back; :func:`detector_config_from_dict` reads the part a saved
model carries.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from atss_tf import files
from atss_tf.config.conversion import build, to_dict
from atss_tf.config.schema import Config, DetectorConfig
from atss_tf.config.validation import validate, validate_detector_config
from atss_tf.errors import ConfigError

# Keys that moved: old dotted key -> (new dotted key, how an old value maps to a
# new one). Files written with the old key still load (the value moves, with a
# warning naming both keys).
MOVED_KEYS = {
    "loss.inclusive_geometry": ("model.inclusive_geometry", lambda v: v),
    "train.mixed_precision": (
        "train.precision",
        lambda v: "mixed_float16" if v is True else "float32" if v is False else v,
    ),
}


def _move_keys(data: dict) -> dict:
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for old, (new, convert) in MOVED_KEYS.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section = data.get(old_section)
        if isinstance(section, dict) and old_key in section:
            value = section.pop(old_key)
            target = data.setdefault(new_section, {})
            if isinstance(target, dict) and new_key not in target:
                target[new_key] = convert(value)
            logging.getLogger("atss_tf").warning(
                "config key %r is now %r; please rename it", old, new
            )
    return data


def from_dict(data: dict | None) -> Config:
    """Build a :class:`Config` from nested dicts; unknown keys raise ConfigError.
    Settings left None follow ``official_compat`` (filled in here)."""
    return build(Config, _move_keys(data or {}))


def detector_config_from_dict(data: dict) -> DetectorConfig:
    """Build and validate a :class:`DetectorConfig`; unknown keys or invalid
    values raise ConfigError."""
    dc = build(DetectorConfig, data)
    validate_detector_config(dc)
    return dc


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    cls: Any = Config
    for i, p in enumerate(parts):
        names = (
            {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        )
        if p not in names:
            raise ConfigError(f"unknown config key {'.'.join(parts[: i + 1])!r}")
        if i == len(parts) - 1:
            node[p] = value
            return
        cls = typing.get_type_hints(cls)[p]
        node = node.setdefault(p, {})


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a config dict."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from None
        _set_dotted(data, key.strip(), value)
    return data


def override_keys(overrides: Sequence[str] | None) -> set[str]:
    """The dotted keys that ``key.sub=value`` overrides set (``--set``), as
    written (``data.min_size``); malformed items are left to :func:`apply_overrides`."""
    return {item.split("=", 1)[0].strip() for item in overrides or [] if "=" in item}


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def _read_yaml(path: str, seen: tuple[str, ...] = ()) -> dict:
    """Read a config file (local or remote, see :mod:`atss_tf.files`); a
    top-level ``base: other.yaml`` (relative to the file) is loaded first and
    this file's keys are merged over it."""
    key = path if files.is_remote(path) else os.path.realpath(path)
    if key in seen:
        raise ConfigError(f"config file {path} includes itself through 'base'")
    try:
        with files.open_file(path) as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"malformed YAML in config file {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"config file {path}: 'base' must be a file path, got {base!r}")
    parent = _read_yaml(files.join(os.path.dirname(path), base), seen + (key,))
    return _deep_merge(parent, data)


# The configs/ folder ships inside the package as atss_tf.configs (setup.py's
# package_dir; a namespace package, not this atss_tf.config); a source checkout
# that was not installed has it beside atss_tf/ (this file is atss_tf/config/loading.py).
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


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) plus overrides.

    ``path`` is a file (local or remote), or the name of a config shipped with
    atss-tf (``configs/demo_shapes.yaml``, ``demo_shapes``; see
    :func:`find_config`), which works from any folder, a wheel install or
    Colab. A file may start from another with ``base: relative/path.yaml``.

    Raises:
        ConfigError: malformed YAML, unknown keys or invalid values; the message
            names the file and the key.
    """
    data = _read_yaml(os.fspath(find_config(path))) if path is not None else {}
    try:
        data = apply_overrides(data, overrides)
        cfg = from_dict(data)
        validate(cfg)
    except ConfigError as e:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{e}") from None
    return cfg


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: data}


def config_differences(a: Config, b: Config) -> list[tuple[str, Any, Any]]:
    """``(dotted key, value in a, value in b)`` for every setting that differs."""
    fa, fb = _flatten(to_dict(a)), _flatten(to_dict(b))
    return [(k, fa.get(k), fb.get(k)) for k in fa if fa.get(k) != fb.get(k)]


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write ``cfg`` as YAML (local or remote path)."""
    with files.open_file(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)

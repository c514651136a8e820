"""dict <-> dataclass conversion with strict keys and types.

:func:`to_dict` turns a config tree into plain dicts and lists (what YAML and
a ``.keras`` file's JSON hold); :func:`build` turns such dicts back into the
dataclass named, converting each value to its annotated type (``[0.5, 1]`` ->
``(0.5, 1.0)``) and refusing unknown keys and wrong types with a
:class:`~atss_tf.errors.ConfigError` that names the dotted key. It knows
nothing of the schema itself, so :mod:`atss_tf.config.schema` can use it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from atss_tf.errors import ConfigError


def to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain dicts/lists (YAML- and JSON-safe)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type ``tp`` or raise naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for a in non_none:
            try:
                return coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        return build(tp, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"config key {key!r} needs {len(args)} values, got {value!r}")
        return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        try:
            return float(value)  # accepts "inf"
        except ValueError:
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}") from None
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        return value
    return value


def build(cls: type, data: dict, prefix: str = "") -> Any:
    """An instance of dataclass ``cls`` from ``data`` (keys under ``prefix`` in
    messages); every value is converted with :func:`coerce`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(f"unknown config key {key!r} (valid: {', '.join(sorted(names))})")
        kwargs[k] = coerce(v, hints[k], key)
    return cls(**kwargs)

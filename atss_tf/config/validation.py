"""Validation: every setting's declared check, then the rules across settings.

:func:`validate` and :func:`validate_detector_config` walk the dataclass tree
(:func:`problems`): each setting is tested against the check it declared in
:mod:`atss_tf.config.schema` (a setting without one is a programming error,
raised as ``TypeError``), and after each section the :data:`RULES` about it
run: the relations no single setting can state (``train.accumulate_steps``
divides ``data.batch_size``). Every problem reads ``key=value (expected
...)``; all of them are raised at once, on one line, as a
:class:`~atss_tf.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from atss_tf.config.checks import check_of, problem
from atss_tf.config.pretrained import (
    KERAS_APPLICATIONS,
    WEIGHT_FILE_FORMATS,
    weight_file_format,
)
from atss_tf.config.schema import FCOS_ASSIGNERS, Config, DataConfig, DetectorConfig
from atss_tf.errors import ConfigError

Root = Config | DetectorConfig


@dataclass(frozen=True)
class Rule:
    """A check across settings. ``test(root)`` returns what is expected of
    ``key`` when the root config breaks the rule, else None; the message shows
    ``key`` with ``value(root)`` (default: the value at ``key``). ``roots``:
    the configs it applies to."""

    key: str
    test: Callable[[Any], str | None]
    roots: tuple[type, ...]
    value: Callable[[Any], Any] | None = None

    @property
    def section(self) -> str:
        """The dotted section whose walk the rule follows (``""``: the root)."""
        return self.key.rpartition(".")[0]


RULES: list[Rule] = []


def rule(
    key: str, roots: tuple[type, ...] = (Config, DetectorConfig), value: Callable | None = None
) -> Callable:
    """Register the decorated ``test`` as a :class:`Rule` about ``key``."""

    def register(test: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
        RULES.append(Rule(key, test, roots, value))
        return test

    return register


@rule("model.head.group_norm_groups")
def _groups_divide_channels(c: Root) -> str | None:
    head = c.model.head
    groups = head.group_norm_groups
    if head.use_group_norm and not (groups >= 1 and head.channels % groups == 0):
        return f"a divisor of model.head.channels={head.channels}"
    return None


@rule("model.backbone.dcn_stages")
def _dcn_in_distinct_bottleneck_stages(c: Root) -> str | None:
    backbone = c.model.backbone
    stages = backbone.dcn_stages
    if len(set(stages)) != len(stages):
        return "distinct stages"
    if stages and backbone.depth not in (50, 101):
        return f"no stages with model.backbone.depth={backbone.depth} (basic blocks: no DCN)"
    return None


@rule("model.backbone.weights")
def _weights_file_and_its_normalisation(c: Root) -> str | None:
    weights, m = c.model.backbone.weights, c.model
    if weights is None or weights == KERAS_APPLICATIONS:
        return None
    fmt = weight_file_format(weights)
    if fmt is None:
        suffixes = ", ".join(s for f in WEIGHT_FILE_FORMATS for s in f.suffixes)
        return f"null, {KERAS_APPLICATIONS!r} or the path of an ImageNet file ({suffixes})"
    if not fmt.matches(m.input_bgr, m.pixel_mean, m.pixel_std):
        return (
            f"a {fmt.name} with the input it was trained on: {fmt.describe()} (the config "
            f"has model.input_bgr={m.input_bgr}, model.pixel_mean={list(m.pixel_mean)}, "
            f"model.pixel_std={list(m.pixel_std)})"
        )
    return None


@rule("model.head.dcn")
def _dcn_needs_a_tower_conv(c: Root) -> str | None:
    if c.model.head.dcn and c.model.head.num_convs < 1:
        return "false with model.head.num_convs=0 (no tower conv to make deformable)"
    return None


def _fcos(c: Root) -> bool:
    return isinstance(c, Config) and c.assigner.type in FCOS_ASSIGNERS


@rule(
    "model.anchors.scales_per_octave/aspect_ratios",
    value=lambda c: (c.model.anchors.scales_per_octave, c.model.anchors.aspect_ratios),
)
def _one_anchor_per_location(c: Root) -> str | None:
    needs_one = c.model.head.regression == "point" or _fcos(c)
    if needs_one and c.model.anchors.anchors_per_location != 1:
        return "one anchor per location for point regression and FCOS assigners"
    return None


@rule("model.class_names")
def _a_name_per_class(c: Root) -> str | None:
    n = c.model.num_classes
    if len(c.model.class_names) not in (0, n):
        return f"empty or {n} names (model.num_classes)"
    return None


@rule("model.category_ids")
def _an_id_per_class(c: Root) -> str | None:
    ids, n = c.model.category_ids, c.model.num_classes
    integers = all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in ids)
    if not (len(ids) in (0, n) and integers and len(set(ids)) == len(ids)):
        return f"empty or {n} distinct integers >= 1 (model.num_classes)"
    return None


@rule("assigner.center_in_box", roots=(Config,))
def _fcos_needs_center_in_box(c: Config) -> str | None:
    if not c.assigner.center_in_box and _fcos(c):
        return f"true with assigner.type={c.assigner.type} (FCOS selects points inside the box)"
    return None


@rule("assigner.center_in_box", roots=(Config,))
def _points_need_center_in_box(c: Config) -> str | None:
    if not c.assigner.center_in_box and c.model.head.regression != "box":
        return (
            "true with point regression (distances to the sides of a box whose centre "
            "is outside would be negative)"
        )
    return None


@rule("assigner.fcos_ranges", roots=(Config,))
def _a_range_per_level(c: Config) -> str | None:
    if _fcos(c) and len(c.assigner.fcos_ranges) != len(c.model.anchors.strides):
        return "one (low, high) range per pyramid level"
    return None


@rule("data.max_size", roots=(Config,))
def _max_size_holds_min_size(c: Config) -> str | None:
    largest = max(c.data.min_size, default=0)
    if not (c.data.max_size >= largest and c.data.max_size >= 1):
        return f">= the largest data.min_size ({largest})"
    return None


@rule("max_size", roots=(DetectorConfig,))
def _max_size_holds_test_size(c: DetectorConfig) -> str | None:
    if not (c.max_size >= c.test_size and c.max_size >= 1):
        return f">= test_size ({c.test_size})"
    return None


@rule("tta.scale_ranges", roots=(Config,))
def _a_range_per_tta_scale(c: Config) -> str | None:
    n = len(c.tta.scales)
    if len(c.tta.scale_ranges) != n:
        return f"one (min, max) pair per tta.scales entry ({n})"
    return None


@rule("train.accumulate_steps", roots=(Config,))
def _accumulate_steps_divide_batch(c: Config) -> str | None:
    steps, batch = c.train.accumulate_steps, c.data.batch_size
    if not (steps >= 1 and batch % steps == 0):
        return f">= 1 and a divisor of data.batch_size ({batch})"
    return None


def _value_at(root: Any, key: str) -> Any:
    for name in key.split("."):
        root = getattr(root, name)
    return root


def problems(root: Root) -> list[str]:
    """Every problem of a :class:`Config` or :class:`DetectorConfig`, as
    ``key=value (expected ...)``, in the order of its fields (each section's
    rules right after the section).

    Raises:
        TypeError: a setting declares no check (see
            :func:`atss_tf.config.checks.setting`).
    """
    rules = [r for r in RULES if isinstance(root, r.roots)]
    found: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for f in dataclasses.fields(node):
            key, value = prefix + f.name, getattr(node, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, key + ".")
                continue
            check = check_of(f)
            if check is None:
                raise TypeError(
                    f"config setting {key} declares no check "
                    "(declare it with atss_tf.config.checks.setting)"
                )
            if not check.accepts(value):
                found.append(problem(key, value, check.expected))
        section = prefix[:-1]
        for r in rules:
            if r.section == section and (expected := r.test(root)) is not None:
                value = r.value(root) if r.value else _value_at(root, r.key)
                found.append(problem(r.key, value, expected))

    walk(root, "")
    return found


def _raise(found: list[str]) -> None:
    if found:
        n = len(found)
        raise ConfigError(
            (f"{n} invalid config values: " if n > 1 else "invalid config value ")
            + "; ".join(found)
        )


def validate(cfg: Config) -> None:
    """Check every value of a config.

    Raises:
        ConfigError: listing each invalid ``key=value`` with what is expected,
            on one line.
    """
    _raise(problems(cfg))


def validate_detector_config(dc: DetectorConfig) -> None:
    """Check a :class:`DetectorConfig` with the rules of :func:`validate`
    (its ``model`` and ``postprocess`` as a training config's; ``test_size``,
    ``max_size`` and ``canvases`` as ``data.min_size``, ``data.max_size`` and
    ``data.canvases``).

    Raises:
        ConfigError: as :func:`validate`; also when a compat setting is None.
    """
    unset = [
        key
        for key, value in (
            ("model.anchors.alignment", dc.model.anchors.alignment),
            ("model.anchors.official_shapes", dc.model.anchors.official_shapes),
            ("model.inclusive_geometry", dc.model.inclusive_geometry),
        )
        if value is None
    ]
    if unset:
        raise ConfigError(
            f"{', '.join(unset)} unset in a detector config: build it with "
            "Config(...).detector_config(), which resolves official_compat"
        )
    # Checked as the training config it came from, so that every message names
    # the key a user sets (data.min_size, data.max_size, data.canvases: what
    # `atss-tf export --min-size/--max-size/--canvases` change).
    data = DataConfig(min_size=(dc.test_size,), max_size=dc.max_size, canvases=dc.canvases)
    _raise(problems(Config(model=dc.model, postprocess=dc.postprocess, data=data)))

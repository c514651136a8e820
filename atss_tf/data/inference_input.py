"""Test-time input settings, shared by inference, evaluation and export.

A saved detector carries its own test-time resize and canvases
(:class:`~atss_tf.config.DetectorConfig`); a config's ``data`` section may
replace them. This module says how the two combine and which images the test
resize refuses, so that ``detect``, COCO evaluation and the SavedModel apply
one rule. When the test-time sizes change without canvases (``--set
data.min_size=512`` on predict/evaluate/export, ``export --min-size``), the
canvases follow them (:func:`~atss_tf.data.transforms.fitting_canvases`): the
head's GroupNorm statistics include the padding, so a 512 x 512 image on the
R-50's 896 x 1344 canvas gets other detections than the authors' code gives it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from atss_tf.config import Config, DetectorConfig, load_config, override_keys
from atss_tf.data.transforms import TransformConfig, fitting_canvases
from atss_tf.errors import DataError

# Below this shorter side after the test resize, an image is a sliver the
# detector cannot see into (P3 has stride 8).
MIN_RESIZED_SIDE = 8


def check_aspect_ratio(height: int, width: int, params: TransformConfig, name: str) -> None:
    """``DataError`` when the test resize leaves the shorter side below
    :data:`MIN_RESIZED_SIDE` pixels (a 1 x 5000 image), instead of detections
    on a one-pixel strip."""
    short, long = min(height, width), max(height, width)
    scale = min(max(params.min_size) / short, params.max_size / long)
    if short * scale < MIN_RESIZED_SIDE:
        raise DataError(
            f"{name} is {height}x{width} (h x w): after the test resize (longer side at most "
            f"{params.max_size} px) its shorter side would be {short * scale:.1f} px, below "
            f"{MIN_RESIZED_SIDE}; "
            "crop it into tiles of a less extreme aspect ratio"
        )


def with_detector_settings(config, detector_config):
    """``config`` (a :class:`~atss_tf.config.Config`) with the ``model`` and
    ``postprocess`` sections of ``detector_config`` (normalisation, padding
    value, class names): how a saved detector runs on the data a config names."""
    return dataclasses.replace(
        config, model=detector_config.model, postprocess=detector_config.postprocess
    )


def inference_transform(detector_config, config=None) -> TransformConfig:
    """The test-time resize and canvases: the detector's own, or ``config``'s
    data settings (with the detector's padding value)."""
    if config is None:
        return TransformConfig.for_detector(detector_config)
    return TransformConfig.from_config(
        with_detector_settings(config, detector_config), training=False
    )


# The --set keys that change the test-time input size and canvases.
SIZE_KEYS = ("data.min_size", "data.max_size")
CANVAS_KEY = "data.canvases"


def with_fitting_canvases(config: Config) -> Config:
    """``config`` with ``data.canvases`` replaced by :func:`fitting_canvases`
    of its test size (``data.min_size``'s largest) and ``data.max_size``."""
    data = config.data
    canvases = fitting_canvases(max(data.min_size), data.max_size)
    return dataclasses.replace(config, data=dataclasses.replace(data, canvases=canvases))


def inference_config(
    detector_config: DetectorConfig,
    config: Config | None = None,
    overrides: Sequence[str] | None = None,
) -> Config | None:
    """The config a test-time command (predict, evaluate, export) runs a
    detector with, from its ``--config`` (``config``, already loaded with
    ``overrides``) and its ``--set`` items (``overrides``).

    * ``--set data.min_size`` / ``data.max_size`` without ``data.canvases``:
      the canvases follow the new sizes (:func:`with_fitting_canvases`)
      instead of staying the config's or the detector's.
    * Without ``--config``, ``--set data.min_size/max_size/canvases`` change
      the detector's own test-time settings (the other data settings keep
      their defaults); without any of them the result is None: the
      detector's own settings.

    Raises:
        ConfigError: an invalid override (naming the key and value).
    """
    keys = override_keys(overrides)
    if config is None:
        if not keys & {*SIZE_KEYS, CANVAS_KEY}:
            return None
        dc = detector_config
        own = [
            f"data.min_size=[{dc.test_size}]",
            f"data.max_size={dc.max_size}",
            f"data.canvases={[list(c) for c in dc.canvases]}",
        ]
        config = load_config(None, own + list(overrides or []))
    if keys & set(SIZE_KEYS) and CANVAS_KEY not in keys:
        config = with_fitting_canvases(config)
    return config

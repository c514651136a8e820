"""Test-time input settings, shared by inference, evaluation and export.

A saved detector carries its own test-time resize and canvases
(:class:`~atss_tf.config.DetectorConfig`); a config's ``data`` section may
replace them. This module says how the two combine and which images the test
resize refuses, so that ``detect``, COCO evaluation and the SavedModel apply
one rule.
"""

from __future__ import annotations

import dataclasses

from atss_tf.data.transforms import TransformConfig
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

"""Canvases follow the test size: sizes changed without canvases (export
--min-size/--max-size, --set data.min_size/max_size on predict, evaluate and
export) get the canvases that fit them; explicit canvases still win."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from atss_tf import cli
from atss_tf.data.inference_input import inference_config
from atss_tf.data.transforms import TransformConfig, fitting_canvases
from atss_tf.export import serving_transform
from atss_tf.inference import detect
from atss_tf.model import build_detector
from tests.helpers.tiny import THREE_CANVAS_SIZES, THREE_CANVASES, tiny_config


def test_fitting_canvases_hold_the_official_resize_rounded_to_32():
    assert fitting_canvases(512, 512) == ((512, 512),)
    assert fitting_canvases(800, 1333) == ((800, 1344), (1344, 800))
    assert fitting_canvases(600, 1000) == ((608, 1024), (1024, 608))


@pytest.fixture(scope="module")
def model():
    """An untrained tiny detector on three canvases, test size 128 / 128."""
    return build_detector(tiny_config(THREE_CANVASES))


def test_inference_config_derives_canvases_only_for_changed_sizes(model):
    dc = model.detector_config
    assert inference_config(dc, None, []) is None
    assert inference_config(dc, None, ["tta.scales=[96]"]) is None  # not a data key

    cfg = inference_config(dc, None, ["data.min_size=[64]", "data.max_size=96"])
    assert (cfg.data.min_size, cfg.data.max_size) == ((64,), 96)
    assert cfg.data.canvases == ((64, 96), (96, 64))
    # Only the shorter side: the longer-side cap stays the model's (128).
    cfg = inference_config(dc, None, ["data.min_size=[64]"])
    assert cfg.data.canvases == ((64, 128), (128, 64))
    # Explicit canvases win; canvases alone change only the canvases.
    sizes = ["data.min_size=[64]", "data.max_size=96", "data.canvases=[[96, 96]]"]
    assert inference_config(dc, None, sizes).data.canvases == ((96, 96),)
    cfg = inference_config(dc, None, ["data.canvases=[[160, 160]]"])
    assert (cfg.data.min_size, cfg.data.max_size, cfg.data.canvases) == ((128,), 128, ((160, 160),))

    # With --config: its canvases stay unless --set changes its sizes.
    config = tiny_config(THREE_CANVASES)
    assert inference_config(dc, config, ["postprocess.score_threshold=0.5"]) is config
    sizes = ["data.min_size=[64]"]
    derived = inference_config(dc, tiny_config([*THREE_CANVASES, *sizes]), sizes)
    assert derived.data.canvases == ((64, 128), (128, 64))


def test_serving_transform_fits_changed_sizes_and_keeps_explicit_canvases(model):
    assert serving_transform(model).canvases == tuple(THREE_CANVAS_SIZES)
    assert serving_transform(model, 128, 128).canvases == tuple(THREE_CANVAS_SIZES)  # unchanged
    assert serving_transform(model, 64, 96).canvases == ((64, 96), (96, 64))
    assert serving_transform(model, 64, 96, [(96, 96)]).canvases == ((96, 96),)


def test_predict_with_set_sizes_runs_on_fitting_canvases(model, tmp_path):
    """``atss-tf predict --set data.min_size=[64] --set data.max_size=96``
    without --config: a 60 x 90 image runs on a 64 x 96 canvas (detect under
    the derived config), not the model's 96 x 128, whose padding GroupNorm
    would see. The export's CLI is checked on the official R-50 by
    ``test_export.py`` (``--min-size 512 --max-size 512``, no ``--canvases``)."""
    weights, picture = tmp_path / "tiny.keras", tmp_path / "image.png"
    model.save(weights)
    image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    picture.write_bytes(tf.io.encode_png(image).numpy())
    sizes = ["data.min_size=[64]", "data.max_size=96"]
    argv = ["--weights", str(weights), "--images", str(picture), "--out", str(tmp_path / "out")]
    assert cli.main(["predict", *argv, *(a for s in sizes for a in ("--set", s))]) == 0
    got = json.loads((tmp_path / "out" / "detections.json").read_text())

    config = inference_config(model.detector_config, None, sizes)
    assert TransformConfig.from_config(config, training=False).canvases == ((64, 96), (96, 64))
    want = detect(model, [image], config)[0]
    assert len(got) == len(want["scores"]) > 0
    np.testing.assert_allclose([r["score"] for r in got], want["scores"], atol=2e-5)

"""Several canvases in one process: fit, evaluate, predict and detect compile each canvas once."""

from __future__ import annotations

import numpy as np
import pytest

from atss_tf.data.pipeline import build_dataset
from atss_tf.inference import detect, padded_batch_size
from atss_tf.targets import TargetEncoder
from atss_tf.training.fit import build_training_model
from tests.helpers.journeys import SPARSE_CATEGORIES, make_dataset
from tests.helpers.tiny import THREE_CANVAS_SIZES as CANVASES
from tests.helpers.tiny import THREE_CANVASES, TWO_CANVAS_SIZES, TWO_CANVASES, tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("canvases"), SPARSE_CATEGORIES, n_train=24, n_val=9)


def _config(data, jit: bool, extra: tuple[str, ...] = ()):
    cfg = tiny_config([*THREE_CANVASES, f"train.jit_compile={str(jit).lower()}", *extra])
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg


def _canvas_of(signature) -> tuple[int, int]:
    """The (H, W) of the 4-D float image tensor in a step's input signature."""
    shapes = [leaf[0] for leaf in signature[1] if isinstance(leaf, tuple) and len(leaf[0]) == 4]
    return tuple(shapes[0][1:3])


def _fit_canvases(cfg, canvases):
    """Fit 12 steps (two epochs) then 6 more; every canvas compiled exactly once."""
    model = build_training_model(cfg)
    train = build_dataset(
        cfg, "train", encoder_factory=lambda size: TargetEncoder.from_config(cfg, size)
    )
    history = model.fit(train, steps_per_epoch=6, epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    step = model.train_function.step
    assert sorted(_canvas_of(s) for s in step.signatures) == sorted(canvases)
    assert step.tracing_counts() == [1] * len(canvases)
    # Canvases keep alternating after they are compiled: no retrace, no new signature.
    model.fit(train, steps_per_epoch=6, epochs=1, verbose=0)
    assert step.tracing_counts() == [1] * len(canvases)
    return model


# XLA compiles a canvas in about 20 s here, so two (the non-XLA fit, evaluate,
# predict and detect under MirroredStrategy: test_mirrored_fit.py).
@pytest.mark.slow
def test_xla_fit_and_predict_compile_each_canvas_once(data):
    model = _fit_canvases(_config(data, jit=True, extra=TWO_CANVASES), TWO_CANVAS_SIZES)
    rng = np.random.default_rng(0)
    for canvas in TWO_CANVAS_SIZES * 2:
        det = model.predict_on_batch(rng.uniform(0, 255, (2, *canvas, 3)).astype("float32"))
        assert det["boxes"].shape == (2, 100, 4)
    assert model.predict_function.step.tracing_counts() == [1, 1]


def test_detect_equals_predict_on_the_prepared_canvas(data):
    """A batch of mixed orientations through ``detect`` gives, per image, what
    ``predict_on_batch`` gives for that image alone on its canvas; both return
    boxes in original pixels: the raw outputs post-processed on the valid area
    and mapped back with ``image_info``."""
    from atss_tf.data.transforms import (
        TransformConfig,
        boxes_to_original,
        transform,
        valid_image_size,
    )
    from atss_tf.postprocess import postprocess

    cfg = _config(data, jit=False)
    model = build_training_model(cfg)
    rng = np.random.default_rng(1)
    photos = [rng.integers(0, 256, s, dtype=np.uint8) for s in ((70, 110, 3), (120, 66, 3))]
    params = TransformConfig.from_config(cfg, training=False)
    got = detect(model, photos, batch_size=4)
    for photo, det in zip(photos, got):
        t = transform(photo, np.zeros((0, 4), np.float32), params)
        alone = model.predict_on_batch(
            {"images": t["image"][None], "image_info": t["image_info"][None]}
        )
        n = int(alone["num_detections"][0])
        raw = postprocess(
            model(t["image"][None]),
            model.anchor_grid(tuple(t["image"].shape[:2])),
            model.coder,
            model.detector_config.postprocess,
            image_sizes=valid_image_size(t["image_info"][None]),
        )
        boxes = boxes_to_original(raw["boxes"][:, :n], t["image_info"][None]).numpy()[0]
        np.testing.assert_allclose(alone["boxes"][0, :n], boxes, atol=1e-3)
        np.testing.assert_array_equal(det["classes"], alone["classes"][0, :n])
        np.testing.assert_allclose(det["scores"], alone["scores"][0, :n], atol=1e-5)
        np.testing.assert_allclose(det["boxes"], boxes, atol=1e-3)


def test_padded_batch_sizes_are_powers_of_two_up_to_the_batch():
    assert [padded_batch_size(n, 8) for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    assert [padded_batch_size(n, 6) for n in (1, 3, 5, 6)] == [1, 4, 6, 6]


def test_a_step_traced_without_a_static_canvas_is_a_clear_error(data):
    import tensorflow as tf

    model = build_training_model(_config(data, jit=False))
    fn = tf.function(
        model.predict_step, input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)]
    )
    with pytest.raises(ValueError, match="static canvas size"):
        fn.get_concrete_function()


def test_evaluation_pads_last_batches_to_one_static_size_and_skips_the_padding(data, tmp_path):
    """9 validation images on 3 canvases in batches of 2: every canvas's last
    batch is padded to 2 (one compiled step per canvas, as TPUs need), and the
    padding adds no image and no detection: the detections equal batch 1's."""
    import dataclasses
    import json

    from atss_tf.evaluation import make_evaluate_fn

    cfg = _config(data, jit=False)
    model = build_training_model(cfg)
    (tmp_path / "b1").mkdir()
    (tmp_path / "b2").mkdir()
    padded = make_evaluate_fn(model, cfg, tmp_path / "b2")
    metrics = padded()
    signatures = model.predict_function.step.signatures
    assert sorted(_canvas_of(s) for s in signatures) == sorted(CANVASES)  # no partial batch
    image_shapes = [leaf[0] for s in signatures for leaf in s[1] if len(leaf[0]) == 4]
    assert {shape[0] for shape in image_shapes} == {2}

    single = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=1))
    make_evaluate_fn(model, single, tmp_path / "b1")()
    dets_b2 = json.loads((tmp_path / "b2" / "detections.json").read_text())
    dets_b1 = json.loads((tmp_path / "b1" / "detections.json").read_text())
    val_ids = {im["id"] for im in json.loads(open(data["val_annotations"]).read())["images"]}
    assert {d["image_id"] for d in dets_b2} == val_ids
    assert len(dets_b2) == len(dets_b1)

    def key(d):
        return (d["image_id"], d["category_id"], round(d["score"], 3))

    for a, b in zip(sorted(dets_b2, key=key), sorted(dets_b1, key=key)):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=0.05)
    assert metrics["AP"] >= 0

"""TargetEncoder as the input pipeline and a train step use it: tf.data, XLA, batches."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from atss_tf import boxes as box_ops
from atss_tf.config import ASSIGNERS, Config
from atss_tf.targets import TargetEncoder

CANVAS = (128, 160)
M = 8
KEYS = ("cls_targets", "box_targets", "matched_gt", "matched_boxes")


def make_images(num: int, seed: int = 0, junk: bool = True):
    """``num`` images with 0..M boxes; padded rows hold junk (NaN, inf, garbage)."""
    rng = np.random.default_rng(seed)
    boxes = (
        rng.uniform(-1e3, 1e3, (num, M, 4)).astype(np.float32)
        if junk
        else np.zeros((num, M, 4), np.float32)
    )
    if junk:
        boxes[:, ::3, 0] = np.nan
        boxes[:, 1::3, 2] = np.inf
    labels = rng.integers(1, 6, (num, M)).astype(np.int32)
    mask = np.zeros((num, M), bool)
    for i in range(num):
        n = i % (M + 1)
        rows = rng.permutation(M)[:n]
        xy = rng.uniform(-10, 150, (n, 2))
        wh = np.exp(rng.uniform(np.log(2), np.log(200), (n, 2)))
        boxes[i, rows] = np.concatenate([xy, xy + wh], -1).astype(np.float32)
        mask[i, rows] = True
    return boxes, labels, mask


def config(assigner: str = "atss", regression: str = "box", compat: bool = False) -> Config:
    cfg = Config(official_compat=compat)
    cfg.assigner.type = assigner
    cfg.model.head.regression = regression
    return cfg


@pytest.fixture(scope="module")
def atss_encoder():
    return TargetEncoder.from_config(config(), CANVAS)


def test_tf_data_map_traces_once(atss_encoder):
    enc = atss_encoder
    boxes, labels, mask = make_images(12)
    assert len({int(m.sum()) for m in mask}) > 5  # box counts vary, incl. 0 and M
    python_calls = []

    def encode(b, l, m):
        python_calls.append(1)  # runs once per trace of the map function
        return enc(b, tf.cast(l, tf.int64), m)  # int64 labels are accepted too

    before = enc.tracing_count()
    ds = tf.data.Dataset.from_tensor_slices((boxes, labels, mask)).map(encode, num_parallel_calls=2)
    results = list(ds.as_numpy_iterator())
    assert len(results) == 12
    assert len(python_calls) == 1
    assert enc.tracing_count() - before <= 1
    after_first = enc.tracing_count()
    for i in range(12):  # eager calls with other box counts reuse the same trace
        direct = enc(boxes[i], labels[i], mask[i])
        for key in KEYS:
            np.testing.assert_array_equal(results[i][key], direct[key].numpy())
    assert enc.tracing_count() == after_first
    for key in KEYS:
        assert ds.element_spec[key].shape.is_fully_defined()


def test_zero_valid_boxes_give_background(atss_encoder):
    boxes, labels, mask = make_images(1)
    mask[:] = False
    out = atss_encoder(boxes[0], labels[0], mask[0])
    assert np.all(out["cls_targets"].numpy() == 0)
    assert np.all(out["matched_gt"].numpy() == -1)
    for key in ("box_targets", "matched_boxes"):
        assert np.all(out[key].numpy() == 0)


def test_zero_rows_input(atss_encoder):
    out = atss_encoder(np.zeros((0, 4), np.float32), np.zeros((0,), np.int32), np.zeros((0,), bool))
    assert out["cls_targets"].shape == (atss_encoder.anchor_grid.num_anchors,)
    assert np.all(out["cls_targets"].numpy() == 0)


@pytest.mark.parametrize(
    "assigner,regression", [(a, "box") for a in ASSIGNERS] + [("atss", "point"), ("fcos", "point")]
)
def test_every_selector_in_tf_data_batched_equals_single(assigner, regression):
    """All selectors compile under XLA in tf.data; padded junk never matters;
    encode_batch equals per-image calls; targets decode back to the matched box."""
    enc = TargetEncoder.from_config(config(assigner, regression, compat=assigner == "iou"), CANVAS)
    boxes, labels, mask = make_images(6, seed=ASSIGNERS.index(assigner))
    ds = tf.data.Dataset.from_tensor_slices((boxes, labels, mask)).map(enc).batch(6)
    from_data = next(iter(ds))
    batched = enc.encode_batch(boxes, labels, mask)
    clean = np.where(mask[..., None], boxes, 0)
    clean_out = enc.encode_batch(clean, labels, mask)
    for key in KEYS:
        np.testing.assert_array_equal(from_data[key].numpy(), batched[key].numpy())
        np.testing.assert_array_equal(clean_out[key].numpy(), batched[key].numpy())
        assert np.all(np.isfinite(batched[key].numpy()))
    cls = batched["cls_targets"].numpy()
    matched = batched["matched_gt"].numpy()
    positive = matched >= 0
    assert positive.sum() > 10
    assert np.array_equal(cls > 0, positive)
    assert np.all(mask[np.nonzero(positive)[0], matched[positive]])
    assert np.array_equal(
        cls[positive], np.take_along_axis(labels, np.maximum(matched, 0), 1)[positive]
    )
    if assigner == "iou":
        assert (cls == -1).sum() > 0 and np.all(matched[cls == -1] == -1)
    else:
        assert (cls == -1).sum() == 0
    anchors = np.broadcast_to(enc.anchor_grid.boxes, batched["box_targets"].shape)
    decoded = enc.coder.decode(batched["box_targets"], anchors).numpy()
    np.testing.assert_allclose(
        decoded[positive], batched["matched_boxes"].numpy()[positive], atol=2e-3, rtol=1e-5
    )
    np.testing.assert_array_equal(
        batched["matched_boxes"].numpy()[positive],
        np.take_along_axis(boxes, np.maximum(matched, 0)[..., None], 1)[positive],
    )


def test_inside_a_jit_compiled_keras_train_step():
    enc = TargetEncoder.from_config(config(), CANVAS)
    num_anchors = enc.anchor_grid.num_anchors

    class Toy(keras.Model):
        def __init__(self):
            super().__init__()
            self.logit = keras.layers.Dense(num_anchors)

        def call(self, x):
            return self.logit(x)

        def train_step(self, data):
            boxes, labels, mask = data
            targets = enc.encode_batch(boxes, labels, mask)
            y = tf.cast(targets["cls_targets"] > 0, tf.float32)
            with tf.GradientTape() as tape:
                logits = self(tf.reshape(boxes, [-1, M * 4]) / 100.0)
                loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y, logits))
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply(grads, self.trainable_variables)
            return {"loss": loss, "positives": tf.reduce_sum(y)}

    model = Toy()
    model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=True)
    boxes, labels, mask = make_images(8, junk=False)
    ds = tf.data.Dataset.from_tensor_slices((boxes, labels, mask)).batch(4)
    history = model.fit(ds, epochs=1, verbose=0, shuffle=False)
    expected = (enc.encode_batch(boxes[4:], labels[4:], mask[4:])["cls_targets"].numpy() > 0).sum()
    assert history.history["positives"][-1] == pytest.approx(expected)
    assert np.isfinite(history.history["loss"][-1])


def test_coder_and_anchors_follow_the_config():
    enc = TargetEncoder.from_config(config(regression="point", compat=True), (256, 256))
    assert enc.assigner.center_margin == 0.51 and enc.coder.inclusive
    assert isinstance(enc.coder, box_ops.PointCoder) and enc.coder.offset == 0.5
    assert enc.anchor_grid.offsets[0] == 4.5
    assert enc.anchor_grid.num_anchors == 32 * 32 + 16 * 16 + 8 * 8 + 4 * 4 + 2 * 2
    box = np.array([[100.0, 100.0, 180.0, 140.0]], np.float32)
    out = enc(box, [3], [True])
    positive = out["matched_gt"].numpy() >= 0
    centers = enc.anchor_grid.centers[positive]
    strides = enc.anchor_grid.anchor_strides()[positive][:, None]
    ltrb = np.concatenate([centers - box[:, :2], box[:, 2:] - centers], -1) - 0.5
    np.testing.assert_allclose(out["box_targets"].numpy()[positive], ltrb / strides, rtol=1e-6)

"""Box maths against hand-computed values."""

import numpy as np
import pytest
import tensorflow as tf

from atss_tf import boxes


def test_iou_hand_cases_and_broadcasting():
    a = np.array([[0, 0, 10, 10], [0, 0, 2, 2]], np.float32)
    b = np.array([[5, 5, 15, 15], [0, 0, 10, 10], [0, 0, 0, 0]], np.float32)
    m = boxes.iou(a[:, None], b[None]).numpy()
    assert m.shape == (2, 3)
    np.testing.assert_allclose(m[0], [25 / 175, 1.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(m[1], [0.0, 4 / 100, 0.0], rtol=1e-6)
    assert np.isfinite(m).all()


def test_giou_loss_hand_cases():
    pred = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 0, 30, 10]], np.float32)
    tgt = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 10, 10]], np.float32)
    loss = boxes.giou_loss(pred, tgt).numpy()
    # identical: 0; half overlap: iou 1/3, enclosing == union -> 2/3;
    # disjoint with a gap of 10: iou 0, enclosing 300, union 200 -> 1 + 100/300.
    np.testing.assert_allclose(loss, [0.0, 2 / 3, 1 + 1 / 3], atol=1e-6)


def test_giou_loss_inclusive_geometry_shrinks_x2_y2_by_one():
    pred = np.array([[0, 0, 10, 10]], np.float32)
    tgt = np.array([[0, 0, 5, 10]], np.float32)
    # inclusive: boxes become [0,0,9,9] and [0,0,4,9]; iou = 36/81.
    np.testing.assert_allclose(
        boxes.giou_loss(pred, tgt, inclusive=True).numpy(), [1 - 36 / 81], atol=1e-6
    )


def test_giou_loss_clamps_inverted_predictions():
    pred = np.array([[10, 10, 0, 0]], np.float32)  # x2 < x1 -> zero-area box at (10, 10)
    tgt = np.array([[0, 0, 10, 10]], np.float32)
    # enclosing 100, union 100, inter 0 -> giou 0 -> loss 1
    np.testing.assert_allclose(boxes.giou_loss(pred, tgt).numpy(), [1.0], atol=1e-6)


def test_box_coder_round_trip_and_official_values():
    coder = boxes.BoxCoder((10, 10, 5, 5))
    anchors = np.array([[-28, -28, 36, 36], [0, 0, 64, 64]], np.float32)
    gt = np.array([[10, 20, 50, 100], [3, 4, 40, 41]], np.float32)
    d = coder.encode(gt, anchors).numpy()
    # hand: anchor 1 center (4, 4) size 64; gt center (30, 60) size (40, 80)
    np.testing.assert_allclose(
        d[0], [10 * 26 / 64, 10 * 56 / 64, 5 * np.log(40 / 64), 5 * np.log(80 / 64)], rtol=1e-5
    )
    np.testing.assert_allclose(coder.decode(d, anchors).numpy(), gt, atol=1e-4)


def test_box_coder_clamps_only_large_sizes():
    coder = boxes.BoxCoder()
    anchors = np.array([[0, 0, 16, 16]], np.float32)
    big = coder.decode(np.array([[0, 0, 100.0, -100.0]], np.float32), anchors).numpy()[0]
    assert big[2] - big[0] == pytest.approx(1000.0, rel=1e-4)  # clamped at log(1000/16)
    assert big[3] - big[1] < 1e-6  # no lower clamp


def test_point_coder_stride_units_and_inclusive_offset():
    anchors = np.array([[-28, -28, 36, 36]], np.float32)  # stride 8, center (4, 4)
    gt = np.array([[0, 2, 20, 30]], np.float32)
    clean = boxes.PointCoder(8.0, inclusive=False)
    np.testing.assert_allclose(
        clean.encode(gt, anchors).numpy(), [[4 / 8, 2 / 8, 16 / 8, 26 / 8]], rtol=1e-6
    )
    compat = boxes.PointCoder(8.0, inclusive=True)
    np.testing.assert_allclose(
        compat.encode(gt, anchors).numpy(), [[3.5 / 8, 1.5 / 8, 15.5 / 8, 25.5 / 8]], rtol=1e-6
    )
    for coder in (clean, compat):
        np.testing.assert_allclose(
            coder.decode(coder.encode(gt, anchors), anchors).numpy(), gt, atol=1e-5
        )


def test_centerness_and_distances():
    ltrb = boxes.ltrb_distances(
        np.array([[4.0, 5.0]], np.float32), np.array([[0, 0, 10, 10]], np.float32)
    )
    np.testing.assert_allclose(ltrb.numpy(), [[4, 5, 6, 5]])
    np.testing.assert_allclose(boxes.centerness(ltrb).numpy(), [np.sqrt(4 / 6 * 1.0)], rtol=1e-6)
    assert boxes.centerness(tf.zeros([3, 4])).numpy().tolist() == [0.0, 0.0, 0.0]


def test_clip_and_format_conversions():
    b = np.array([[-5, 3, 120, 90]], np.float32)
    np.testing.assert_allclose(boxes.clip_boxes(b, 80, 100).numpy(), [[0, 3, 100, 80]])
    xywh = np.array([[10, 20, 30, 40]], np.float32)
    np.testing.assert_allclose(boxes.xywh_to_xyxy(xywh), [[10, 20, 40, 60]])
    np.testing.assert_allclose(boxes.xyxy_to_xywh(boxes.xywh_to_xyxy(xywh)), xywh)

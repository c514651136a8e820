"""Transforms: the official resize rule, flip, canvas choice, padding, box scaling, inverse map."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from atss_tf.config import ModelConfig
from atss_tf.data.transforms import (
    TransformConfig,
    boxes_to_original,
    choose_canvas,
    decode_image,
    flip_left_right,
    official_resize_size,
    pad_instances,
    pad_to_canvas,
    rgb_pixel_mean,
    transform,
)


@pytest.mark.parametrize(
    "hw, min_size, max_size, expected",
    [
        ((480, 640), 800, 1333, (800, 1066)),  # 1066.67 truncated
        ((640, 480), 800, 1333, (1066, 800)),  # portrait
        ((427, 640), 800, 1333, (800, 1199)),
        ((500, 1500), 800, 1333, (444, 1332)),  # long side capped: round(444.33) = 444
        ((1500, 500), 800, 1333, (1332, 444)),
        ((100, 200), 800, 1333, (666, 1332)),  # round(666.5) = 666: half to even, as Python
        ((800, 1000), 800, 1333, (800, 1000)),  # already the right size
        ((333, 500), 600, 1000, (600, 900)),  # 900.9 truncated
        ((300, 300), 800, 1333, (800, 800)),
    ],
)
def test_official_resize_size(hw, min_size, max_size, expected):
    got = official_resize_size(hw[0], hw[1], min_size, max_size).numpy()
    assert tuple(got) == expected


CANVASES = ((160, 128), (256, 320))  # a small portrait and a big landscape canvas


@pytest.mark.parametrize(
    "hw, canvases, index, scale",
    [
        ((100, 120), CANVASES, 1, 1.0),  # landscape fits both: the landscape canvas wins
        ((150, 100), CANVASES, 0, 1.0),  # portrait: the smaller portrait canvas
        ((200, 100), CANVASES, 1, 1.0),  # too tall for the portrait canvas
        ((100, 100), ((128, 160), (160, 128)), 0, 1.0),  # square: landscape preferred
        ((100, 100), ((160, 128), (128, 128)), 1, 1.0),  # a square canvas matches anything
        ((120, 100), ((256, 320), (128, 160)), 1, 1.0),  # no portrait canvas: smallest that fits
        ((400, 300), ((128, 160), (160, 128)), 1, 0.4),  # none fits: the largest downscale
        ((300, 400), ((128, 160), (160, 128)), 0, 0.4),
    ],
)
def test_choose_canvas(hw, canvases, index, scale):
    i, s = choose_canvas(hw[0], hw[1], canvases)
    assert int(i) == index
    assert float(s) == pytest.approx(scale)


def test_rgb_pixel_mean_follows_input_order():
    bgr = ModelConfig()
    assert rgb_pixel_mean(bgr) == (122.7717, 115.9465, 102.9801)
    rgb = ModelConfig(input_bgr=False, pixel_mean=(123.675, 116.28, 103.53))
    assert rgb_pixel_mean(rgb) == (123.675, 116.28, 103.53)


def _params(**kw) -> TransformConfig:
    base = dict(
        min_size=(100,),
        max_size=200,
        canvases=((128, 160), (160, 128)),
        flip_prob=0.0,
        pad_value=(122.7717, 115.9465, 102.9801),
        max_instances=4,
    )
    base.update(kw)
    return TransformConfig(**base)


def _random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_transform_resizes_by_the_official_rule_and_scales_boxes():
    image = _random_image(50, 100)
    boxes = tf.constant([[10.0, 5.0, 20.0, 15.0], [0.0, 0.0, 100.0, 50.0]])
    out = transform(image, boxes, _params(min_size=(70,), max_size=140))
    # shorter side 70 -> 1.4x; the longer side 140 is within max_size.
    np.testing.assert_allclose(out["boxes"].numpy(), [[14, 7, 28, 21], [0, 0, 140, 70]], rtol=1e-6)
    np.testing.assert_allclose(
        out["image_info"].numpy(), [[50, 100], [70, 140], [1.4, 1.4], [128, 160]], rtol=1e-6
    )
    assert int(out["canvas_index"]) == 0 and out["image"].shape == (128, 160, 3)


def test_pad_places_image_top_left_and_fills_with_pixel_mean():
    image = _random_image(64, 80, seed=1)
    params = _params(min_size=(64,), max_size=1000)  # no resize: 64x80 stays 64x80
    out = transform(image, tf.zeros([0, 4]), params)
    canvas = out["image"].numpy()
    assert canvas.dtype == np.float32 and canvas.shape == (128, 160, 3)
    np.testing.assert_array_equal(canvas[:64, :80], image.astype(np.float32))
    mean = np.array(params.pad_value, np.float32)
    assert (canvas[64:] == mean).all() and (canvas[:, 80:] == mean).all()


def test_pad_to_canvas_copies_pixels_exactly():
    image = tf.constant(_random_image(5, 7).astype(np.float32) + 0.123)
    out = pad_to_canvas(image, 8, 9, (1.5, 2.5, 3.5)).numpy()
    np.testing.assert_array_equal(out[:5, :7], image.numpy())
    np.testing.assert_array_equal(out[5:, :, 2], 3.5)


def test_flip_maps_boxes_hand_case():
    image = np.zeros((4, 6, 3), np.float32)
    image[1, 1] = 255.0
    flipped, boxes = flip_left_right(tf.constant(image), tf.constant([[1.0, 0.5, 3.0, 2.0]]))
    np.testing.assert_array_equal(boxes.numpy(), [[3.0, 0.5, 5.0, 2.0]])
    assert flipped.numpy()[1, 4, 0] == 255.0 and flipped.numpy()[1, 1, 0] == 0.0


def test_transform_flip_with_probability_one():
    image = _random_image(40, 60)
    params = _params(min_size=(40,), max_size=1000, canvases=((64, 64),), flip_prob=1.0)
    out = transform(image, tf.constant([[1.0, 2.0, 11.0, 12.0]]), params, seed=tf.constant([0, 0]))
    np.testing.assert_array_equal(out["boxes"].numpy(), [[49.0, 2.0, 59.0, 12.0]])
    np.testing.assert_array_equal(out["image"].numpy()[:40, :60], image[:, ::-1].astype(np.float32))


def test_transform_needs_a_seed_when_random():
    with pytest.raises(ValueError, match="seed"):
        transform(_random_image(8, 8), tf.zeros([0, 4]), _params(flip_prob=0.5))


def test_multiscale_draws_among_min_sizes_deterministically():
    image = _random_image(50, 60)
    params = _params(min_size=(60, 80, 100), max_size=1000, canvases=((256, 256),))
    shorts = {
        int(
            transform(image, tf.zeros([0, 4]), params, seed=tf.constant([7, i]))["image_info"][1, 0]
        )
        for i in range(30)
    }
    assert shorts == {60, 80, 100}
    a = transform(image, tf.zeros([0, 4]), params, seed=tf.constant([7, 3]))["image_info"]
    b = transform(image, tf.zeros([0, 4]), params, seed=tf.constant([7, 3]))["image_info"]
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_image_too_big_for_every_canvas_is_shrunk_to_fit():
    image = _random_image(200, 150)
    params = _params(min_size=(300,), max_size=1000)  # -> 400x300; no canvas holds it
    out = transform(image, tf.constant([[0.0, 0.0, 150.0, 200.0]]), params)
    info = out["image_info"].numpy()
    np.testing.assert_allclose(info, [[200, 150], [160, 120], [0.8, 0.8], [160, 128]], rtol=1e-6)
    np.testing.assert_allclose(out["boxes"].numpy(), [[0, 0, 120, 160]], rtol=1e-6)


@pytest.mark.parametrize(
    "hw, min_size", [((37, 91), 100), ((91, 37), 64), ((333, 500), 120), ((60, 80), 700)]
)
def test_boxes_to_original_inverts_the_forward_transform(hw, min_size):
    rng = np.random.default_rng(0)
    h, w = hw
    xy = rng.uniform(0, 1, (20, 2, 2)) * [w, h]
    boxes = np.concatenate([xy.min(1), xy.max(1)], axis=-1).astype(np.float32)
    params = _params(min_size=(min_size,), max_size=1000)
    out = transform(_random_image(h, w), tf.constant(boxes), params)
    back = boxes_to_original(out["boxes"], out["image_info"]).numpy()
    np.testing.assert_allclose(back, boxes, atol=1e-3)
    # batched form [B, N, 4] with [B, 4, 2]
    back2 = boxes_to_original(out["boxes"][None], out["image_info"][None]).numpy()[0]
    np.testing.assert_allclose(back2, boxes, atol=1e-3)


def test_boxes_to_original_clips_to_the_original_image():
    info = tf.constant([[10.0, 20.0], [20.0, 40.0], [2.0, 2.0], [32.0, 64.0]])
    out = boxes_to_original(tf.constant([[-4.0, 2.0, 60.0, 30.0]]), info).numpy()
    np.testing.assert_array_equal(out, [[0.0, 1.0, 20.0, 10.0]])


def test_pad_instances_truncates_pads_and_masks():
    boxes = tf.reshape(tf.range(24, dtype=tf.float32), [6, 4])
    gt = pad_instances(
        boxes,
        tf.constant([1, 2, 3, 1, 2, 3]),
        tf.constant([False, True, False, False, False, False]),
        4,
    )
    np.testing.assert_array_equal(gt["gt_boxes"].numpy(), boxes.numpy()[:4])
    np.testing.assert_array_equal(gt["gt_mask"].numpy(), [True, False, True, True])
    np.testing.assert_array_equal(gt["gt_is_crowd"].numpy(), [False, True, False, False])
    gt = pad_instances(boxes[:1], tf.constant([5]), tf.constant([False]), 3)
    np.testing.assert_array_equal(gt["gt_labels"].numpy(), [5, 0, 0])
    np.testing.assert_array_equal(gt["gt_mask"].numpy(), [True, False, False])
    np.testing.assert_array_equal(gt["gt_boxes"].numpy()[1:], 0.0)


def test_decode_image_names_a_file_that_is_not_an_image():
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"broken\.jpg"):
        decode_image(tf.constant(b"<html>404 not found</html>"), "data/broken.jpg")


def test_decode_image_png_and_grayscale_give_three_channels():
    gray = tf.io.encode_png(tf.zeros([5, 7, 1], tf.uint8))
    img = decode_image(gray, "g.png")
    assert img.shape == (5, 7, 3) and img.dtype == tf.uint8

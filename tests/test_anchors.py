"""Anchor grids: order, sizes, alignment, and the official generator's anchors."""

import numpy as np
import pytest

from atss_tf.anchors import generate_anchors, level_shape
from atss_tf.config import AnchorConfig, Config
from tests.helpers.fixtures import inclusive_to_continuous


def test_level_shapes_follow_ceil_halving():
    assert [level_shape(512, s) for s in (8, 16, 32, 64, 128)] == [64, 32, 16, 8, 4]
    assert [level_shape(800, s) for s in (8, 16, 32, 64, 128)] == [100, 50, 25, 13, 7]
    assert level_shape(100, 8) == 13


@pytest.mark.parametrize("alignment, offset", [("center", 4.0), ("official", 4.5), ("mmdet", 0.0)])
def test_alignment_order_and_size(alignment, offset):
    g = generate_anchors((64, 96), AnchorConfig(alignment=alignment, official_shapes=False))
    assert g.num_per_level == (8 * 12, 4 * 6, 2 * 3, 1 * 2, 1 * 1)
    np.testing.assert_allclose(g.centers[0], [offset, offset])
    np.testing.assert_allclose(g.centers[1], [offset + 8, offset])  # x inner
    np.testing.assert_allclose(g.centers[12], [offset, offset + 8])  # then y
    np.testing.assert_allclose(g.boxes[0, 2] - g.boxes[0, 0], 64.0)  # 8 * stride
    p4 = g.level_starts[1]
    np.testing.assert_allclose(g.boxes[p4, 2] - g.boxes[p4, 0], 128.0)


def test_nine_anchors_per_location_order_ratio_major_then_scale():
    cfg = AnchorConfig(
        alignment="center",
        official_shapes=False,
        octave_base_scale=4.0,
        scales_per_octave=3,
        aspect_ratios=(0.5, 1.0, 2.0),
    )
    g = generate_anchors((64, 64), cfg)
    wh = g.boxes[:9, 2:] - g.boxes[:9, :2]
    ratios = wh[:, 1] / wh[:, 0]
    np.testing.assert_allclose(ratios, np.repeat([0.5, 1.0, 2.0], 3), rtol=1e-5)
    np.testing.assert_allclose(np.sqrt(wh[:3].prod(1)), 32 * 2 ** (np.arange(3) / 3), rtol=1e-5)
    np.testing.assert_allclose(g.centers[:9], np.full((9, 2), 4.0))


def test_reproduces_official_anchors(official_assignments, official_outputs):
    for case, extra in [
        ("atss_k9", {}),
        (
            "atss_a9",
            dict(octave_base_scale=4.0, scales_per_octave=3, aspect_ratios=(0.5, 1.0, 2.0)),
        ),
    ]:
        cfg = Config(official_compat=True)
        for k, v in extra.items():
            setattr(cfg.model.anchors, k, v)
        g = generate_anchors(tuple(official_assignments["image_hw"]), cfg.model.anchors)
        ref = inclusive_to_continuous(official_assignments[f"{case}/anchors_xyxy_inclusive"])
        np.testing.assert_array_equal(g.boxes, ref)  # bit-exact, float32 rounding included
        assert list(g.num_per_level) == list(official_assignments[f"{case}/anchors_per_level"])
    g = generate_anchors((512, 512), Config(official_compat=True).model.anchors)
    np.testing.assert_array_equal(
        g.boxes, inclusive_to_continuous(official_outputs["anchors_xyxy_inclusive"])
    )


def test_unresolved_alignment_is_an_error():
    with pytest.raises(ValueError, match="unset"):
        generate_anchors((64, 64), AnchorConfig())

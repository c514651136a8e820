"""Anchor grids for a static canvas (ATSS_SPEC §1), computed once in NumPy.

Anchors depend only on the padded canvas size and the config, so they are
built as NumPy constants and embedded in traced graphs (static shapes, XLA).

Order: level-major (P3..P7); within a level row-major (y outer, x inner);
within a location ratio-major then scale - the order the head flattens its
outputs in. Boxes are continuous ``[x1, y1, x2, y2]`` float32.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from atss_tf.config import AnchorConfig


def level_shape(size: int, stride: int) -> int:
    """Feature-map extent of a level for an input extent ``size``.

    The ResNet stem, max-pool and stride-2 convs (PyTorch padding) each give
    ``ceil(n / 2)``; P6/P7 halve P5 the same way. ``stride`` is a power of 2.
    """
    n = int(size)
    for _ in range(int(round(math.log2(stride)))):
        n = -(-n // 2)
    return n


def anchor_shapes(stride: int, cfg: AnchorConfig, official_shapes: bool = False) -> np.ndarray:
    """Widths and heights ``[A, 2]`` of the anchors at one location of a level.

    Clean geometry: side ``s = octave_base_scale * stride * 2**(i / n)``, for
    ratio ``r = h / w``: ``w = s / sqrt(r)``, ``h = s * sqrt(r)``.
    ``official_shapes`` reproduces maskrcnn-benchmark's generator used by the
    authors: the ratio shape is rounded (half to even, like ``np.round``) on a
    base of side ``stride`` before being scaled, so e.g. a 0.5-ratio P3 anchor
    is 44 x 24 instead of 45.25 x 22.63. With ratio 1 both agree.
    """
    shapes = []
    for r in cfg.aspect_ratios:
        for i in range(cfg.scales_per_octave):
            octave = 2.0 ** (i / cfg.scales_per_octave)
            if official_shapes:
                ws = np.round(math.sqrt(stride * stride / r))
                hs = np.round(ws * r)
                scale = cfg.octave_base_scale * octave
                shapes.append((ws * scale, hs * scale))
            else:
                side = cfg.octave_base_scale * stride * octave
                shapes.append((side / math.sqrt(r), side * math.sqrt(r)))
    return np.asarray(shapes, dtype=np.float64)


def center_offset(stride: int, alignment: str) -> float:
    """Center of cell 0 on a level: ``s/2`` (center), ``s/2 + 0.5`` (official), 0 (mmdet)."""
    if alignment == "center":
        return stride / 2.0
    if alignment == "official":
        return stride / 2.0 + 0.5
    if alignment == "mmdet":
        return 0.0
    raise ValueError(f"unknown anchor alignment {alignment!r}: expected center, official or mmdet")


def _official_level_anchors(
    h: int, w: int, stride: int, offset: float, wh: np.ndarray
) -> np.ndarray:
    """One level's anchors computed with the authors' float32 arithmetic.

    Their generator builds inclusive cell anchors in float64, stores them as
    float32, adds float32 shifts ``j * stride`` and measures inclusive boxes.
    Rounding in that order matters: exact IoU ties decide RetinaNet's
    low-quality matches, and 1e-4 px of float64 rounding breaks ~2% of them
    for #A = 9. Returns float32 continuous boxes (``+1`` on x2, y2).
    """
    ctr = offset - 0.5  # inclusive-pixel center of cell 0
    half = (wh - 1.0) / 2.0  # inclusive half extents
    cell = np.concatenate([ctr - half, ctr + half], axis=-1).astype(np.float32)  # [a, 4]
    sx = (np.arange(w) * stride).astype(np.float32)
    sy = (np.arange(h) * stride).astype(np.float32)
    sy, sx = np.meshgrid(sy, sx, indexing="ij")
    shifts = np.stack([sx, sy, sx, sy], axis=-1).reshape(-1, 1, 4)
    inclusive = (shifts + cell[None]).reshape(-1, 4)
    return inclusive + np.array([0, 0, 1, 1], np.float32)


@dataclasses.dataclass(frozen=True)
class AnchorGrid:
    """All anchors of a canvas.

    Attributes:
        boxes: ``[A, 4]`` float32 anchors, continuous xyxy.
        centers: ``[A, 2]`` float32 anchor centers (cx, cy).
        level_shapes: per level ``(height, width)`` of the feature map.
        num_per_level: per level number of anchors (``h * w * anchors_per_location``).
        strides: per level stride.
        anchors_per_location: anchors at one location (#A).
        offsets: per level center of cell 0 (see :func:`center_offset`).
        image_size: the canvas ``(height, width)``.
    """

    boxes: np.ndarray
    centers: np.ndarray
    level_shapes: tuple[tuple[int, int], ...]
    num_per_level: tuple[int, ...]
    strides: tuple[int, ...]
    anchors_per_location: int
    offsets: tuple[float, ...]
    image_size: tuple[int, int]

    @property
    def num_anchors(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def level_starts(self) -> tuple[int, ...]:
        return tuple(int(x) for x in np.concatenate([[0], np.cumsum(self.num_per_level)[:-1]]))

    def level_ids(self) -> np.ndarray:
        """``[A]`` int32 level index (0 for P3) of every anchor."""
        return np.repeat(np.arange(len(self.strides), dtype=np.int32), self.num_per_level)

    def anchor_strides(self) -> np.ndarray:
        """``[A]`` float32 stride of every anchor's level."""
        return np.repeat(np.asarray(self.strides, np.float32), self.num_per_level)


def generate_anchors(image_size: tuple[int, int], cfg: AnchorConfig) -> AnchorGrid:
    """Anchors for a padded canvas ``image_size = (height, width)``.

    ``cfg.alignment`` and ``cfg.official_shapes`` (see :func:`anchor_shapes`)
    must be concrete, as in every :class:`~atss_tf.config.Config` (which
    fills them from ``official_compat``).
    """
    if cfg.alignment is None or cfg.official_shapes is None:
        raise ValueError(
            "AnchorConfig.alignment / official_shapes unset: take model.anchors of a "
            "Config, which resolves them from official_compat"
        )
    official_shapes = bool(cfg.official_shapes)
    height, width = int(image_size[0]), int(image_size[1])
    all_boxes, shapes, counts, offsets = [], [], [], []
    for stride in cfg.strides:
        h, w = level_shape(height, stride), level_shape(width, stride)
        off = center_offset(stride, cfg.alignment)
        wh = anchor_shapes(stride, cfg, official_shapes)  # [a, 2]
        if official_shapes:
            boxes = _official_level_anchors(h, w, stride, off, wh)
        else:
            cx = np.arange(w, dtype=np.float64) * stride + off
            cy = np.arange(h, dtype=np.float64) * stride + off
            cy, cx = np.meshgrid(cy, cx, indexing="ij")  # row-major: y outer
            ctr = np.stack([cx, cy], axis=-1).reshape(-1, 1, 2)  # [hw, 1, 2]
            half = wh[None] / 2.0
            boxes = np.concatenate([ctr - half, ctr + half], axis=-1).reshape(-1, 4)
        all_boxes.append(boxes)
        shapes.append((h, w))
        counts.append(boxes.shape[0])
        offsets.append(off)
    boxes = np.concatenate(all_boxes, axis=0).astype(np.float32)
    centers = np.stack(
        [(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=-1
    ).astype(np.float32)
    return AnchorGrid(
        boxes=boxes,
        centers=centers,
        level_shapes=tuple(shapes),
        num_per_level=tuple(counts),
        strides=tuple(int(s) for s in cfg.strides),
        anchors_per_location=cfg.anchors_per_location,
        offsets=tuple(offsets),
        image_size=(height, width),
    )

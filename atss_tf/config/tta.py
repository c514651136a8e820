"""The ``tta`` section: the authors' multi-scale test-time augmentation with box voting.

Defaults are the settings of the authors' 50.7 AP result
(``atss_dcnv2_X_101_64x4d_FPN_2x``, ``TEST.BBOX_AUG``, ATSS_SPEC §12): the test
size and its flip, then 12 scales each with its flip (26 passes), soft box
voting at IoU 0.66, the best 1000 detections kept. :mod:`atss_tf.tta` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atss_tf.config.checks import SWITCH, Check, Items, OneOf, OrValue, Range, setting

MERGE_TYPES = ("soft-vote", "vote", "nms")  # official TEST.BBOX_AUG.MERGE_TYPE

OFFICIAL_SCALES = (400, 500, 600, 640, 700, 900, 1000, 1100, 1200, 1300, 1400, 1800)
# (min, max) side of the boxes each scale keeps: area strictly between min^2 and max^2.
OFFICIAL_SCALE_RANGES = (
    (96.0, 10000.0), (96.0, 10000.0), (64.0, 10000.0), (64.0, 10000.0), (64.0, 10000.0),
    (0.0, 10000.0), (0.0, 10000.0), (0.0, 256.0), (0.0, 256.0), (0.0, 192.0),
    (0.0, 192.0), (0.0, 96.0),
)  # fmt: skip


@dataclass(frozen=True)
class SideRanges(Check):
    """``(min, max)`` pairs with ``0 <= min < max`` (``max`` may be ``inf``)."""

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, (tuple, list)):
            return False
        for pair in value:
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                return False
            low, high = pair
            if not (isinstance(low, (int, float)) and isinstance(high, (int, float))):
                return False
            if not 0 <= low < high:  # also refuses nan
                return False
        return True

    @property
    def expected(self) -> str:
        return "(min, max) box sides with 0 <= min < max, one pair per tta.scales entry"


@dataclass
class TTAConfig:
    """Multi-scale, flipped test passes merged by (soft) box voting.

    Pass 0 is the test size (``data.min_size``'s largest / the model's
    ``test_size``, longer side ``data.max_size``), pass 1 its flip
    (``test_flip``), then for each of ``scales`` a pass and its flip
    (``scale_flip``). A scale below ``large_scale`` keeps the test max size
    (or ``small_max_size``); from ``large_scale`` up the longer side is capped
    at ``max_size``. A scale pass keeps the boxes whose area lies strictly
    between ``min^2`` and ``max^2`` of its ``scale_ranges`` entry, in its own
    pixels. All boxes are scaled to pass 0's image and merged per class.
    """

    scales: tuple[int, ...] = setting(OFFICIAL_SCALES, Items(Range(ge=1), "sizes"))
    # One per scale (a rule of atss_tf.config.validation checks the count).
    scale_ranges: tuple[tuple[float, float], ...] = setting(OFFICIAL_SCALE_RANGES, SideRanges())
    # Longer-side cap of the scales from large_scale up (official TEST.BBOX_AUG.MAX_SIZE).
    max_size: int = setting(3000, Range(ge=1))
    # Cap of the scales below large_scale; null: the test max size (1333).
    small_max_size: int | None = setting(None, OrValue(Range(ge=1), None, "the test max size"))
    # The official code switches caps at 800, its test size.
    large_scale: int = setting(800, Range(ge=1))
    test_flip: bool = setting(True, SWITCH)  # TEST.BBOX_AUG.H_FLIP
    scale_flip: bool = setting(True, SWITCH)  # TEST.BBOX_AUG.SCALE_H_FLIP
    # soft-vote: voted boxes plus score-decayed members; vote: voted boxes only;
    # nms: class-aware NMS at postprocess.nms_iou.
    merge: str = setting("soft-vote", OneOf(MERGE_TYPES, form="bar"))
    vote_iou: float = setting(0.66, Range(gt=0, le=1))  # TEST.BBOX_AUG.VOTE_TH
    # A member's copy s * (1 - IoU) is kept from this score up (RETINANET.INFERENCE_TH).
    decayed_score_threshold: float = setting(0.05, Range(ge=0, le=1))
    # The best this many over all classes (ties at the cut kept); ATSS.PRE_NMS_TOP_N.
    max_detections: int = setting(1000, Range(ge=1))
    # Each pass's canvas: its resized image padded to a multiple of this
    # (official SIZE_DIVISIBILITY 32); a larger one compiles fewer canvases.
    canvas_multiple: int = setting(32, OneOf((32, 64, 128, 256), form="or"))

    def cap(self, scale: int, test_max_size: int) -> int:
        """The longer-side cap of a pass at ``scale``."""
        if scale >= self.large_scale:
            return self.max_size
        return self.small_max_size if self.small_max_size is not None else test_max_size

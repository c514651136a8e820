"""Sample selection against the authors' code (``official_assignments.npz`` and
``official_outputs.npz``, see ``shared/fixtures/official_atss_r50/README.md``).

Every case runs with ``Config(official_compat=True)`` plus the case's official
config overrides. GT boxes are inclusive pixels there: +1 on x2, y2.
"""

from __future__ import annotations

import ast

import numpy as np
import pytest

from atss_tf.config import Config
from atss_tf.targets import SELECTORS, TargetEncoder
from tests.helpers.fixtures import inclusive_to_continuous

SINGLE_ANCHOR_CASES = [
    "atss_k9",
    "atss_k3",
    "atss_k15",
    "atss_point",
    "iou_retinanet",
    "ssc_fcos",
    "topk",
]
POSITIVE_TYPES = {"ATSS": "atss", "IoU": "iou", "SSC": "fcos", "TOPK": "topk"}
NUM_GT_SETS = 5


def case_config(assignments, case: str) -> Config:
    """``Config(official_compat=True)`` with the case's official overrides applied."""
    raw = str(assignments[f"{case}/options"])
    options = ast.literal_eval(raw) if raw else []
    cfg = Config(official_compat=True)
    for key, value in zip(options[::2], options[1::2]):
        if key == "MODEL.ATSS.TOPK":
            cfg.assigner.topk = int(value)
        elif key == "MODEL.ATSS.POSITIVE_TYPE":
            cfg.assigner.type = POSITIVE_TYPES[value]
        elif key == "MODEL.ATSS.REGRESSION_TYPE":
            cfg.model.head.regression = value.lower()
        elif key == "MODEL.ATSS.ASPECT_RATIOS":
            cfg.model.anchors.aspect_ratios = tuple(float(r) for r in value)
        elif key == "MODEL.ATSS.SCALES_PER_OCTAVE":
            cfg.model.anchors.scales_per_octave = int(value)
        elif key == "MODEL.ATSS.ANCHOR_SIZES":  # sizes (32, ..., 512) on strides (8, ..., 128)
            cfg.model.anchors.octave_base_scale = value[0] / cfg.model.anchors.strides[0]
        else:
            raise KeyError(f"fixture option {key} not mapped")
    return cfg


def gt_sets(assignments, case: str):
    """Padded ``boxes [5, M, 4]``, ``labels [5, M]``, ``mask [5, M]`` of the case's GT sets."""
    sets = [
        (
            inclusive_to_continuous(assignments[f"{case}/gt{i}/gt_xyxy_inclusive"]),
            assignments[f"{case}/gt{i}/gt_labels_1based"],
        )
        for i in range(NUM_GT_SETS)
    ]
    m = max(len(b) for b, _ in sets)
    boxes = np.zeros((NUM_GT_SETS, m, 4), np.float32)
    labels = np.zeros((NUM_GT_SETS, m), np.int32)
    mask = np.zeros((NUM_GT_SETS, m), bool)
    for i, (b, lab) in enumerate(sets):
        boxes[i, : len(b)], labels[i, : len(b)], mask[i, : len(b)] = b, lab, True
    return boxes, labels, mask


def official(assignments, case: str, i: int):
    return (
        assignments[f"{case}/gt{i}/cls_targets"].astype(np.int64),
        assignments[f"{case}/gt{i}/reg_targets"],
    )


def positive_agreement(ours: np.ndarray, theirs: np.ndarray) -> tuple[int, int]:
    """(anchors positive in both with the same class, anchors positive in either)."""
    return int(((ours == theirs) & (theirs > 0)).sum()), int(((ours > 0) | (theirs > 0)).sum())


@pytest.mark.parametrize("case", SINGLE_ANCHOR_CASES)
def test_single_anchor_cases_match_official_exactly(official_assignments, case):
    d = official_assignments
    enc = TargetEncoder.from_config(case_config(d, case), tuple(int(v) for v in d["image_hw"]))
    official_anchors = inclusive_to_continuous(d[f"{case}/anchors_xyxy_inclusive"])
    np.testing.assert_array_equal(enc.anchor_grid.boxes, official_anchors)
    out = enc.encode_batch(*gt_sets(d, case))
    cls = out["cls_targets"].numpy()
    box = out["box_targets"].numpy()
    for i in range(NUM_GT_SETS):
        cls_ref, reg_ref = official(d, case, i)
        differ = np.nonzero(cls[i] != cls_ref)[0]
        assert len(differ) == 0, f"{case}/gt{i}: anchors {differ[:10]} differ"
        positive = cls_ref > 0
        assert positive.sum() > 0
        # The official code fills non-positive anchors with the first GT's encoding.
        np.testing.assert_allclose(box[i][positive], reg_ref[positive], atol=1e-4, rtol=0)
        assert np.all(box[i][~positive] == 0)


@pytest.mark.parametrize("case,eager_agreement", [("atss_a9", 0.995), ("iou_a9", 1.0)])
def test_nine_anchor_cases_agree_with_official(official_assignments, case, eager_agreement):
    """With official_compat the #A = 9 anchors equal the official ones bit for bit
    (float32 rounding included). The IoU matcher's low-quality matches hang on
    exact IoU ties between equally shaped anchors: run eagerly the selector
    reproduces them all; under XLA, fused float arithmetic splits ~1% of those
    ties (12 of 1309 positives when written). ATSS measures distances from the
    location center while the official code takes each box's own rounded
    center, so locations tied at the k-th place can be split anchor by anchor.
    The issue's bar for #A = 9 is > 99% of positives."""
    d = official_assignments
    cfg = case_config(d, case)
    enc = TargetEncoder.from_config(cfg, tuple(int(v) for v in d["image_hw"]))
    official_anchors = inclusive_to_continuous(d[f"{case}/anchors_xyxy_inclusive"])
    np.testing.assert_array_equal(enc.anchor_grid.boxes, official_anchors)
    boxes, labels, mask = gt_sets(d, case)
    xla = enc.encode_batch(boxes, labels, mask)["cls_targets"].numpy()
    matched, ignore = SELECTORS[enc.assigner.type](
        enc.anchor_grid, boxes, mask, enc.assigner, enc.coder.inclusive
    )
    matched, ignore = matched.numpy(), ignore.numpy()
    eager = np.where(
        matched >= 0, np.take_along_axis(labels, np.maximum(matched, 0), 1), np.where(ignore, -1, 0)
    )
    for name, cls, bar in (("xla", xla, 0.99), ("eager", eager, eager_agreement)):
        same = either = 0
        for i in range(NUM_GT_SETS):
            s, e = positive_agreement(cls[i], official(d, case, i)[0])
            same, either = same + s, either + e
        assert same / either >= bar, f"{case} ({name}): {same}/{either} positives agree"


def test_five_gt_assignment_of_official_outputs(official_outputs):
    d = official_outputs
    enc = TargetEncoder.from_config(Config(official_compat=True), (512, 512))
    np.testing.assert_array_equal(
        enc.anchor_grid.boxes, inclusive_to_continuous(d["anchors_xyxy_inclusive"])
    )
    boxes = inclusive_to_continuous(d["train_gt_xyxy_inclusive"])
    labels = d["train_gt_labels_1based"]
    out = enc(boxes, labels, np.ones(len(boxes), bool))
    cls_ref = d["train_cls_targets"].astype(np.int64)
    np.testing.assert_array_equal(out["cls_targets"].numpy(), cls_ref)
    positive = cls_ref > 0
    assert positive.sum() == 45
    np.testing.assert_allclose(
        out["box_targets"].numpy()[positive], d["train_reg_targets"][positive], atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(
        out["matched_boxes"].numpy()[positive],
        boxes[out["matched_gt"].numpy()[positive]],
        atol=0,
        rtol=0,
    )

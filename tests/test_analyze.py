"""``atss-tf analyze``: counts checked against an independent NumPy computation,
on a hand-made dataset (one box per image at several sizes, positions and image
scales) and through the CLI on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atss_tf import cli
from atss_tf.analysis import analyze_selection, summarize
from atss_tf.anchors import generate_anchors
from atss_tf.config import load_config
from atss_tf.data.coco import load_coco
from atss_tf.data.synthetic import generate_synthetic_coco
from tests.helpers.reference_atss import pairwise_iou, reference_atss

CANVAS = 256
# Image side, box in image pixels. Images of 512 are resized by 1/2 for training.
HAND_MADE = [
    (256, (100.0, 100.0, 116.0, 116.0)),  # 16 px
    (256, (40.0, 60.0, 72.0, 92.0)),  # 32 px
    (256, (120.0, 30.0, 184.0, 94.0)),  # 64 px
    (256, (64.0, 64.0, 192.0, 192.0)),  # 128 px
    (512, (100.0, 300.0, 356.0, 428.0)),  # 256 x 128 -> 128 x 64 on the canvas
    (512, (2.0, 2.0, 6.0, 6.0)),  # -> (1, 1, 3, 3): no anchor centre inside, no ATSS positive
    (512, (40.0, 40.0, 440.0, 100.0)),  # flat: 200 x 30 on the canvas
    (256, (10.0, 150.0, 30.0, 250.0)),  # tall, near the border
]
OVERRIDES = [
    f"data.min_size=[{CANVAS}]",
    f"data.max_size={CANVAS}",
    f"data.canvases=[[{CANVAS}, {CANVAS}]]",
    "model.num_classes=1",
]


def _hand_made(root: Path) -> Path:
    (root / "img").mkdir(parents=True)
    images, annotations = [], []
    for i, (side, box) in enumerate(HAND_MADE, start=1):
        name = f"{i:03d}.png"
        Image.new("RGB", (side, side), (90, 120, 150)).save(root / "img" / name)
        images.append({"id": i, "file_name": name, "height": side, "width": side})
        x1, y1, x2, y2 = box
        annotations.append(
            {
                "id": i,
                "image_id": i,
                "category_id": 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "iscrowd": 0,
            }
        )
    path = root / "hand.json"
    path.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": annotations,
                "categories": [{"id": 1, "name": "thing"}],
            }
        )
    )
    return path


def _independent(config, boxes_on_canvas: np.ndarray):
    """Positives, levels, threshold terms and ignored anchors from NumPy alone."""
    grid = generate_anchors((CANVAS, CANVAS), config.model.anchors)
    level_of = np.repeat(np.arange(5), grid.num_per_level)
    out = {"atss": [], "atss_levels": [], "iou": [], "ignored": [], "stats": []}
    for box in boxes_on_canvas:
        gt = box[None].astype(np.float64)
        matched = reference_atss(grid.boxes, grid.centers, grid.num_per_level, 1, gt, k=9)
        out["atss"].append(int((matched >= 0).sum()))
        out["atss_levels"].append(np.bincount(level_of[matched >= 0], minlength=5))
        iou = pairwise_iou(grid.boxes.astype(np.float64), gt)[:, 0]
        centre = (gt[0, :2] + gt[0, 2:]) / 2
        dist = np.linalg.norm(grid.centers - centre, axis=1)
        cand, start = [], 0
        for n in grid.num_per_level:
            cand.append(start + np.argsort(dist[start : start + n], kind="stable")[: min(9, n)])
            start += n
        c = iou[np.concatenate(cand)]
        out["stats"].append((c.mean(), c.std(ddof=1), c.mean() + c.std(ddof=1)))
        c_xy = grid.centers
        inside = (
            np.minimum.reduce(
                [
                    c_xy[:, 0] - gt[0, 0],
                    c_xy[:, 1] - gt[0, 1],
                    gt[0, 2] - c_xy[:, 0],
                    gt[0, 3] - c_xy[:, 1],
                ]
            )
            > config.assigner.center_margin
        )
        matched_iou = (iou >= 0.5) | (iou == iou.max())
        out["iou"].append(int((matched_iou & inside).sum()))
        out["ignored"].append(
            int((matched_iou & ~inside).sum() + ((iou >= 0.4) & ~matched_iou).sum())
        )
    return out


def test_analysis_counts_match_an_independent_computation(tmp_path):
    config = load_config(None, OVERRIDES)
    dataset = load_coco(_hand_made(tmp_path), tmp_path / "img", training=False, image_check="none")
    result = analyze_selection(dataset, config, compare=["iou"])
    expected_boxes = np.array(
        [np.array(box) * (CANVAS / side) for side, box in HAND_MADE], np.float32
    )
    np.testing.assert_allclose(result.box, expected_boxes)
    ref = _independent(config, expected_boxes)
    np.testing.assert_array_equal(result.positives["atss"], ref["atss"])
    np.testing.assert_array_equal(result.levels["atss"], np.array(ref["atss_levels"]))
    np.testing.assert_array_equal(result.positives["iou"], ref["iou"])
    np.testing.assert_array_equal(result.ignored["iou"], ref["ignored"])
    stats = np.array(ref["stats"])
    for j, key in enumerate(("mean", "std", "threshold")):
        np.testing.assert_allclose(result.threshold[key], stats[:, j], atol=2e-6)
    assert result.positives["atss"][5] == 0  # the 2-px box between anchor centres
    np.testing.assert_allclose(
        result.size, np.sqrt(np.prod(expected_boxes[:, 2:] - expected_boxes[:, :2], axis=1))
    )

    summary = summarize(result)
    atss = summary["selectors"]["atss"]
    assert atss["objects_without_positive"]["count"] == int((np.array(ref["atss"]) == 0).sum())
    assert atss["objects_without_positive"]["examples"][0]["file_name"] == "006.png"
    assert sum(atss["positives_per_object"]["histogram"]["counts"]) == len(HAND_MADE)
    assert sum(b["objects"] for b in atss["by_size"]) == len(HAND_MADE)
    assert atss["positives_per_object"]["mean"] == pytest.approx(np.mean(ref["atss"]))
    assert summary["selectors"]["iou"]["ignored_anchors_per_image"] == pytest.approx(
        np.mean(ref["ignored"])
    )
    check = summary["check"]
    assert summary["candidates_per_object"] == 9 * 4 + 4  # P7 of a 256 canvas: 2 x 2 locations
    assert check["expected"] == pytest.approx(0.2 * 40)
    assert check["selectors"]["atss"]["mean"] == pytest.approx(np.mean(ref["atss"]))


def test_analyze_command_on_synthetic_data(tmp_path, capsys):
    data = generate_synthetic_coco(
        tmp_path / "data", 24, ((60, 200), (60, 200)), seed=3, object_size=(8, 56)
    )
    out = tmp_path / "analysis"
    argv = [
        "analyze",
        "--config",
        "configs/demo_shapes.yaml",
        "--annotations",
        str(data.annotations),
        "--images",
        str(data.images_dir),
        "--compare",
        "iou",
        "fcos",
        "--pictures",
        "2",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "analysis.json").read_text())
    assert set(summary["selectors"]) == {"atss", "iou", "fcos"}
    assert summary["images"] == 24
    coco = json.loads(Path(data.annotations).read_text())
    assert summary["objects"] == len(coco["annotations"])
    mean = summary["check"]["selectors"]["atss"]["mean"]
    assert "0.2 * k * L" in printed and f"{mean:.2f} positives per object" in printed
    pictures = sorted(p.name for p in out.glob("*.png"))
    assert len([p for p in pictures if p.startswith("anchors_image_")]) == 2
    for name in ("positives_per_object", "positives_by_object", "levels_by_size", "iou_threshold"):
        assert f"{name}.png" in pictures
    for p in out.glob("*.png"):
        with Image.open(p) as im:
            assert im.size[0] > 300 and im.size[1] > 200


def test_analyze_refuses_a_selector_the_anchors_cannot_serve(tmp_path, capsys):
    path = _hand_made(tmp_path)
    argv = [
        "analyze",
        "--config",
        "configs/ablations/atss_a9.yaml",
        "--annotations",
        str(path),
        "--compare",
        "fcos",
        "--out",
        str(tmp_path / "o"),
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "selector 'fcos'" in err and "one anchor per location" in err
    assert not (tmp_path / "o").exists()

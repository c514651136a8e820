"""The evaluator reports exactly what pycocotools reports on the same json."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from atss_tf.evaluation import METRIC_NAMES, CocoEvaluator


@pytest.fixture
def gt_json(tmp_path):
    rng = np.random.default_rng(1)
    images, anns = [], []
    for i in range(6):
        images.append({"id": 100 + i, "width": 300, "height": 200, "file_name": f"{i}.jpg"})
        for _ in range(rng.integers(1, 6)):
            x, y = rng.uniform(0, 200), rng.uniform(0, 120)
            w, h = rng.uniform(4, 90), rng.uniform(4, 70)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": 100 + i,
                    "category_id": int(rng.choice([3, 7])),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    path = tmp_path / "gt.json"
    path.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": anns,
                "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}],
            }
        )
    )
    return path, anns


def test_metrics_equal_pycocotools_on_written_json(gt_json, tmp_path):
    path, anns = gt_json
    rng = np.random.default_rng(2)
    ev = CocoEvaluator(path, category_ids=[3, 7])
    image_ids = np.array([100 + i for i in range(6)])
    k = 8
    boxes = np.zeros((6, k, 4), np.float32)
    scores = np.zeros((6, k), np.float32)
    classes = np.zeros((6, k), np.int32)
    num = np.zeros(6, np.int32)
    for b, image_id in enumerate(image_ids):
        mine = [a for a in anns if a["image_id"] == image_id]
        n = min(k, len(mine) + 2)
        num[b] = n
        for j in range(n):
            if j < len(mine):  # jittered true boxes
                x, y, w, h = mine[j]["bbox"]
                boxes[b, j] = [x + rng.normal(0, 2), y + rng.normal(0, 2), x + w, y + h]
                classes[b, j] = 1 if mine[j]["category_id"] == 3 else 2
            else:  # false positives
                boxes[b, j] = [10, 10, 60, 50]
                classes[b, j] = 1
            scores[b, j] = rng.uniform(0.1, 1.0)
    ev.add(image_ids[:3], boxes[:3], scores[:3], classes[:3], num[:3])
    ev.add(image_ids[3:], boxes[3:], scores[3:], classes[3:], num[3:])
    ours = ev.evaluate()
    out = tmp_path / "dets.json"
    ev.write(out)

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
        direct = COCOeval(coco, coco.loadRes(str(out)), "bbox")
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
    assert list(ours) == list(METRIC_NAMES)
    np.testing.assert_allclose([ours[m] for m in METRIC_NAMES], direct.stats, atol=1e-12)
    assert 0.2 < ours["AP50"] <= 1.0  # the jittered boxes are real hits
    dets = json.loads(out.read_text())
    assert {d["category_id"] for d in dets} <= {3, 7}
    assert len(dets) == int(num.sum())


def test_bad_class_ids_and_empty(gt_json):
    path, _ = gt_json
    ev = CocoEvaluator(path, category_ids=[3, 7])
    assert ev.evaluate() == {m: 0.0 for m in METRIC_NAMES}
    with pytest.raises(ValueError, match="class ids must lie in 1..2"):
        ev.add([100], np.zeros((1, 1, 4)), np.ones((1, 1)), np.full((1, 1), 3), [1])

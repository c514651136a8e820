"""Dense scenes: images of 1000 boxes train with data.max_instances: 1000,
none dropped (``benchmarks/dense_scenes.py`` measures the encoder there)."""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

from atss_tf import cli
from atss_tf.config import save_config
from atss_tf.targets import TargetEncoder
from tests.helpers.tiny import tiny_config

BOXES = 1000


def _dense_coco(root, n_images: int = 2, size: int = 256) -> tuple[str, str]:
    """``n_images`` noise images of ``size`` x ``size`` with ``BOXES`` 7.5 px
    boxes each on an 8 px grid (a shelf of small items), 3 classes."""
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per_row = size // 8
    assert per_row * per_row >= BOXES
    entries, annotations = [], []
    for i in range(1, n_images + 1):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        (images / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
        entries.append({"id": i, "file_name": f"{i}.png", "height": size, "width": size})
        for k in range(BOXES):
            x, y = 8 * (k % per_row), 8 * (k // per_row)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": 1 + k % 3,
                    "bbox": [x, y, 7.5, 7.5],
                    "area": 56.25,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c, "name": f"item{c}"} for c in (1, 2, 3)]
    path = root / "train.json"
    path.write_text(
        json.dumps({"images": entries, "annotations": annotations, "categories": categories})
    )
    return str(path), str(images)


def test_an_image_of_1000_boxes_trains_with_max_instances_1000(tmp_path, capsys):
    cfg = tiny_config(
        [
            f"data.max_instances={BOXES}",
            "data.min_size=[256]",
            "data.max_size=256",
            "data.canvases=[[256, 256]]",
            "data.batch_size=2",
            "data.flip_prob=0",
            "train.max_iters=1",
            "train.steps_per_epoch=1",
            "train.warmup_iters=0",
        ]
    )
    cfg.data.train_annotations, cfg.data.train_images = _dense_coco(tmp_path / "data")
    save_config(cfg, tmp_path / "dense.yaml")
    out = tmp_path / "run"
    assert cli.main(["train", "--config", str(tmp_path / "dense.yaml"), "--out", str(out)]) == 0
    log = capsys.readouterr().err
    assert f"{2 * BOXES} boxes kept" in log, log
    assert "beyond max_instances" not in log and (out / "model.keras").exists()  # StopOnNaN: finite

    # Every one of the 1000 rows reaches the targets: each box gets its P3 anchor.
    k = np.arange(BOXES)
    xy = 8.0 * np.stack([k % 32, k // 32], -1)
    boxes = np.concatenate([xy, xy + 7.5], -1).astype(np.float32)
    targets = TargetEncoder.from_config(cfg, (256, 256))(boxes, 1 + k % 3, np.ones(BOXES, bool))
    matched = targets["matched_gt"].numpy()
    assert len(np.unique(matched[matched >= 0])) == BOXES

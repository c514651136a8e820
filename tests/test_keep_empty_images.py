"""``data.keep_empty_images``: training images without a box, kept as negatives.

The authors' training skips them (the default); kept, they reach the model
with only background targets, from COCO json and from TFRecords alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from atss_tf.data.coco import load_coco
from atss_tf.data.pipeline import build_dataset
from atss_tf.data.synthetic import generate_synthetic_coco
from atss_tf.data.tfrecords import scan_report, write_tfrecords
from atss_tf.losses import atss_losses
from atss_tf.targets import TargetEncoder
from tests.helpers.tiny import loss_args, tiny_config

EMPTY = {2, 3}  # image 2: no annotation; image 3: its only boxes are degenerate


@pytest.fixture(scope="module")
def with_empty_images(tmp_path_factory):
    """A 4-image COCO train split where images 2 and 3 have no usable box,
    and the same as TFRecords."""
    root = tmp_path_factory.mktemp("empty")
    paths = generate_synthetic_coco(root, 4, (128, 128), seed=3, object_size=(16, 64))
    annotations = Path(paths.annotations)
    data = json.loads(annotations.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 2]
    for a in data["annotations"]:
        if a["image_id"] == 3:
            a["bbox"][2] = 0.0
    annotations.write_text(json.dumps(data))
    every = load_coco(paths.annotations, paths.images_dir, training=False)
    prefix = str(root / "records" / "train")
    write_tfrecords(every.records, every.category_map, prefix, 1)
    return {"annotations": str(paths.annotations), "images": str(paths.images_dir)}, prefix


def _config(split, keep: bool):
    cfg = tiny_config([f"data.keep_empty_images={str(keep).lower()}", "data.flip_prob=0"])
    cfg.data.train_annotations, cfg.data.train_images = split["annotations"], split["images"]
    return cfg


def test_the_default_skips_them_and_the_switch_keeps_them_counted(with_empty_images):
    split, prefix = with_empty_images
    skipped = load_coco(split["annotations"], split["images"], training=True)
    kept = load_coco(split["annotations"], split["images"], training=True, keep_empty_images=True)
    assert {r["image_id"] for r in skipped.records} == {1, 4}
    assert {r["image_id"] for r in kept.records} == {1, 2, 3, 4}
    assert skipped.report["images_without_annotations_skipped"] == 1
    assert skipped.report["images_without_valid_boxes_skipped"] == 1
    assert kept.report["images_kept_as_negatives"] == 2
    assert "2 images without a box kept as negatives" in kept.report.summary()
    assert [len(r["boxes"]) for r in kept.records if r["image_id"] in EMPTY] == [0, 0]
    cm = kept.category_map
    assert scan_report(prefix + "-*", cm, training=True)["images_kept"] == 2
    counted = scan_report(prefix + "-*", cm, training=True, keep_empty_images=True)
    assert counted["images_kept"] == 4 and counted["images_kept_as_negatives"] == 2


@pytest.mark.parametrize("reader", ["coco", "tfrecords"])
def test_kept_images_contribute_only_negative_targets(with_empty_images, reader):
    split, prefix = with_empty_images
    images = {}
    # The TFRecords' default skipping has its tests (test_tfrecords.py).
    for keep in (False, True) if reader == "coco" else (True,):
        cfg = _config(split, keep)
        ds = build_dataset(
            cfg,
            "train",
            encoder_factory=lambda size, cfg=cfg: TargetEncoder.from_config(cfg, size),
            source=prefix + "-*" if reader == "tfrecords" else None,
            batch_size=1,
            repeat=False,
        )
        images[keep] = {int(x["image_id"][0]): y for x, y in ds}
    if reader == "coco":
        assert set(images[False]) == {1, 4}
    assert set(images[True]) == {1, 2, 3, 4}
    for image_id, y in images[True].items():
        cls = y["cls_targets"].numpy()
        if image_id in EMPTY:  # every anchor a negative: none positive, none ignored
            assert (cls == 0).all(), image_id
        else:
            assert (cls > 0).any(), image_id

    if reader == "tfrecords":
        return
    # An all-negative image: a classification loss only, finite.
    cfg = _config(split, True)
    y = images[True][2]
    anchors = TargetEncoder.from_config(cfg, (128, 128)).anchor_grid.boxes
    n = anchors.shape[0]
    outputs = {
        "cls_logits": tf.fill([1, n, 3], -4.0),
        "box_regression": tf.zeros([1, n, 4]),
        "centerness": tf.zeros([1, n, 1]),
    }
    losses = {k: float(v) for k, v in atss_losses(outputs, y, anchors, *loss_args(cfg)).items()}
    assert np.isfinite(list(losses.values())).all()
    assert losses["cls_loss"] > 0
    assert losses["reg_loss"] == 0 and losses["centerness_loss"] == 0

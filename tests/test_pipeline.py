"""tf.data pipelines: canvas-homogeneous static batches, encoder targets, determinism, sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from atss_tf.config import Config
from atss_tf.data.coco import DataError, load_coco
from atss_tf.data.pipeline import build_dataset, load_split, load_val_annotations
from atss_tf.data.splits import split_source
from atss_tf.data.synthetic import generate_synthetic_coco
from atss_tf.data.tfrecords import write_tfrecords
from atss_tf.data.transforms import boxes_to_original
from tests.helpers.tiny import tiny_config

CANVASES = ((128, 160), (160, 128))
EMPTY_ID = 99


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """10 synthetic images of both orientations plus one image without objects."""
    root = tmp_path_factory.mktemp("pipe")
    paths = generate_synthetic_coco(root, 10, ((72, 120), (72, 120)), seed=2, num_classes=3)
    data = json.loads(Path(paths.annotations).read_text())
    data["images"].append({**data["images"][0], "id": EMPTY_ID})
    Path(paths.annotations).write_text(json.dumps(data))
    return paths


def small_config(paths, canvases=CANVASES) -> Config:
    """The suite's tiny config (tests/helpers/tiny.py) reading ``paths``, multi-scale."""
    cfg = tiny_config(
        [
            "data.min_size=[96, 112, 128]",
            "data.max_size=160",
            f"data.canvases={json.dumps([list(c) for c in canvases])}",
            "data.batch_size=2",
            "data.shuffle_buffer=16",
        ]
    )
    cfg.data.train_annotations = cfg.data.val_annotations = paths.annotations
    cfg.data.train_images = cfg.data.val_images = paths.images_dir
    return cfg


class FakeEncoder:
    """Stand-in for atss_tf.targets.TargetEncoder: per-anchor outputs of a stride-8 grid."""

    calls: list[tuple[int, int]] = []

    def __init__(self, image_size):
        FakeEncoder.calls.append(tuple(image_size))
        self.num_anchors = (image_size[0] // 8) * (image_size[1] // 8)

    def __call__(self, boxes, labels, mask):
        n = tf.reduce_sum(tf.cast(mask, tf.int32))
        return {
            "cls_targets": tf.fill([self.num_anchors], n),
            "box_targets": tf.zeros([self.num_anchors, 4]) + tf.reduce_sum(boxes),
            "label_sum": tf.reduce_sum(tf.where(mask, labels, 0)),
        }


def _batches(ds, n):
    return [tf.nest.map_structure(lambda t: t.numpy(), e) for e in ds.take(n)]


def test_train_batches_are_canvas_homogeneous_with_encoder_targets(synth):
    FakeEncoder.calls = []
    ds = build_dataset(small_config(synth), "train", FakeEncoder, with_gt=True)
    assert sorted(FakeEncoder.calls) == sorted(CANVASES)
    seen = set()
    for x, y in _batches(ds, 12):
        b, h, w, c = x["images"].shape
        assert (b, c) == (2, 3) and (h, w) in CANVASES
        seen.add((h, w))
        assert x["images"].dtype == np.float32 and x["image_info"].shape == (2, 4, 2)
        assert x["image_id"].dtype == np.int64 and EMPTY_ID not in x["image_id"]
        np.testing.assert_array_equal(x["image_info"][:, 3], [[h, w]] * 2)
        orig_h, orig_w = x["image_info"][:, 0, 0], x["image_info"][:, 0, 1]
        assert ((orig_w >= orig_h) == (w >= h)).all()  # orientation picks the canvas
        assert y["cls_targets"].shape == (2, (h // 8) * (w // 8))
        assert y["box_targets"].shape == (2, (h // 8) * (w // 8), 4)
        np.testing.assert_array_equal(y["cls_targets"][:, 0], y["gt_mask"].sum(1))
        np.testing.assert_array_equal(y["label_sum"], (y["gt_labels"] * y["gt_mask"]).sum(1))
        assert y["gt_boxes"].shape == (2, 8, 4) and (y["gt_mask"].sum(1) > 0).all()
        valid = y["gt_boxes"][y["gt_mask"]]
        assert (valid[:, 2] > valid[:, 0]).all() and (valid[:, 2] <= w).all()
    assert seen == set(CANVASES)


def test_train_without_encoder_yields_ground_truth(synth):
    x, y = next(iter(build_dataset(small_config(synth), "train")))
    assert set(y) == {"gt_boxes", "gt_labels", "gt_mask", "gt_is_crowd"}
    assert y["gt_labels"].dtype == tf.int32 and y["gt_mask"].dtype == tf.bool


def test_same_seed_same_stream_other_seed_differs(synth):
    cfg = small_config(synth)
    cfg.data.flip_prob = 0.5
    a = _batches(build_dataset(cfg, "train", FakeEncoder, seed=5), 4)
    b = _batches(build_dataset(cfg, "train", FakeEncoder, seed=5), 4)
    c = _batches(build_dataset(cfg, "train", FakeEncoder, seed=6), 4)
    for ea, eb in zip(a, b):
        tf.nest.map_structure(np.testing.assert_array_equal, ea, eb)
    differs = any(
        ea[0]["images"].shape != ec[0]["images"].shape
        or not np.array_equal(ea[0]["images"], ec[0]["images"])
        for ea, ec in zip(a, c)
    )
    assert differs


def test_val_yields_every_image_once_in_x_only(synth):
    cfg = small_config(synth)
    ids = []
    for x in build_dataset(cfg, "val"):
        assert isinstance(x, dict) and set(x) == {"images", "image_info", "image_id"}
        assert tuple(x["images"].shape[1:3]) in CANVASES
        ids += x["image_id"].numpy().tolist()
    assert sorted(ids) == [*range(1, 11), EMPTY_ID]


def test_val_ground_truth_maps_back_to_the_annotations(synth):
    cfg = small_config(synth)
    records = {r["image_id"]: r for r in load_split(split_source(cfg, "val")).records}
    for x, gt in build_dataset(cfg, "val", with_gt=True):
        # evaluation: one size (the largest min_size), no flip
        assert (x["image_info"][:, 1].numpy().min(axis=1) <= 128).all()
        back = boxes_to_original(gt["gt_boxes"], x["image_info"]).numpy()
        for i, image_id in enumerate(x["image_id"].numpy()):
            rec = records[image_id]
            n = len(rec["labels"])
            np.testing.assert_allclose(back[i, :n], rec["boxes"], atol=1e-3)
            np.testing.assert_array_equal(gt["gt_labels"][i, :n], rec["labels"])
            assert not gt["gt_mask"][i, n:].numpy().any()


def test_single_canvas_gives_a_fully_static_element_spec(synth):
    ds = build_dataset(small_config(synth, canvases=((160, 160),)), "train", FakeEncoder)
    x_spec, y_spec = ds.element_spec
    assert x_spec["images"].shape == (2, 160, 160, 3)
    assert x_spec["image_info"].shape == (2, 4, 2)
    assert y_spec["cls_targets"].shape == (2, 400)


def test_tfrecord_source_matches_the_json_source(synth, tmp_path):
    cfg = small_config(synth)
    full = load_coco(
        synth.annotations, synth.images_dir, training=False, crowd="ignore", max_instances=None
    )
    prefix = str(tmp_path / "val")
    write_tfrecords(full.records, full.category_map, prefix, 1)
    from_json = list(build_dataset(cfg, "val", with_gt=True))
    from_tfr = list(build_dataset(cfg, "val", with_gt=True, source=prefix + "-*"))
    assert len(from_json) == len(from_tfr)
    for (xa, ga), (xb, gb) in zip(from_json, from_tfr):
        np.testing.assert_array_equal(xa["image_id"], xb["image_id"])
        np.testing.assert_array_equal(xa["images"], xb["images"])
        np.testing.assert_array_equal(xa["image_info"], xb["image_info"])
        np.testing.assert_allclose(ga["gt_boxes"], gb["gt_boxes"], atol=1e-3)
        np.testing.assert_array_equal(ga["gt_labels"], gb["gt_labels"])
    # training from TFRecords: categories from PREFIX.categories.json, empty image skipped
    cfg.data.train_tfrecords = prefix + "-*.tfrecord"
    cfg.data.train_annotations = None
    x, y = next(iter(build_dataset(cfg, "train", FakeEncoder, scan_tfrecords=True)))
    assert tuple(x["images"].shape[1:3]) in CANVASES and "cls_targets" in y


def test_corrupt_image_is_named_when_iterating(synth, tmp_path):
    data = json.loads(Path(synth.annotations).read_text())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\x00\x01 definitely not an image")
    data["images"] = [{**data["images"][0], "file_name": str(broken)}]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == 1]
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps(data))
    cfg = small_config(synth)
    cfg.data.val_annotations = str(ann)
    cfg.data.bad_images = "error"
    with pytest.raises(DataError, match=r"broken\.jpg is not a JPEG/PNG/GIF/BMP file"):
        build_dataset(cfg, "val")
    cfg.data.bad_images = "skip"
    assert list(build_dataset(cfg, "val")) == []
    cfg.data.image_check = "none"  # unchecked: the decoder's error still names the file
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"broken\.jpg"):
        list(build_dataset(cfg, "val"))


def test_image_size_differing_from_the_json_is_named(synth, tmp_path):
    data = json.loads(Path(synth.annotations).read_text())
    data["images"] = [{**data["images"][0], "height": data["images"][0]["height"] + 1}]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == 1]
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps(data))
    cfg = small_config(synth)
    cfg.data.val_annotations = str(ann)
    cfg.data.bad_images = "error"
    with pytest.raises(DataError, match=r"000001\.jpg is \d+x\d+ .* annotations say"):
        build_dataset(cfg, "val")
    cfg.data.image_check = "none"
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)000001\.jpg.*annotations say"):
        list(build_dataset(cfg, "val"))


def test_category_count_must_match_the_model(synth):
    cfg = small_config(synth)
    cfg.model.num_classes = 80
    with pytest.raises(DataError, match="3 categories but model.num_classes is 80"):
        build_dataset(cfg, "val")


def test_missing_data_settings_are_named():
    with pytest.raises(DataError, match="data.val_annotations and data.val_images"):
        build_dataset(Config(), "val")


def test_val_annotations_from_json_or_tfrecords_agree(synth, tmp_path):
    cfg = small_config(synth)
    coco_json, ids_json = load_val_annotations(split_source(cfg, "val"), 3)
    assert ids_json == (1, 2, 3)
    full = load_coco(
        synth.annotations, synth.images_dir, training=False, crowd="ignore", max_instances=None
    )
    write_tfrecords(full.records, full.category_map, str(tmp_path / "v"), 2)
    cfg.data.val_annotations = None
    cfg.data.val_tfrecords = str(tmp_path / "v-*")
    coco_tfr, ids_tfr = load_val_annotations(split_source(cfg, "val"), 3)
    assert ids_tfr == ids_json
    assert sorted(coco_tfr.getImgIds()) == sorted(coco_json.getImgIds())
    for image_id in coco_json.getImgIds():
        a = coco_json.loadAnns(coco_json.getAnnIds(imgIds=image_id))
        b = coco_tfr.loadAnns(coco_tfr.getAnnIds(imgIds=image_id))
        np.testing.assert_allclose([x["bbox"] for x in a], [x["bbox"] for x in b], atol=1e-3)
        assert [x["category_id"] for x in a] == [x["category_id"] for x in b]
        assert [x["area"] for x in a] == [x["area"] for x in b]

"""TFRecords: exact round trip through ``atss-tf make-tfrecords``, foreign records, counts."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from atss_tf.cli import main as cli_main
from atss_tf.data.coco import CategoryMap, load_coco
from atss_tf.data.synthetic import generate_synthetic_coco
from atss_tf.data.tfrecords import (
    filter_annotations,
    find_category_map,
    parse_example,
    read_tfrecords,
    scan_report,
    shard_paths,
)


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    """Synthetic COCO split with extra cases: a crowd box, a PNG image, an empty image,
    a zero-size box and non-contiguous category ids."""
    root = tmp_path_factory.mktemp("tfr")
    paths = generate_synthetic_coco(root, 6, (64, 80), seed=5, num_classes=3)
    data = json.loads(Path(paths.annotations).read_text())
    for c in data["categories"]:
        c["id"] *= 10
    for a in data["annotations"]:
        a["category_id"] *= 10
    first = data["annotations"][0]
    data["annotations"].append({**first, "id": 1000, "iscrowd": 1, "bbox": [3.5, 4.25, 10, 7]})
    data["annotations"].append({**first, "id": 1001, "bbox": [3, 4, 0, 7]})
    Image.new("RGB", (50, 30), (9, 99, 199)).save(Path(paths.images_dir) / "extra.png")
    data["images"].append({"id": 77, "file_name": "extra.png", "height": 30, "width": 50})
    Path(paths.annotations).write_text(json.dumps(data))
    return paths


def test_make_tfrecords_round_trip_is_exact(coco_dir, tmp_path, capsys):
    prefix = str(tmp_path / "out" / "train")
    rc = cli_main(
        [
            "make-tfrecords",
            "--annotations",
            coco_dir.annotations,
            "--images",
            coco_dir.images_dir,
            "--out",
            prefix,
            "--shards",
            "3",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "wrote 7 images" in printed and "(1 crowd)" in printed
    assert "1 boxes with width or height <= 0 dropped" in printed
    for p in shard_paths(prefix, 3):
        assert Path(p).exists() and p.endswith("-of-00003.tfrecord")
    assert Path(shard_paths(prefix, 3)[0]).name == "train-00000-of-00003.tfrecord"

    source = load_coco(
        coco_dir.annotations,
        coco_dir.images_dir,
        training=False,
        crowd="ignore",
        max_instances=None,
    )
    back = {r["image_id"]: r for r in read_tfrecords(prefix + "-*")}
    assert sorted(back) == sorted(r["image_id"] for r in source.records)
    cm = source.category_map
    assert cm.category_ids == (10, 20, 30)
    for rec in source.records:
        got = back[rec["image_id"]]
        assert got["encoded"] == Path(rec["path"]).read_bytes()
        assert got["file_name"] == rec["file_name"] and got["source_id"] == str(rec["image_id"])
        assert (got["height"], got["width"]) == (rec["height"], rec["width"])
        assert got["format"] == ("png" if rec["file_name"].endswith(".png") else "jpeg")
        # float32 normalised coordinates: exact to float32 precision of the pixel value
        tol = 2 * np.finfo(np.float32).eps * max(rec["height"], rec["width"])
        np.testing.assert_allclose(got["boxes"], rec["boxes"], rtol=0, atol=tol)
        np.testing.assert_array_equal(got["category_ids"], cm.to_category_ids(rec["labels"]))
        np.testing.assert_array_equal(got["is_crowd"], rec["is_crowd"])
        np.testing.assert_array_equal(got["areas"], rec["areas"])
        assert got["class_text"] == [cm.names[i - 1] for i in rec["labels"]]
    assert sum(r["is_crowd"].sum() for r in back.values()) == 1
    assert back[77]["boxes"].shape == (0, 4)
    assert find_category_map(prefix + "-*.tfrecord") == cm


def _foreign_example(
    encoded: bytes, source_id: bytes, boxes, labels, h=None, w=None, extra=None
) -> bytes:
    """An example written by 'another tool': only the standard required keys."""

    def floats(v):
        return tf.train.Feature(float_list=tf.train.FloatList(value=v))

    def ints(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=v))

    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        "image/source_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[source_id])),
        "image/object/bbox/xmin": floats(boxes[:, 0]),
        "image/object/bbox/ymin": floats(boxes[:, 1]),
        "image/object/bbox/xmax": floats(boxes[:, 2]),
        "image/object/bbox/ymax": floats(boxes[:, 3]),
        "image/object/class/label": ints(labels),
    }
    if h is not None:
        feature["image/height"] = ints([h])
        feature["image/width"] = ints([w])
    feature.update(extra or {})
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _jpeg(h, w) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


def test_reader_accepts_foreign_records_with_optional_keys_missing(tmp_path):
    path = str(tmp_path / "foreign-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        w.write(_foreign_example(_jpeg(20, 40), b"123", [[0.25, 0.5, 0.5, 1.0]], [3], 20, 40))
        w.write(_foreign_example(_jpeg(10, 10), b"img_a", [], []))
    recs = read_tfrecords(path)
    assert recs[0]["image_id"] == 123 and recs[0]["file_name"] == ""
    np.testing.assert_array_equal(recs[0]["boxes"], [[10, 10, 20, 20]])
    np.testing.assert_array_equal(recs[0]["category_ids"], [3])
    np.testing.assert_array_equal(recs[0]["is_crowd"], [False])
    np.testing.assert_array_equal(recs[0]["areas"], [0.0])
    assert recs[0]["class_text"] == [""]
    # a non-numeric source id becomes a stable negative id; size unknown: -1
    assert recs[1]["image_id"] < 0 and recs[1]["image_id"] == read_tfrecords(path)[1]["image_id"]
    assert (recs[1]["height"], recs[1]["width"]) == (-1, -1)
    assert find_category_map(path) is None


def test_foreign_crowd_flag_and_mismatched_lengths(tmp_path):
    ints = lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=v))  # noqa: E731
    good = _foreign_example(
        _jpeg(8, 8),
        b"1",
        [[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]],
        [1, 1],
        extra={"image/object/is_crowd": ints([0, 1])},
    )
    p = parse_example(tf.constant(good))
    np.testing.assert_array_equal(p["is_crowd"].numpy(), [False, True])
    bad = _foreign_example(
        _jpeg(8, 8),
        b"5",
        [[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]],
        [1, 1],
        extra={"image/object/is_crowd": ints([0])},
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="(?s)lengths differ.*source_id=5"):
        filter_annotations(parse_example(tf.constant(bad)), CategoryMap.identity(1), "drop")


def test_scan_report_counts_what_the_pipeline_drops(tmp_path):
    path = str(tmp_path / "x-00000-of-00001.tfrecord")
    ints = lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=v))  # noqa: E731
    with tf.io.TFRecordWriter(path) as w:
        w.write(
            _foreign_example(
                _jpeg(8, 8),
                b"1",
                [
                    [0, 0, 0.5, 0.5],
                    [0.5, 0.5, 0.5, 1],
                    [-0.5, 0.2, 0.5, 0.6],
                    [1.2, 0, 1.5, 1],
                    [0, 0, 1, 1],
                ],
                [1, 1, 2, 2, 1],
                extra={"image/object/is_crowd": ints([0, 0, 0, 0, 1])},
            )
        )
        w.write(_foreign_example(_jpeg(8, 8), b"2", [], []))
    cm = CategoryMap.identity(2)
    rep = scan_report(path, cm, training=True, crowd="drop", max_instances=1)
    assert rep["images"] == 2 and rep["images_kept"] == 1
    assert rep["crowd_dropped"] == 1 and rep["degenerate_dropped"] == 1
    assert rep["boxes_clipped"] == 1 and rep["outside_dropped"] == 1
    assert rep["images_without_annotations_skipped"] == 1
    assert rep["boxes_truncated"] == 1 and rep["images_truncated"] == 1
    rep = scan_report(path, cm, training=False, crowd="ignore", max_instances=None)
    assert rep["crowd_kept"] == 1 and rep["images_without_annotations_kept"] == 1
    assert rep["boxes_kept"] == 3


def test_unknown_category_id_in_a_record_is_named(tmp_path):
    path = str(tmp_path / "u-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        w.write(_foreign_example(_jpeg(8, 8), b"42", [[0, 0, 1, 1]], [9]))
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"unknown category id.*\[9\].*source_id=42"
    ):
        scan_report(path, CategoryMap.identity(3), training=True)


def test_make_tfrecords_reports_a_missing_image(coco_dir, tmp_path, capsys):
    data = json.loads(Path(coco_dir.annotations).read_text())
    data["images"].append({"id": 500, "file_name": "nope.jpg", "height": 8, "width": 8})
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps(data))
    rc = cli_main(
        [
            "make-tfrecords",
            "--annotations",
            str(ann),
            "--images",
            coco_dir.images_dir,
            "--out",
            str(tmp_path / "o"),
            "--shards",
            "1",
        ]
    )
    assert rc == 0  # skipped, named, counted
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "nope.jpg" in captured.err
    assert "1 missing, corrupt, truncated or oversized image files skipped" in captured.out
    args = ["make-tfrecords", "--annotations", str(ann), "--images", coco_dir.images_dir]
    assert cli_main([*args, "--out", str(tmp_path / "p"), "--bad-images", "error"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "nope.jpg" in captured.err
    assert len(captured.err.strip().splitlines()) == 1

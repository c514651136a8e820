"""COCO reader: conversions, category mapping, every counted drop and every named error."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atss_tf.data.coco import CategoryMap, DataError, DataReport, load_coco, read_coco_json

CATEGORIES = [
    {"id": 90, "name": "toothbrush"},
    {"id": 1, "name": "person"},
    {"id": 5, "name": "airplane"},
]


def write_coco(
    tmp_path: Path,
    images,
    annotations,
    categories=CATEGORIES,
    *,
    make_files: bool = True,
    name: str = "ann.json",
) -> tuple[str, str]:
    """Write a COCO json and (optionally) tiny JPEG files of the listed sizes.

    ``images``: list of ``(id, height, width)``; file names are ``{id}.jpg``.
    ``annotations``: list of dicts, ``id`` filled in when absent.
    """
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    imgs = []
    for image_id, h, w in images:
        file_name = f"{image_id}.jpg"
        imgs.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        if make_files:
            pixels = np.full((h, w, 3), 100 + image_id % 100, np.uint8)
            Image.fromarray(pixels).save(img_dir / file_name, format="JPEG")
    anns = [{"id": i + 1, "iscrowd": 0, **a} for i, a in enumerate(annotations)]
    path = tmp_path / name
    path.write_text(json.dumps({"images": imgs, "annotations": anns, "categories": categories}))
    return str(path), str(img_dir)


def ann(image_id, category_id, bbox, **kw):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, **kw}


def test_category_map_follows_sorted_ids():
    cm = CategoryMap.from_coco(CATEGORIES)
    assert cm.category_ids == (1, 5, 90)
    assert cm.names == ("person", "airplane", "toothbrush")
    np.testing.assert_array_equal(cm.to_labels([90, 1, 5]), [3, 1, 2])
    np.testing.assert_array_equal(cm.to_category_ids([3, 1, 2]), [90, 1, 5])
    with pytest.raises(KeyError):
        cm.to_labels([2])
    with pytest.raises(ValueError):
        cm.to_category_ids([0])
    assert CategoryMap.from_coco(cm.to_coco()) == cm


def test_boxes_labels_and_record_fields(tmp_path):
    a, d = write_coco(
        tmp_path,
        [(7, 40, 60)],
        [
            ann(7, 5, [10, 5, 20.5, 10], area=123.0),
            ann(7, 90, [0, 0, 60, 40]),
        ],
    )
    ds = load_coco(a, d, training=True)
    assert len(ds) == 1
    rec = ds.records[0]
    assert rec["image_id"] == 7 and rec["file_name"] == "7.jpg"
    assert rec["path"] == str(Path(d) / "7.jpg")
    assert (rec["height"], rec["width"]) == (40, 60)
    np.testing.assert_array_equal(rec["boxes"], [[10, 5, 30.5, 15], [0, 0, 60, 40]])
    assert rec["boxes"].dtype == np.float32 and rec["labels"].dtype == np.int32
    np.testing.assert_array_equal(rec["labels"], [2, 3])
    np.testing.assert_array_equal(rec["areas"], [123.0, 2400.0])
    assert not rec["is_crowd"].any()
    assert ds.report["boxes_kept"] == 2


def test_crowd_drop_and_ignore(tmp_path):
    a, d = write_coco(
        tmp_path,
        [(1, 40, 60)],
        [
            ann(1, 1, [1, 1, 10, 10], iscrowd=1),
            ann(1, 5, [2, 2, 10, 10]),
        ],
    )
    dropped = load_coco(a, d, training=True, crowd="drop")
    assert dropped.report["crowd_dropped"] == 1
    np.testing.assert_array_equal(dropped.records[0]["labels"], [2])
    kept = load_coco(a, d, training=True, crowd="ignore")
    assert kept.report["crowd_kept"] == 1 and kept.report["crowd_dropped"] == 0
    np.testing.assert_array_equal(kept.records[0]["is_crowd"], [True, False])


def test_only_crowd_image_is_skipped_in_training(tmp_path):
    a, d = write_coco(tmp_path, [(1, 40, 60)], [ann(1, 1, [1, 1, 10, 10], iscrowd=1)])
    ds = load_coco(a, d, training=True, crowd="ignore")
    assert len(ds) == 0 and ds.report["images_without_valid_boxes_skipped"] == 1


def test_zero_size_boxes_dropped_and_counted(tmp_path):
    a, d = write_coco(
        tmp_path,
        [(1, 40, 60)],
        [
            ann(1, 1, [5, 5, 0, 10]),
            ann(1, 1, [5, 5, 10, -1]),
            ann(1, 5, [5, 5, 10, 10]),
        ],
    )
    ds = load_coco(a, d, training=True)
    assert ds.report["degenerate_dropped"] == 2
    np.testing.assert_array_equal(ds.records[0]["boxes"], [[5, 5, 15, 15]])
    assert "2 boxes with width or height <= 0 dropped" in ds.report.summary()


def test_boxes_outside_image_clipped_or_dropped_and_counted(tmp_path):
    a, d = write_coco(
        tmp_path,
        [(1, 40, 60)],
        [
            ann(1, 1, [-5, 30, 20, 20]),  # sticks out left and bottom: clipped
            ann(1, 1, [70, 10, 5, 5]),  # entirely right of the image: dropped
            ann(1, 5, [50, 0, 10, 40]),  # touches the border exactly: unchanged
        ],
    )
    ds = load_coco(a, d, training=True)
    np.testing.assert_array_equal(ds.records[0]["boxes"], [[0, 30, 15, 40], [50, 0, 60, 40]])
    assert ds.report["boxes_clipped"] == 1
    assert ds.report["outside_dropped"] == 1


def test_unknown_category_id_names_image_annotation_and_category(tmp_path):
    a, d = write_coco(tmp_path, [(3, 40, 60)], [ann(3, 1, [1, 1, 5, 5]), ann(3, 77, [1, 1, 5, 5])])
    with pytest.raises(DataError) as e:
        load_coco(a, d, training=True)
    msg = str(e.value)
    assert "annotation id 2" in msg and "image id 3" in msg and "category id 77" in msg
    assert a in msg


def test_images_without_annotations_skipped_in_train_kept_in_val(tmp_path):
    a, d = write_coco(tmp_path, [(1, 40, 60), (2, 40, 60), (3, 30, 30)], [ann(1, 1, [1, 1, 5, 5])])
    train = load_coco(a, d, training=True)
    assert [r["image_id"] for r in train.records] == [1]
    assert train.report["images_without_annotations_skipped"] == 2
    val = load_coco(a, d, training=False)
    assert [r["image_id"] for r in val.records] == [1, 2, 3]
    assert val.report["images_without_annotations_kept"] == 2
    assert val.records[1]["boxes"].shape == (0, 4) and val.records[1]["labels"].shape == (0,)


def test_more_than_max_instances_keeps_the_first_and_counts(tmp_path):
    anns = [ann(1, 1, [i, i, 5, 5]) for i in range(7)] + [ann(2, 1, [0, 0, 5, 5])]
    a, d = write_coco(tmp_path, [(1, 40, 60), (2, 40, 60)], anns)
    ds = load_coco(a, d, training=True, max_instances=4)
    np.testing.assert_array_equal(ds.records[0]["boxes"][:, 0], [0, 1, 2, 3])
    assert ds.report["boxes_truncated"] == 3 and ds.report["images_truncated"] == 1
    assert load_coco(a, d, training=True, max_instances=None).records[0]["boxes"].shape == (7, 4)


def test_malformed_json_names_file_and_position(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"images": [}')
    with pytest.raises(DataError, match=r"bad\.json: malformed JSON at line 1 column 13"):
        read_coco_json(path)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda j: j.pop("images"), r"the top level is missing the field 'images'"),
        (
            lambda j: j["images"][0].pop("height"),
            r"images\[0\] \(id=1\) is missing the field 'height'",
        ),
        (
            lambda j: j["annotations"][0].pop("category_id"),
            r"annotations\[0\] \(id=1\) is missing the field 'category_id'",
        ),
        (
            lambda j: j["annotations"][0].update(bbox=[1, 2, 3]),
            r"annotations\[0\] \(id=1\) field 'bbox' must be 4 numbers",
        ),
        (lambda j: j["images"][0].update(width="60"), r"field 'width' must be int"),
        (lambda j: j["categories"][0].pop("id"), r"categories\[0\] is missing the field 'id'"),
    ],
)
def test_missing_or_mistyped_fields_are_named(tmp_path, mutate, expected):
    a, d = write_coco(tmp_path, [(1, 40, 60)], [ann(1, 1, [1, 1, 5, 5])], make_files=False)
    data = json.loads(Path(a).read_text())
    mutate(data)
    Path(a).write_text(json.dumps(data))
    with pytest.raises(DataError, match=expected) as e:
        load_coco(a, d, training=True)
    assert a in str(e.value)


def test_annotation_of_unknown_image_is_named(tmp_path):
    a, d = write_coco(tmp_path, [(1, 40, 60)], [ann(9, 1, [1, 1, 5, 5])])
    with pytest.raises(DataError, match="annotation id 1 refers to image id 9"):
        load_coco(a, d, training=True)


def test_missing_image_file_is_skipped_and_named_or_an_error(tmp_path):
    a, d = write_coco(
        tmp_path, [(1, 40, 60), (2, 40, 60)], [ann(1, 1, [1, 1, 5, 5]), ann(2, 1, [1, 1, 5, 5])]
    )
    (Path(d) / "2.jpg").unlink()
    ds = load_coco(a, d, training=True)
    assert [r["image_id"] for r in ds.records] == [1]
    assert ds.report["bad_images_skipped"] == 1 and ds.report["images_kept"] == 1
    assert ds.report.bad_files[0][0].endswith("2.jpg")
    assert "not found" in ds.report.bad_files[0][1]
    with pytest.raises(DataError, match=r"1 bad image file\(s\) in .*2\.jpg"):
        load_coco(a, d, training=True, bad_images="error")
    (Path(d) / "1.jpg").unlink()
    with pytest.raises(DataError, match=r"none of the 2 image files .* exists"):
        load_coco(a, d, training=True)


def test_truncated_jpeg_is_found_by_the_quick_check(tmp_path):
    a, d = write_coco(
        tmp_path, [(1, 40, 60), (2, 40, 60)], [ann(1, 1, [1, 1, 5, 5]), ann(2, 1, [1, 1, 5, 5])]
    )
    good = (Path(d) / "2.jpg").read_bytes()
    (Path(d) / "2.jpg").write_bytes(good[: len(good) // 2])  # truncated download
    assert len(load_coco(a, d, training=True, image_check="none").records) == 2
    ds = load_coco(a, d, training=True)
    assert [r["image_id"] for r in ds.records] == [1]
    assert "corrupt image file" in ds.report.bad_files[0][1]
    assert ds.report.bad_files[0][0].endswith("2.jpg")
    with pytest.raises(DataError, match=r"corrupt image file .*2\.jpg"):
        load_coco(a, d, training=True, bad_images="error")


def test_a_damaged_huffman_table_needs_the_full_check(tmp_path):
    a, d = write_coco(tmp_path, [(1, 40, 60)], [ann(1, 1, [1, 1, 5, 5])])
    data = bytearray((Path(d) / "1.jpg").read_bytes())
    dht = data.index(b"\xff\xc4")
    data[dht + 5 : dht + 21] = b"\xff" * 16  # TensorFlow: "jpeg::Uncompress failed"
    (Path(d) / "1.jpg").write_bytes(bytes(data))
    load_coco(a, d, training=True, bad_images="error")  # header and end marker look fine
    with pytest.raises(DataError, match=r"corrupt image file .*1\.jpg"):
        load_coco(a, d, training=True, image_check="full", bad_images="error")


def test_image_size_is_checked_against_the_json(tmp_path):
    a, d = write_coco(tmp_path, [(1, 40, 60)], [ann(1, 1, [1, 1, 5, 5])])
    Image.new("RGB", (40, 60)).save(Path(d) / "1.jpg")
    with pytest.raises(DataError, match=r"1\.jpg is 60x40 .* annotations say 40x60"):
        load_coco(a, d, training=True, bad_images="error")


def test_nan_and_infinite_boxes_are_dropped_and_counted(tmp_path):
    nan, inf = float("nan"), float("inf")
    a, d = write_coco(
        tmp_path,
        [(1, 40, 60), (2, 40, 60)],
        [ann(1, 1, [1, 1, 5, 5]), ann(1, 1, [nan, 1, 5, 5]), ann(2, 1, [1, 1, inf, 5])],
    )
    ds = load_coco(a, d, training=True)
    assert [r["image_id"] for r in ds.records] == [1]  # image 2's only box was infinite
    assert len(ds.records[0]["boxes"]) == 1 and np.isfinite(ds.records[0]["boxes"]).all()
    assert ds.report["nonfinite_dropped"] == 2
    assert ds.report["boxes_clipped"] == 0
    assert ds.report["images_without_valid_boxes_skipped"] == 1


def test_report_is_logged_once(tmp_path, caplog):
    a, d = write_coco(
        tmp_path, [(1, 40, 60), (2, 40, 60)], [ann(1, 1, [1, 1, 5, 5]), ann(1, 1, [1, 1, 0, 5])]
    )
    with caplog.at_level(logging.INFO, logger="atss_tf.data"):
        ds = load_coco(a, d, training=True)
        ds.report.log()
    lines = [r.getMessage() for r in caplog.records if r.name == "atss_tf.data"]
    assert len(lines) == 1
    assert "2 images listed" in lines[0] and "1 images without annotations skipped" in lines[0]
    assert "1 boxes with width or height <= 0 dropped" in lines[0]


def test_report_rejects_unknown_counter():
    with pytest.raises(KeyError):
        DataReport().add("nonsense")

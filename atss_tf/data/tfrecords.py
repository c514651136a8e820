"""Sharded TFRecords in the TF Object Detection API / Model Garden format.

Keys of each ``tf.train.Example`` (records written elsewhere with these keys
are read too; the optional ones may be absent):

======================================  =========  ==========================
key                                     type       notes
======================================  =========  ==========================
``image/encoded``                       bytes      the image file, unchanged
``image/format``                        bytes      ``jpeg`` / ``png`` (opt.)
``image/source_id``                     bytes      ``str(image_id)``
``image/height``, ``image/width``       int64      (optional: decoded size)
``image/filename``                      bytes      (optional)
``image/object/bbox/{xmin,ymin,...}``   float      normalised to [0, 1]
``image/object/class/label``            int64      dataset category id
``image/object/class/text``             bytes      category name (optional)
``image/object/is_crowd``               int64      0 / 1 (optional: 0)
``image/object/area``                   float      COCO area (optional: 0)
======================================  =========  ==========================

Shards are ``PREFIX-00000-of-0000N.tfrecord``; the writer also puts the
category list beside them as ``PREFIX.categories.json`` so a reader can map
category ids to contiguous labels without the annotations json.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from atss_tf import files
from atss_tf.data.cleaning import BOX_COUNTS, admit_image, clean_boxes
from atss_tf.data.coco import CategoryMap, DataError, DataReport
from atss_tf.data.image_files import END_MARKERS, sniff_image_format
from atss_tf.data.transforms import image_format_flags

SHARD_RE = re.compile(r"^(?P<prefix>.*)-\d{5}-of-\d{5}\.tfrecord$")

FEATURES = {
    "image/encoded": tf.io.FixedLenFeature((), tf.string),
    "image/format": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/source_id": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/height": tf.io.FixedLenFeature((), tf.int64, default_value=-1),
    "image/width": tf.io.FixedLenFeature((), tf.int64, default_value=-1),
    "image/filename": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
    "image/object/class/label": tf.io.VarLenFeature(tf.int64),
    "image/object/class/text": tf.io.VarLenFeature(tf.string),
    "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
    "image/object/area": tf.io.VarLenFeature(tf.float32),
}
ANNOTATION_KEYS = (
    "image/source_id",
    "image/filename",
    "image/object/bbox/xmin",
    "image/object/bbox/ymin",
    "image/object/bbox/xmax",
    "image/object/bbox/ymax",
    "image/object/class/label",
    "image/object/is_crowd",
)


def shard_paths(prefix: str, num_shards: int) -> list[str]:
    """``PREFIX-00000-of-0000N.tfrecord`` for ``N = num_shards``."""
    return [f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]


def categories_path(prefix: str) -> str:
    """Where the writer puts the category list: ``PREFIX.categories.json``."""
    return f"{prefix}.categories.json"


def _bytes(values: Sequence[bytes]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _floats(values) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def make_example(
    record: dict[str, Any], category_map: CategoryMap, encoded: bytes | None = None
) -> tf.train.Example:
    """One :mod:`atss_tf.data.coco` record -> ``tf.train.Example``.

    ``encoded`` defaults to the bytes of ``record["path"]``. Box coordinates
    are divided by the record's width / height in float64, then stored as
    float32.
    """
    if encoded is None:
        with files.open_file(record["path"], "rb") as f:
            encoded = f.read()
    fmt = sniff_image_format(encoded[:8])
    if fmt is None:
        raise DataError(
            f"image file {record.get('path', record['file_name'])} is not a "
            f"JPEG/PNG/GIF/BMP file (first bytes {encoded[:8]!r})"
        )
    h, w = int(record["height"]), int(record["width"])
    boxes = np.asarray(record["boxes"], np.float64).reshape(-1, 4)
    labels = np.asarray(record["labels"]).reshape(-1)
    cat_ids = category_map.to_category_ids(labels)
    names = [category_map.names[int(lab) - 1].encode("utf-8") for lab in labels]
    feature = {
        "image/encoded": _bytes([encoded]),
        "image/format": _bytes([fmt.encode()]),
        "image/source_id": _bytes([str(record["image_id"]).encode()]),
        "image/height": _ints([h]),
        "image/width": _ints([w]),
        "image/filename": _bytes([str(record["file_name"]).encode("utf-8")]),
        "image/object/bbox/xmin": _floats(boxes[:, 0] / w),
        "image/object/bbox/ymin": _floats(boxes[:, 1] / h),
        "image/object/bbox/xmax": _floats(boxes[:, 2] / w),
        "image/object/bbox/ymax": _floats(boxes[:, 3] / h),
        "image/object/class/label": _ints(cat_ids),
        "image/object/class/text": _bytes(names),
        "image/object/is_crowd": _ints(np.asarray(record["is_crowd"], np.int64)),
        "image/object/area": _floats(np.asarray(record["areas"], np.float64)),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def write_tfrecords(
    records: Sequence[dict[str, Any]],
    category_map: CategoryMap,
    prefix: str,
    num_shards: int,
    progress: bool = False,
) -> list[str]:
    """Write records round-robin into ``num_shards`` shards (record ``i`` goes to
    shard ``i % num_shards``) plus ``PREFIX.categories.json``.

    Args:
        progress: show a progress bar.

    Returns:
        The shard paths.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    parent = os.path.dirname(prefix)
    if parent:
        files.makedirs(parent)
    paths = shard_paths(prefix, num_shards)
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    bar = None
    if progress:
        from atss_tf.progress import progress_bar

        bar = progress_bar(len(records), f"Writing {len(records)} images to {prefix}-*", "image")
    try:
        for i, rec in enumerate(records):
            writers[i % num_shards].write(make_example(rec, category_map).SerializeToString())
            if bar is not None and ((i + 1) % 64 == 0 or i + 1 == len(records)):
                bar.update(i + 1)
    finally:
        for w in writers:
            w.close()
    with files.open_file(categories_path(prefix), "w") as f:
        json.dump({"categories": category_map.to_coco()}, f, indent=1)
    return paths


def match_files(file_pattern: str | Sequence[str]) -> list[str]:
    """Sorted TFRecord files matching a glob (or several); ``.json`` files
    (the categories sidecar) are left out. ``DataError`` if nothing matches."""
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted({f for p in patterns for f in tf.io.gfile.glob(p) if not f.endswith(".json")})
    if not files:
        raise DataError(f"no TFRecord files match {file_pattern!r}")
    return files


def find_category_map(file_pattern: str | Sequence[str]) -> CategoryMap | None:
    """The ``PREFIX.categories.json`` written beside the first matching shard, if any."""
    first = match_files(file_pattern)[0]
    m = SHARD_RE.match(first)
    if not m:
        return None
    path = categories_path(m.group("prefix"))
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        try:
            data = json.load(f)
            return CategoryMap.from_coco(data["categories"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{path}: malformed categories file: {e}") from None


def _dense(sparse: tf.SparseTensor) -> tf.Tensor:
    return tf.sparse.to_dense(sparse)


def parse_example(serialized: tf.Tensor, keys: Sequence[str] | None = None) -> dict[str, tf.Tensor]:
    """Parse one serialized example (tf ops).

    Args:
        serialized: string scalar.
        keys: parse only these keys of :data:`FEATURES` (all by default).

    Returns (for the keys parsed):
        ``encoded``, ``format``, ``source_id``, ``filename``: string scalars;
        ``height``, ``width``: int64 (-1 when absent); ``image_id``: int64
        (``source_id`` if it is a decimal integer, else a negative hash);
        ``boxes``: float32 ``[n, 4]`` normalised ``[xmin, ymin, xmax, ymax]``;
        ``category_ids``: int64 ``[n]``; ``class_text``: string ``[n]`` (empty
        when absent); ``is_crowd``: bool ``[n]``; ``area``: float32 ``[n]``
        (0 when absent). Missing optional per-object keys are filled.
    """
    features = FEATURES if keys is None else {k: FEATURES[k] for k in keys}
    p = tf.io.parse_single_example(serialized, features)
    out: dict[str, tf.Tensor] = {}
    renames = {
        "image/encoded": "encoded",
        "image/format": "format",
        "image/filename": "filename",
        "image/height": "height",
        "image/width": "width",
    }
    for key, name in renames.items():
        if key in p:
            out[name] = p[key]
    if "image/source_id" in p:
        sid = p["image/source_id"]
        out["source_id"] = sid
        out["image_id"] = tf.cond(
            tf.strings.regex_full_match(sid, "[0-9]{1,18}"),
            lambda: tf.strings.to_number(sid, tf.int64),
            lambda: -1 - tf.strings.to_hash_bucket_fast(sid, 2**62),
        )
    if "image/object/bbox/xmin" in p:
        coords = [_dense(p[f"image/object/bbox/{c}"]) for c in ("xmin", "ymin", "xmax", "ymax")]
        out["boxes"] = tf.stack(coords, axis=-1)
        n = tf.shape(out["boxes"])[0]
        if "image/object/class/label" in p:
            out["category_ids"] = _dense(p["image/object/class/label"])
        if "image/object/class/text" in p:
            out["class_text"] = _optional(_dense(p["image/object/class/text"]), n, "")
        if "image/object/is_crowd" in p:
            out["is_crowd"] = _optional(_dense(p["image/object/is_crowd"]), n, 0) > 0
        if "image/object/area" in p:
            out["area"] = _optional(_dense(p["image/object/area"]), n, 0.0)
    return out


def _optional(values: tf.Tensor, n: tf.Tensor, fill) -> tf.Tensor:
    """``values`` if present, ``n`` copies of ``fill`` if the key was absent."""
    return tf.cond(
        tf.equal(tf.size(values), 0),
        lambda: tf.fill([n], tf.constant(fill, values.dtype)),
        lambda: values,
    )


def record_name(parsed: dict[str, tf.Tensor]) -> tf.Tensor:
    """A string naming a record in error messages: its filename and source id."""
    return tf.strings.join(
        [
            "record with image/source_id=",
            parsed.get("source_id", ""),
            " image/filename=",
            parsed.get("filename", ""),
        ]
    )


def encoded_image_problem(
    encoded: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    max_pixels: int,
    limit_name: str = "data.max_image_pixels",
) -> tf.Tensor:
    """Why an encoded image must not be decoded, or ``""`` (tf ops, string scalar).

    The in-graph counterpart of :func:`atss_tf.data.image_files.read_image_header`
    for images inside TFRecords: an unknown format, a missing end-of-image
    marker (a truncated file), or more than ``max_pixels`` pixels (0: no limit)
    by the record's ``height`` x ``width`` or, for PNG, by its IHDR chunk.
    ``limit_name`` is how the message names the limit.
    """
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(encoded, 0, 24), "\0" * 24]), 0, 24)
    length = tf.strings.length(encoded)
    tail = tf.strings.substr(encoded, tf.maximum(length - 1024, 0), 1024)

    def contains(marker: bytes) -> tf.Tensor:
        return tf.size(tf.strings.split(tail, sep=marker)) > 1

    flags = image_format_flags(head)
    is_jpeg, is_png, is_gif, is_bmp = (flags[f] for f in ("jpeg", "png", "gif", "bmp"))
    complete = (
        (is_jpeg & contains(END_MARKERS["jpeg"]))
        | (is_png & contains(END_MARKERS["png"]))
        | (is_gif & contains(END_MARKERS["gif"]))
        | is_bmp
    )
    ihdr = tf.cast(tf.io.decode_raw(tf.strings.substr(head, 16, 8), tf.uint8), tf.int64)
    png_w = ((ihdr[0] * 256 + ihdr[1]) * 256 + ihdr[2]) * 256 + ihdr[3]
    png_h = ((ihdr[4] * 256 + ihdr[5]) * 256 + ihdr[6]) * 256 + ihdr[7]
    pixels = tf.maximum(
        tf.cast(height, tf.int64) * tf.cast(width, tf.int64),
        tf.where(is_png, png_w * png_h, tf.constant(0, tf.int64)),
    )
    too_large = tf.constant(max_pixels > 0) & (pixels > max(max_pixels, 0))
    known = is_jpeg | is_png | is_gif | is_bmp
    return tf.where(
        tf.logical_not(known),
        "not a JPEG/PNG/GIF/BMP image",
        tf.where(
            tf.logical_not(complete),
            tf.strings.join(
                ["truncated image (", tf.strings.as_string(length), " bytes, no end marker)"]
            ),
            tf.where(
                too_large,
                tf.strings.join(
                    [
                        tf.strings.as_string(pixels),
                        f" pixels, above {limit_name}={max_pixels}",
                    ]
                ),
                "",
            ),
        ),
    )


def filter_annotations(
    parsed: dict[str, tf.Tensor],
    category_map: CategoryMap,
    crowd: str,
) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """Annotations of one parsed record, cleaned by
    :func:`atss_tf.data.cleaning.clean_boxes` (boxes normalised, so the image
    is ``[0, 1] x [0, 1]``); category ids mapped to labels 1..C (an unknown id
    fails naming the record).

    Returns:
        ``({"boxes" [k, 4] normalised, "labels" int32 [k], "is_crowd" bool [k]},
        counts)`` with ``counts`` int64 ``[6]``, one per
        :data:`~atss_tf.data.cleaning.BOX_COUNTS` key.
    """
    boxes = parsed["boxes"]
    ids = parsed["category_ids"]
    is_crowd = parsed["is_crowd"]
    n = tf.shape(boxes)[0]
    check_len = tf.debugging.Assert(
        tf.equal(tf.size(ids), n) & tf.equal(tf.size(is_crowd), n),
        ["per-object feature lengths differ in", record_name(parsed)],
    )
    # CategoryMap.to_labels in tf ops.
    table = tf.constant(category_map.category_ids, tf.int64)
    idx = tf.searchsorted(table, ids)
    safe = tf.minimum(idx, len(category_map.category_ids) - 1)
    known = (idx < len(category_map.category_ids)) & tf.equal(tf.gather(table, safe), ids)
    check_ids = tf.debugging.Assert(
        tf.reduce_all(known),
        [
            "unknown category id(s)",
            tf.boolean_mask(ids, tf.logical_not(known)),
            "in",
            record_name(parsed),
            "known ids:",
            table,
        ],
        summarize=20,
    )
    with tf.control_dependencies([check_len, check_ids]):
        labels = tf.cast(idx, tf.int32) + 1
    clipped, keep, outcome = clean_boxes(boxes, is_crowd, 1.0, 1.0, crowd)
    out = {
        "boxes": tf.boolean_mask(clipped, keep),
        "labels": tf.boolean_mask(labels, keep),
        "is_crowd": tf.boolean_mask(is_crowd, keep),
    }
    return out, tf.reduce_sum(tf.cast(outcome, tf.int64), axis=0)


def scan_report(
    file_pattern: str | Sequence[str],
    category_map: CategoryMap,
    *,
    training: bool,
    crowd: str = "drop",
    max_instances: int | None = 100,
    keep_empty_images: bool = False,
) -> DataReport:
    """Count what :func:`filter_annotations` and the pipeline's skipping and
    truncation do to a set of TFRecords, without decoding images (the
    records are still read from disk once)."""
    files = match_files(file_pattern)
    report = DataReport(source=str(file_pattern))
    ds = tf.data.TFRecordDataset(files).map(
        lambda s: filter_annotations(parse_example(s, ANNOTATION_KEYS), category_map, crowd)
    )
    for ann, counts in ds.as_numpy_iterator():
        for key, c in zip(BOX_COUNTS, counts):
            report.add(key, int(c))
        dropped = int(sum(c for key, c in zip(BOX_COUNTS, counts) if key.endswith("_dropped")))
        admit_image(
            report,
            len(ann["boxes"]) + dropped,
            ann["is_crowd"],
            training,
            max_instances,
            keep_empty_images,
        )
    return report


def read_tfrecords(file_pattern: str | Sequence[str]) -> list[dict[str, Any]]:
    """Read every record eagerly into numpy dicts (tests and tools).

    Each dict: ``encoded`` bytes, ``format``, ``source_id``, ``file_name``
    str, ``image_id``, ``height``, ``width`` int, ``boxes`` float32 ``[n, 4]``
    continuous xyxy **pixels** (normalised x height/width; normalised when the
    size is absent), ``category_ids`` int64 ``[n]``, ``class_text`` list of
    str, ``is_crowd`` bool ``[n]``, ``areas`` float32 ``[n]``.
    """
    out = []
    for p in tf.data.TFRecordDataset(match_files(file_pattern)).map(parse_example):
        h, w = int(p["height"]), int(p["width"])
        boxes = p["boxes"].numpy()
        if h > 0 and w > 0:
            boxes = boxes * np.array([w, h, w, h], np.float32)
        out.append(
            {
                "encoded": p["encoded"].numpy(),
                "format": p["format"].numpy().decode(),
                "source_id": p["source_id"].numpy().decode(),
                "file_name": p["filename"].numpy().decode("utf-8"),
                "image_id": int(p["image_id"]),
                "height": h,
                "width": w,
                "boxes": boxes.astype(np.float32),
                "category_ids": p["category_ids"].numpy(),
                "class_text": [t.decode("utf-8") for t in p["class_text"].numpy()],
                "is_crowd": p["is_crowd"].numpy(),
                "areas": p["area"].numpy(),
            }
        )
    return out


def coco_from_tfrecords(
    file_pattern: str | Sequence[str], category_map: CategoryMap | None = None
) -> dict[str, Any]:
    """A COCO ground-truth dict (``images``, ``annotations``, ``categories``)
    rebuilt from TFRecords without keeping the image bytes, for evaluating
    with pycocotools when no annotations json is at hand.

    Image ids are the records' ``image_id`` (as the pipeline yields them);
    boxes are denormalised with ``image/height`` / ``image/width`` (which
    must be present); areas are ``image/object/area``, or the box area when
    the key is absent. Categories come from ``category_map`` or, by default,
    the distinct ids found.
    """
    keys = (*ANNOTATION_KEYS, "image/height", "image/width", "image/object/area")
    images, annotations, seen = [], [], set()
    ds = tf.data.TFRecordDataset(match_files(file_pattern)).map(lambda s: parse_example(s, keys))
    for p in ds.as_numpy_iterator():
        h, w = int(p["height"]), int(p["width"])
        if h <= 0 or w <= 0:
            raise DataError(
                f"record with image/source_id={p['source_id'].decode()} has no "
                "image/height and image/width: cannot rebuild pixel boxes"
            )
        image_id = int(p["image_id"])
        images.append(
            {"id": image_id, "file_name": p["filename"].decode("utf-8"), "height": h, "width": w}
        )
        boxes = p["boxes"].astype(np.float64) * [w, h, w, h]
        for box, cat, crowd, area in zip(boxes, p["category_ids"], p["is_crowd"], p["area"]):
            bw, bh = box[2] - box[0], box[3] - box[1]
            seen.add(int(cat))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(cat),
                    "bbox": [float(box[0]), float(box[1]), float(bw), float(bh)],
                    "area": float(area) if area > 0 else float(bw * bh),
                    "iscrowd": int(crowd),
                }
            )
    if category_map is None:
        category_map = CategoryMap(tuple(sorted(seen)), tuple(str(i) for i in sorted(seen)))
    return {"images": images, "annotations": annotations, "categories": category_map.to_coco()}

"""tf.data input pipelines for training and evaluation.

``build_dataset(config, "train", encoder_factory)`` yields ``(x, y)`` for a
Keras ``fit`` with a custom ``train_step``; ``build_dataset(config, "val")``
yields ``x``. With ``B`` the batch size, ``(Hc, Wc)`` one of
``config.data.canvases`` and ``M = data.max_instances``::

    x = {
        "images":     float32 [B, Hc, Wc, 3]  RGB 0..255, padded with the pixel mean
        "image_info": float32 [B, 4, 2]       see atss_tf.data.transforms
        "image_id":   int64   [B]             COCO image id
    }
    y = encoder_factory((Hc, Wc))(gt_boxes, gt_labels, gt_mask)   # per image, batched
      | gt                                    # training without an encoder
    gt = {
        "gt_boxes":    float32 [B, M, 4]  continuous xyxy canvas pixels, zeros in padding
        "gt_labels":   int32   [B, M]     contiguous 1..C, 0 in padding
        "gt_mask":     bool    [B, M]     a real non-crowd box (training target)
        "gt_is_crowd": bool    [B, M]     crowd box kept as ignore region (crowd="ignore")
    }

Every batch holds images of a single canvas, so its shapes are static and at
most ``len(canvases)`` shapes ever occur; with one canvas the dataset's
``element_spec`` itself is fully static. Images are grouped by canvas with
``group_by_window``. Training shuffles (the whole split when read from json,
``data.shuffle_buffer`` records from TFRecords), repeats and drops remainders;
a seed makes the whole stream (order, scales, flips) reproducible. With
``pad_remainder`` (COCO evaluation uses it) the last batch of each canvas is
padded to the full batch with copies of its last image whose ``image_id`` is
``PADDING_IMAGE_ID`` (-1), so every batch has the same static size: one
compiled step per canvas, and no replica of a TPU or multi-GPU strategy is
left without images; the evaluator skips them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from atss_tf.data import shard_checks, tfrecords
from atss_tf.data.coco import CategoryMap, CocoDataset, DataError, load_coco, read_coco_json
from atss_tf.data.splits import SPLITS, SplitSource, split_source
from atss_tf.data.transforms import TransformConfig, decode_image, pad_instances, transform

logger = logging.getLogger("atss_tf.data")

PADDING_IMAGE_ID = -1
EncoderFactory = Callable[[tuple[int, int]], Callable[..., dict[str, tf.Tensor]]]


def resolve_category_map(source: SplitSource, num_classes: int) -> CategoryMap:
    """The category map of a split: from its annotations json if it has one,
    else from ``PREFIX.categories.json`` beside its TFRecords, else ids
    ``1..num_classes`` (logged as a warning)."""
    if source.annotations:
        return CategoryMap.from_coco(read_coco_json(source.annotations)["categories"])
    found = tfrecords.find_category_map(source.tfrecords)
    if found is not None:
        return found
    logger.warning(
        "no categories for the %s split (no annotations json, no .categories.json beside the "
        "TFRecords): assuming category ids 1..%d",
        source.split,
        num_classes,
    )
    return CategoryMap.identity(num_classes)


def load_split(source: SplitSource) -> CocoDataset:
    """:func:`load_coco` of a split's json and image folder with its cleaning
    (training skips empty images unless ``data.keep_empty_images``)."""
    if not (source.annotations and source.images):
        raise DataError(
            f"data.{source.split}_annotations and data.{source.split}_images must both be set"
        )
    # Cleaning's fields are load_coco's keyword arguments.
    return load_coco(source.annotations, source.images, **dataclasses.asdict(source.cleaning))


def load_val_annotations(source: SplitSource, num_classes: int) -> tuple[Any, tuple[int, ...]]:
    """Ground truth for COCO evaluation of a split.

    Returns:
        ``(coco, category_ids)``: a ``pycocotools.coco.COCO`` of the split's
        annotations json (or, without one, rebuilt from its TFRecords), and
        the dataset category id of each label: ``category_ids[label - 1]``.
    """
    from pycocotools.coco import COCO

    if source.annotations:
        data = read_coco_json(source.annotations)
        category_map = CategoryMap.from_coco(data["categories"])
    else:
        category_map = resolve_category_map(source, num_classes)
        data = tfrecords.coco_from_tfrecords(source.tfrecords, category_map)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco, category_map.category_ids


def _records_dataset(dataset: CocoDataset) -> tf.data.Dataset:
    """Light per-image elements (paths and annotations, no pixels)."""
    recs = dataset.records
    row_lengths = [len(r["labels"]) for r in recs]

    def ragged(key, dtype, inner):
        flat = np.concatenate(
            [np.reshape(r[key], [-1, *inner]) for r in recs] or [np.zeros([0, *inner])]
        )
        return tf.RaggedTensor.from_row_lengths(
            tf.constant(flat.astype(dtype)), tf.constant(row_lengths, tf.int64)
        )

    return tf.data.Dataset.from_tensor_slices(
        {
            "path": tf.constant([r["path"] for r in recs], tf.string),
            "image_id": tf.constant([r["image_id"] for r in recs], tf.int64),
            "height": tf.constant([r["height"] for r in recs], tf.int32),
            "width": tf.constant([r["width"] for r in recs], tf.int32),
            "boxes": ragged("boxes", np.float32, [4]),
            "labels": ragged("labels", np.int32, []),
            "is_crowd": ragged("is_crowd", bool, []),
        }
    )


def _decode_checked(
    encoded: tf.Tensor, name: tf.Tensor, height: tf.Tensor, width: tf.Tensor
) -> tf.Tensor:
    """Decode an image and assert its size equals the annotated ``height``,
    ``width`` (a size <= 0 means unknown: TFRecords may omit it); the error
    names ``name`` (file or record)."""
    image = decode_image(encoded, name)
    shape = tf.shape(image)
    check = tf.debugging.Assert(
        ((height <= 0) | tf.equal(shape[0], height)) & ((width <= 0) | tf.equal(shape[1], width)),
        ["image", name, "has height, width", shape[:2], "but its annotations say", height, width],
    )
    with tf.control_dependencies([check]):
        return tf.identity(image)


def _load_coco_element(elem: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    image = _decode_checked(
        tf.io.read_file(elem["path"]), elem["path"], elem["height"], elem["width"]
    )
    return {
        "image": image,
        "image_id": elem["image_id"],
        "boxes": tf.reshape(tf.cast(elem["boxes"], tf.float32), [-1, 4]),
        "labels": tf.cast(elem["labels"], tf.int32),
        "is_crowd": tf.cast(elem["is_crowd"], tf.bool),
    }


def _tfrecord_records(
    files: list[str],
    category_map: CategoryMap,
    crowd: str,
    training: bool,
    seed: int,
    max_pixels: int = 0,
    skip_empty: bool = False,
) -> tf.data.Dataset:
    """Parsed, annotation-cleaned records (images still encoded). Records whose
    image is truncated, not an image or above ``max_pixels`` are skipped, each
    named on stderr (:func:`tfrecords.encoded_image_problem`), and with
    ``skip_empty`` those left without a non-crowd box."""
    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 16),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )

    def parse(serialized):
        p = tfrecords.parse_example(serialized)
        ann, _ = tfrecords.filter_annotations(p, category_map, crowd)
        return {
            "encoded": p["encoded"],
            "name": tfrecords.record_name(p),
            "image_id": p["image_id"],
            "height": tf.cast(p["height"], tf.int32),
            "width": tf.cast(p["width"], tf.int32),
            **ann,
        }

    def usable(e):
        problem = tfrecords.encoded_image_problem(e["encoded"], e["height"], e["width"], max_pixels)
        ok = tf.equal(problem, "")

        def warn():
            message = tf.strings.join(["WARNING atss_tf.data: skipped ", e["name"], ": ", problem])
            tf.print(message, output_stream=sys.stderr)
            return ok

        return tf.cond(ok, lambda: ok, warn)

    ds = ds.map(
        tf.autograph.experimental.do_not_convert(parse), num_parallel_calls=tf.data.AUTOTUNE
    )
    ds = ds.filter(tf.autograph.experimental.do_not_convert(usable))
    if skip_empty:  # the per-image rule of cleaning.admit_image, in the graph
        ds = ds.filter(lambda e: tf.reduce_any(tf.logical_not(e["is_crowd"])))
    return ds


def _load_tfrecord_element(elem: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    image = _decode_checked(elem["encoded"], elem["name"], elem["height"], elem["width"])
    shape = tf.shape(image)
    size = tf.cast(tf.stack([shape[1], shape[0], shape[1], shape[0]]), tf.float32)
    return {
        "image": image,
        "image_id": elem["image_id"],
        "boxes": elem["boxes"] * size,
        "labels": elem["labels"],
        "is_crowd": elem["is_crowd"],
    }


def _encode(
    gt: dict[str, tf.Tensor], canvas_index: tf.Tensor, encoders: list[Callable]
) -> dict[str, tf.Tensor]:
    def call(encoder):
        return lambda: dict(encoder(gt["gt_boxes"], gt["gt_labels"], gt["gt_mask"]))

    if len(encoders) == 1:
        return call(encoders[0])()
    return tf.switch_case(canvas_index, [call(e) for e in encoders])


@dataclass
class Source:
    """A split opened for reading, as per-image elements (no pixels yet).

    Attributes:
        elements: a dataset of light per-image elements.
        load: element -> the parsed example every source decodes to:
            ``image`` uint8 ``[h, w, 3]``, ``image_id`` int64, ``boxes`` float32
            ``[n, 4]`` continuous xyxy pixels (cleaned by
            :mod:`atss_tf.data.cleaning`), ``labels`` int32 ``[n]`` (1..C),
            ``is_crowd`` bool ``[n]``.
        category_map: dataset category ids <-> labels.
        shuffle_buffer: elements to shuffle over in training.
        num_images: the images it yields once (known for a json; None for TFRecords).
    """

    elements: tf.data.Dataset
    load: Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]]
    category_map: CategoryMap
    shuffle_buffer: int
    num_images: int | None = None


def open_source(
    config,
    source: SplitSource,
    category_map: CategoryMap | None = None,
    seed: int = 0,
    scan_tfrecords: bool = False,
) -> Source:
    """Open a split for reading: its TFRecords or its COCO json and images, by
    the rule of :mod:`atss_tf.data.splits`.

    Raises:
        DataError: no usable training image, or a category count that differs
            from ``model.num_classes``.
    """
    training, cleaning = source.training, source.cleaning
    if source.format == "coco":
        dataset = load_split(source)
        if training and not len(dataset):
            raise DataError(
                f"no usable training image in {dataset.annotations_path}: "
                f"{dataset.report.summary()}"
            )
        # JSON-sourced elements hold no pixels: shuffle the whole split like the
        # official sampler.
        result = Source(
            _records_dataset(dataset),
            _load_coco_element,
            dataset.category_map,
            len(dataset),
            num_images=len(dataset),
        )
    else:
        files = tfrecords.match_files(source.tfrecords)
        shard_checks.check_manifest(files)  # a damaged shard stops here, named
        category_map = category_map or resolve_category_map(source, config.model.num_classes)
        if scan_tfrecords:
            tfrecords.scan_report(
                files,
                category_map,
                training=training,
                crowd=cleaning.crowd,
                max_instances=cleaning.max_instances,
                keep_empty_images=cleaning.keep_empty_images,
            ).log(logger)
        else:
            logger.info(
                "%s: %d TFRecord files; crowd=%s, empty images %s, boxes beyond %d truncated, "
                "in the pipeline (scan_tfrecords=True counts them)",
                source.tfrecords,
                len(files),
                cleaning.crowd,
                "skipped" if training and not cleaning.keep_empty_images else "kept",
                cleaning.max_instances,
            )
        elements = _tfrecord_records(
            files,
            category_map,
            cleaning.crowd,
            training,
            seed,
            cleaning.max_pixels,
            skip_empty=training and not cleaning.keep_empty_images,
        )
        if training and next(iter(elements.take(1)), None) is None:
            raise DataError(
                f"no usable training image in {source.tfrecords} ({len(files)} files): every "
                "record lacks a non-crowd box or a readable image"
            )
        # TFRecord elements hold encoded images: a bounded buffer.
        result = Source(elements, _load_tfrecord_element, category_map, config.data.shuffle_buffer)
    if result.category_map.num_classes != config.model.num_classes:
        raise DataError(
            f"the dataset has {result.category_map.num_classes} categories but "
            f"model.num_classes is {config.model.num_classes}"
        )
    return result


def prepare_image(
    example: dict[str, tf.Tensor],
    index: tf.Tensor,
    params: TransformConfig,
    seed: int,
    training: bool,
    encoders: list[Callable] | None = None,
    with_gt: bool = False,
) -> dict[str, Any]:
    """One parsed example -> model inputs ``x``, targets or ground truth ``y``
    and its ``canvas`` index: transform, pad the instances, encode targets
    with the canvas's encoder. ``index`` seeds the random scale and flip."""
    element_seed = tf.stack([tf.constant(seed, tf.int64), index])
    out = transform(
        example["image"], example["boxes"], params, element_seed if params.random else None
    )
    gt = pad_instances(out["boxes"], example["labels"], example["is_crowd"], params.max_instances)
    x = {"images": out["image"], "image_info": out["image_info"], "image_id": example["image_id"]}
    if training:
        y = _encode(gt, out["canvas_index"], encoders) if encoders else gt
        if encoders and with_gt:
            y = {**y, **gt}
    else:
        y = gt if with_gt else {}
    return {"x": x, "y": y, "canvas": tf.cast(out["canvas_index"], tf.int64)}


def batch_by_canvas(
    ds: tf.data.Dataset, batch_size: int, num_canvases: int, drop_remainder: bool
) -> tf.data.Dataset:
    """Batches whose images share one canvas (``group_by_window`` on the
    ``canvas`` key when there are several), so every batch has static shapes."""
    if num_canvases == 1:
        return ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.group_by_window(
        key_func=lambda e: e["canvas"],
        reduce_func=lambda _, window: window.batch(batch_size, drop_remainder=drop_remainder),
        window_size=batch_size,
    )


def pad_batch(element: Any, batch_size: int) -> Any:
    """A batch of up to ``batch_size`` images padded to exactly ``batch_size``
    (static) with copies of its last image, their ``image_id`` set to
    :data:`PADDING_IMAGE_ID`. Copies, not zeros: the padding runs through the
    network and post-processing like a real image, with no degenerate
    ``image_info``."""
    x = element[0] if isinstance(element, tuple) else element  # x or (x, y)
    count = tf.shape(x["image_id"])[0]
    missing = batch_size - count

    def pad(t):
        t = tf.concat([t, tf.repeat(t[-1:], missing, axis=0)], axis=0)
        return tf.ensure_shape(t, [batch_size, *t.shape[1:]])

    padded = tf.nest.map_structure(pad, element)
    px = padded[0] if isinstance(padded, tuple) else padded
    is_real = tf.range(batch_size) < count
    px["image_id"] = tf.where(is_real, px["image_id"], tf.constant(PADDING_IMAGE_ID, tf.int64))
    return padded


def build_dataset(
    config,
    split: str = "train",
    encoder_factory: EncoderFactory | None = None,
    *,
    source: SplitSource | Source | str | None = None,
    category_map: CategoryMap | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    repeat: bool | None = None,
    with_gt: bool = False,
    scan_tfrecords: bool = False,
    pad_remainder: bool = False,
) -> tf.data.Dataset:
    """The batched input pipeline of a split (element structure: module docstring):
    :func:`open_source` -> shuffle / repeat -> :func:`prepare_image` ->
    :func:`batch_by_canvas`.

    Args:
        config: :class:`atss_tf.config.Config` (``data.*``, ``model.pixel_mean``,
            ``model.input_bgr``, ``train.seed``).
        split: ``"train"`` (shuffle, multi-scale, flip, skip images without
            boxes, repeat, drop remainder; yields ``(x, y)``) or ``"val"``
            (every image once, in order; yields ``x``).
        encoder_factory: ``factory((Hc, Wc)) -> encoder`` called once per
            canvas; ``encoder(gt_boxes [M, 4], gt_labels [M], gt_mask [M])``
            returns a dict of per-image tensors, run in the pipeline per image.
        source: the split's :class:`~atss_tf.data.splits.SplitSource`
            (default :func:`~atss_tf.data.splits.split_source` of ``config``),
            a :class:`Source` opened already (:func:`open_source`), or a
            TFRecord glob read with the config's cleaning.
        category_map: for TFRecords (default :func:`resolve_category_map`).
        seed: default ``config.train.seed``.
        batch_size: default ``config.data.batch_size`` (the global batch).
        repeat: repeat forever; default True for training.
        with_gt: also return the ground-truth dict: ``(x, gt)`` for
            evaluation, merged into ``y`` for training with an encoder.
        scan_tfrecords: read the TFRecords once up front to count (and log)
            dropped boxes and skipped images, like the COCO reader does.
        pad_remainder: pad each canvas's last partial batch (:func:`pad_batch`;
            evaluation); else training drops it and evaluation keeps it partial
            (``model.predict`` then returns one row per image).

    Raises:
        DataError: no data configured, or the dataset's number of categories
            differs from ``model.num_classes``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    training = split == "train"
    data = config.data
    seed = int(config.train.seed if seed is None else seed)
    batch_size = int(data.batch_size if batch_size is None else batch_size)
    repeat = training if repeat is None else repeat
    params = TransformConfig.from_config(config, training)
    parallel = tf.data.AUTOTUNE if data.num_parallel_calls < 0 else data.num_parallel_calls

    if isinstance(source, str):
        source = SplitSource.tfrecords_of(config, split, source)
    if not isinstance(source, Source):
        source = open_source(
            config, source or split_source(config, split), category_map, seed, scan_tfrecords
        )
    src = source
    ds = src.elements
    if training:
        ds = ds.shuffle(max(src.shuffle_buffer, 1), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    encoders = [encoder_factory((h, w)) for h, w in params.canvases] if encoder_factory else None

    # The pipeline's Python has no tensor-dependent control flow (it uses
    # tf.cond / tf.where), so AutoGraph would only re-parse it: 2-4 s per process.
    @tf.autograph.experimental.do_not_convert
    def prepare(index, elem):
        return prepare_image(src.load(elem), index, params, seed, training, encoders, with_gt)

    ds = ds.enumerate().map(prepare, num_parallel_calls=parallel, deterministic=True)
    ds = batch_by_canvas(ds, batch_size, len(params.canvases), drop_remainder=training)

    @tf.autograph.experimental.do_not_convert
    def finish(e):
        if training or with_gt:
            return e["x"], e["y"]
        return e["x"]

    ds = ds.map(finish)
    if pad_remainder and not training:
        ds = ds.map(lambda *e: pad_batch(e if len(e) > 1 else e[0], batch_size))
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)


def first_images(source: SplitSource, count: int = 4) -> tuple[list[np.ndarray], list[str]]:
    """The first ``count`` decoded images of a split (uint8 RGB) and their names,
    from its TFRecords or its json's image folder, skipping unreadable files."""
    from atss_tf.data.image_files import check_image_file

    max_pixels = source.cleaning.max_pixels
    out, names = [], []
    if source.format == "coco":
        data = read_coco_json(source.annotations)
        for im in data["images"]:
            path = os.path.join(source.images, im["file_name"])
            try:
                check_image_file(path, max_pixels=max_pixels)
            except DataError:
                continue
            out.append(decode_image(tf.io.read_file(path), path).numpy())
            names.append(im["file_name"])
            if len(out) == count:
                break
    else:
        ds = tf.data.TFRecordDataset(tfrecords.match_files(source.tfrecords))
        for p in ds.map(tfrecords.parse_example):
            problem = tfrecords.encoded_image_problem(
                p["encoded"], p["height"], p["width"], max_pixels
            )
            if problem.numpy():
                continue
            out.append(decode_image(p["encoded"]).numpy())
            names.append(p["filename"].numpy().decode("utf-8") or p["source_id"].numpy().decode())
            if len(out) == count:
                break
    return out, names

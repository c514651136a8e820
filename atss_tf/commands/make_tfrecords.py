"""``atss-tf make-tfrecords``: a COCO json + image folder -> sharded TFRecords,
``PREFIX.categories.json`` and ``PREFIX.manifest.json`` (each shard's size and
SHA-256, :mod:`atss_tf.data.shard_checks`)."""

from __future__ import annotations

import argparse

from atss_tf.config import BAD_IMAGE_POLICIES, DEFAULT_MAX_PIXELS, IMAGE_CHECKS
from atss_tf.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--annotations", required=True, help="COCO annotations json")
    parser.add_argument(
        "--images", required=True, help="folder the json's file_name is relative to"
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output prefix: PREFIX-00000-of-0000N.tfrecord, PREFIX.categories.json",
    )
    parser.add_argument("--shards", type=int, default=1, help="number of shards (default 1)")
    parser.add_argument(
        "--image-check",
        choices=IMAGE_CHECKS,
        default="quick",
        help="check each image before packing it: quick (header, size, truncation; default), "
        "full (decode every pixel with PIL, slow) or none",
    )
    parser.add_argument(
        "--bad-images",
        choices=BAD_IMAGE_POLICIES,
        default="skip",
        help="a bad image file is left out and named (skip, default) or stops the command (error)",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"images above this many pixels are bad (default {DEFAULT_MAX_PIXELS:,}; 0: no limit)",
    )


def run(args: argparse.Namespace) -> int:
    from atss_tf.data.coco import load_coco
    from atss_tf.data.shard_checks import write_manifest
    from atss_tf.data.tfrecords import categories_path, write_tfrecords

    if args.shards < 1:
        raise UsageError(f"--shards must be >= 1, got {args.shards}")
    # Everything goes in: crowd boxes flagged, images without boxes kept, no
    # truncation; the training pipeline applies the config's choices.
    dataset = load_coco(
        args.annotations,
        args.images,
        training=False,
        crowd="ignore",
        max_instances=None,
        image_check=args.image_check,
        bad_images=args.bad_images,
        max_pixels=args.max_image_pixels,
    )
    paths = write_tfrecords(
        dataset.records, dataset.category_map, args.out, args.shards, progress=True
    )
    # Record i went to shard i % shards; training checks the shards against this.
    counts = [len(range(i, len(dataset.records), len(paths))) for i in range(len(paths))]
    manifest = write_manifest(args.out, paths, counts)
    n_boxes = sum(len(r["labels"]) for r in dataset.records)
    n_crowd = sum(int(r["is_crowd"].sum()) for r in dataset.records)
    print(
        f"wrote {len(dataset.records)} images, {n_boxes} boxes ({n_crowd} crowd), "
        f"{dataset.category_map.num_classes} categories into {len(paths)} shard(s):"
    )
    for p in paths:
        print(f"  {p}")
    print(f"  {categories_path(args.out)}")
    print(f"  {manifest} (sizes and SHA-256 checksums, checked when training opens the shards)")
    print(dataset.report.summary())
    return 0

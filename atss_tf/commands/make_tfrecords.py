"""``atss-tf make-tfrecords``: a COCO json + image folder -> sharded TFRecords."""

from __future__ import annotations

import argparse

from atss_tf.data.coco import DataError, load_coco
from atss_tf.data.tfrecords import categories_path, write_tfrecords


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
        "--validate-images",
        action="store_true",
        help="decode every image with PIL first (slow; names corrupt files)",
    )


def run(args: argparse.Namespace) -> int:
    if args.shards < 1:
        print(f"atss-tf make-tfrecords: --shards must be >= 1, got {args.shards}")
        return 2
    try:
        # Everything goes in: crowd boxes flagged, images without boxes kept, no
        # truncation; the training pipeline applies the config's choices.
        dataset = load_coco(
            args.annotations,
            args.images,
            training=False,
            crowd="ignore",
            max_instances=None,
            validate_images=args.validate_images,
        )
        paths = write_tfrecords(dataset.records, dataset.category_map, args.out, args.shards)
    except DataError as e:
        print(f"atss-tf make-tfrecords: error: {e}")
        return 1
    n_boxes = sum(len(r["labels"]) for r in dataset.records)
    n_crowd = sum(int(r["is_crowd"].sum()) for r in dataset.records)
    print(
        f"wrote {len(dataset.records)} images, {n_boxes} boxes ({n_crowd} crowd), "
        f"{dataset.category_map.num_classes} categories into {len(paths)} shard(s):"
    )
    for p in paths:
        print(f"  {p}")
    print(f"  {categories_path(args.out)}")
    print(dataset.report.summary())
    return 0

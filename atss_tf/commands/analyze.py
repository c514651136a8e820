"""``atss-tf analyze``: what the sample selectors pick over a dataset (paper Section 4.1).

Runs the config's selector (and those named by ``--compare``) over every image
of a COCO-format split with the training resize and canvases, then writes
``analysis.json`` (positives per object by size, aspect ratio and position,
pyramid levels, the ATSS IoU threshold ``mean + std`` and its two terms,
objects left without a positive, anchors IoU matching ignores) and pictures,
and prints the check of the paper's "about 0.2 * k * L positives per object,
whatever its scale".
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile

from atss_tf import files
from atss_tf.commands.common import add_config_arguments, config_from_args
from atss_tf.config import ASSIGNERS
from atss_tf.errors import ConfigError, UsageError

DEFAULT_CONFIG = "configs/atss_r50_fpn_1x_coco.yaml"


def add_arguments(parser) -> None:
    add_config_arguments(
        parser,
        config_help=f"YAML config: anchors, assigner, training sizes and canvases (default "
        f"{DEFAULT_CONFIG}); its data.train_* name the dataset unless given below",
    )
    parser.add_argument("--annotations", default=None, help="COCO-format json to analyse")
    parser.add_argument(
        "--images", default=None, help="folder of the json's images (only read for pictures)"
    )
    parser.add_argument(
        "--tfrecords", default=None, help="glob of TFRecords to analyse instead of a json"
    )
    parser.add_argument(
        "--compare",
        nargs="*",
        default=[],
        choices=ASSIGNERS,
        metavar="SELECTOR",
        help=f"other selectors to run with the same anchors, side by side ({', '.join(ASSIGNERS)})",
    )
    parser.add_argument(
        "--max-images", type=int, default=0, help="analyse only the first N images (0: all)"
    )
    parser.add_argument(
        "--pictures",
        type=int,
        default=3,
        help="images to draw with the anchors each selector picks (the ones with most objects "
        "among the first 200; 0: none)",
    )
    parser.add_argument("--out", required=True, help="folder for analysis.json and the pictures")


def _dataset(args, cfg):
    from atss_tf.data.pipeline import load_split, resolve_category_map
    from atss_tf.data.splits import Cleaning, SplitSource, has_split, split_source

    if args.annotations and args.tfrecords:
        raise UsageError("give --annotations or --tfrecords, not both")
    # Every box the selectors see, with no image checks: the analysis reads the
    # boxes and image sizes only.
    cleaning = Cleaning(
        training=False, crowd="drop", max_instances=None, image_check="none", max_pixels=0
    )
    if args.annotations:
        images = args.images or os.path.dirname(args.annotations)
        source = SplitSource("train", cleaning, annotations=args.annotations, images=images)
    elif args.tfrecords:
        source = SplitSource("train", cleaning, tfrecords=args.tfrecords)
    elif has_split(cfg, "train"):
        source = dataclasses.replace(split_source(cfg, "train"), cleaning=cleaning)
    else:
        raise ConfigError(
            "no dataset: give --annotations (COCO json) or --tfrecords, or a config whose "
            "data.train_annotations or data.train_tfrecords is set"
        )
    if source.format == "coco":
        return load_split(source)
    from atss_tf.data import tfrecords as tfr

    coco = tfr.coco_from_tfrecords(
        source.tfrecords, resolve_category_map(source, cfg.model.num_classes)
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "from_tfrecords.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(coco, f)
        return load_split(SplitSource("train", cleaning, annotations=path, images=tmp))


def _picture_images(result, count: int) -> list[int]:
    first = range(min(len(result.images), 200))
    ranked = sorted(first, key=lambda i: -len(result.images[i].boxes))
    return sorted(i for i in ranked[:count] if len(result.images[i].boxes))


def _print_check(summary: dict) -> None:
    check = summary["check"]
    k, a, levels = check["k"], check["anchors_per_location"], check["levels"]
    per = f"k={k}" + (f" x #A={a}" if a > 1 else "")
    candidates = summary["candidates_per_object"]
    capped = "" if candidates == k * a * levels else f", {candidates} candidates on these canvases"
    print(
        f"Paper claim: each object has about 0.2 * k * L positives, invariant to its scale "
        f"({per}, L={levels}{capped}: {check['expected']:.2f})."
    )
    if not check["selectors"]:
        print("  (no ATSS selector was run: add --compare atss to measure it)")
    for name, s in check["selectors"].items():
        by_size = ", ".join(f"{b} {m:.2f}" for b, m in s["mean_by_size"].items() if m is not None)
        spread = "" if s["size_spread"] is None else f"; spread over sizes {s['size_spread']:.0%}"
        print(
            f"  {name}: {s['mean']:.2f} positives per object ({s['ratio_to_expected']:.2f} x "
            f"expected){spread}\n    by size (sqrt(w*h) canvas px): {by_size}"
        )
    for name, s in summary["selectors"].items():
        none = s["objects_without_positive"]
        line = (
            f"  {name}: {none['count']} of {summary['objects']} objects without a positive "
            f"({none['fraction']:.1%})"
        )
        if s["ignored_anchors_per_image"]:
            line += f", {s['ignored_anchors_per_image']:.1f} ignored anchors per image"
        print(line)


def run(args) -> int:
    if args.max_images < 0 or args.pictures < 0:
        raise UsageError("--max-images and --pictures must be >= 0")
    if args.config is None:
        from atss_tf.config import find_config

        args.config = str(find_config(DEFAULT_CONFIG))
    cfg = config_from_args(args)
    dataset = _dataset(args, cfg)
    if args.max_images:
        dataset.records = dataset.records[: args.max_images]
    if not dataset.records:
        raise ConfigError(f"{dataset.annotations_path}: no image to analyse")

    from atss_tf.analysis import analyze_selection, summarize
    from atss_tf.analysis.pictures import save_all
    from atss_tf.analysis.selection import selector_config
    from atss_tf.progress import progress_bar

    for name in args.compare:  # refuse an impossible selector before any work
        selector_config(cfg, name)
    n = len(dataset.records)
    bar = progress_bar(
        n, f"Analysing {n} images with {', '.join([cfg.assigner.type, *args.compare])}", "image"
    )
    pictures = list(range(min(n, 200)))  # matches kept for the candidates; chosen below
    result = analyze_selection(
        dataset,
        cfg,
        args.compare,
        seed=cfg.train.seed,
        keep_matches_for=pictures,
        progress=bar.update,
    )
    chosen = _picture_images(result, args.pictures)
    for name in result.selectors:
        result.matched[name] = {i: m for i, m in result.matched[name].items() if i in chosen}
    summary = summarize(result)
    summary["annotations"] = dataset.annotations_path if not args.tfrecords else args.tfrecords
    summary["config"] = args.config
    files.makedirs(args.out)
    path = files.join(args.out, "analysis.json")
    files.write_text(path, json.dumps(summary, indent=2))
    written = save_all(result, args.out, chosen)
    _print_check(summary)
    print(f"Wrote {path} and {len(written)} pictures in {args.out}")
    return 0

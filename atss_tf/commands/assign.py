"""``atss-tf assign``: which anchors a set of boxes selects (sample selection).

::

    atss-tf assign --image-size H W --boxes boxes.json --out targets.npz
                   [--config CFG] [--set key=value ...] [--official-compat]

``boxes.json`` is ``{"boxes": [[x1, y1, x2, y2], ...], "labels": [...]}`` in
continuous canvas pixels (ATSS_SPEC §0); ``labels`` (1..num_classes) default
to 1. The npz holds ``anchors [A, 4]``, ``cls_targets [A]``, ``box_targets
[A, 4]``, ``matched_gt [A]`` (-1: none), ``matched_boxes [A, 4]``,
``num_per_level``, ``gt_boxes`` and ``gt_labels``.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from atss_tf.commands.common import add_config_arguments, find_config
from atss_tf.errors import UsageError


class InputError(UsageError):
    """The boxes file or an argument is invalid; the message names it."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image-size",
        nargs=2,
        type=int,
        required=True,
        metavar=("H", "W"),
        help="padded canvas height and width in pixels",
    )
    parser.add_argument(
        "--boxes",
        required=True,
        metavar="FILE.json",
        help='{"boxes": [[x1, y1, x2, y2], ...], "labels": [...]} in continuous pixels',
    )
    parser.add_argument("--out", required=True, metavar="OUT.npz", help="npz file to write")
    add_config_arguments(parser, config_help="YAML config file (default: built-in)")
    parser.add_argument(
        "--official-compat",
        action="store_true",
        help="set official_compat=true (the authors' anchor alignment and center test)",
    )


def read_boxes(path: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``boxes [N, 4]`` float32 and ``labels [N]`` int32 from a JSON file.

    Raises:
        InputError: unreadable file, bad JSON, missing or malformed fields,
            boxes with ``x2 <= x1`` or ``y2 <= y1``, labels out of range.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise InputError(f"cannot read boxes file {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not isinstance(data, dict) or "boxes" not in data:
        raise InputError(
            f'{path}: expected an object with a "boxes" list, e.g. '
            '{"boxes": [[10, 20, 50, 80]], "labels": [1]}'
        )
    raw = data["boxes"]
    if not isinstance(raw, list):
        raise InputError(f'{path}: "boxes" must be a list of [x1, y1, x2, y2], got {raw!r}')
    boxes = []
    for i, box in enumerate(raw):
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
        ):
            raise InputError(f"{path}: boxes[{i}] must be 4 numbers [x1, y1, x2, y2], got {box!r}")
        if not all(math.isfinite(v) for v in box):
            raise InputError(f"{path}: boxes[{i}] = {box} has a non-finite coordinate")
        x1, y1, x2, y2 = box
        if x2 <= x1 or y2 <= y1:
            side = "x2 <= x1" if x2 <= x1 else "y2 <= y1"
            raise InputError(
                f"{path}: boxes[{i}] = {box} has {side}; boxes are [x1, y1, x2, y2] "
                "with positive width and height"
            )
        boxes.append(box)
    labels = data.get("labels")
    if labels is None:
        labels = [1] * len(boxes)
    if not isinstance(labels, list) or len(labels) != len(boxes):
        raise InputError(
            f'{path}: "labels" must be a list of {len(boxes)} class ids '
            f"(one per box), got {labels!r}"
        )
    for i, label in enumerate(labels):
        if not isinstance(label, int) or isinstance(label, bool) or not 1 <= label <= num_classes:
            raise InputError(
                f"{path}: labels[{i}] = {label!r} must be an integer class id in "
                f"1..{num_classes} (model.num_classes)"
            )
    return (
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(labels, np.int32).reshape(-1),
    )


def run(args: argparse.Namespace) -> int:
    from atss_tf.config import load_config

    overrides = list(args.overrides) + (["official_compat=true"] if args.official_compat else [])
    cfg = load_config(find_config(args.config) if args.config else None, overrides)
    height, width = args.image_size
    if height <= 0 or width <= 0:
        raise InputError(f"--image-size must be two positive integers, got {height} {width}")
    boxes, labels = read_boxes(args.boxes, cfg.model.num_classes)

    from atss_tf.targets import TargetEncoder, check_encoder_size

    check_encoder_size(
        cfg.model,
        cfg.assigner,
        (height, width),
        max(cfg.data.max_instances, len(boxes)),
        "--image-size",
    )

    num = len(boxes)
    size = max(cfg.data.max_instances, num)
    padded = np.zeros((size, 4), np.float32)
    padded[:num] = boxes
    padded_labels = np.zeros(size, np.int32)
    padded_labels[:num] = labels
    mask = np.arange(size) < num
    enc = TargetEncoder(cfg.model, cfg.assigner, (height, width), size)
    out = {key: value.numpy() for key, value in enc(padded, padded_labels, mask).items()}
    grid = enc.anchor_grid
    result = {
        "anchors": grid.boxes,
        "cls_targets": out["cls_targets"],
        "box_targets": out["box_targets"],
        "matched_gt": out["matched_gt"],
        "matched_boxes": out["matched_boxes"],
        "num_per_level": np.asarray(grid.num_per_level, np.int64),
        "gt_boxes": boxes,
        "gt_labels": labels,
    }
    np.savez(args.out, **result)
    print_summary(cfg, enc, boxes, labels, out)
    print(f"wrote {args.out}")
    return 0


def print_summary(
    cfg, enc, boxes: np.ndarray, labels: np.ndarray, out: dict[str, np.ndarray]
) -> None:
    """Positives per box and per pyramid level."""
    grid = enc.anchor_grid
    names = [f"P{int(round(math.log2(s)))}" for s in grid.strides]
    level = grid.level_ids()
    matched, cls = out["matched_gt"], out["cls_targets"]
    shapes = " ".join(f"{n}:{h}x{w}" for n, (h, w) in zip(names, grid.level_shapes))
    print(
        f"canvas {grid.image_size[0]}x{grid.image_size[1]}, {grid.num_anchors} anchors "
        f"({grid.anchors_per_location} per location; {shapes})"
    )
    print(
        f"assigner {cfg.assigner.type} (k={cfg.assigner.topk}), regression "
        f"{cfg.model.head.regression}, official_compat={cfg.official_compat}"
    )
    header = f"{'box':>4} {'label':>5}  {'x1':>8} {'y1':>8} {'x2':>8} {'y2':>8}  {'pos':>4}"
    print(header + "".join(f" {n:>4}" for n in names))
    for i, (box, label) in enumerate(zip(boxes, labels)):
        mine = matched == i
        per_level = np.bincount(level[mine], minlength=len(names))
        print(
            f"{i:>4} {label:>5}  "
            + " ".join(f"{v:8.1f}" for v in box)
            + f"  {int(mine.sum()):>4}"
            + "".join(f" {int(v):>4}" for v in per_level)
        )
    per_level = np.bincount(level[matched >= 0], minlength=len(names))
    print(
        f"{'all':>4} {'':>5}  {'':>35}  {int((matched >= 0).sum()):>4}"
        + "".join(f" {int(v):>4}" for v in per_level)
    )
    print(
        f"positives {int((cls > 0).sum())}, ignored {int((cls < 0).sum())}, "
        f"background {int((cls == 0).sum())}"
    )

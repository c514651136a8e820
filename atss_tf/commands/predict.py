"""``atss-tf predict --weights W --images PATH... --out DIR``: detections json and pictures.

Every good image is processed; a bad one (missing, corrupt, truncated, too
large, too extreme an aspect ratio) is named with its reason and left out,
and the command then exits with 1. Pictures are named after the image's path
relative to the inputs' common folder (``a/one.jpg`` -> ``a__one.jpg.detections.png``), so
``one.jpg`` and ``one.png``, or the same name in two folders, never collide.
``--tta`` runs the authors' test-time augmentation (:mod:`atss_tf.tta`) per image.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from atss_tf.commands.common import add_config_arguments, find_config
from atss_tf.errors import AtssError, UsageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}


def add_arguments(parser) -> None:
    add_config_arguments(
        parser,
        config_help="YAML config for the test-time resize and canvases (default: the model's own)",
    )
    parser.add_argument("--weights", required=True, help=".keras model or .weights.h5 checkpoint")
    parser.add_argument(
        "--images",
        nargs="+",
        required=True,
        help="image files or folders (their .jpg/.jpeg/.png/.bmp/.gif files)",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.3,
        help="draw detections at or above this score (default 0.3); the json has all",
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="images per model call, grouped by canvas"
    )
    parser.add_argument(
        "--tta",
        action="store_true",
        help="multi-scale, flipped test passes merged by box voting (the tta section of "
        "--config and --set, e.g. --set tta.scales=[400,600]; 26 passes by default)",
    )


def image_paths(items: list[str]) -> list[Path]:
    """The image files named or held (non-recursively) by ``items``, in order, once each."""
    found: dict[Path, Path] = {}  # resolved -> as given: each file once, first spelling
    for item in items:
        p = Path(item)
        if p.is_dir():
            listed = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            listed = [p]
        else:
            raise FileNotFoundError(f"image not found: {p}")
        for q in listed:
            found.setdefault(q.resolve(), q)
    if not found:
        raise UsageError("no images found in " + " ".join(items))
    return list(found.values())


def picture_names(paths: list[Path]) -> list[str]:
    """Distinct picture file names: each path relative to the common folder,
    its separators as ``__``, plus ``.detections.png``."""
    absolute = [p.resolve() for p in paths]
    common = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    return ["__".join(p.relative_to(common).parts) + ".detections.png" for p in absolute]


def run(args) -> int:
    from atss_tf.config import load_config

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    config = load_config(find_config(args.config), args.overrides) if args.config else None
    paths = image_paths(args.images)

    from atss_tf.config import DEFAULT_MAX_PIXELS
    from atss_tf.data.inference_input import check_aspect_ratio, inference_config
    from atss_tf.inference import detect, load_detector, read_image, test_transform
    from atss_tf.visualization import save_detection_grid

    model = load_detector(args.weights, config)
    # --set data.min_size/max_size without data.canvases: canvases that fit them.
    config = inference_config(model.detector_config, config, args.overrides)
    tta = None
    if args.tta:
        from atss_tf.tta import TTADetector

        # Without --config, --set still sets the tta section.
        tta_config = config or load_config(None, args.overrides)
        tta = TTADetector(model, config, tta_config.tta)
    names = model.class_names
    category_ids = model.category_ids
    params = test_transform(model, config)
    max_pixels = config.data.max_image_pixels if config is not None else DEFAULT_MAX_PIXELS
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pictures = dict(zip(paths, picture_names(paths)))
    records, failed = [], []
    # Chunks bound memory; images of a chunk are grouped by canvas inside detect.
    chunk = 4 * args.batch_size
    for start in range(0, len(paths), chunk):
        group, images = [], []
        for path in paths[start : start + chunk]:
            try:
                image = read_image(path, max_pixels)
                check_aspect_ratio(image.shape[0], image.shape[1], params, str(path))
            except (AtssError, OSError) as e:
                failed.append((path, str(e)))
                print(f"{path}: skipped: {e}", file=sys.stderr)
                continue
            group.append(path)
            images.append(image)
        if not group:
            continue
        if tta is not None:
            detections = []
            for path, image in zip(group, images):
                try:
                    detections.append(tta(image, str(path)))
                except AtssError as e:  # a pass would shrink it to a sliver
                    failed.append((path, str(e)))
                    print(f"{path}: skipped: {e}", file=sys.stderr)
                    detections.append(None)
        else:
            detections = detect(
                model, images, config, args.batch_size, names=[str(p) for p in group]
            )
        for path, image, det in zip(group, images, detections):
            if det is None:
                continue
            picture = out / pictures[path]
            save_detection_grid([image], [det], names, picture, args.score_threshold, [str(path)])
            for box, score, cls in zip(det["boxes"], det["scores"], det["classes"]):
                records.append(
                    {
                        "image": str(path),
                        "box_xyxy": [round(float(v), 2) for v in box],
                        "score": round(float(score), 5),
                        "label": int(cls),
                        "category_id": category_ids[int(cls) - 1],
                        "class_name": names[int(cls) - 1],
                    }
                )
            shown = int((det["scores"] >= args.score_threshold).sum())
            print(f"{path}: {len(det['scores'])} detections ({shown} drawn) -> {picture}")
    (out / "detections.json").write_text(json.dumps(records, indent=1))
    done = len(paths) - len(failed)
    print(f"Wrote {out / 'detections.json'} ({done} of {len(paths)} images)")
    if failed:
        print(
            f"atss-tf predict: {len(failed)} of {len(paths)} images skipped: "
            + ", ".join(str(p) for p, _ in failed[:10])
            + (", ..." if len(failed) > 10 else ""),
            file=sys.stderr,
        )
        return 1
    return 0

"""``atss-tf predict --weights W --images PATH... --out DIR``: detections json and pictures."""

from __future__ import annotations

import json
from pathlib import Path

from atss_tf.commands.common import add_config_arguments

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}


def add_arguments(parser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--weights", required=True, help=".keras model or .weights.h5 checkpoint")
    parser.add_argument("--images", nargs="+", required=True, help="image files or folders")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--score-threshold", type=float, default=0.3, help="drawing threshold")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="images per model call, grouped by canvas"
    )


def _image_paths(items: list[str]) -> list[Path]:
    paths = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES))
        elif p.exists():
            paths.append(p)
        else:
            raise SystemExit(f"atss-tf predict: image not found: {p}")
    if not paths:
        raise SystemExit("atss-tf predict: no images found in " + " ".join(items))
    return paths


def run(args) -> int:
    from atss_tf.config import load_config
    from atss_tf.inference import (
        class_names,
        detect,
        load_detector,
        read_image,
        save_detection_grid,
    )

    config = load_config(args.config, args.overrides) if args.config else None
    model = load_detector(args.weights, config)
    cfg = config or model.config
    names = class_names(cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    paths = _image_paths(args.images)
    # Images of a chunk are grouped by canvas inside detect; chunks bound memory.
    chunk = 4 * max(args.batch_size, 1)
    for start in range(0, len(paths), chunk):
        group = paths[start : start + chunk]
        images = [read_image(path) for path in group]
        for path, image, det in zip(group, images, detect(model, images, cfg, args.batch_size)):
            picture = out / f"{path.stem}_detections.png"
            save_detection_grid([image], [det], names, picture, args.score_threshold, [path.name])
            for box, score, cls in zip(det["boxes"], det["scores"], det["classes"]):
                records.append(
                    {
                        "image": str(path),
                        "box_xyxy": [round(float(v), 2) for v in box],
                        "score": round(float(score), 5),
                        "label": int(cls),
                        "class_name": names[int(cls) - 1],
                    }
                )
            shown = int((det["scores"] >= args.score_threshold).sum())
            print(f"{path}: {len(det['scores'])} detections ({shown} drawn) -> {picture}")
    (out / "detections.json").write_text(json.dumps(records, indent=1))
    print(f"Wrote {out / 'detections.json'}")
    return 0

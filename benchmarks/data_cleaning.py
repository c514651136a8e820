"""Ground-truth cleaning and the input pipeline: this checkout next to another, in one run.

    python -m benchmarks.data_cleaning --base /path/to/other/checkout [--rounds 3]

For each checkout (a separate process with its own ``PYTHONPATH``), rounds
in ABBA order:

1. ``load_coco(training=True, image_check="none")`` of a COCO-shaped json of
   ``--images`` images with 7.3 annotations each on average (COCO train2017's
   ratio), 1% crowd, 2% degenerate and 3% partly outside the image: the
   json reading and the box cleaning, milliseconds (best of 3);
2. the input pipeline on one CPU core (``python -m benchmarks.pipeline
   --pipeline-only`` in that checkout), images/s.

Medians are printed and appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, append_results
from benchmarks.input_checks import load, pipeline


def coco_like_json(path: Path, num_images: int, seed: int = 0) -> int:
    """Write a COCO-shaped annotations json (no image files); returns the annotation count."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "file_name": f"{i:06d}.jpg", "height": 480, "width": 640}
              for i in range(num_images)]  # fmt: skip
    counts = rng.poisson(7.3, num_images)
    annotations = []
    for image_id, n in zip(range(1, num_images + 1), counts):
        for _ in range(n):
            w, h = rng.uniform(4, 300, 2)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            kind = rng.uniform()
            if kind < 0.02:
                w = 0.0  # degenerate
            elif kind < 0.05:
                x = 640 - w / 2  # partly outside: clipped
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, 81)),
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": int(rng.uniform() < 0.01),
                }
            )
    categories = [{"id": c, "name": f"c{c}"} for c in range(1, 81)]
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))  # fmt: skip
    return len(annotations)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="the other checkout (e.g. a git worktree)")
    parser.add_argument("--base-name", default="base", help="its name in the table")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=20000, help="images in the json")
    parser.add_argument("--pipeline-images", type=int, default=48)
    args = parser.parse_args(argv)
    checkouts = {args.base_name: Path(args.base).resolve(), "this checkout": ROOT}
    results = {n: {"load": [], "pipe": []} for n in checkouts}
    kept: dict[str, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        annotations = Path(tmp) / "annotations.json"
        count = coco_like_json(annotations, args.images)
        for r in range(args.rounds):
            for name, checkout in list(checkouts.items())[:: 1 if r % 2 == 0 else -1]:
                out = load(checkout, annotations, tmp, image_check="none")
                results[name]["load"].append(out["ms"])
                kept[name] = (out["records"], out["boxes"])
                results[name]["pipe"].append(pipeline(checkout, args.pipeline_images))
    rows = ["| measure | " + " | ".join(checkouts) + " |", "|---|" + "---|" * len(checkouts)]
    for key, label, fmt in (
        ("load", f"load_coco: {args.images} images, {count} annotations (ms)", "{:.0f}"),
        ("pipe", "input pipeline, 1 core, 640x480 -> 1024x1024 (images/s)", "{:.1f}"),
    ):
        values = [fmt.format(statistics.median(results[n][key])) for n in checkouts]
        rows.append(f"| {label} | " + " | ".join(values) + " |")
    rows.append("| images kept, boxes kept | " + " | ".join(str(kept[n]) for n in checkouts) + " |")
    spread = ", ".join(
        f"{n}: load {min(results[n]['load']):.0f}-{max(results[n]['load']):.0f} ms, "
        f"pipeline {min(results[n]['pipe']):.1f}-{max(results[n]['pipe']):.1f}"
        for n in checkouts
    )
    body = "\n".join(rows) + f"\n\nMedians of {args.rounds} rounds in ABBA order; ranges {spread}."
    print(body)
    append_results(f"Ground-truth cleaning: {args.base_name} vs this checkout (CPU)", body, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

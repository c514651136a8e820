"""Input pipeline and train step speed.

    python -m benchmarks.pipeline [--images 48] [--steps 5]

1. Input pipeline on ONE CPU core (a subprocess with one TF thread and
   sequential tf.data maps): decode JPEG + resize/flip/pad + ATSS target
   encoding, COCO-like 640x480 JPEGs (3-12 shapes of 8-300 px) onto a
   1024x1024 canvas; images per second per core.
2. Train step of the R-50 ATSS model (80 classes, 512x512, batch 2, default
   threads) next to the same step without GroupNorm in the head, the two
   stepping alternately; median seconds per step after warm-up.

The table is printed and appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import ROOT, append_results, module_command  # noqa: E402


def pipeline_images_per_second(num_images: int) -> dict:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from atss_tf.config import load_config
    from atss_tf.data.pipeline import build_dataset
    from atss_tf.data.synthetic import generate_synthetic_coco
    from atss_tf.targets import TargetEncoder

    with tempfile.TemporaryDirectory() as tmp:
        split = generate_synthetic_coco(
            tmp,
            num_images,
            (480, 640),
            seed=0,
            num_classes=3,
            objects_per_image=(3, 12),
            object_size=(8, 300),
        )
        cfg = load_config(
            None,
            [
                "model.num_classes=3",
                "data.min_size=[768]",
                "data.max_size=1024",
                "data.canvases=[[1024, 1024]]",
                "data.batch_size=8",
                "data.num_parallel_calls=1",
                f"data.train_annotations={split.annotations}",
                f"data.train_images={split.images_dir}",
            ],
        )
        ds = build_dataset(
            cfg, "train", encoder_factory=lambda s: TargetEncoder.from_config(cfg, s), seed=0
        )
        options = tf.data.Options()
        options.threading.private_threadpool_size = 1
        options.autotune.enabled = False
        ds = ds.repeat().with_options(options)
        it = iter(ds)
        for _ in range(2):  # warm-up: traces and XLA compiles
            next(it)
        batches = 3 * max(1, num_images // 8)
        start = time.perf_counter()
        for _ in range(batches):
            x, y = next(it)
        elapsed = time.perf_counter() - start
        assert x["images"].shape[1:3] == (1024, 1024) and "cls_targets" in y
    return {"images_per_second": batches * 8 / elapsed, "images": batches * 8}


def train_step_seconds(steps: int) -> dict[bool, float]:
    """Median seconds per R-50 train step with and without GroupNorm.

    The two models step alternately, so a change of load on a shared machine
    hits both sides of the ratio alike.
    """
    import numpy as np

    from atss_tf.config import load_config
    from atss_tf.targets import TargetEncoder
    from atss_tf.training.fit import build_training_model

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 512, 512, 3)).astype("float32")
    boxes = np.zeros((2, 100, 4), np.float32)
    xy = rng.uniform(0, 400, (2, 10, 2))
    boxes[:, :10] = np.concatenate([xy, xy + rng.uniform(16, 200, (2, 10, 2))], -1)
    labels = np.zeros((2, 100), np.int32)
    labels[:, :10] = rng.integers(1, 81, (2, 10))
    models, targets = {}, None
    for gn in (True, False):
        cfg = load_config(
            None, [f"model.head.use_group_norm={str(gn).lower()}", "data.batch_size=2"]
        )
        models[gn] = build_training_model(cfg)
        targets = TargetEncoder.from_config(cfg, (512, 512)).encode_batch(boxes, labels, labels > 0)
        for _ in range(2):  # warm-up: tracing
            models[gn].train_on_batch(images, targets)
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(steps):
        for gn, model in models.items():
            start = time.perf_counter()
            model.train_on_batch(images, targets)
            times[gn].append(time.perf_counter() - start)
    return {gn: statistics.median(t) for gn, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--pipeline-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pipeline_only:
        print(json.dumps(pipeline_images_per_second(args.images)))
        return 0

    proc = subprocess.run(
        module_command("pipeline", "--pipeline-only", "--images", str(args.images)),
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    pipe = json.loads(proc.stdout.strip().splitlines()[-1])
    step = train_step_seconds(args.steps)
    gn, no_gn = step[True], step[False]
    body = "\n".join(
        [
            "| measure | value |",
            "|---|---|",
            f"| input pipeline, 1 core: decode + resize/flip/pad + ATSS encode, 640x480 -> 1024x1024 | "
            f"{pipe['images_per_second']:.1f} images/s ({pipe['images']} images) |",
            f"| R-50 ATSS train step, 512x512, batch 2, GroupNorm head | {gn:.3f} s |",
            f"| same step, head without GroupNorm | {no_gn:.3f} s |",
            f"| GroupNorm / no GroupNorm | {gn / no_gn:.2f}x |",
        ]
    )
    print(body)
    append_results("Input pipeline and R-50 train step (CPU)", body, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

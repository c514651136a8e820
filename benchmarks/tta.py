"""Test-time augmentation (26 passes, soft box voting) against single-scale detection.

    python -m benchmarks.tta [--weights MODEL.keras] [--factor 0.25] [--images 2]
                             [--rounds 2] [--modes eager,graph,xla]

Seconds per image of :class:`atss_tf.tta.TTADetector` (the authors' 26 passes)
and of :func:`atss_tf.inference.detect` (one pass), on the same images, in
each mode: ``eager`` (no ``tf.function``), ``graph`` (one ``tf.function``
per canvas) and ``xla`` (the same with ``jit_compile``). What shares a call:
a scale and its flip run as one batch of two on their canvas (13 network
calls for 26 passes), then one merge call.

Default model: the authors' R-50 fixture checkpoint converted here (random
weights that still give detections, so NMS and the merge carry a real load).
Sizes: the authors' TTA - test size 800/1333, scales 400..1800 with caps
1333/3000 and their box ranges - all times ``--factor``; the default 0.25
because the full size takes minutes per image and mode on a 2-core CPU (the
ratio TTA / single scale is about the ratio of their pixels either way).
Images: ``--images`` 480 x 640 crops of the fixture photo (one size, so the TTA
compiles its 13 canvases once). The first image of each side and mode
(tracing, compiling) is timed apart; then the median over ``--rounds`` rounds
that alternate the sides. The table is printed and appended to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import ROOT, append_results  # noqa: E402

FIXTURES = ROOT.parent / "shared" / "fixtures" / "official_atss_r50"
SIZE = (480, 640)


def make_images(count: int):
    """``count`` different 480 x 640 uint8 crops of the fixture photo, enlarged."""
    import numpy as np
    import tensorflow as tf

    photo = np.load(FIXTURES / "official_outputs.npz")["input_rgb_uint8"]
    out = []
    for k in range(count):
        crop = photo[k * 8 : k * 8 + 384, k * 8 : k * 8 + 512]
        image = tf.image.resize(crop, SIZE, antialias=True)
        out.append(np.asarray(tf.cast(tf.round(tf.clip_by_value(image, 0, 255)), tf.uint8)))
    return out


def scaled_config(factor: float):
    """The authors' test-time sizes, TTA scales, caps and box ranges times ``factor``."""
    from atss_tf.config import TTAConfig, load_config
    from atss_tf.config.tta import OFFICIAL_SCALE_RANGES, OFFICIAL_SCALES

    def r(v: float) -> int:
        return max(int(round(v * factor)), 1)

    test, cap = r(800), r(1333)
    short, long = test, r(800 * SIZE[1] / SIZE[0])
    canvas = [math.ceil(short / 32) * 32, math.ceil(min(long, cap) / 32) * 32]
    cfg = load_config(
        None,
        [
            f"data.min_size=[{test}]",
            f"data.max_size={cap}",
            f"data.canvases=[{canvas}, {canvas[::-1]}]",
        ],
    )
    cfg.tta = TTAConfig(
        scales=tuple(r(s) for s in OFFICIAL_SCALES),
        scale_ranges=tuple((lo * factor, hi * factor) for lo, hi in OFFICIAL_SCALE_RANGES),
        max_size=r(3000),
        small_max_size=cap,
        large_scale=test,
    )
    return cfg


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help=".keras model (default: the fixture)")
    parser.add_argument("--factor", type=float, default=0.25, help="scale of every size")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default="eager,graph,xla")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from atss_tf.convert import convert_official
    from atss_tf.inference import detect, load_detector
    from atss_tf.tta import TTADetector

    weights = args.weights
    if weights is None:
        weights = Path(tempfile.mkdtemp(prefix="tta-bench-")) / "r50.keras"
        convert_official(FIXTURES / "official_random_fp16.pth", weights)
    model = load_detector(weights)
    cfg = scaled_config(args.factor)
    images = make_images(args.images)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]

    rows = []
    for mode in modes:
        model.run_eagerly = mode == "eager"
        model.jit_compile = mode == "xla"
        model.predict_function = None  # rebuilt for the mode
        runner = TTADetector(model, cfg, jit_compile=mode == "xla", run_eagerly=mode == "eager")
        sides = {
            "single scale": lambda image: detect(model, [image], cfg, 1)[0],
            f"TTA, {len(runner.passes)} passes": runner,
        }
        first, counts = {}, {}
        for name, run in sides.items():
            start = time.perf_counter()
            counts[name] = len(run(images[0])["scores"])
            first[name] = time.perf_counter() - start
        times = {name: [] for name in sides}
        for r in range(args.rounds):
            for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
                start = time.perf_counter()
                for image in images:
                    sides[name](image)
                times[name].append((time.perf_counter() - start) / len(images))
        single = statistics.median(times["single scale"])
        for name in sides:
            t = statistics.median(times[name])
            rows.append(
                f"| {mode} | {name} | {first[name]:.1f} | {t:.2f} | {t / single:.1f}x "
                f"| {counts[name]} |"
            )
        print(rows[-2], rows[-1], sep="\n", flush=True)

    device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    t = cfg.tta
    body = "\n".join(
        [
            "| mode | side | first image (s) | s / image | vs single scale | detections |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    ) + (
        f"\n\nModel: {Path(weights).name}; sizes x{args.factor:g} of the authors': test size "
        f"{cfg.data.min_size[0]}/{cfg.data.max_size}, TTA scales "
        f"{', '.join(str(s) for s in t.scales)} (caps {t.small_max_size}/{t.max_size}), "
        f"merge {t.merge} at IoU {t.vote_iou}. Images: {args.images} crops of the fixture photo "
        f"at {SIZE[0]}x{SIZE[1]}; medians of {args.rounds} alternating rounds. A scale and "
        "its flip share one network call (batch 2 on their canvas: 13 calls for 26 passes), "
        "then one merge call; the first image includes tracing (graph) or compiling (XLA) "
        "every canvas."
    )
    print(body)
    append_results(f"TTA vs single scale, R-50, sizes x{args.factor:g} ({device})", body, argv)


if __name__ == "__main__":
    main()

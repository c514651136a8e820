"""The exported SavedModel against ``detect`` (``model.predict_on_batch``) on the same images.

    python -m benchmarks.serving [--weights MODEL.keras] [--config configs/atss_r50_fpn_1x_coco.yaml]
                                 [--images 8] [--rounds 3]

Default model: the authors' R-50 fixture checkpoint converted here (random
weights that still give 100 detections on the photo, so NMS is loaded as in
real use). The images are the fixture photo cropped and scaled to COCO-like
640x480 and 480x640 JPEGs, alternating orientations (so a batch uses two
canvases). Both sides start from the JPEG bytes: the SavedModel decodes in
its graph, the Keras side decodes with ``tf.io.decode_jpeg`` then calls
``detect`` (resize, canvases, ``predict_on_batch``, NMS, boxes to original
pixels). The test-time resize and canvases are the config's for both.

Per request size (1 and ``--images``): latency per request and images/s,
median of ``--rounds`` rounds that alternate the two sides. The first request
of each side (load and graph optimisation, or trace) is timed apart. The
table is printed and appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import ROOT, append_results  # noqa: E402

FIXTURES = ROOT.parent / "shared" / "fixtures" / "official_atss_r50"


def make_images(count: int) -> list[bytes]:
    """JPEG bytes of the fixture photo at 640x480 and 480x640, alternating."""
    import numpy as np
    import tensorflow as tf

    photo = np.load(FIXTURES / "official_outputs.npz")["input_rgb_uint8"]
    out = []
    for k in range(count):
        size = (480, 640) if k % 2 == 0 else (640, 480)
        image = tf.image.resize(photo, size, antialias=True)
        image = tf.cast(tf.round(tf.clip_by_value(image, 0, 255)), tf.uint8)
        out.append(tf.io.encode_jpeg(image, quality=90).numpy())
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help=".keras model (default: the fixture)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "atss_r50_fpn_1x_coco.yaml"))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    import tensorflow as tf

    from atss_tf.config import load_config
    from atss_tf.convert import convert_official
    from atss_tf.export import export_saved_model
    from atss_tf.inference import detect, load_detector, test_transform

    work = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    weights = args.weights
    if weights is None:
        weights = work / "r50.keras"
        convert_official(FIXTURES / "official_random_fp16.pth", weights)
    cfg = load_config(args.config, ["model.backbone.weights=null"])
    model = load_detector(weights)
    params = test_transform(model, cfg)
    start = time.perf_counter()
    version = export_saved_model(
        model,
        work / "serving",
        min_size=max(params.min_size),
        max_size=params.max_size,
        canvases=params.canvases,
    )
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    serve = tf.saved_model.load(str(version)).signatures["serving_default"]
    load_s = time.perf_counter() - start

    images = make_images(args.images)
    sides = {
        "SavedModel (image_bytes)": lambda batch: serve(inputs=tf.constant(batch)),
        "detect (model.predict_on_batch)": lambda batch: detect(
            model, [tf.io.decode_jpeg(b, channels=3).numpy() for b in batch], cfg, len(batch)
        ),
    }
    sizes = [1, args.images]
    first = {}
    for name, run in sides.items():  # the first request: load / trace costs
        start = time.perf_counter()
        run(images[:1])
        first[name] = time.perf_counter() - start
        for size in sizes[1:]:
            run(images[:size])
    times = {(name, size): [] for name in sides for size in sizes}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            for size in sizes:
                start = time.perf_counter()
                if size == 1:
                    for image in images:  # one request per image
                        sides[name]([image])
                    per_request = (time.perf_counter() - start) / len(images)
                else:
                    sides[name](images[:size])
                    per_request = time.perf_counter() - start
                times[(name, size)].append(per_request)

    device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    rows = [
        f"| side | first request (s) | batch 1: ms/request | batch 1: images/s "
        f"| batch {args.images}: ms/request | batch {args.images}: images/s |",
        "|---|---|---|---|---|---|",
    ]
    for name in sides:
        cells = [f"{first[name]:.1f}"]
        for size in sizes:
            t = statistics.median(times[(name, size)])
            cells += [f"{1000 * t:.0f}", f"{size / t:.2f}"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    canvases = ", ".join(f"{h}x{w}" for h, w in params.canvases)
    body = "\n".join(rows) + (
        f"\n\nModel: {Path(weights).name}, test size {max(params.min_size)}/{params.max_size}, "
        f"canvases {canvases}. Images: {args.images} JPEGs, 640x480 and 480x640 alternating; "
        "both sides start from the bytes. Medians of "
        f"{args.rounds} alternating rounds. Export took {export_s:.0f} s, loading the "
        f"SavedModel {load_s:.1f} s; the first request includes TensorFlow's graph "
        "optimisation (SavedModel) or the trace of each canvas (detect)."
    )
    print(body)
    append_results(f"Serving: SavedModel vs detect, R-50, {device}", body, argv)


if __name__ == "__main__":
    main()

"""The LiteRT export at each quantization against the Keras model: file size, CPU
latency and COCO AP on the demo's held-out images.

    python -m benchmarks.litert [--run runs/demo] [--threads 2] [--rounds 30] [--images 0]

``--run`` is a finished ``atss-tf demo`` folder: its ``model.keras`` and its
synthetic held-out data (``data/val.json``, ``data/val/``). Each row exports
``model.tflite`` with ``atss_tf.export_litert.export_litert`` (float32,
float16, dynamic; full int8 is refused, see ``INT8_UNAVAILABLE``) and runs it
in the ai-edge-litert interpreter with ``--threads`` threads (XNNPACK).

* size: ``model.tflite`` in MiB (Keras: the ``.keras`` file);
* latency: median of ``--rounds`` calls on one prepared held-out image after
  three warm-up calls: ``interpreter.invoke`` with NMS inside; Keras:
  ``predict_on_batch`` on the same inputs with TensorFlow's intra- and
  inter-op threads set to ``--threads``;
* AP / AP50: pycocotools over the held-out images (``--images`` 0: all);
  every side gets the same uint8 canvases (``prepare_input``), the Keras model
  its padding set to the pixel mean as the LiteRT graph sets it;
* Keras boxes matched: of the Keras detections scoring >= 0.3 on all images,
  how many have a same-class LiteRT box at IoU >= 0.9; score diff: the
  largest and the median ``|score|`` difference over those pairs.

The table is printed and appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import ROOT, append_results  # noqa: E402

MODES = (None, "float16", "dynamic")


def _keras_outputs(model, inputs, pad):
    """The Keras model on LiteRT inputs, as the four LiteRT outputs (yxyx, category ids)."""
    import numpy as np

    h, w = (int(v) for v in inputs["image_info"][0, 1])
    x = np.broadcast_to(np.asarray(pad, np.float32), inputs["image"].shape).copy()
    x[:, :h, :w] = inputs["image"][:, :h, :w]
    det = model.predict_on_batch({"images": x, "image_info": inputs["image_info"]})
    categories = np.array([0, *model.category_ids])
    return {
        "detection_boxes": np.asarray(det["boxes"])[..., [1, 0, 3, 2]],
        "detection_scores": np.asarray(det["scores"]),
        "detection_classes": categories[np.asarray(det["classes"])],
        "num_detections": np.asarray(det["num_detections"]),
    }


def _agreement(out, ref) -> tuple[list[float], int, int]:
    """Of one image's Keras detections scoring >= 0.3: the score differences of
    those with a same-class LiteRT box at IoU >= 0.9 (the best such box), how
    many have one, and how many there are."""
    import numpy as np

    from atss_tf.boxes import iou

    confident = ref["detection_scores"][0] >= 0.3
    if not confident.any():
        return [], 0, 0
    xyxy = [1, 0, 3, 2]
    r_boxes = ref["detection_boxes"][0][confident][:, xyxy]
    overlaps = np.asarray(iou(r_boxes[:, None], out["detection_boxes"][0][None][..., xyxy]))
    same = ref["detection_classes"][0][confident][:, None] == out["detection_classes"][0][None]
    overlaps = np.where(same, overlaps, 0.0)  # [k, D]
    best = np.argmax(overlaps, axis=1)
    hit = overlaps[np.arange(len(best)), best] >= 0.9
    diffs = np.abs(out["detection_scores"][0][best] - ref["detection_scores"][0][confident])
    return diffs[hit].tolist(), int(hit.sum()), int(confident.sum())


def _coco_ap(annotations, model, image_ids, outputs) -> tuple[float, float]:
    import numpy as np

    from atss_tf.evaluation import CocoEvaluator

    evaluator = CocoEvaluator(annotations, model.category_ids)
    label = {c: k + 1 for k, c in enumerate(model.category_ids)}
    for image_id, out in zip(image_ids, outputs):
        n = int(out["num_detections"][0])
        classes = np.array([[label[int(c)] for c in out["detection_classes"][0, :n]]], np.int64)
        evaluator.add(
            [image_id],
            out["detection_boxes"][:, :n][..., [1, 0, 3, 2]],
            out["detection_scores"][:, :n],
            classes.reshape(1, n),
            [n],
        )
    metrics = evaluator.evaluate()
    return metrics["AP"], metrics["AP50"]


def _median_ms(fn, x, rounds: int) -> float:
    """Median milliseconds of ``fn(x)`` over ``rounds`` calls after three warm-up calls."""
    for _ in range(3):
        fn(x)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(ROOT / "runs" / "demo"), help="an atss-tf demo folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--images", type=int, default=0, help="held-out images (0: all)")
    args = parser.parse_args(argv)

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from atss_tf.export_litert import (
        LiteRTDetector,
        export_litert,
        litert_transform,
        prepare_input,
    )
    from atss_tf.inference import load_detector, read_image, test_transform

    run = Path(args.run)
    weights = run / "model.keras"
    model = load_detector(weights)
    annotations = run / "data" / "val.json"
    coco = json.loads(annotations.read_text())
    held_out = coco["images"][: args.images or None]
    image_ids = [im["id"] for im in held_out]
    images = [read_image(run / "data" / "val" / im["file_name"]) for im in held_out]
    pad = test_transform(model).pad_value

    work = Path(tempfile.mkdtemp(prefix="litert-bench-"))
    rows = []
    reference = None
    for mode in ("keras", *MODES):
        start = time.perf_counter()
        if mode == "keras":
            runner = None
            inputs = [prepare_input(im, litert_transform(model)) for im in images]

            def call(x):
                return _keras_outputs(model, x, pad)

            size = weights.stat().st_size
            export_s = 0.0
        else:
            folder = work / (mode or "float32")
            export_litert(model, folder, quantize=mode)
            export_s = time.perf_counter() - start
            runner = LiteRTDetector(folder, num_threads=args.threads)
            inputs = [prepare_input(im, runner.params) for im in images]
            call = runner.run
            size = (folder / "model.tflite").stat().st_size
        outputs = [call(x) for x in inputs]
        if mode == "keras":
            reference = outputs
            diffs, matched, total = [], 0, 0
        else:
            stats = [_agreement(o, r) for o, r in zip(outputs, reference)]
            diffs = [d for s in stats for d in s[0]]
            matched, total = sum(s[1] for s in stats), sum(s[2] for s in stats)
        latency = _median_ms(call, inputs[0], args.rounds)
        ap, ap50 = _coco_ap(str(annotations), model, image_ids, outputs)
        name = "Keras (float32)" if mode == "keras" else f"LiteRT {mode or 'float32'}"
        agreement = (
            "- | - | - | -"
            if mode == "keras"
            else f"{matched}/{total} | {max(diffs):.1e} | {statistics.median(diffs):.1e} | "
            f"{export_s:.0f}"
        )
        rows.append(
            f"| {name} | {size / 2**20:.2f} | {latency:.1f} | {ap:.3f} | {ap50:.3f} | {agreement} |"
        )
        print(rows[-1], flush=True)

    height, width = litert_transform(model).canvases[0]
    header = (
        f"`atss-tf demo` model ({weights}), {len(images)} held-out images on the "
        f"{height}x{width} canvas, batch 1, {args.threads} threads; the LiteRT files from "
        "`export_litert`.\n\n"
        "| model | file MiB | latency ms | AP | AP50 | Keras boxes matched | max \\|score diff\\| | "
        "median \\|score diff\\| | export s |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    table = header + "\n".join(rows)
    print(table)
    append_results("LiteRT export: size, latency and AP per quantization", table, argv)


if __name__ == "__main__":
    main()

"""First-step (trace + compile) and steady train-step time per canvas of a config.

    python -m benchmarks.canvases [--config configs/atss_r50_fpn_1x_coco.yaml]
                                  [--batch 1] [--steps 2] [--jit]

For every canvas of the config, in order: the first ``train_on_batch`` (trace,
compile, run), then the canvases again in turn ``--steps`` times (steady steps:
no new trace may happen; the trace counts are printed). Side by side on the
first canvas, stepping alternately: the detector's per-canvas step function
against Keras' own single-graph ``train_function`` (which only works while one
canvas is used), so the cost of the per-canvas dispatch shows as a ratio.
Random images, ten boxes per image, backbone weights not downloaded. The table
is printed and appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import append_results  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/atss_r50_fpn_1x_coco.yaml")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--jit", action="store_true", help="compile the steps with XLA")
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    from atss_tf.config import load_config
    from atss_tf.targets import TargetEncoder
    from atss_tf.training.fit import build_training_model

    cfg = load_config(
        args.config,
        ["model.backbone.weights=null", f"train.jit_compile={str(args.jit).lower()}"],
    )
    model = build_training_model(cfg)
    rng = np.random.default_rng(0)

    def batch(canvas):
        h, w = canvas
        images = rng.uniform(0, 255, (args.batch, h, w, 3)).astype("float32")
        xy = rng.uniform(0, 0.6, (args.batch, 10, 2)) * [w, h]
        wh = rng.uniform(0.05, 0.4, (args.batch, 10, 2)) * [w, h]
        boxes = np.concatenate([xy, xy + wh], -1).astype("float32")
        labels = rng.integers(1, cfg.model.num_classes + 1, (args.batch, 10)).astype("int32")
        y = TargetEncoder.from_config(cfg, canvas).encode_batch(
            boxes, labels, np.ones((args.batch, 10), bool)
        )
        return images, {k: v.numpy() for k, v in y.items()}

    canvases = [tuple(c) for c in cfg.data.canvases]
    data = {c: batch(c) for c in canvases}

    def step(canvas) -> float:
        start = time.perf_counter()
        model.train_on_batch(*data[canvas])
        return time.perf_counter() - start

    first = {c: step(c) for c in canvases}
    steady = {c: [] for c in canvases}
    for _ in range(args.steps):
        for c in canvases:
            steady[c].append(step(c))
    traces = model.step_tracing_counts()["train"]

    # Keras' own train_function on the first canvas, alternating with ours.
    ours_fn = model.train_function
    keras_fn = TensorFlowTrainer._make_function(model, model.train_step)
    c0 = canvases[0]
    model.train_function = keras_fn
    step(c0)  # its trace and compile
    ours, theirs = [], []
    for _ in range(max(args.steps, 2)):
        model.train_function = ours_fn
        ours.append(step(c0))
        model.train_function = keras_fn
        theirs.append(step(c0))
    keras.backend.clear_session()

    mode = "XLA" if args.jit else "graph"
    rows = ["| canvas (H x W) | first step (trace + compile + run) | steady step (median) |"]
    rows.append("|---|---|---|")
    for c in canvases:
        rows.append(
            f"| {c[0]} x {c[1]} | {first[c]:.2f} s | {statistics.median(steady[c]):.2f} s |"
        )
    ratio = statistics.median(ours) / statistics.median(theirs)
    body = "\n".join(rows) + (
        f"\n\nTraces of the train step per canvas after {args.steps} rounds of alternating "
        f"canvases: {traces}.\n\nFirst canvas, steady step, alternating: per-canvas step "
        f"{statistics.median(ours):.3f} s, Keras' own train_function "
        f"{statistics.median(theirs):.3f} s (ratio {ratio:.3f}).\n"
    )
    title = f"Per-canvas train steps: {args.config}, batch {args.batch}, {mode} (CPU)"
    print(title)
    print(body)
    append_results(title, body, argv)


if __name__ == "__main__":
    main()

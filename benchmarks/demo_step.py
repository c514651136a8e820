"""The demo's train step with and without XLA, side by side.

    python -m benchmarks.demo_step [--steps 20] [--rounds 3]

The model of ``configs/demo_shapes.yaml`` (ResNet-18 at half width, BN, from
scratch) on random 256x256 images, batch 8, one ``train_on_batch`` at a time:
``train.jit_compile`` false (TensorFlow's kernels, oneDNN on CPUs) and true
(one XLA computation). Both models are built in this process from the same
seed; the variants alternate ``rounds`` times and the table gives the median
step over all rounds. This decided the demo config's ``jit_compile: true``.
Results are printed and appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import append_results, random_train_batch, time_train_steps  # noqa: E402


def build_step(jit_compile: bool, images, boxes, labels):
    """``step()``: one train step of the demo model on the fixed batch."""
    import keras
    import numpy as np
    import tensorflow as tf

    from atss_tf.commands.common import shipped_config
    from atss_tf.config import load_config
    from atss_tf.data.transforms import make_image_info
    from atss_tf.targets import TargetEncoder
    from atss_tf.training.fit import build_training_model

    cfg = load_config(shipped_config("demo_shapes.yaml"), [f"train.jit_compile={jit_compile}"])
    size = images.shape[1]
    cfg.data.canvases = ((size, size),)
    keras.utils.set_random_seed(0)
    model = build_training_model(cfg)
    encoder = TargetEncoder.from_config(cfg, (size, size))
    labels = np.minimum(labels, cfg.model.num_classes)
    y = encoder.encode_batch(boxes, labels, np.ones(labels.shape, bool))
    info = make_image_info((size, size), (size, size), (size, size))
    x = {
        "images": tf.constant(images),
        "image_info": tf.tile(info[None], [len(images), 1, 1]),
        "image_id": tf.range(len(images), dtype=tf.int64),
    }

    def step():
        return model.train_on_batch(x, y, return_dict=True)["loss"]

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    images, boxes, labels = random_train_batch(args.size, args.batch, objects=6)
    steps = {jit: build_step(jit, images, boxes, labels) for jit in (False, True)}
    times = {jit: [] for jit in steps}
    first = {}
    for _ in range(args.rounds):
        for jit, step in steps.items():
            r = time_train_steps(step, args.steps)
            first.setdefault(jit, r["first_step"])  # the compile: the first round's
            times[jit] += r["times"]
    rows = [
        "| train.jit_compile | step (median) | first step (trace + compile) |",
        "|---|---|---|",
    ]
    for jit in steps:
        rows.append(
            f"| {str(jit).lower()} | {statistics.median(times[jit]) * 1e3:.0f} ms | "
            f"{first[jit]:.1f} s |"
        )
    body = (
        f"The demo model, random {args.size}x{args.size} images, batch {args.batch}, "
        f"{args.rounds} alternating rounds of {args.steps} steps.\n\n" + "\n".join(rows)
    )
    print(body)
    append_results("Demo train step: XLA against TensorFlow's kernels", body, argv)


if __name__ == "__main__":
    main()

"""The demo's train step with and without XLA, side by side.

    python -m benchmarks.demo_step [--steps 20] [--rounds 3] [--thresholds 1048576 0]

The model of ``configs/demo_shapes.yaml`` (ResNet-18 at half width, BN, from
scratch) on random 256x256 images, batch 8, one ``train_on_batch`` at a time:
``train.jit_compile`` false (TensorFlow's kernels, oneDNN on CPUs) and true
(one XLA computation). Both models are built in this process from the same
seed; the variants alternate ``rounds`` times and the table gives the median
step over all rounds. This decided the demo config's ``jit_compile: true``.

Then the XLA step under each ``train.host_mmap_threshold`` of ``--thresholds``
(glibc's mmap threshold is per process, so each in its own process, the
processes in turn for ``rounds`` rounds), with the system time and the minor
page faults per step: a fixed 1 MiB threshold (the training default, which
returns freed activations to the system) makes every step fault its buffers
in again. This decided the demo config's ``host_mmap_threshold: 0``. Set
``--thresholds`` to nothing to skip it. Results are printed and appended to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import (  # noqa: E402
    ROOT,
    append_results,
    module_command,
    random_train_batch,
    time_train_steps,
)


def build_step(jit_compile: bool, images, boxes, labels, host_mmap_threshold: int | None = None):
    """``step()``: one train step of the demo model on the fixed batch."""
    import keras
    import numpy as np
    import tensorflow as tf

    from atss_tf.commands.common import shipped_config
    from atss_tf.config import load_config
    from atss_tf.data.transforms import make_image_info
    from atss_tf.targets import TargetEncoder
    from atss_tf.training.fit import build_training_model

    overrides = [f"train.jit_compile={jit_compile}"]
    if host_mmap_threshold is not None:
        overrides.append(f"train.host_mmap_threshold={host_mmap_threshold}")
    cfg = load_config(shipped_config("demo_shapes.yaml"), overrides)
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


def _one_threshold(args) -> None:
    """Child process: the XLA step at ``--one`` bytes' threshold; one json line."""
    import resource

    images, boxes, labels = random_train_batch(args.size, args.batch, objects=6)
    step = build_step(True, images, boxes, labels, host_mmap_threshold=args.one)
    step()  # the compile, outside the per-step counts
    before = resource.getrusage(resource.RUSAGE_SELF)
    r = time_train_steps(step, args.steps)
    after = resource.getrusage(resource.RUSAGE_SELF)
    n = args.steps + 2  # time_train_steps runs two untimed steps first
    r["sys_s_per_step"] = (after.ru_stime - before.ru_stime) / n
    r["user_s_per_step"] = (after.ru_utime - before.ru_utime) / n
    r["minor_faults_per_step"] = (after.ru_minflt - before.ru_minflt) / n
    print(json.dumps(r))


def _threshold_table(args) -> str:
    runs = {t: [] for t in args.thresholds}
    for _ in range(args.rounds):
        for t in args.thresholds:
            extra = ["--one", str(t), "--steps", str(args.steps)]
            extra += ["--size", str(args.size), "--batch", str(args.batch)]
            out = subprocess.run(
                module_command("demo_step", *extra),
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            runs[t].append(json.loads(out.strip().splitlines()[-1]))
    rows = [
        "| train.host_mmap_threshold | step (median) | system time per step | "
        "user time per step | minor page faults per step | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for t, rs in runs.items():
        name = f"{t} ({t / 2**20:g} MiB)" if t else "0 (glibc's dynamic threshold)"
        med = statistics.median(x for r in rs for x in r["times"])
        rows.append(
            f"| {name} | {med * 1e3:.0f} ms | "
            f"{statistics.median(r['sys_s_per_step'] for r in rs) * 1e3:.0f} ms | "
            f"{statistics.median(r['user_s_per_step'] for r in rs) * 1e3:.0f} ms | "
            f"{statistics.median(r['minor_faults_per_step'] for r in rs):,.0f} | "
            f"{max(r['peak_rss_mib'] for r in rs):.0f} MiB |"
        )
    return (
        f"The XLA step, each threshold in its own process, {args.rounds} rounds in turn "
        f"of {args.steps} timed steps; times per step are the medians over the rounds "
        "(user and system time of the whole process, both cores).\n\n" + "\n".join(rows)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--thresholds", type=int, nargs="*", default=[2**20, 0])
    parser.add_argument("--skip-jit", action="store_true", help="only the thresholds")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        return _one_threshold(args)
    if args.thresholds:
        body = _threshold_table(args)
        print(body)
        append_results("Demo train step: glibc's mmap threshold (XLA step)", body, argv)
    if args.skip_jit:
        return
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

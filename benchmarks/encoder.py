"""Target encoder speed: windowed ATSS next to a dense A x M ATSS, one CPU thread.

    python -m benchmarks.encoder [--size 1024] [--boxes 100] [--batch 8] [--repeats 50]

Both encoders are XLA-compiled, warmed up, and timed on the same random
COCO-like boxes (median of repeats): one image per call, a batch per call,
and per image through ``tf.data`` (``dataset.map``). The table is printed and
appended to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# One thread, set before the TF runtime starts.
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

from atss_tf.config import Config  # noqa: E402
from atss_tf.targets import TargetEncoder  # noqa: E402
from benchmarks.common import RESULTS, append_results  # noqa: E402


def random_boxes(rng, size: int, num: int, batch: int) -> np.ndarray:
    """COCO-like boxes: sqrt(area) log-uniform in [8, 0.7 * size], aspect 1/3..3."""
    side = np.exp(rng.uniform(np.log(8), np.log(0.7 * size), (batch, num)))
    ratio = np.exp(rng.uniform(np.log(1 / 3), np.log(3), (batch, num)))
    w, h = side / np.sqrt(ratio), side * np.sqrt(ratio)
    x1 = rng.uniform(0, np.maximum(size - w, 1))
    y1 = rng.uniform(0, np.maximum(size - h, 1))
    b = np.stack([x1, y1, np.minimum(x1 + w, size), np.minimum(y1 + h, size)], -1)
    return b.astype(np.float32)


def median_ms(fn, repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def fetch(out: dict) -> None:
    for v in out.values():
        v.numpy()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--boxes", type=int, default=100)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--no-append", action="store_true", help="do not write RESULTS.md")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    cfg = Config()
    size, num, batch = args.size, args.boxes, args.batch
    boxes = random_boxes(rng, size, num, batch)
    labels = rng.integers(1, 81, (batch, num)).astype(np.int32)
    mask = np.ones((batch, num), bool)

    windowed = TargetEncoder.from_config(cfg, (size, size))
    # Algorithm 1 as the authors compute it: full A x M matrices (targets/dense_atss.py).
    dense = TargetEncoder(cfg.model, replace(cfg.assigner, type="atss_dense"), (size, size), num)
    a = windowed.encode_batch(boxes, labels, mask)
    b = dense.encode_batch(boxes, labels, mask)
    agree = float(np.mean(a["matched_gt"].numpy() == b["matched_gt"].numpy()))
    positives = int((a["matched_gt"].numpy() >= 0).sum()) / batch

    rows = []
    for name, enc in (("windowed (ours)", windowed), ("dense A x M", dense)):
        single = median_ms(lambda e=enc: fetch(e(boxes[0], labels[0], mask[0])), args.repeats)
        batched = (
            median_ms(
                lambda e=enc: fetch(e.encode_batch(boxes, labels, mask)), max(args.repeats // 4, 5)
            )
            / batch
        )
        # Steady state of one iterator (creating one instantiates the function).
        ds = tf.data.Dataset.from_tensor_slices((boxes, labels, mask)).repeat().map(enc)
        options = tf.data.Options()
        options.threading.private_threadpool_size = 1
        options.threading.max_intra_op_parallelism = 1
        iterator = iter(ds.with_options(options))
        data = (
            median_ms(
                lambda it=iterator: [next(it) for _ in range(batch)], max(args.repeats // 4, 5)
            )
            / batch
        )
        rows.append((name, single, batched, data))

    title = (
        f"Target encoder, ATSS k=9, {size}x{size} canvas "
        f"({windowed.anchor_grid.num_anchors} anchors), {num} boxes, 1 CPU thread"
    )
    note = (
        f"Median of repeats, ms per image. Windowed and dense agree on "
        f"{100 * agree:.3f}% of anchors ({positives:.0f} positives per image).\n\n"
    )
    table = (
        f"| encoder | 1 image / call | batch {batch} / call | tf.data map |\n"
        "|---|---|---|---|\n"
        + "".join(f"| {n} | {s:.3f} | {b:.3f} | {d:.3f} |\n" for n, s, b, d in rows)
        + f"| dense / windowed | {rows[1][1] / rows[0][1]:.1f}x | "
        f"{rows[1][2] / rows[0][2]:.1f}x | {rows[1][3] / rows[0][3]:.1f}x |\n"
    )
    print(f"{title}\n{note}{table}")
    if not args.no_append:
        append_results(title, note + table, argv)
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

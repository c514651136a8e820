"""Target encoder on dense scenes: time and memory per image at 100 / 300 / 1000 boxes.

    python -m benchmarks.dense_scenes [--canvas 800x1344] [--boxes 100,300,1000] [--repeats 20]

``data.max_instances`` is the ``M`` of every image's padded ground truth, so
the encoder always works on ``M`` rows, however many boxes an image has. Each
(encoder, M) runs in its own process, on one CPU thread, with TensorFlow's BFC
allocator on the CPU (``TF_CPU_ALLOCATOR_USE_BFC``) so that
``get_memory_info`` gives the peak allocation of a call: the default windowed
ATSS (``assigner.type: atss``, what training runs) and the authors' dense
``A x M`` form (``atss_dense``, ``targets/dense_atss.py``) for comparison. One
image per call, as ``dataset.map`` calls it, XLA-compiled; random COCO-like
boxes (``benchmarks.encoder.random_boxes``), all ``M`` of them valid. The
table is printed and appended to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from benchmarks.common import RESULTS, ROOT, append_results, module_command

ENCODERS = (("windowed (default)", "atss"), ("dense A x M", "atss_dense"))


def _child(canvas: tuple[int, int], num: int, assigner_type: str, repeats: int) -> dict:
    """One (encoder, M) in this process: compile seconds, median ms, peak MiB."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from dataclasses import replace

    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    from atss_tf.config import Config
    from atss_tf.targets import TargetEncoder
    from benchmarks.encoder import fetch, median_ms, random_boxes

    cfg = Config()
    rng = np.random.default_rng(0)
    boxes = random_boxes(rng, min(canvas), num, 1)[0]
    boxes[:, [0, 2]] *= canvas[1] / min(canvas)  # spread over the canvas width
    labels = rng.integers(1, 81, num).astype(np.int32)
    mask = np.ones(num, bool)
    encoder = TargetEncoder(cfg.model, replace(cfg.assigner, type=assigner_type), canvas, num)
    inputs = [tf.constant(v) for v in (boxes, labels, mask)]

    start = time.perf_counter()
    out = encoder(*inputs)
    fetch(out)
    compile_s = time.perf_counter() - start
    positives = int((out["matched_gt"].numpy() >= 0).sum())

    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    fetch(encoder(*inputs))
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"] - before
    ms = median_ms(lambda: fetch(encoder(*inputs)), repeats, warmup=2)
    return {
        "anchors": encoder.anchor_grid.num_anchors,
        "compile_s": compile_s,
        "ms": ms,
        "peak_mib": peak / 2**20,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "positives": positives,
    }


def _size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--canvas", type=_size, default=(800, 1344), help="HxW (default 800x1344)")
    p.add_argument("--boxes", default="100,300,1000", help="M values, comma-separated")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--no-append", action="store_true", help="do not write RESULTS.md")
    p.add_argument("--child", nargs=2, metavar=("M", "TYPE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        result = _child(args.canvas, int(args.child[0]), args.child[1], args.repeats)
        print("RESULT " + json.dumps(result))
        return 0

    canvas = f"{args.canvas[0]}x{args.canvas[1]}"
    env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true", "TF_CPP_MIN_LOG_LEVEL": "2"}
    rows = []
    for num in (int(v) for v in args.boxes.split(",")):
        for name, kind in ENCODERS:
            command = module_command(
                "dense_scenes", "--canvas", canvas, "--repeats", str(args.repeats)
            )
            proc = subprocess.run(
                [*command, "--child", str(num), kind],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
            )
            line = next((s for s in proc.stdout.splitlines() if s.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            r = json.loads(line[len("RESULT ") :])
            rows.append((num, name, r))
            print(f"M={num} {name}: {r}", flush=True)

    anchors = rows[0][2]["anchors"]
    title = (
        f"Target encoder on dense scenes: ATSS k=9, {canvas} canvas ({anchors} anchors), "
        f"M = {args.boxes.replace(',', ' / ')} boxes, 1 CPU thread"
    )
    note = (
        "One image per call (what `dataset.map` runs), XLA; median of "
        f"{args.repeats} calls after the compile, each (encoder, M) in its own process. "
        "peak MiB: the call's peak allocation above its inputs (BFC allocator); RSS: the "
        "process's peak resident memory (TensorFlow itself included). All M boxes valid, "
        "random COCO-like sizes.\n\n"
    )
    table = (
        "| M (boxes) | encoder | ms / image | peak MiB / image | first call (s) | "
        "process RSS (MiB) | positives |\n|---|---|---|---|---|---|---|\n"
        + "".join(
            f"| {m} | {n} | {r['ms']:.1f} | {r['peak_mib']:.1f} | {r['compile_s']:.1f} | "
            f"{r['rss_mib']:.0f} | {r['positives']} |\n"
            for m, n, r in rows
        )
    )
    print(f"{title}\n{note}{table}")
    if not args.no_append:
        append_results(title, note + table, argv)
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

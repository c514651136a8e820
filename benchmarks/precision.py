"""Train step speed and peak memory by precision, XLA and gradient accumulation.

    python -m benchmarks.precision [--steps 5] [--rounds 2] [--size 512] [--batch 2]
                                   [--official ATSS_CHECKOUT --torch-python PY]

The R-50 ATSS model (80 classes, GroupNorm head, frozen BN) on random images
of ``size`` x ``size``, batch ``batch``, one train step at a time
(``train_on_batch``). Each variant runs in a fresh process, so its peak
resident memory (``ru_maxrss``: weights, optimizer state, activations,
TensorFlow itself) is its own; the variants run in turn, ``rounds`` times,
and the table gives the median step time over all rounds and the largest
peak. On a GPU the variants are measured there too (peak GPU memory from
``tf.config.experimental.get_memory_info``). Results are printed and
appended to benchmarks/RESULTS.md.

With ``--official`` (a checkout of github.com/sfzhang15/ATSS) and
``--torch-python`` (an interpreter with PyTorch and yacs), the authors' own
float32 train step on the same data (``PY -m benchmarks.official_step``) is one
more variant in every round, and the table gives each variant against it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import (  # noqa: E402
    ROOT,
    append_results,
    module_command,
    random_train_batch,
    time_train_steps,
)

NO_XLA = "train.jit_compile=false"  # explicit: the default (auto) is XLA on GPUs
VARIANTS = {
    "float32": [NO_XLA],
    "float32, XLA": ["train.jit_compile=true"],
    "float32, oneDNN off": [NO_XLA],
    "mixed_bfloat16": ["train.precision=mixed_bfloat16", NO_XLA],
    "mixed_bfloat16, XLA": ["train.precision=mixed_bfloat16", "train.jit_compile=true"],
    "mixed_float16": ["train.precision=mixed_float16", NO_XLA],
    "float32, accumulate_steps=2": ["train.accumulate_steps=2", NO_XLA],
}
# XLA's CPU backend has its own convolutions; TensorFlow's kernels call oneDNN.
# Without oneDNN the plain step shows what the XLA step's kernels cost.
VARIANT_ENV = {"float32, oneDNN off": {"TF_ENABLE_ONEDNN_OPTS": "0"}}
OFFICIAL = "official ATSS (PyTorch), float32"


def one_variant(overrides: list[str], steps: int, size: int, batch: int) -> dict:
    """Median seconds per step and peak memory of one variant (in this process)."""
    import numpy as np
    import tensorflow as tf

    from atss_tf.config import load_config
    from atss_tf.targets import TargetEncoder
    from atss_tf.training.fit import build_training_model

    images, xyxy, classes = random_train_batch(size, batch)
    boxes = np.zeros((batch, 100, 4), np.float32)  # padded to the encoder's max boxes
    boxes[:, : xyxy.shape[1]] = xyxy
    labels = np.zeros((batch, 100), np.int32)
    labels[:, : classes.shape[1]] = classes
    cfg = load_config(None, [f"data.batch_size={batch}", *overrides])
    model = build_training_model(cfg)
    targets = TargetEncoder.from_config(cfg, (size, size)).encode_batch(boxes, labels, labels > 0)
    result = time_train_steps(
        lambda: model.train_on_batch(images, targets, return_dict=True)["loss"], steps
    )
    gpu = tf.config.list_logical_devices("GPU")
    peak_gpu = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20 if gpu else None
    return {**result, "peak_gpu_mib": peak_gpu}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--official", default=None, help="checkout of sfzhang15/ATSS")
    parser.add_argument("--torch-python", default=None, help="interpreter with PyTorch and yacs")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if (args.official is None) != (args.torch_python is None):
        parser.error("--official and --torch-python go together")
    if args.one is not None:
        print(json.dumps(one_variant(VARIANTS[args.one], args.steps, args.size, args.batch)))
        return 0

    if args.official is not None:
        # The subprocesses run at the repository root: a relative path given
        # from elsewhere still names the same checkout and interpreter.
        args.official = str(Path(args.official).resolve())
        if os.sep in args.torch_python:
            args.torch_python = str(Path(args.torch_python).absolute())
    names = list(args.variants) + ([OFFICIAL] if args.official else [])
    results: dict[str, list[dict]] = {name: [] for name in names}
    shape = ["--steps", str(args.steps), "--size", str(args.size), "--batch", str(args.batch)]
    for _ in range(args.rounds):
        for name in names:
            if name == OFFICIAL:
                command = module_command(
                    "official_step", "--code", args.official, *shape, python=args.torch_python
                )
            else:
                command = module_command("precision", "--one", name, *shape)
            env = {**os.environ, **VARIANT_ENV.get(name, {})}
            proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
            if proc.returncode != 0:
                print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            results[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))

    import tensorflow as tf

    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"

    def median_step(name: str) -> float | None:
        runs = results.get(name)
        return statistics.median(t for r in runs for t in r["times"]) if runs else None

    bases = {"float32": median_step("float32"), "official": median_step(OFFICIAL)}
    bases = {k: v for k, v in bases.items() if v}
    gpu = device == "GPU"
    lines = [
        f"R-50 ATSS train step, {args.size}x{args.size}, batch {args.batch}, GroupNorm head, "
        f"{args.steps} steps x {args.rounds} rounds per variant, each in its own process, "
        f"variants in turn within a round ({device}).",
        "",
        "| Variant | s/step (median) | "
        + "".join(f"vs {k} | " for k in bases)
        + "first step (s) | peak RSS (MiB) |"
        + (" peak GPU (MiB) |" if gpu else ""),
        "|---|---|" + "---|" * len(bases) + "---|---|" + ("---|" if gpu else ""),
    ]
    for name, runs in results.items():
        if not runs:
            lines.append(f"| {name} | failed |" + " |" * (len(bases) + 2 + gpu))
            continue
        median = median_step(name)
        ratios = "".join(f" {median / b:.2f}x |" for b in bases.values())
        first = statistics.median(r["first_step"] for r in runs)
        rss = max(r["peak_rss_mib"] for r in runs)
        row = f"| {name} | {median:.3f} |{ratios} {first:.1f} | {rss:.0f} |"
        if gpu:
            peak = [r["peak_gpu_mib"] for r in runs if r["peak_gpu_mib"] is not None]
            row += f" {max(peak):.0f} |" if peak else " |"
        lines.append(row)
    body = "\n".join(lines)
    print(body)
    append_results(f"Train step by precision, XLA and accumulation ({device})", body, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

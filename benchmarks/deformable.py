"""The deformable conv (DCNv2) against a plain 3x3 conv, and R-50-DCN against R-50.

    python -m benchmarks.deformable [--layers c4 c5 p3] [--batch 2] [--repeats 3]
                                    [--size 512] [--steps 3] [--skip-layers] [--skip-models]

Layers: :func:`atss_tf.model.deformable.modulated_deform_conv2d` (offsets of
standard deviation 1.5 px, as the fixtures' calibration) against
``tf.nn.conv2d`` with the same kernel, at the R-50 sizes of an 800 x 1333
image: ``c4`` (256 channels, 50 x 84, the stage's 3x3 width), ``c5`` (512,
25 x 42) and the head's ``p3`` (256, 100 x 168); forward, and forward +
backward (gradients of input, offsets and kernel), each eager, in a
``tf.function`` and with XLA. A third side, ``im2col``, is the literal
transcription this layer avoids (all nine taps' four corners gathered at once,
one matrix product over the ``[B, N, 9C]`` columns, plain autodiff): its memory
is why the layer loops over the taps. Every (layer, side, mode) runs in its
own process with TensorFlow's BFC allocator on the CPU
(``TF_CPU_ALLOCATOR_USE_BFC``), so that ``get_memory_info`` gives the peak of
the measured call above what was allocated before it (input, kernel, offsets).

Models: the R-50 ATSS train step (``train_on_batch``) and inference
(``predict_on_batch``: network and post-processing) at ``size`` x ``size``,
batch ``batch``, against the same with DCN in c3-c5 and the head towers (the
official ``atss_dcnv2_R_50_FPN_1x``), each in its own process (peak RSS).

The tables are printed and appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import (  # noqa: E402
    ROOT,
    append_results,
    module_command,
    random_train_batch,
    time_train_steps,
)

# (channels, height, width) of the R-50 maps of an 800 x 1333 image.
LAYERS = {"c4": (256, 50, 84), "c5": (512, 25, 42), "p3": (256, 100, 168)}
SIDES = ("dcn", "im2col", "conv")
MODES = ("eager", "graph", "xla")
DCN = ["model.backbone.dcn_stages=[c3, c4, c5]", "model.head.dcn=true"]


def _im2col(x, offsets, mask, kernel):
    """The literal transcription: every tap's corners in one gather, one matmul."""
    import tensorflow as tf

    from atss_tf.model.deformable import TAPS, bilinear_taps

    batch, height, width, channels = x.shape
    indices, weights = bilinear_taps(offsets, mask, (height, width), 1)
    flat = tf.reshape(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), [batch, -1, channels])
    corners = tf.gather(flat, indices, batch_dims=1)  # [B, N, 9, 4, C]
    columns = tf.einsum("bnkjc,bnkj->bnkc", corners, weights)
    out = tf.einsum("bnkc,kcf->bnf", columns, tf.reshape(kernel, [TAPS, channels, -1]))
    return tf.reshape(out, [batch, height, width, -1])


def one_layer(layer: str, side: str, mode: str, batch: int, repeats: int) -> dict:
    """Forward and forward + backward: median seconds and peak bytes above the inputs."""
    import numpy as np
    import tensorflow as tf

    from atss_tf.model.deformable import modulated_deform_conv2d

    channels, height, width = LAYERS[layer]
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(batch, height, width, channels)).astype("float32"))
    om = tf.constant(rng.normal(scale=1.5, size=(batch, height, width, 27)).astype("float32"))
    kernel = tf.constant(rng.normal(scale=0.02, size=(3, 3, channels, channels)).astype("float32"))

    def forward(x, om, kernel):
        offsets, mask = om[..., :18], tf.sigmoid(om[..., 18:])
        if side == "dcn":
            return modulated_deform_conv2d(x, offsets, mask, kernel)
        if side == "im2col":
            return _im2col(x, offsets, mask, kernel)
        return tf.nn.conv2d(x, kernel, 1, "SAME")

    def backward(x, om, kernel):
        with tf.GradientTape() as tape:
            tape.watch([x, om, kernel])
            loss = tf.reduce_sum(tf.square(forward(x, om, kernel)))
        return [g for g in tape.gradient(loss, [x, om, kernel]) if g is not None]

    out = {}
    for name, fn in (("forward", forward), ("backward", backward)):
        if mode != "eager":
            fn = tf.function(fn, jit_compile=mode == "xla")
        start = time.perf_counter()
        tf.nest.map_structure(np.asarray, fn(x, om, kernel))  # trace, compile, warm up
        first = time.perf_counter() - start
        times, peaks = [], []
        for _ in range(repeats):
            tf.config.experimental.reset_memory_stats("CPU:0")
            before = tf.config.experimental.get_memory_info("CPU:0")["current"]
            start = time.perf_counter()
            result = fn(x, om, kernel)
            tf.nest.map_structure(np.asarray, result)
            times.append(time.perf_counter() - start)
            peaks.append(tf.config.experimental.get_memory_info("CPU:0")["peak"] - before)
            del result
        out[name] = {"seconds": statistics.median(times), "peak": max(peaks), "first": first}
    out["input_bytes"] = int(x.shape.num_elements()) * 4
    return out


def one_model(dcn: bool, size: int, batch: int, steps: int) -> dict:
    """Train step and inference of R-50 ATSS with or without DCN (in this process)."""
    import numpy as np

    from atss_tf.config import load_config
    from atss_tf.targets import TargetEncoder
    from atss_tf.training.fit import build_training_model

    images, xyxy, classes = random_train_batch(size, batch)
    boxes = np.zeros((batch, 100, 4), np.float32)
    boxes[:, : xyxy.shape[1]] = xyxy
    labels = np.zeros((batch, 100), np.int32)
    labels[:, : classes.shape[1]] = classes
    overrides = [f"data.batch_size={batch}", "train.jit_compile=false", *(DCN if dcn else [])]
    cfg = load_config(None, overrides)
    model = build_training_model(cfg)
    targets = TargetEncoder.from_config(cfg, (size, size)).encode_batch(boxes, labels, labels > 0)
    predict = time_train_steps(
        lambda: model.predict_on_batch(images)["num_detections"].sum(), steps
    )
    train = time_train_steps(
        lambda: model.train_on_batch(images, targets, return_dict=True)["loss"], steps
    )
    return {"train": train, "predict": predict}


def _run(args: list[str], bfc: bool = False) -> dict | None:
    env = {**os.environ, **({"TF_CPU_ALLOCATOR_USE_BFC": "true"} if bfc else {})}
    proc = subprocess.run(
        module_command("deformable", *args), capture_output=True, text=True, env=env, cwd=ROOT
    )
    if proc.returncode != 0:
        print(f"{' '.join(args)}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f}"


def layer_table(layers: list[str], batch: int, repeats: int) -> str:
    lines = [
        f"One 3x3 conv, {len(layers)} R-50 sizes of an 800 x 1333 image, batch {batch}, "
        f"float32, C in = C out; median of {repeats} calls after a warm-up, each (layer, side, "
        "mode) in its own process. fwd: forward; bwd: forward + gradients of input, offsets "
        "and kernel. MiB: peak allocation of the call above its inputs (BFC allocator). dcn: "
        "this layer; im2col: the literal transcription (all corners at once); conv: "
        "tf.nn.conv2d.",
        "",
        "| layer | mode | side | fwd (ms) | fwd / conv | bwd (ms) | bwd / conv | fwd MiB | "
        "bwd MiB | first fwd + bwd (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for layer in layers:
        c, h, w = LAYERS[layer]
        for mode in MODES:
            results = {
                side: _run(["--layer", layer, side, mode, str(batch), str(repeats)], bfc=True)
                for side in SIDES
            }
            conv = results["conv"]
            for side, r in results.items():
                if r is None:
                    lines.append(f"| {layer} | {mode} | {side} | failed |" + " |" * 6)
                    continue
                f, b = r["forward"], r["backward"]
                ratio = (
                    (f" {f['seconds'] / conv['forward']['seconds']:.2f}x |",
                     f" {b['seconds'] / conv['backward']['seconds']:.2f}x |")
                    if conv
                    else (" |", " |")
                )  # fmt: skip
                lines.append(
                    f"| {layer} ({c}, {h}x{w}) | {mode} | {side} | {f['seconds'] * 1000:.0f} |"
                    f"{ratio[0]} {b['seconds'] * 1000:.0f} |{ratio[1]} {_mib(f['peak'])} | "
                    f"{_mib(b['peak'])} | {f['first'] + b['first']:.1f} |"
                )
        inputs = next((r for r in results.values() if r), None)
        if inputs:
            lines[0] += f" {layer} input: {_mib(inputs['input_bytes'])} MiB."
    return "\n".join(lines)


def model_table(size: int, batch: int, steps: int) -> str:
    results = {
        name: _run(["--model", flag, str(size), str(batch), str(steps)])
        for name, flag in (("R-50", "plain"), ("R-50-DCN (c3-c5, head)", "dcn"))
    }
    plain = results["R-50"]
    lines = [
        f"R-50 ATSS, {size}x{size}, batch {batch}, float32, graph (train.jit_compile false), "
        f"median of {steps} steps after two; each model in its own process. R-50-DCN: the "
        "official atss_dcnv2_R_50_FPN_1x (DCN in every block of c3-c5 and the towers' last "
        "conv). predict: predict_on_batch (network and post-processing).",
        "",
        "| model | train s/step | vs R-50 | predict s/batch | vs R-50 | first train step (s) | "
        "peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if r is None:
            lines.append(f"| {name} | failed |" + " |" * 5)
            continue
        train = statistics.median(r["train"]["times"])
        pred = statistics.median(r["predict"]["times"])
        ratios = ("", "")
        if plain:
            ratios = (
                f"{train / statistics.median(plain['train']['times']):.2f}x",
                f"{pred / statistics.median(plain['predict']['times']):.2f}x",
            )
        lines.append(
            f"| {name} | {train:.2f} | {ratios[0]} | {pred:.2f} | {ratios[1]} | "
            f"{r['train']['first_step']:.1f} | {r['train']['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", nargs="*", default=list(LAYERS), choices=list(LAYERS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--skip-layers", action="store_true")
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--layer", nargs=5, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.layer is not None:
        layer, side, mode, batch, repeats = args.layer
        print(json.dumps(one_layer(layer, side, mode, int(batch), int(repeats))))
        return 0
    if args.model is not None:
        flag, size, batch, steps = args.model
        print(json.dumps(one_model(flag == "dcn", int(size), int(batch), int(steps))))
        return 0

    tables = []
    if not args.skip_layers:
        tables.append(layer_table(args.layers, args.batch, args.repeats))
        print(tables[-1], flush=True)
    if not args.skip_models:
        tables.append(model_table(args.size, args.batch, args.steps))
        print(tables[-1], flush=True)
    if tables:
        append_results(
            "Deformable conv (DCNv2) vs plain conv, R-50-DCN vs R-50 (CPU)",
            "\n\n".join(tables),
            argv,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

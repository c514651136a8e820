"""R-50 and R-50-DCN ATSS on one GPU: inference, serving, training, memory, TFLOP/s.

    python -m benchmarks.gpu [--budget-s 450] [--models r50 r50-dcn]
                             [--precisions float32 mixed_float16 mixed_bfloat16]
                             [--results PATH] [--smoke]

Measures, in this order (each for every model before the next), until
``--budget-s`` seconds are spent (what is left is listed as not run):

1. **Inference** ms/image on an 800 x 1333 image's canvas (800 x 1344),
   batch 1 and 8, XLA off and on, float32 first: ``predict_on_batch``, i.e. the
   network, decoding and NMS (``postprocess``), median of repeats after a
   warm-up (trace or XLA compile), with the peak GPU memory of the calls
   (``tf.config.experimental.get_memory_info``).
2. **Training** images/s at 800 x 1344 with the largest batch that fits
   (float32, ``train.jit_compile: auto``, i.e. XLA on GPUs): batches 2 and 4
   give the peak memory per image, the largest batch that fits 90% of the
   device's memory is tried next, halving towards the last that ran on an
   out-of-memory error.
3. **Serving**: the exported SavedModel's ``serving_default`` signature
   (``image_bytes``: JPEG decoding, resize, network, NMS), requests of 1 and
   8 images.
4. The other precisions' inference (``mixed_float16``, ``mixed_bfloat16``).

Each measurement runs in its own process (``--one``: an out-of-memory error
or a slow compile ends that process only), with random weights
(``model.backbone.weights: null``) and, for training, random images and boxes.
R-50-DCN is the official ``atss_dcnv2_R_50_FPN_1x`` (deformable conv2 in every
block of c3-c5 and in the towers' last conv).

**TFLOP/s**: the network forward's FLOPs counted by TensorFlow's profiler on
the traced graph of the float32 plain-conv model at the measured shape (for
R-50-DCN the same count: a deformable 3x3 conv does the multiply-adds of a
plain one, its sampling and offsets convs are not counted); training counts 3x
the forward (forward, input and weight gradients). Against the device's dense
peak from :data:`DEVICE_PEAKS` by device name: the TF32 peak for float32
where TensorFlow's TF32 is on (Ampere and newer), the 16-bit peak for the
mixed precisions.

``--smoke`` runs everything in this process on tiny shapes and a tiny model
(the CPU, seconds): the suite runs it so the script keeps working. One dated
entry is appended to benchmarks/RESULTS.md (``--results``: another file).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import RESULTS, ROOT, append_results, module_command  # noqa: E402

# Dense (no sparsity) peak TFLOP/s: (float32 FMA, TF32 tensor cores, 16-bit
# tensor cores), and the memory in GiB, from the vendor's data sheets (SXM
# parts where there are several). The longest name found in the device's name wins.
DEVICE_PEAKS: dict[str, tuple[float, float | None, float, float]] = {
    "H200": (67.0, 494.7, 989.4, 141),
    "H100 PCIe": (51.2, 378.0, 756.0, 80),
    "H100": (66.9, 494.7, 989.4, 80),
    "A100": (19.5, 156.0, 312.0, 80),
    "L40S": (91.6, 183.0, 362.0, 48),
    "A10": (31.2, 62.5, 125.0, 24),
    "L4": (30.3, 60.0, 121.0, 24),
    "V100": (15.7, None, 125.0, 32),  # no TF32 or bfloat16 tensor cores
    "T4": (8.1, None, 65.0, 16),
}
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
MODELS = {
    "r50": ("R-50", []),
    "r50-dcn": (
        "R-50-DCN",
        [
            "model.backbone.depth=50",
            "model.backbone.dcn_stages=[c3, c4, c5]",
            "model.head.dcn=true",
        ],
    ),
}
FULL = {"size": (800, 1333), "canvas": (800, 1344), "batches": (1, 8), "train": (2, 4)}
# Smoke: one batch of each (no search for the largest batch: a CPU has no
# memory peak to fit); each further batch size costs the suite a trace.
SMOKE = {"size": (64, 96), "canvas": (64, 96), "batches": (1,), "train": (1,)}
# The smoke runs' tiny network (as the test suite's tiny config): ResNet-18 but
# for R-50-DCN (deformable convs are in bottlenecks), a quarter of the channels.
SMOKE_OVERRIDES = [
    "model.backbone.depth=18",
    "model.backbone.width_multiplier=0.25",
    "model.fpn.channels=32",
    "model.head.num_convs=1",
    "model.head.channels=32",
    "model.head.group_norm_groups=8",
    "data.min_size=[64]",
    "data.max_size=96",
    "data.canvases=[[64, 96]]",
]


def device_peaks(name: str) -> tuple[float, float | None, float, float] | None:
    """The :data:`DEVICE_PEAKS` row of the longest key in ``name``, or None."""
    keys = sorted((k for k in DEVICE_PEAKS if k.lower() in name.lower()), key=len, reverse=True)
    return DEVICE_PEAKS[keys[0]] if keys else None


def peak_tflops(name: str, precision: str, tf32: bool) -> float | None:
    """The device's dense peak for ``precision`` (TF32's for float32 when ``tf32``)."""
    row = device_peaks(name)
    if row is None:
        return None
    fp32, tf32_peak, half, _ = row
    if precision != "float32":
        return half
    return tf32_peak if tf32 and tf32_peak is not None else fp32


def _config(model: str, smoke: bool, extra: list[str]):
    from atss_tf.config import load_config

    overrides = ["model.backbone.weights=null", *MODELS[model][1], *extra]
    return load_config(None, (SMOKE_OVERRIDES if smoke else []) + overrides)


def _device() -> tuple[str, str]:
    """``("GPU:0", its name)`` or ``("CPU:0", "CPU")``."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU:0", "CPU"
    details = tf.config.experimental.get_device_details(gpus[0])
    return "GPU:0", str(details.get("device_name", "GPU"))


def _reset_peak(device: str) -> None:
    import tensorflow as tf

    if device.startswith("GPU"):
        tf.config.experimental.reset_memory_stats(device)


def _peak_mib(device: str) -> float | None:
    import tensorflow as tf

    if not device.startswith("GPU"):
        return None
    return tf.config.experimental.get_memory_info(device)["peak"] / 2**20


def forward_flops(network, canvas: tuple[int, int]) -> float:
    """FLOPs of one image's forward through ``network`` (a float32 plain-conv
    detector) on ``canvas``: TensorFlow's profiler on the frozen graph."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    spec = tf.TensorSpec([1, *canvas, 3], tf.float32)
    concrete = tf.function(lambda x: network(x, training=False)).get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(concrete)
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    return float(tf.compat.v1.profiler.profile(graph=frozen.graph, options=options).total_float_ops)


def job_inference(
    model: str, precision: str, xla_modes: list[bool], smoke: bool, deadline: float, emit
) -> None:
    """Inference per (XLA in ``xla_modes``, batch) of ``model`` in ``precision``:
    one record each."""
    import tensorflow as tf

    from atss_tf.model import build_detector
    from atss_tf.training.fit import dtype_policy

    shapes = SMOKE if smoke else FULL
    device, _ = _device()
    with dtype_policy(precision):
        network = build_detector(_config(model, smoke, []))
    if precision == "float32":  # R-50-DCN counts as its plain-conv twin (module doc)
        plain = network
        if MODELS[model][1]:
            plain = build_detector(
                _config(model, smoke, ["model.backbone.dcn_stages=[]", "model.head.dcn=false"])
            )
        emit({"kind": "flops", "model": model, "flops": forward_flops(plain, shapes["canvas"])})
    repeats = 2 if smoke else 10
    for xla in xla_modes:
        network.jit_compile = xla
        network.predict_function = None
        for batch in shapes["batches"]:
            if time.time() > deadline:
                return
            images = tf.random.uniform([batch, *shapes["canvas"], 3], 0, 255, seed=batch)
            start = time.perf_counter()
            network.predict_on_batch(images)
            first = time.perf_counter() - start
            _reset_peak(device)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                network.predict_on_batch(images)  # numpy outputs: the call has finished
                times.append(time.perf_counter() - start)
            emit(
                {
                    "kind": "inference",
                    "model": model,
                    "precision": precision,
                    "xla": xla,
                    "batch": batch,
                    "seconds": statistics.median(times),
                    "first": first,
                    "peak_mib": _peak_mib(device),
                }
            )


def _train_batch(cfg, batch: int, canvas: tuple[int, int]):
    """Random images on ``canvas`` and the targets of 10 random boxes each."""
    import numpy as np
    import tensorflow as tf

    from atss_tf.targets import TargetEncoder

    rng = np.random.default_rng(0)
    h, w = canvas
    xy = rng.uniform(0, 0.75, (batch, 100, 2)) * [w, h]
    wh = rng.uniform(16, 0.4 * min(h, w), (batch, 100, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    labels = np.where(np.arange(100) < 10, rng.integers(1, 81, (batch, 100)), 0).astype(np.int32)
    encoder = TargetEncoder.from_config(cfg, canvas)
    targets = encoder.encode_batch(boxes, labels, labels > 0)
    return tf.random.uniform([batch, h, w, 3], 0, 255, seed=1), targets


def job_train(model: str, batch: int, smoke: bool, deadline: float, emit) -> None:
    """Training at ``batch``: images/s and peak memory (one record)."""
    from atss_tf.training.fit import build_training_model

    shapes = SMOKE if smoke else FULL
    device, _ = _device()
    cfg = _config(model, smoke, [f"data.batch_size={batch}", "train.warmup_iters=0"])
    network = build_training_model(cfg)
    images, targets = _train_batch(cfg, batch, shapes["canvas"])
    start = time.perf_counter()
    network.train_on_batch(images, targets)
    first = time.perf_counter() - start
    times = []  # the peak memory is the process's, the first step's included: what must fit
    for _ in range(2 if smoke else 5):
        if time.time() > deadline:
            break
        start = time.perf_counter()
        network.train_on_batch(images, targets)  # returns numbers: the step has finished
        times.append(time.perf_counter() - start)
    emit(
        {
            "kind": "train",
            "model": model,
            "batch": batch,
            "seconds": statistics.median(times) if times else None,
            "first": first,
            "peak_mib": _peak_mib(device),
            "xla": bool(network.jit_compile),
        }
    )


def _jpeg(shape: tuple[int, int]) -> bytes:
    """A JPEG of smooth gradients and noise, ``shape`` (h, w)."""
    import numpy as np
    import tensorflow as tf

    h, w = shape
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)], -1)
    image = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
    return tf.io.encode_jpeg(image, quality=90).numpy()


def job_serving(model: str, smoke: bool, deadline: float, emit) -> None:
    """The SavedModel's ``serving_default`` on JPEGs of the measured size."""
    import tensorflow as tf

    from atss_tf.export import export_saved_model
    from atss_tf.model import build_detector

    shapes = SMOKE if smoke else FULL
    device, _ = _device()
    cfg = _config(model, smoke, [])
    network = build_detector(cfg)
    h, w = shapes["size"]
    work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    start = time.perf_counter()
    version = export_saved_model(
        network,
        work / "serving",
        min_size=h,
        max_size=w,
        canvases=[shapes["canvas"]],
        warmup=not smoke,
    )
    export_s = time.perf_counter() - start
    serve = tf.saved_model.load(str(version)).signatures["serving_default"]
    jpeg = _jpeg((h, w))
    for batch in shapes["batches"]:
        if time.time() > deadline:
            return
        request = tf.constant([jpeg] * batch)
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), serve(inputs=request))
        first = time.perf_counter() - start
        _reset_peak(device)
        times = []
        for _ in range(2 if smoke else 10):
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), serve(inputs=request))
            times.append(time.perf_counter() - start)
        emit(
            {
                "kind": "serving",
                "model": model,
                "batch": batch,
                "seconds": statistics.median(times),
                "first": first,
                "export_s": export_s,
                "peak_mib": _peak_mib(device),
            }
        )


def job_info(smoke: bool, deadline: float, emit) -> None:
    """The device: name, memory, TF32."""
    import tensorflow as tf

    device, name = _device()
    emit(
        {
            "kind": "info",
            "device": name,
            "tf32": bool(tf.config.experimental.tensor_float_32_execution_enabled()),
            "memory_mib": _device_memory_mib(name) if device.startswith("GPU") else None,
            "tensorflow": tf.__version__,
        }
    )


def _device_memory_mib(name: str) -> float | None:
    """Total memory of GPU 0 from ``nvidia-smi``, else :data:`DEVICE_PEAKS`'s."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return float(out.stdout.split()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        row = device_peaks(name)
        return row[3] * 1024 if row else None


JOBS = {
    "info": job_info,
    "inference": job_inference,
    "train": job_train,
    "serving": job_serving,
}


def run_job(job: list, smoke: bool, deadline: float) -> tuple[list[dict], str | None]:
    """Run ``job`` (``[kind, *args]``): in this process for ``smoke``, else in
    its own (``--one``) until ``deadline``. Returns its records and an error
    (``"out of memory"``, ``"time budget"``, the last lines of stderr) or None."""
    records: list[dict] = []
    timeout = deadline - time.time()
    if timeout < 5:
        return records, "time budget"
    if smoke:
        JOBS[job[0]](*job[1:], smoke, deadline, records.append)
        return records, None
    command = module_command("gpu", "--one", json.dumps(job), "--deadline", str(deadline))
    try:
        proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
        stdout, stderr, error = proc.stdout, proc.stderr, None
        if proc.returncode != 0:
            error = "failed"
    except subprocess.TimeoutExpired as e:
        stdout, stderr, error = e.stdout or "", e.stderr or "", "time budget"
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
        stderr = stderr.decode() if isinstance(stderr, bytes) else stderr
    records = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    if error == "failed":
        oom = any(s in stderr for s in ("RESOURCE_EXHAUSTED", "OOM", "out of memory"))
        error = "out of memory" if oom else stderr.strip()[-300:]
        if not oom:
            print(f"{job}: failed\n{stderr[-2000:]}", file=sys.stderr)
    return records, error


def largest_batch(peaks: dict[int, float], memory_mib: float) -> int | None:
    """The batch whose peak, linear in the batch through the two measured
    ``peaks`` {batch: MiB}, fits 90% of ``memory_mib``."""
    (b1, m1), (b2, m2) = sorted(peaks.items())[:2]
    per_image = (m2 - m1) / (b2 - b1)
    if per_image <= 0:
        return None
    return int((0.9 * memory_mib - (m1 - per_image * b1)) // per_image)


def measure(
    models: list[str], precisions: list[str], xla_modes: list[bool], smoke: bool, budget_s: float
) -> dict:
    """Every job in order until the budget is spent: the records, the jobs not
    run or failed (with why), the seconds taken."""
    start = time.time()
    deadline = start + budget_s
    shapes = SMOKE if smoke else FULL
    records: list[dict] = []
    problems: list[str] = []

    timings: list[str] = []

    def run(job: list) -> list[dict]:
        started = time.time()
        got, error = run_job(job, smoke, deadline)
        timings.append(f"{' '.join(map(str, job[:3]))} {time.time() - started:.0f} s")
        records.extend(got)
        if error:
            problems.append(f"{' '.join(map(str, job))}: {error}")
        return got

    info = run(["info"])
    memory = info[0]["memory_mib"] if info else None
    # Each kind for every model before the next kind: a budget spent early
    # still leaves both models' float32 inference, then both trainings.
    for model in models:
        run(["inference", model, "float32", xla_modes])
    for model in models:
        peaks = {}
        for batch in shapes["train"]:
            got = run(["train", model, batch])
            if got and got[0]["peak_mib"] is not None:
                peaks[batch] = got[0]["peak_mib"]
        target = largest_batch(peaks, memory) if len(peaks) == 2 and memory else None
        ran = max(peaks) if peaks else None
        while target is not None and ran is not None and target > ran:
            got, error = run_job(["train", model, target], smoke, deadline)
            if got:
                records.extend(got)
                break
            problems.append(f"train {model} {target}: {error}")
            if error != "out of memory":
                break
            target = (target + ran) // 2 if target - ran > 1 else None
    for model in models:
        run(["serving", model])
    for precision in precisions:
        if precision == "float32":
            continue
        for model in models:
            run(["inference", model, precision, xla_modes])
    return {
        "records": records,
        "problems": problems,
        "timings": timings,
        "seconds": time.time() - start,
    }


def report(result: dict, smoke: bool) -> str:
    """The entry's tables."""
    shapes = SMOKE if smoke else FULL
    records = result["records"]
    info = next((r for r in records if r["kind"] == "info"), {})
    name, tf32 = info.get("device", "unknown"), info.get("tf32", False)
    flops = {r["model"]: r["flops"] for r in records if r["kind"] == "flops"}
    h, w = shapes["size"]
    ch, cw = shapes["canvas"]

    def tflops(
        model: str, seconds_per_image: float | None, precision: str, factor: float = 1.0
    ) -> str:
        if not flops.get(model) or not seconds_per_image:
            return " | "
        achieved = factor * flops[model] / seconds_per_image / 1e12
        peak = peak_tflops(name, precision, tf32)
        return f"{achieved:.3g} | " + (f"{100 * achieved / peak:.0f}%" if peak else "")

    def mib(value: float | None) -> str:
        return "" if value is None else f"{value:.0f}"

    memory = info.get("memory_mib")
    lines = [
        f"Device: {name}"
        + (f", {memory / 1024:.0f} GiB" if memory else "")
        + (f", TF32 {'on' if tf32 else 'off'}" if memory else "")
        + f"; image {h}x{w} on a {ch}x{cw} canvas; random weights and images"
        + (", tiny network (smoke)" if smoke else "")
        + ". Forward FLOPs per image (profiler, plain-conv network): "
        + (", ".join(f"{MODELS[m][0]} {f / 1e9:.3g} GFLOP" for m, f in flops.items()) or "none")
        + ".",
        "",
        "Inference (predict_on_batch: network, decoding, NMS), median of repeats after a warm-up:",
        "",
        "| model | precision | XLA | batch | ms/image | images/s | first call (s) "
        "| peak GPU (MiB) | TFLOP/s | of peak |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in records if r["kind"] == "inference"):
        per_image = r["seconds"] / r["batch"]
        lines.append(
            f"| {MODELS[r['model']][0]} | {r['precision']} | {'on' if r['xla'] else 'off'} "
            f"| {r['batch']} | {1000 * per_image:.1f} | {1 / per_image:.1f} | {r['first']:.1f} "
            f"| {mib(r['peak_mib'])} | {tflops(r['model'], per_image, r['precision'])} |"
        )
    lines += [
        "",
        "Training (float32, train.jit_compile auto), train_on_batch, median of steps after one:",
        "",
        "| model | batch | XLA | s/step | images/s | first step (s) | peak GPU (MiB) "
        "| TFLOP/s (3x forward) | of peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in records if r["kind"] == "train"):
        s = r["seconds"]
        per_image = s / r["batch"] if s else None
        step = f"{s:.3f} | {1 / per_image:.1f}" if per_image else "time budget | "
        lines.append(
            f"| {MODELS[r['model']][0]} | {r['batch']} | {'on' if r['xla'] else 'off'} "
            f"| {step} | {r['first']:.1f} "
            f"| {mib(r['peak_mib'])} | {tflops(r['model'], per_image, 'float32', 3.0)} |"
        )
    lines += [
        "",
        "SavedModel serving_default (image_bytes: JPEG decoding, resize, network, NMS), float32:",
        "",
        "| model | images per request | ms/request | ms/image | first request (s) "
        "| export (s) | peak GPU (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in records if r["kind"] == "serving"):
        lines.append(
            f"| {MODELS[r['model']][0]} | {r['batch']} | {1000 * r['seconds']:.1f} "
            f"| {1000 * r['seconds'] / r['batch']:.1f} | {r['first']:.1f} | {r['export_s']:.0f} "
            f"| {mib(r['peak_mib'])} |"
        )
    lines += ["", f"Total {result['seconds']:.0f} s: " + ", ".join(result["timings"]) + "."]
    if result["problems"]:
        lines.append("Not run or failed: " + "; ".join(result["problems"]) + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget-s", type=float, default=None, help="default 450 (smoke: 60)")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--precisions", nargs="*", default=None, choices=PRECISIONS)
    parser.add_argument(
        "--xla", nargs="*", default=None, choices=["off", "on"], help="default: off on (smoke: off)"
    )
    parser.add_argument("--results", default=str(RESULTS), help="file the entry is appended to")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes in this process")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        job = json.loads(args.one)

        def emit(record: dict) -> None:
            print(json.dumps(record), flush=True)

        JOBS[job[0]](*job[1:], False, args.deadline or float("inf"), emit)
        return 0
    budget = args.budget_s if args.budget_s is not None else (60.0 if args.smoke else 450.0)
    # Smoke: the 16-bit policies cost a model build each and show nothing on a CPU.
    precisions = args.precisions or (["float32"] if args.smoke else list(PRECISIONS))
    # Smoke: XLA compiles R-50 for 15 s a batch size on a CPU.
    xla_modes = [m == "on" for m in (args.xla or (["off"] if args.smoke else ["off", "on"]))]
    result = measure(args.models, precisions, xla_modes, args.smoke, budget)
    body = report(result, args.smoke)
    print(body)
    title = "GPU benchmark: R-50 and R-50-DCN inference, serving, training" + (
        " (smoke, CPU)" if args.smoke else ""
    )
    append_results(title, body, argv, Path(args.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

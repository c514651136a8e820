"""Where the peak memory of an R-50 train step goes, ours against the authors' code.

    python -m benchmarks.memory [--steps 3] [--rounds 1] [--size 512] [--batch 2]
                                [--variants NAME ...] [--official ATSS_CHECKOUT --torch-python PY]

The train step of ``benchmarks.precision`` (R-50 ATSS, GroupNorm head,
``train_on_batch`` on ``random_train_batch``), each variant in its own process,
the variants in turn within a round. Every process records its resident memory
phase by phase (``benchmarks.common.PhaseMemory``: the RSS after each phase and
its peak during it): the interpreter and libraries imported, the model and
optimizer built, the batch and its targets made, the first step (tracing,
graph optimisation, the kernels' first run) and the steady steps.

``float32`` is the step as configured by default; ``glibc's mmap threshold``
variants set ``train.host_mmap_threshold=0`` (malloc's dynamic threshold, the
behaviour before that setting existed); ``BFC allocator`` and
``MALLOC_ARENA_MAX=2`` try the other allocator settings by environment;
``recompute_backbone`` turns on ``train.recompute_backbone``.

Two variants take TensorFlow's machinery away one piece at a time, to tell
which part of the gap to the official code is TensorFlow's own: ``eager
targets`` makes the batch's targets with the encoder's ops run one by one
(nothing is compiled by XLA in the process, as nothing is in the official
one), and ``eager targets, eager step`` also runs the train step eagerly
(``model.run_eagerly``: no traced graph, no Grappler, as in PyTorch).

The variant ``float32, BFC stats`` runs the plain step with TensorFlow's BFC
allocator on the CPU (``TF_CPU_ALLOCATOR_USE_BFC``) so that
``tf.config.experimental.get_memory_info`` gives what TensorFlow's tensors
hold: after the build (weights and optimizer slots) and at the peak of a
steady step (activations kept for the backward pass, gradients, kernels'
workspaces); and with ``tracemalloc`` on from the build on, the peak of Python's
own allocations (NumPy arrays included). The byte counts of the weights (trainable
and frozen) and of the optimizer slots come from the variables themselves; on
the official side from the parameters and the SGD momentum buffers.

With ``--official`` and ``--torch-python`` the authors' step
(``benchmarks.official_step.build_official_step``) is one more variant in every
round. The tables are printed and appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import (  # noqa: E402
    ROOT,
    PhaseMemory,
    append_results,
    module_command,
    random_train_batch,
)

NO_XLA = "train.jit_compile=false"
BEFORE = "train.host_mmap_threshold=0"  # glibc's dynamic threshold, as before issue 25


class Variant(NamedTuple):
    """One of our processes: config overrides, extra environment, and what it measures."""

    overrides: list[str]
    env: dict[str, str] = {}
    breakdown: bool = False  # BFC tensor counts and tracemalloc
    eager_targets: bool = False  # the encoder's ops run one by one: nothing compiled by XLA
    eager_step: bool = False  # the train step runs eagerly: no traced graph, no Grappler


VARIANTS: dict[str, Variant] = {
    "float32, glibc's mmap threshold": Variant([NO_XLA, BEFORE]),
    "float32": Variant([NO_XLA]),
    "float32, recompute_backbone": Variant([NO_XLA, "train.recompute_backbone=true"]),
    "float32, BFC stats": Variant([NO_XLA], {"TF_CPU_ALLOCATOR_USE_BFC": "true"}, True),
    "float32, glibc's mmap threshold, BFC allocator": Variant(
        [NO_XLA, BEFORE], {"TF_CPU_ALLOCATOR_USE_BFC": "true"}
    ),
    "float32, glibc's mmap threshold, MALLOC_ARENA_MAX=2": Variant(
        [NO_XLA, BEFORE], {"MALLOC_ARENA_MAX": "2"}
    ),
    "float32, glibc's mmap threshold, recompute_backbone": Variant(
        [NO_XLA, BEFORE, "train.recompute_backbone=true"]
    ),
    "float32, eager targets": Variant([NO_XLA], eager_targets=True),
    "float32, eager targets, eager step": Variant([NO_XLA], eager_targets=True, eager_step=True),
}
OFFICIAL = "official ATSS (PyTorch), float32"
PHASES = ("imports", "model + optimizer", "batch + targets", "first step", "steady steps")


def _timed_steps(step, steps: int, memory: PhaseMemory) -> list[float]:
    """First step, one untimed, ``steps`` timed; marks "first step" and "steady steps"."""
    step()
    memory.mark("first step")
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    memory.mark("steady steps")
    return times


def one_tf(name: str, steps: int, size: int, batch: int) -> dict:
    """Phase memory, byte counts and step times of our variant ``name`` (in this process)."""
    memory = PhaseMemory()
    import numpy as np
    import tensorflow as tf

    from atss_tf.config import load_config
    from atss_tf.targets import TargetEncoder
    from atss_tf.training.fit import build_training_model

    variant = VARIANTS[name]
    breakdown = variant.breakdown
    memory.mark("imports")
    if breakdown:
        import tracemalloc

        tracemalloc.start()
    cfg = load_config(None, [f"data.batch_size={batch}", *variant.overrides])
    model = build_training_model(cfg)
    model.run_eagerly = variant.eager_step
    memory.mark("model + optimizer")
    out: dict = {
        "trainable_bytes": sum(v.numpy().nbytes for v in model.trainable_weights),
        "frozen_bytes": sum(v.numpy().nbytes for v in model.non_trainable_weights),
        "slot_bytes": sum(v.numpy().nbytes for v in model.optimizer.variables if len(v.shape) > 0),
    }
    if breakdown:
        out["bfc_after_build"] = tf.config.experimental.get_memory_info("CPU:0")["current"]
    images, xyxy, classes = random_train_batch(size, batch)
    boxes = np.zeros((batch, 100, 4), np.float32)
    boxes[:, : xyxy.shape[1]] = xyxy
    labels = np.zeros((batch, 100), np.int32)
    labels[:, : classes.shape[1]] = classes
    encoder = TargetEncoder.from_config(cfg, (size, size))
    tf.config.run_functions_eagerly(variant.eager_targets)  # the compiled encoder's ops one by one
    targets = encoder.encode_batch(boxes, labels, labels > 0)
    tf.config.run_functions_eagerly(False)
    out["batch_bytes"] = images.nbytes + sum(np.asarray(t).nbytes for t in targets.values())
    memory.mark("batch + targets")

    def step() -> float:
        return float(model.train_on_batch(images, targets, return_dict=True)["loss"])

    out["times"] = _timed_steps(step, steps, memory)
    if breakdown:
        info = tf.config.experimental.get_memory_info
        before = info("CPU:0")["current"]
        tf.config.experimental.reset_memory_stats("CPU:0")
        step()
        out["bfc_before_step"] = before
        out["bfc_step_peak"] = info("CPU:0")["peak"]
        out["python_peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    out["phases"] = memory.phases
    return out


def one_official(code: str, steps: int, size: int, batch: int) -> dict:
    """Phase memory, byte counts and step times of the authors' step (in this process)."""
    memory = PhaseMemory()
    import torch

    from benchmarks.official_step import build_official_step

    memory.mark("imports")
    step = build_official_step(code, size, batch)
    # The model and optimizer are built with the batch in build_official_step:
    # both are counted in "model + optimizer"; the batch is 2-6 MiB.
    memory.mark("model + optimizer")
    memory.mark("batch + targets")
    out: dict = {"times": _timed_steps(step, steps, memory)}
    params = list(step.model.parameters())
    out["trainable_bytes"] = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    out["frozen_bytes"] = sum(
        t.numel() * t.element_size()
        for t in [*(p for p in params if not p.requires_grad), *step.model.buffers()]
    )
    out["slot_bytes"] = sum(
        v.numel() * v.element_size()
        for state in step.optimizer.state.values()
        for v in state.values()
        if torch.is_tensor(v)
    )
    out["phases"] = memory.phases
    return out


def _mib(n: float | None) -> str:
    return "" if n is None else f"{n / 2**20:.0f}"


def _peak(result: dict) -> float:
    return max(p["peak_mib"] for p in result["phases"])


def tables(results: dict[str, list[dict]], args: argparse.Namespace) -> str:
    """The phase table (RSS after / peak during each phase, MiB) and the breakdown."""
    names = [n for n, runs in results.items() if runs]
    lines = [
        f"R-50 ATSS train step, {args.size}x{args.size}, batch {args.batch}, float32, "
        f"{args.steps} timed steps, {args.rounds} round(s), each variant in its own process, "
        "in turn within a round (CPU). RSS after each phase / peak RSS during it (MiB); "
        "the process's peak is the largest.",
        "",
        "| phase | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for i, phase in enumerate(PHASES):
        cells = []
        for n in names:
            run = results[n][-1]["phases"][i]
            cells.append(f"{run['rss_mib']:.0f} / {run['peak_mib']:.0f}")
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    lines.append(
        "| **peak RSS** (max over rounds) | "
        + " | ".join(f"**{max(_peak(r) for r in results[n]):.0f}**" for n in names)
        + " |"
    )
    lines.append(
        "| s/step (median) | "
        + " | ".join(
            f"{statistics.median(t for r in results[n] for t in r['times']):.2f}" for n in names
        )
        + " |"
    )
    for key, label in (
        ("trainable_bytes", "trainable weights (MiB)"),
        ("frozen_bytes", "frozen weights and buffers (MiB)"),
        ("slot_bytes", "optimizer slots (MiB)"),
    ):
        lines.append(
            f"| {label} | " + " | ".join(_mib(results[n][-1].get(key)) for n in names) + " |"
        )
    bfc = next((results[n][-1] for n in names if "bfc_step_peak" in results[n][-1]), None)
    if bfc is not None:
        lines += [
            "",
            "TensorFlow's own accounting (the BFC run): tensors allocated after the build "
            f"{_mib(bfc['bfc_after_build'])} MiB, before a steady step "
            f"{_mib(bfc['bfc_before_step'])} MiB, at the step's peak "
            f"{_mib(bfc['bfc_step_peak'])} MiB (so the step's own tensors - activations kept "
            "for the backward pass, gradients, workspaces - peak at "
            f"{_mib(bfc['bfc_step_peak'] - bfc['bfc_before_step'])} MiB); the batch and its "
            f"targets {_mib(bfc['batch_bytes'])} MiB; Python's allocations (tracemalloc, "
            f"NumPy included) peak at {_mib(bfc['python_peak'])} MiB.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--official", default=None, help="checkout of sfzhang15/ATSS")
    parser.add_argument("--torch-python", default=None, help="interpreter with PyTorch and yacs")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if (args.official is None) != (args.torch_python is None):
        parser.error("--official and --torch-python go together")
    shape = (args.steps, args.size, args.batch)
    if args.one is not None:
        if args.one == OFFICIAL:
            result = one_official(args.official, *shape)
        else:
            result = one_tf(args.one, *shape)
        print(json.dumps(result))
        return 0

    if args.official is not None:
        args.official = str(Path(args.official).resolve())
        if os.sep in args.torch_python:
            args.torch_python = str(Path(args.torch_python).absolute())
    names = list(args.variants) + ([OFFICIAL] if args.official else [])
    results: dict[str, list[dict]] = {name: [] for name in names}
    common = ["--steps", str(args.steps), "--size", str(args.size), "--batch", str(args.batch)]
    for _ in range(args.rounds):
        for name in names:
            env = dict(os.environ)
            if name == OFFICIAL:
                command = module_command(
                    "memory", "--one", name, "--official", args.official,
                    "--torch-python", args.torch_python, *common, python=args.torch_python,
                )  # fmt: skip
            else:
                command = module_command("memory", "--one", name, *common)
                env.update(VARIANTS[name].env)
            proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
            if proc.returncode != 0:
                print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            results[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"{name}: peak {_peak(results[name][-1]):.0f} MiB", file=sys.stderr)
    body = tables(results, args)
    print(body)
    append_results("Peak training memory by phase, R-50 train step (CPU)", body, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

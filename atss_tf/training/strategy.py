"""``train.strategy``: where a run's replicas live.

* ``default``: one device.
* ``mirrored``: every GPU of this machine (else its CPU devices), one process.
* ``multi_worker``: ``MultiWorkerMirroredStrategy`` over the machines named in
  the ``TF_CONFIG`` environment variable, the way Vertex AI, Kubernetes
  (TFJob) and other cluster managers start TensorFlow workers. Every worker
  runs the same command; worker 0 (or the ``chief``) writes the checkpoints.
* ``tpu``: ``TPUStrategy`` on the TPU found by ``TPUClusterResolver``: the one
  attached to this VM (Colab's TPU runtime, Cloud TPU VMs), or the remote TPU
  or pod slice the ``TPU_NAME`` environment variable names.

Anything missing or malformed (no ``TF_CONFIG``, a ``TF_CONFIG`` without this
task, no TPU) is a :class:`~atss_tf.errors.ConfigError` naming what to set.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from atss_tf.config import STRATEGIES
from atss_tf.errors import ConfigError, first_line

TF_CONFIG_EXAMPLE = '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'


def read_tf_config(text: str | None = None) -> dict[str, Any]:
    """The cluster description of ``TF_CONFIG`` (default: the environment's), checked.

    Returns:
        ``{"cluster": {"worker": [...], ...}, "task": {"type": ..., "index": ...}}``.

    Raises:
        ConfigError: absent, not JSON, or without a ``cluster.worker`` list and
            a ``task`` that names one of the cluster's machines.
    """
    text = os.environ.get("TF_CONFIG") if text is None else text
    need = f"train.strategy=multi_worker needs TF_CONFIG, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}'"
    if not text:
        raise ConfigError(f"{need}; the environment variable TF_CONFIG is not set")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({e}); {need}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(cluster.get("worker", []), list):
        raise ConfigError(f"TF_CONFIG has no 'cluster' with a 'worker' list: {text}; {need}")
    if not any(isinstance(cluster.get(k), list) and cluster[k] for k in ("worker", "chief")):
        raise ConfigError(f"TF_CONFIG's cluster lists no worker: {text}; {need}")
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ConfigError(f"TF_CONFIG has no 'task' with 'type' and 'index': {text}; {need}")
    members = cluster.get(task["type"])
    index = task["index"]
    if not isinstance(members, list) or not isinstance(index, int) or not 0 <= index < len(members):
        raise ConfigError(
            f"TF_CONFIG's task {task} names no machine of its cluster {cluster}: "
            f"task.type must be one of {sorted(cluster)} and task.index below its count"
        )
    return config


def _check_reachable(master: str, timeout_s: float = 10.0) -> None:
    """Connect to a remote TPU's ``grpc://host:port`` first: TensorFlow's own
    connection waits forever for an address where nothing answers."""
    if not master.startswith("grpc://"):
        return  # a TPU attached to this VM ("" or "local")
    host, _, port = master[len("grpc://") :].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot reach {master}: {e}") from None


def _tpu_name() -> str:
    """``TPU_NAME`` when set; else ``"local"``, the TPU attached to this VM
    (Cloud TPU VMs and Colab's TPU runtime); ``""`` on the retired Colab TPU
    nodes, which announce themselves with ``COLAB_TPU_ADDR``."""
    if os.environ.get("TPU_NAME"):
        return os.environ["TPU_NAME"]
    return "" if os.environ.get("COLAB_TPU_ADDR") else "local"


def _tpu_strategy() -> tf.distribute.Strategy:
    tpu = _tpu_name()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        _check_reachable(resolver.master())
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError, RuntimeError) as e:
        where = (
            f"TPU_NAME={tpu!r}"
            if os.environ.get("TPU_NAME")
            else "this machine (TPU_NAME is not set)"
        )
        raise ConfigError(
            f"train.strategy=tpu: no TPU found on {where} ({first_line(e)}). On Colab choose "
            "Runtime > Change runtime type > TPU; on a Cloud TPU VM run on the VM; for a "
            "remote TPU set TPU_NAME; or use train.strategy=default or mirrored"
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def make_strategy(name: str, devices: Sequence[str] | None = None) -> tf.distribute.Strategy:
    """The strategy ``train.strategy`` names (see the module docstring).

    Create it before any other TensorFlow op of the process: multi-worker and
    TPU strategies configure the runtime.

    Args:
        name: one of :data:`STRATEGIES`.
        devices: ``mirrored`` only: the devices (default: all GPUs, else the CPUs).

    Raises:
        ConfigError: an unknown name, a missing or malformed ``TF_CONFIG``, no TPU.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if devices is None and not tf.config.list_logical_devices("GPU"):
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        read_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver()
        )
    if name == "tpu":
        return _tpu_strategy()
    raise ConfigError(f"unknown train.strategy {name!r}: expected one of {', '.join(STRATEGIES)}")


# CPU flags (Linux /proc/cpuinfo) of native 16-bit arithmetic, per precision.
NATIVE_CPU_FLAGS = {
    "mixed_bfloat16": ("avx512_bf16", "amx_bf16"),
    "mixed_float16": ("avx512_fp16", "amx_fp16"),
}


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags, or None where they cannot be read (not Linux)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return set()


def device_kind(strategy: tf.distribute.Strategy) -> str:
    """``"CPU"`` when every replica of ``strategy`` runs on a CPU, else the
    accelerator's kind (``"GPU"`` or ``"TPU"``)."""
    try:
        devices = list(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy: this process's default device
        devices = ["GPU:0"] if tf.config.list_logical_devices("GPU") else ["CPU:0"]
    for kind in ("TPU", "GPU"):
        if any(kind in d.upper() for d in devices):
            return kind
    return "CPU"


def resolve_jit_compile(setting: bool | str, strategy: tf.distribute.Strategy) -> bool:
    """``train.jit_compile`` for ``strategy``: true and false as given; ``auto``
    is XLA on accelerators and not on CPUs, where the XLA train step of R-50
    measured 1.3-1.5x slower than TensorFlow's own kernels
    (``benchmarks/RESULTS.md``: XLA's CPU convolutions and their gradients are
    slower than oneDNN's)."""
    if setting == "auto":
        return device_kind(strategy) != "CPU"
    return bool(setting)


def emulated_precision_warning(
    precision: str, strategy: tf.distribute.Strategy, flags: set[str] | None = None
) -> str | None:
    """Why ``precision`` will be slow here, or None: a 16-bit policy on a
    strategy whose devices are CPUs that have no native 16-bit arithmetic
    (TensorFlow then emulates it; measured in ``benchmarks/RESULTS.md``)."""
    if precision not in NATIVE_CPU_FLAGS or device_kind(strategy) != "CPU":
        return None
    flags = cpu_flags() if flags is None else flags
    if flags is None or flags & set(NATIVE_CPU_FLAGS[precision]):  # unknown, or native
        return None
    return (
        f"train.precision={precision} on a CPU without {' or '.join(NATIVE_CPU_FLAGS[precision])}: "
        "16-bit arithmetic is emulated and slower than float32 here (with "
        "train.jit_compile=true bfloat16 runs at about float32's speed)"
    )

"""Callbacks for long runs: exact resume after a kill, a clear stop on NaN, TensorBoard."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from atss_tf import files
from atss_tf.errors import CheckpointError, first_line

logger = logging.getLogger("atss_tf")


def write_atomically(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """``write(tmp)`` then rename ``tmp`` to ``path`` (local or remote, see
    :mod:`atss_tf.files`): a process killed or a disk filled mid-write leaves
    ``path`` as it was and no temporary file.

    Raises:
        CheckpointError: naming ``path`` and the system's reason.
    """
    path = os.fspath(path)
    tmp = files.join(os.path.dirname(path), "tmp-" + os.path.basename(path))
    try:
        with files.remote_errors(tmp):
            write(tmp)
        files.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # h5py reports a full disk as either
        files.remove(tmp)
        reason = getattr(e, "strerror", None) or first_line(e)
        raise CheckpointError(f"cannot write {path}: {reason}") from None


def save_model_file(model: keras.Model, path: str | os.PathLike) -> None:
    """``model.save(path)`` (``.keras``, local or remote) through :func:`write_atomically`."""
    write_atomically(path, model.save)


class ResumableCheckpoint(keras.callbacks.Callback):
    """Save model *and* optimizer state at every epoch end; restore on train begin.

    A checkpoint is the compiled model saved as ``.keras``: it holds the
    optimizer variables (``iterations``, momentum buffers), so restoring it
    with ``load_weights`` resumes at the same step with the same optimizer
    state, and ``atss-tf predict --weights`` takes it as it is. ``.keras`` and
    not ``.weights.h5``: Keras builds the HDF5 file in memory and writes a zip
    with Python's own I/O, so a full disk is an ``OSError``, where h5py writing
    to a full disk crashes the process on exit. Files are written to a
    temporary name and renamed, so a process killed mid-write leaves the
    previous checkpoint intact. ``.weights.h5`` checkpoints of earlier runs
    still restore.

    Args:
        directory: where ``ckpt-<step>.keras`` and ``latest.json`` live (local
            or remote, e.g. ``gs://bucket/run/checkpoints``).
        keep: number of checkpoints kept.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        super().__init__()
        self.directory = os.fspath(directory)
        self.keep = int(keep)

    def latest(self) -> dict | None:
        """``{"step": int, "epoch": int, "path": str}`` of the newest checkpoint, or None."""
        index = files.join(self.directory, "latest.json")
        if not files.exists(index):
            return None
        info = json.loads(files.read_text(index))
        if not files.exists(files.join(self.directory, info["path"])):
            raise FileNotFoundError(
                f"checkpoint index {index} names {info['path']}, which is missing"
            )
        return info

    def latest_or_none(self) -> dict | None:
        try:
            return self.latest()
        except (OSError, ValueError):
            return None

    def restore(self, model: keras.Model) -> dict | None:
        """Load the newest checkpoint into ``model`` (optimizer built first)."""
        info = self.latest()
        if info is None:
            return None
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(files.join(self.directory, info["path"]))
        return info

    def on_epoch_end(self, epoch, logs=None):
        files.makedirs(self.directory)
        step = int(self.model.optimizer.iterations.numpy())
        name = f"ckpt-{step:08d}.keras"
        index = json.dumps({"step": step, "epoch": epoch + 1, "path": name})
        try:
            write_atomically(files.join(self.directory, name), self.model.save)
            write_atomically(
                files.join(self.directory, "latest.json"), lambda p: files.write_text(p, index)
            )
        except CheckpointError as e:
            previous = self.latest_or_none()
            kept = f"the previous one ({previous['path']}) is intact" if previous else "none before"
            raise CheckpointError(
                f"checkpoint at step {step} not saved: {e}; {kept}. Free some space and run "
                "the same command again to resume."
            ) from None
        ckpts = [
            *files.glob(files.join(self.directory, "ckpt-*.keras")),
            *files.glob(files.join(self.directory, "ckpt-*.weights.h5")),
        ]
        old = sorted(ckpts, key=lambda p: os.path.basename(p).split(".")[0])[: -self.keep]
        for path in old:
            files.remove(path)


class TimeEstimate(keras.callbacks.Callback):
    """Log, early in a run, how long its remaining steps will take.

    The first step of each canvas pays its trace and compile, and the first
    few share the cores with the input pipeline's start (its encoder compiles
    too: the demo's steps 2-11 measured 0.86 s against 0.60-0.74 later), so the
    estimate is the median duration of the ``measure_steps`` steps after the
    first ``skip_steps``, times the steps left up to ``max_iters`` (a resumed
    run counts from its checkpoint). Evaluation is not included.
    """

    def __init__(
        self, max_iters: int, measure_steps: int = 10, skip_steps: int = 10, clock=time.monotonic
    ):
        super().__init__()
        self.max_iters = max_iters
        self.measure_steps = measure_steps
        self.clock = clock
        self.durations: list[float] = []
        self.began = 0.0
        self.skip = skip_steps

    def on_train_batch_begin(self, batch, logs=None):
        self.began = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        if self.skip > 0:
            self.skip -= 1
            return
        if len(self.durations) >= self.measure_steps:
            return
        self.durations.append(self.clock() - self.began)
        if len(self.durations) < self.measure_steps:
            return
        per_step = float(np.median(self.durations))
        left = max(self.max_iters - int(self.model.optimizer.iterations.numpy()), 0)
        seconds = per_step * left
        logger.info(
            "%.2f s/step: the remaining %d steps take about %s (until %s).",
            per_step,
            left,
            f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s",
            time.strftime("%H:%M", time.localtime(time.time() + seconds)),
        )


class StopOnNaN(keras.callbacks.Callback):
    """Stop training with a clear error when a loss becomes NaN or infinite."""

    def on_train_batch_end(self, batch, logs=None):
        for key, value in (logs or {}).items():
            if "loss" in key and not math.isfinite(float(np.asarray(value))):
                step = int(self.model.optimizer.iterations.numpy())
                raise FloatingPointError(
                    f"training stopped: {key} became {value} at step {step}. Lower "
                    "train.base_lr, check the data for degenerate boxes, or resume from "
                    "the last checkpoint."
                )


class TrainingLog(keras.callbacks.Callback):
    """TensorBoard scalars (and pictures) at the optimizer's step.

    Keras' ``TensorBoard`` callback counts batches from 0 in every ``fit``
    call, so a resumed run overwrites its own curves, and with
    ``update_freq=N`` a run shorter than ``N`` steps writes nothing. This one
    writes, under ``log_dir/train``, every logged loss and the learning rate
    every ``every_n_steps`` steps and at every epoch end; ``val_*`` values of
    the epoch (put into ``logs`` by callbacks that run before it, such as
    :class:`~atss_tf.evaluation.CocoEvalCallback`) go to ``log_dir/validation``
    without the prefix; :meth:`log_metrics` and :meth:`log_picture` add
    metrics and pictures outside ``fit``. The step is ``optimizer.iterations``, so curves continue
    after a resume.
    """

    def __init__(self, log_dir: str | os.PathLike, every_n_steps: int = 50):
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        self.every_n_steps = max(int(every_n_steps), 1)
        self._writers: dict[str, tf.summary.SummaryWriter] = {}

    def writer(self, name: str) -> tf.summary.SummaryWriter:
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(files.join(self.log_dir, name))
        return self._writers[name]

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _learning_rate(self) -> float:
        return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def _write(self, name: str, step: int, values: dict) -> None:
        with self.writer(name).as_default(step=step):
            for key, value in values.items():
                tf.summary.scalar(key, float(np.asarray(value)))

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        if step % self.every_n_steps == 0:
            values = {k: v for k, v in (logs or {}).items() if not k.startswith("val_")}
            self._write("train", step, {**values, "learning_rate": self._learning_rate()})

    def on_epoch_end(self, epoch, logs=None):
        step = self._step()
        logs = logs or {}
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        self._write("train", step, {**train, "learning_rate": self._learning_rate()})
        val = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        if val:
            self._write("validation", step, val)
        self.flush()

    def log_metrics(self, step: int, metrics: dict[str, float], name: str = "validation") -> None:
        """Scalars outside ``fit`` (the final evaluation) at ``step``."""
        self._write(name, step, metrics)
        self.flush()

    def log_picture(self, step: int, picture_png: bytes | None, tag: str = "detections") -> None:
        """A PNG picture (detections on validation images) at ``step``; None: nothing."""
        if picture_png is None:
            return
        with self.writer("validation").as_default(step=step):
            tf.summary.image(tag, tf.image.decode_png(picture_png, channels=3)[None])
        self.flush()

    def flush(self) -> None:
        for w in self._writers.values():
            w.flush()

    def on_train_end(self, logs=None):
        self.flush()


class CocoEvalCallback(keras.callbacks.Callback):
    """Runs ``evaluate_fn()`` every ``every_n_epochs`` epochs and logs ``val_<metric>``.

    ``evaluate_fn`` returns the metric dict (see :func:`atss_tf.evaluation.evaluate_model`);
    the values land in ``logs`` so History and a :class:`~atss_tf.training.callbacks.
    TrainingLog` placed *after* this callback record them. With ``picture_fn``
    (returning PNG bytes) and ``training_log``, a picture of detections is
    logged at each evaluation too.
    """

    def __init__(self, evaluate_fn, every_n_epochs: int = 1, picture_fn=None, training_log=None):
        super().__init__()
        self.evaluate_fn = evaluate_fn
        self.every_n_epochs = int(every_n_epochs)
        self.picture_fn = picture_fn
        self.training_log = training_log
        self.history: list[dict[str, float]] = []

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_epochs <= 0 or (epoch + 1) % self.every_n_epochs:
            return
        metrics = self.evaluate_fn()
        self.history.append(metrics)
        if logs is not None:
            logs.update({f"val_{k}": v for k, v in metrics.items()})
        if self.picture_fn is not None and self.training_log is not None:
            step = int(self.model.optimizer.iterations.numpy())
            self.training_log.log_picture(step, self.picture_fn())

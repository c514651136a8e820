"""Callbacks for long runs: exact resume after a kill, a clear stop on NaN."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import keras
import numpy as np


class ResumableCheckpoint(keras.callbacks.Callback):
    """Save model *and* optimizer state at every epoch end; restore on train begin.

    A weights file of a compiled Keras 3 model holds the optimizer variables
    (``iterations``, momentum buffers), so restoring it resumes at the same
    step with the same optimizer state. Files are written to a temporary name
    and renamed, so a process killed mid-write leaves the previous checkpoint
    intact. ``fit`` callers pass ``initial_epoch=resume_epoch(...)``.

    Args:
        directory: where ``ckpt-<step>.weights.h5`` and ``latest.json`` live.
        keep: number of checkpoints kept.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        super().__init__()
        self.directory = Path(directory)
        self.keep = int(keep)

    def latest(self) -> dict | None:
        """``{"step": int, "epoch": int, "path": str}`` of the newest checkpoint, or None."""
        index = self.directory / "latest.json"
        if not index.exists():
            return None
        info = json.loads(index.read_text())
        if not (self.directory / info["path"]).exists():
            raise FileNotFoundError(
                f"checkpoint index {index} names {info['path']}, which is missing"
            )
        return info

    def restore(self, model: keras.Model) -> dict | None:
        """Load the newest checkpoint into ``model`` (optimizer built first)."""
        info = self.latest()
        if info is None:
            return None
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(self.directory / info["path"])
        return info

    def on_epoch_end(self, epoch, logs=None):
        self.directory.mkdir(parents=True, exist_ok=True)
        step = int(self.model.optimizer.iterations.numpy())
        name = f"ckpt-{step:08d}.weights.h5"
        tmp = self.directory / ("tmp-" + name)
        self.model.save_weights(tmp)
        os.replace(tmp, self.directory / name)
        index_tmp = self.directory / "latest.json.tmp"
        index_tmp.write_text(json.dumps({"step": step, "epoch": epoch + 1, "path": name}))
        os.replace(index_tmp, self.directory / "latest.json")
        old = sorted(self.directory.glob("ckpt-*.weights.h5"))[: -self.keep]
        for path in old:
            path.unlink(missing_ok=True)


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

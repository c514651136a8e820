"""COCO evaluation through pycocotools, and a Keras callback that runs it.

Detections enter in *original image* coordinates (continuous xyxy) with
contiguous class ids 1..C; they leave as COCO results (``[x, y, w, h]``,
dataset category ids) so pycocotools scores exactly what it would score if run
directly on the written json.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence

import keras
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRIC_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip


class CocoEvaluator:
    """Accumulates detections and scores them with pycocotools.

    Args:
        annotations: path of the ground-truth COCO json, or a loaded ``COCO``.
        category_ids: ``category_ids[label - 1]`` is the dataset category id of
            contiguous label ``label`` (1..C).
    """

    def __init__(self, annotations: str | os.PathLike | COCO, category_ids: Sequence[int]):
        if isinstance(annotations, COCO):
            self.coco = annotations
        else:
            with contextlib.redirect_stdout(io.StringIO()):
                self.coco = COCO(str(annotations))
        self.category_ids = np.asarray(category_ids, dtype=np.int64)
        self.detections: list[dict] = []
        self.image_ids: set[int] = set()

    def reset(self) -> None:
        self.detections = []
        self.image_ids = set()

    def add(self, image_ids, boxes, scores, classes, num_detections) -> None:
        """Add a batch.

        Args:
            image_ids: ``[B]`` int dataset image ids.
            boxes: ``[B, K, 4]`` float xyxy in original image pixels.
            scores: ``[B, K]``; classes: ``[B, K]`` int 1..C; num_detections: ``[B]``.
        """
        boxes, scores = np.asarray(boxes), np.asarray(scores)
        classes, num = np.asarray(classes), np.asarray(num_detections)
        for b, image_id in enumerate(np.asarray(image_ids).reshape(-1)):
            self.image_ids.add(int(image_id))
            n = int(num[b])
            if n == 0:
                continue
            cls = classes[b, :n].astype(np.int64)
            if cls.min() < 1 or cls.max() > len(self.category_ids):
                raise ValueError(
                    f"image {int(image_id)}: class ids must lie in 1..{len(self.category_ids)}, "
                    f"got {sorted(set(cls.tolist()))}"
                )
            xyxy = boxes[b, :n].astype(np.float64)
            xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
            for box, score, c in zip(xywh, scores[b, :n], cls):
                self.detections.append(
                    {
                        "image_id": int(image_id),
                        "category_id": int(self.category_ids[c - 1]),
                        "bbox": [round(float(v), 3) for v in box],
                        "score": round(float(score), 5),
                    }
                )

    def write(self, path: str | os.PathLike) -> None:
        """Write the detections as a COCO results json."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.detections, f)

    def evaluate(self, verbose: bool = False) -> dict[str, float]:
        """The 12 COCO box metrics over the images added so far (all zeros if none)."""
        if not self.detections:
            return {name: 0.0 for name in METRIC_NAMES}
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            dets = self.coco.loadRes(self.detections)
            ev = COCOeval(self.coco, dets, "bbox")
            ev.params.imgIds = sorted(self.image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        if verbose:
            print(out.getvalue())
        return {name: float(v) for name, v in zip(METRIC_NAMES, ev.stats)}


class CocoEvalCallback(keras.callbacks.Callback):
    """Runs ``evaluate_fn()`` every ``every_n_epochs`` epochs and logs ``val_<metric>``.

    ``evaluate_fn`` returns the metric dict (see :func:`atss_tf.trainer.evaluate_model`);
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

"""COCO evaluation through pycocotools, and running a model over a validation set.

Detections enter in *original image* coordinates (continuous xyxy) with
contiguous class ids 1..C; they leave as COCO results (``[x, y, w, h]``,
dataset category ids) so pycocotools scores exactly what it would score if run
directly on the written json.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from atss_tf import files
from atss_tf.boxes import xyxy_to_xywh
from atss_tf.config import Config
from atss_tf.data.inference_input import with_detector_settings
from atss_tf.data.pipeline import PADDING_IMAGE_ID
from atss_tf.data.splits import SplitSource, split_source
from atss_tf.visualization import make_picture_fn

logger = logging.getLogger("atss_tf")

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
            self.coco = COCO()
            self.coco.dataset = json.loads(files.read_text(annotations))
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                self.coco.createIndex()
        self.category_ids = np.asarray(category_ids, dtype=np.int64)
        self.detections: list[dict] = []
        self.image_ids: set[int] = set()

    def reset(self) -> None:
        self.detections = []
        self.image_ids = set()

    def add(self, image_ids, boxes, scores, classes, num_detections) -> None:
        """Add a batch.

        Args:
            image_ids: ``[B]`` int dataset image ids; ``PADDING_IMAGE_ID`` (-1)
                marks padding, which is skipped.
            boxes: ``[B, K, 4]`` float xyxy in original image pixels.
            scores: ``[B, K]``; classes: ``[B, K]`` int 1..C; num_detections: ``[B]``.
        """
        boxes, scores = np.asarray(boxes), np.asarray(scores)
        classes, num = np.asarray(classes), np.asarray(num_detections)
        for b, image_id in enumerate(np.asarray(image_ids).reshape(-1)):
            if image_id == PADDING_IMAGE_ID:  # the copies that fill a last batch
                continue
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
            xywh = xyxy_to_xywh(xyxy)
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
        with files.open_file(path, "w") as f:
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
            logger.info("%s", out.getvalue().rstrip())
        return {name: float(v) for name, v in zip(METRIC_NAMES, ev.stats)}


def evaluate_model(
    model: keras.Model,
    dataset: tf.data.Dataset,
    evaluator: CocoEvaluator,
    num_images: int | None = None,
) -> dict[str, float]:
    """Run ``model.predict_on_batch`` over a validation dataset and score with COCO.

    The dataset yields ``inputs`` dicts (``images``, ``image_info``, ``image_id``)
    as built by :func:`atss_tf.data.pipeline.build_dataset` with ``split="val"``
    (with ``pad_remainder=True``, every batch full and padding skipped);
    the model returns boxes in original image pixels (it is given
    ``image_info``). With ``num_images``, a progress bar counts the images.
    """
    from atss_tf.progress import progress_bar

    evaluator.reset()
    bar = (
        progress_bar(num_images, f"Evaluating on {num_images} images", "image")
        if num_images
        else None
    )
    done = 0
    for element in dataset:
        inputs = element[0] if isinstance(element, tuple) else element
        det = model.predict_on_batch(inputs)
        evaluator.add(
            inputs["image_id"].numpy(),
            det["boxes"],
            det["scores"],
            det["classes"],
            det["num_detections"],
        )
        done += int(np.sum(inputs["image_id"].numpy() != PADDING_IMAGE_ID))
        if bar is not None:
            bar.update(min(done, num_images))
    return evaluator.evaluate()


def make_evaluate_fn(
    model: keras.Model,
    cfg: Config,
    out: str | os.PathLike | None = None,
    split: SplitSource | None = None,
):
    """A closure that evaluates ``model`` on the validation set of ``cfg``'s
    data settings (``split``: that set, resolved already); its data report is
    logged now, once."""
    from atss_tf.data.pipeline import build_dataset, load_val_annotations, open_source

    split = split or split_source(cfg, "val")
    cfg = with_detector_settings(cfg, model.detector_config)
    source = open_source(cfg, split)
    val_ds = build_dataset(cfg, "val", source=source, pad_remainder=True)
    coco, category_ids = load_val_annotations(split, cfg.model.num_classes)
    evaluator = CocoEvaluator(coco, category_ids)
    num_images = source.num_images

    def evaluate_fn() -> dict[str, float]:
        metrics = evaluate_model(model, val_ds, evaluator, num_images)
        if out is not None:
            evaluator.write(files.join(out, "detections.json"))
        return metrics

    return evaluate_fn


def make_tta_evaluate_fn(
    model: keras.Model,
    cfg: Config,
    out: str | os.PathLike | None = None,
    split: SplitSource | None = None,
    jit_compile: bool = False,
):
    """:func:`make_evaluate_fn` with the test-time augmentation of ``cfg.tta``
    (:class:`atss_tf.tta.TTADetector`): every validation image in its original
    size, one at a time, all passes and the merge; its canvases compile once
    each for the run."""
    from atss_tf.data.pipeline import load_val_annotations, open_source
    from atss_tf.progress import progress_bar
    from atss_tf.tta import TTADetector

    split = split or split_source(cfg, "val")
    cfg = with_detector_settings(cfg, model.detector_config)
    source = open_source(cfg, split)
    coco, category_ids = load_val_annotations(split, cfg.model.num_classes)
    evaluator = CocoEvaluator(coco, category_ids)
    runner = TTADetector(model, cfg, jit_compile=jit_compile)
    passes = len(runner.passes)

    def evaluate_fn() -> dict[str, float]:
        evaluator.reset()
        n = source.num_images
        bar = (
            progress_bar(n, f"Evaluating with {passes}-pass TTA on {n} images", "image")
            if n
            else None
        )
        for done, example in enumerate(source.elements.map(source.load), start=1):
            image_id = int(example["image_id"])
            det = runner(example["image"].numpy(), f"image id {image_id}")
            evaluator.add(
                [image_id],
                det["boxes"][None],
                det["scores"][None],
                det["classes"][None],
                [len(det["scores"])],
            )
            if bar is not None:
                bar.update(min(done, n))
        metrics = evaluator.evaluate()
        if out is not None:
            evaluator.write(files.join(out, "detections.json"))
        return metrics

    return evaluate_fn


def make_validation(
    model: keras.Model, cfg: Config, split: SplitSource, out: str | os.PathLike | None = None
) -> tuple[Callable[[], dict[str, float]], Callable[[], bytes | None]]:
    """What training runs on the validation set ``split``: ``(evaluate_fn,
    picture_fn)``, the COCO evaluation of :func:`make_evaluate_fn` (detections
    written to ``out``) and the TensorBoard picture of
    :func:`atss_tf.visualization.make_picture_fn`."""
    return make_evaluate_fn(model, cfg, out, split), make_picture_fn(model, split)

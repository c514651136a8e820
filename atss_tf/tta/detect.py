"""Running the test-time augmentation of a detector on images (Python driver).

Per image: each group of passes that share a resize (a scale and its flip) is
resized once (PIL's filter), padded onto its canvas and run as one batch
through a step function compiled once per canvas and batch size
(:class:`atss_tf.model.canvas_steps.CanvasStepFunction`): the network, the
normal post-processing and :func:`atss_tf.tta.passes.pass_detections`. The
kept boxes of all passes (``num_passes * postprocess.max_detections`` rows,
a static shape) go through one compiled :func:`atss_tf.tta.merge.merge_detections`,
and the merged boxes are scaled from pass 0's image to the original pixels.

Canvases: by default each pass's own, its resized size rounded up to
``tta.canvas_multiple`` (the official padding; a new image size compiles new
canvases). Given ``canvases`` (one list per pass group, what
:mod:`atss_tf.export_tta` builds into a SavedModel), the smallest that holds the
resized image, like :func:`atss_tf.data.transforms.choose_canvas` (an image no
canvas holds is scaled down to fit).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from atss_tf import boxes as box_ops
from atss_tf.config import DEFAULT_MAX_PIXELS, Config, TTAConfig
from atss_tf.data.inference_input import MIN_RESIZED_SIDE
from atss_tf.data.pil_resize import pil_bilinear_resize
from atss_tf.data.transforms import choose_canvas, make_image_info, pad_to_canvas
from atss_tf.errors import DataError
from atss_tf.inference import check_detect_input, test_transform
from atss_tf.model.canvas_steps import CanvasStepFunction
from atss_tf.tta.merge import merge_detections
from atss_tf.tta.passes import (
    exact_canvas,
    group_passes,
    pass_detections,
    pass_rows,
    resized_size,
    tta_passes,
)

Canvas = tuple[int, int]


def as_uint8(image: np.ndarray) -> np.ndarray:
    """A checked RGB image as uint8 (floats in 0..255 rounded): what PIL resizes."""
    if image.dtype == np.uint8:
        return image
    return np.clip(np.floor(image + 0.5), 0, 255).astype(np.uint8)


def final_to_original(boxes, first_size, original_size, inclusive: bool) -> tf.Tensor:
    """Merged boxes ``[..., 4]`` in pass 0's ``(h0, w0)`` pixels -> the original
    ``(h, w)`` (ints or int tensors), scaled like the passes' boxes (the
    authors' COCO evaluation scales by ``BoxList.resize`` too; factors in
    float64 like their Python floats) and clipped to the image."""
    first = tf.cast(first_size, tf.float64)
    original = tf.cast(original_size, tf.float64)
    ratio = tf.cast(original / first, tf.float32)  # (y, x)
    out = box_ops.scale_boxes(tf.convert_to_tensor(boxes), ratio[1], ratio[0], inclusive)
    return box_ops.clip_boxes(out, original[0], original[1])


class TTADetector:
    """The test-time augmentation of ``model``, compiled once per canvas.

    Args:
        model: an :class:`~atss_tf.model.ATSSDetector`.
        config: its data settings give the test size (as for
            :func:`atss_tf.inference.detect`); its ``tta`` section the passes.
        tta: a ``tta`` section replacing ``config``'s (default: ``config.tta``
            or the authors' settings).
        jit_compile: compile the pass steps and the merge with XLA.
        run_eagerly: run them eagerly, without ``tf.function`` (debugging, benchmarks).
        canvases: per pass group, the ``(h, w)`` canvases to choose from
            (module docstring); None: each pass's exact canvas.
    """

    def __init__(
        self,
        model: keras.Model,
        config: Config | None = None,
        tta: TTAConfig | None = None,
        *,
        jit_compile: bool = False,
        run_eagerly: bool = False,
        canvases: Sequence[Sequence[Canvas]] | None = None,
    ):
        self.model = model
        self.config = config
        self.tta = tta or (config.tta if config is not None else TTAConfig())
        self.params = test_transform(model, config)
        self.passes = tta_passes(self.tta, max(self.params.min_size), self.params.max_size)
        self.groups = group_passes(self.passes)
        if canvases is not None and len(canvases) != len(self.groups):
            raise ValueError(
                f"canvases: one list per pass group ({len(self.groups)}), got {len(canvases)}"
            )
        self.canvases = canvases
        dc = model.detector_config
        self.inclusive = bool(dc.model.inclusive_geometry)
        self.max_pixels = config.data.max_image_pixels if config is not None else DEFAULT_MAX_PIXELS
        self.step = CanvasStepFunction(
            self._step,
            lambda: model.distribute_strategy,
            jit_compile=jit_compile,
            reduction="concat",
            eager=run_eagerly,
        )
        # The merge with this detector's settings, uncompiled (the TTA
        # SavedModel traces it into its own graph).
        self.merge_fn = merge = functools.partial(
            merge_detections,
            method=self.tta.merge,
            num_classes=dc.model.num_classes,
            vote_iou=self.tta.vote_iou,
            decayed_score_threshold=self.tta.decayed_score_threshold,
            nms_iou=dc.postprocess.nms_iou,
            max_detections=self.tta.max_detections,
        )
        self.merge = (
            merge if run_eagerly else tf.function(merge, jit_compile=jit_compile, autograph=False)
        )
        self.resize = tf.function(
            pil_bilinear_resize,
            input_signature=[
                tf.TensorSpec([None, None, 3], tf.uint8),
                tf.TensorSpec([2], tf.int32),
            ],
            autograph=False,
        )

    def _step(self, data):
        det = self.model.predict_step({"images": data["images"], "image_info": data["image_info"]})
        return pass_detections(det, data, self.inclusive)

    # ------------------------------------------------------------- one group

    def group_size(self, group: int, height: int, width: int) -> tuple[tuple[int, int], Canvas]:
        """``(resized (h, w), canvas (h, w))`` of pass group ``group`` for an
        image of ``height`` x ``width``."""
        size = resized_size(height, width, self.passes[self.groups[group][0]])
        if self.canvases is None:
            return size, exact_canvas(size, self.tta.canvas_multiple)
        choices = [tuple(c) for c in self.canvases[group]]
        index, shrink = choose_canvas(size[0], size[1], choices)
        if float(shrink) < 1.0:
            size = tuple(max(int(np.floor(s * float(shrink))), 1) for s in size)
        return size, choices[int(index)]

    def group_batch(
        self, group: int, resized: np.ndarray, canvas: Canvas, first_size: tuple[int, int]
    ) -> dict[str, tf.Tensor]:
        """The step's batch for pass group ``group`` from its resized image
        (uint8 ``[h, w, 3]``, not flipped): one row per pass, the flipped
        rows mirrored, each padded onto ``canvas`` with the model's pixel mean."""
        indices = self.groups[group]
        x = tf.cast(tf.convert_to_tensor(resized), tf.float32)
        size = (int(x.shape[0]), int(x.shape[1]))
        pad = self.params.pad_value
        rows = [tf.reverse(x, [1]) if self.passes[i].flip else x for i in indices]
        images = tf.stack([pad_to_canvas(r, canvas[0], canvas[1], pad) for r in rows])
        info = make_image_info(size, size, canvas)
        data = {
            k: tf.constant(v) for k, v in pass_rows(self.passes, indices, size, first_size).items()
        }
        return {"images": images, "image_info": tf.stack([info] * len(indices)), **data}

    def run_group(self, batch: dict[str, tf.Tensor]) -> dict[str, np.ndarray]:
        """The compiled step on one group's batch (:func:`pass_detections`'s outputs)."""
        return {k: np.asarray(v) for k, v in self.step(batch).items()}

    # ------------------------------------------------------------ one image

    def __call__(self, image: np.ndarray, name: str = "image", with_passes: bool = False) -> dict:
        """The TTA detections of one RGB image (``uint8 [h, w, 3]``, or float
        0..255 as :func:`atss_tf.inference.check_detect_input` accepts).

        Returns:
            ``boxes`` float32 ``[n, 4]`` continuous xyxy in original pixels,
            ``scores`` ``[n]``, ``classes`` int32 ``[n]`` (1..C), sorted by
            score; with ``with_passes`` also ``passes``: per pass, in order,
            the dict of :func:`pass_detections` (numpy, one row), its ``name``,
            ``size`` and ``canvas``; ``first_size`` (pass 0's ``(h, w)``) and
            ``merged_boxes``, the merged boxes in pass 0's pixels.

        Raises:
            DataError: a bad image, or one a pass would shrink below
                :data:`~atss_tf.data.inference_input.MIN_RESIZED_SIDE`.
        """
        image = as_uint8(check_detect_input(image, name, self.max_pixels))
        height, width = image.shape[:2]
        outputs: list[dict | None] = [None] * len(self.passes)
        first_size = None
        for g, indices in enumerate(self.groups):
            size, canvas = self.group_size(g, height, width)
            if min(size) < MIN_RESIZED_SIDE:
                raise DataError(
                    f"{name} is {height}x{width} (h x w): test-time pass "
                    f"{self.passes[indices[0]].name} would resize it to {size[0]}x{size[1]}, "
                    f"a side below {MIN_RESIZED_SIDE} px; crop it into tiles of a less "
                    "extreme aspect ratio"
                )
            first_size = first_size or size
            resized = self.resize(image, tf.constant(size, tf.int32))
            out = self.run_group(self.group_batch(g, resized, canvas, first_size))
            for row, i in enumerate(indices):
                one = {k: v[row] for k, v in out.items()}
                outputs[i] = {**one, "name": self.passes[i].name, "size": size, "canvas": canvas}
        merged = self.merge(
            np.concatenate([o["rescaled"] for o in outputs]),
            np.concatenate([o["scores"] for o in outputs]),
            np.concatenate([o["classes"] for o in outputs]),
            np.concatenate([o["kept"] for o in outputs]),
        )
        n = int(merged["num_detections"])
        boxes = final_to_original(merged["boxes"][:n], first_size, (height, width), self.inclusive)
        result = {
            "boxes": np.asarray(boxes, np.float32),
            "scores": np.asarray(merged["scores"][:n], np.float32),
            "classes": np.asarray(merged["classes"][:n], np.int32),
        }
        if with_passes:
            result["passes"] = outputs
            result["first_size"] = first_size
            result["merged_boxes"] = np.asarray(merged["boxes"][:n], np.float32)
        return result


def detect_tta(
    model: keras.Model,
    images: Iterable[np.ndarray],
    config: Config | None = None,
    tta: TTAConfig | None = None,
    names: Sequence[str] | None = None,
    jit_compile: bool = False,
) -> list[dict[str, np.ndarray]]:
    """:func:`atss_tf.inference.detect` with the authors' test-time augmentation.

    Args:
        model: an :class:`~atss_tf.model.ATSSDetector`.
        images: RGB arrays of any sizes (as ``detect`` accepts).
        config: data settings (test size, pixel limit) and the ``tta`` section.
        tta: replaces ``config.tta`` (default: the authors' 26 passes).
        names: how errors name the images (default ``image <index>``).
        jit_compile: XLA for the pass steps and the merge.

    Returns:
        One dict per image: ``boxes`` ``[n, 4]`` float32 xyxy in original
        pixels, ``scores`` ``[n]``, ``classes`` ``[n]`` int32 (1..C); ``n`` is
        at most ``tta.max_detections`` (more only on ties at the cut).
    """
    runner = TTADetector(model, config, tta, jit_compile=jit_compile)
    return [
        runner(image, names[k] if names is not None else f"image {k}")
        for k, image in enumerate(images)
    ]

"""Export a detector with its test-time augmentation inside the SavedModel.

The serving graph runs, per image of a request, what
:class:`atss_tf.tta.TTADetector` runs in Python, with core TensorFlow ops only::

    decode -> check -> for each pass group (a scale and its flip): the
    official resize (PIL's filter, int32 ops), the flipped copy, the canvas
    (tf.switch_case over the group's fixed canvases, the network and the
    normal post-processing on each), flip undone, area filter, scaled to
    pass 0 -> the merge (soft-vote / vote / nms) -> original pixels

A graph cannot compile a canvas per image size as the Python TTA does, so each
pass group has a fixed canvas list (:func:`atss_tf.tta.passes.serving_canvases`):
the exact canvases of the ``image_sizes`` named at export (an image of such a
size gives what the Python TTA gives), then a landscape and a portrait canvas
that hold any image (``scale x max_size``, rounded up to
``tta.canvas_multiple``). An image of another size is padded onto the smallest
canvas that holds it: the network sees more padding than the official code
gives it, which changes scores slightly (GroupNorm in the head normalises over
the whole canvas), and costs the padded pixels' compute.

Signature, inputs and output names: those of :mod:`atss_tf.export`;
``D`` of ``detection_*`` is the largest ``num_detections`` of the request
(at most ``tta.max_detections``, more only on ties at the cut), and
``image_info`` describes pass 0 (its resize, its canvas).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from atss_tf.config import DEFAULT_MAX_PIXELS, Config, TTAConfig
from atss_tf.data.inference_input import MIN_RESIZED_SIDE
from atss_tf.data.pil_resize import pil_bilinear_resize
from atss_tf.data.transforms import (
    choose_canvas,
    make_image_info,
    official_resize_size,
    pad_to_canvas,
)
from atss_tf.export import DetectionServing, request_input, write_saved_model
from atss_tf.tta import TTADetector, pass_detections
from atss_tf.tta.detect import final_to_original
from atss_tf.tta.passes import area_bounds, serving_canvases


class TTAServing(DetectionServing):
    """The TTA serving graph of ``runner`` (its model, passes and canvases).

    Args:
        runner: a :class:`~atss_tf.tta.TTADetector` built with ``canvases``.
        input_type, labels_path, batch_size, normalized_boxes, max_pixels: as
            :class:`atss_tf.export.DetectionServing`.
    """

    def __init__(
        self,
        runner: TTADetector,
        input_type: str,
        labels_path: str | os.PathLike,
        batch_size: int | None = None,
        normalized_boxes: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        if runner.canvases is None:
            raise ValueError("TTAServing needs a TTADetector with fixed canvases")
        super().__init__(
            runner.model,
            input_type,
            runner.params,
            labels_path,
            batch_size,
            normalized_boxes,
            max_pixels,
        )
        self.runner = runner
        self.merge = runner.merge_fn

    def _group(self, image, g: int, first_size):
        """Pass group ``g`` on one image -> ``(rescaled, scores, classes, kept,
        size, canvas)``, rows ``[n * D]`` for its ``n`` passes."""
        r = self.runner
        indices = r.groups[g]
        passes = [r.passes[i] for i in indices]
        canvases = [tuple(c) for c in r.canvases[g]]
        shape = tf.shape(image)
        size = official_resize_size(shape[0], shape[1], passes[0].min_size, passes[0].max_size)
        index, shrink = choose_canvas(size[0], size[1], canvases)
        size = tf.cast(tf.maximum(tf.floor(tf.cast(size, tf.float64) * shrink), 1.0), tf.int32)
        first_size = size if first_size is None else first_size
        check = tf.debugging.Assert(
            tf.reduce_min(size) >= MIN_RESIZED_SIDE,
            [
                f"test-time pass {passes[0].name} would resize the image to",
                size,
                f"(h, w), a side below {MIN_RESIZED_SIDE} px; crop it into tiles of a less "
                "extreme aspect ratio",
            ],
        )
        with tf.control_dependencies([check]):
            x = tf.cast(pil_bilinear_resize(image, size), tf.float32)
        rows = [tf.reverse(x, [1]) if p.flip else x for p in passes]
        first = tf.cast(first_size, tf.float64)
        resized = tf.cast(size, tf.float64)
        n = len(passes)
        to_first = tf.cast(tf.stack([first[1] / resized[1], first[0] / resized[0]]), tf.float32)
        info_rows = {
            "sizes": tf.tile(tf.cast(size, tf.float32)[None], [n, 1]),
            "flip": tf.constant([p.flip for p in passes]),
            "area_bounds": tf.constant([area_bounds(p) for p in passes], tf.float32),
            "to_first": tf.tile(to_first[None], [n, 1]),
        }

        def branch(canvas):
            height, width = canvas
            batch = tf.stack(
                [pad_to_canvas(row, height, width, self.params.pad_value) for row in rows]
            )
            batch = tf.ensure_shape(batch, [n, height, width, 3])
            info = tf.tile(make_image_info(size, size, canvas)[None], [n, 1, 1])
            det = self.model.predict_step({"images": batch, "image_info": info})
            out = pass_detections(det, info_rows, r.inclusive)
            return tuple(
                tf.reshape(out[k], [-1, *out[k].shape[2:]])
                for k in ("rescaled", "scores", "classes", "kept")
            )

        branches = [functools.partial(branch, c) for c in canvases]
        found = branches[0]() if len(branches) == 1 else tf.switch_case(index, branches)
        canvas = tf.gather(tf.constant(canvases, tf.int32), index)
        return (*found, size, canvas)

    def _tta_one(self, image):
        """One decoded image -> ``(boxes [M, 4], scores [M], labels [M], count,
        image_info [4, 2])``, ``M`` the merge's static buffer."""
        parts, first_size, first_canvas = [], None, None
        for g in range(len(self.runner.groups)):
            *found, size, canvas = self._group(image, g, first_size)
            if first_size is None:
                first_size, first_canvas = size, canvas
            parts.append(found)
        boxes, scores, classes, kept = (tf.concat(list(k), 0) for k in zip(*parts))
        merged = self.merge(boxes, scores, classes, kept)
        original = tf.shape(image)[:2]
        out = final_to_original(merged["boxes"], first_size, original, self.runner.inclusive)
        live = tf.range(tf.shape(out)[0]) < merged["num_detections"]
        info = make_image_info(original, first_size, first_canvas)
        out = tf.where(live[:, None], out, 0.0)
        return out, merged["scores"], merged["classes"], merged["num_detections"], info

    def serve(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        """``inputs`` (:attr:`input_spec`) -> the outputs of the module docstring."""
        batch = tf.shape(inputs)[0]
        nonempty = tf.debugging.Assert(batch > 0, ["empty request: no image in inputs"])
        with tf.control_dependencies([nonempty]):
            index = tf.range(batch)

        def one(element):
            item, i = element
            image = self._decode(item, i)
            with tf.control_dependencies([self._check_size(image, i)]):
                image = tf.identity(image)
            return self._tta_one(image)

        rows = 2 * len(self.runner.passes) * self.max_detections
        boxes, scores, labels, count, info = tf.map_fn(
            one,
            (inputs, index),
            fn_output_signature=(
                tf.TensorSpec([rows, 4], tf.float32),
                tf.TensorSpec([rows], tf.float32),
                tf.TensorSpec([rows], tf.int32),
                tf.TensorSpec([], tf.int32),
                tf.TensorSpec([4, 2], tf.float32),
            ),
        )
        d = tf.reduce_max(count)
        return self.outputs(boxes[:, :d], scores[:, :d], labels[:, :d], count, info)


def export_tta_saved_model(
    model: keras.Model,
    export_dir: str | os.PathLike,
    *,
    config: Config | None = None,
    tta: TTAConfig | None = None,
    image_sizes: Sequence[tuple[int, int]] = (),
    input_type: str = "image_bytes",
    batch_size: int | None = None,
    normalized_boxes: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    version: int = 1,
    warmup: bool = True,
) -> str:
    """Write ``export_dir/<version>/``, a SavedModel running the whole TTA.

    Args:
        model: an :class:`~atss_tf.model.ATSSDetector`.
        export_dir, input_type, batch_size, normalized_boxes, max_pixels,
            version, warmup: as :func:`atss_tf.export.export_saved_model`.
        config: its data settings give the test size; its ``tta`` section the passes.
        tta: replaces ``config.tta`` (default: the authors' settings).
        image_sizes: original ``(h, w)`` sizes whose passes get exact
            canvases (module docstring); the warmup requests are images of
            these sizes (default one 480 x 640 image).

    Returns:
        The version folder.
    """
    runner = TTADetector(model, config, tta)
    canvases = serving_canvases(
        runner.passes, runner.groups, runner.tta.canvas_multiple, image_sizes
    )
    runner = TTADetector(model, config, tta, canvases=canvases)
    requests = None
    if warmup:
        requests = [
            request_input(input_type, np.full((*size, 3), 128, np.uint8), batch_size)
            for size in image_sizes or [(480, 640)]
        ]
    return write_saved_model(
        model,
        export_dir,
        version,
        lambda labels: TTAServing(
            runner, input_type, labels, batch_size, normalized_boxes, max_pixels
        ),
        requests,
    )

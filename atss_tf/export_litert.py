"""Export a detector as a LiteRT (TensorFlow Lite) model with decoding and NMS inside.

``DIR/model.tflite`` runs with the plain LiteRT interpreter (``ai-edge-litert``):
every op is a LiteRT builtin (no Flex/Select TF ops, no custom ops). Beside it,
``DIR/model.json`` (:func:`read_metadata`) holds the input size, the test-time
resize, the class names and the category ids.

Signature ``serving_default``, batch 1, on one fixed canvas ``(H, W)``:

* input ``image``: uint8 ``[1, H, W, 3]`` RGB, the image resized by the
  test-time rule and placed top-left on the canvas (what the SavedModel's
  graph does; :func:`prepare_input` does it here, with
  :func:`atss_tf.data.transforms.transform`). The resize is left to the
  caller because the authors' resize is bilinear *with antialiasing*, which
  has no builtin LiteRT op. Pixels outside the resized area are ignored: the
  graph replaces them with the model's padding value (its pixel mean, 0 after
  normalisation, as in training), so any fill will do;
* input ``image_info``: float32 ``[1, 4, 2]``, rows ``(y, x)``: original size,
  resized size, scale (resized / original), canvas size
  (:mod:`atss_tf.data.transforms`; the SavedModel outputs the same).

Outputs, with the names and meanings of the SavedModel's (:mod:`atss_tf.export`),
``D = postprocess.max_detections``, rows sorted by score, padding rows zero:
``detection_boxes`` float32 ``[1, D, 4]`` ``[ymin, xmin, ymax, xmax]`` in
original-image pixels, ``detection_scores`` float32 ``[1, D]``,
``detection_classes`` int32 ``[1, D]`` (category ids, 0 in padding rows),
``num_detections`` int32 ``[1]``.

The graph is the model's own ``predict_step`` (the network, decoding, clipping
and class-aware NMS of :mod:`atss_tf.postprocess`), converted as it is: its
static-shape, tiled greedy NMS lowers to builtin WHILE, TOPK_V2, GATHER and
elementwise ops, so the LiteRT file keeps the exact NMS of the Keras model.
The builtin NON_MAX_SUPPRESSION_V4/V5 ops (``tf.image.non_max_suppression_padded``
/ ``_with_scores``) are class-agnostic; class-aware NMS with them needs the
coordinate-offset trick (shift each class's boxes by ``class * canvas``), which
costs float32 precision (see :func:`atss_tf.postprocess.class_aware_nms`) and
would be a second definition of the NMS, so it is not used.

Quantization (``quantize``): None keeps float32; ``float16`` stores the
weights as float16; ``dynamic`` stores them as int8 (activations float,
quantized on the fly in the convolutions). Full int8 is refused
(:data:`INT8_UNAVAILABLE`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from atss_tf import files
from atss_tf.data.transforms import TransformConfig, transform, valid_image_size
from atss_tf.errors import UsageError
from atss_tf.export import SIGNATURE, detection_outputs, serving_transform

LITERT_FILE = "model.tflite"
METADATA_FILE = "model.json"
IMAGE_INPUT = "image"
INFO_INPUT = "image_info"
LITERT_OUTPUT_KEYS = (
    "detection_boxes",
    "detection_scores",
    "detection_classes",
    "num_detections",
)
QUANTIZE_MODES = ("float16", "dynamic")
# Full int8 (calibrated activations) is refused: TensorFlow 2.21's calibrator
# (tf.lite's representative_dataset path) crashes the process with a
# segmentation fault on the NMS's WHILE loops. Reproduced on toy graphs: a
# tf.while_loop whose body reads a tensor from outside the loop (as every NMS
# tile reads the sorted boxes) crashes it; loops over their own variables only
# calibrate. The network alone calibrates, but the file would lose the NMS. With
# the builtin NON_MAX_SUPPRESSION_V4 and per-class coordinate offsets instead,
# calibration succeeds but the int8 file then fails in the interpreter
# (XNNPACK: "failed to create XNNPACK runtime"; without XNNPACK it aborts).
INT8_UNAVAILABLE = (
    "--quantize int8 is not available: TensorFlow's int8 calibrator crashes on the NMS "
    "loops inside the model (tf.while_loop bodies reading outside tensors, TF 2.21); "
    "use --quantize dynamic (int8 weights) or float16"
)


def litert_transform(
    model: keras.Model,
    min_size: int | None = None,
    max_size: int | None = None,
    canvases: Sequence[Sequence[int]] | None = None,
) -> TransformConfig:
    """The test-time resize of :func:`atss_tf.export.serving_transform` on its
    first canvas only (a LiteRT input has one shape): an image that does not
    fit that canvas is scaled down further to fit it, as ``transform`` does.

    Raises:
        UsageError: an override the model cannot run with (naming the value).
    """
    params = serving_transform(model, min_size, max_size, canvases)
    return dataclasses.replace(params, canvases=params.canvases[:1])


def prepare_input(image: np.ndarray, params: TransformConfig) -> dict[str, np.ndarray]:
    """The LiteRT inputs for one RGB image.

    Args:
        image: uint8 ``[h, w, 3]`` RGB.
        params: a one-canvas transform (:func:`litert_transform`, or
            :func:`read_metadata`'s ``params``).

    Returns:
        ``{"image": uint8 [1, H, W, 3], "image_info": float32 [1, 4, 2]}``: the
        test-time resize (float, rounded to uint8) top-left on the canvas.
    """
    t = transform(tf.convert_to_tensor(image), tf.zeros([0, 4]), params)
    canvas = tf.cast(tf.round(tf.clip_by_value(t["image"], 0.0, 255.0)), tf.uint8)
    return {
        IMAGE_INPUT: canvas.numpy()[None],
        INFO_INPUT: t["image_info"].numpy()[None].astype(np.float32),
    }


class LiteRTServing:
    """The LiteRT graph of a detector (see the module docstring): the
    SavedModel's outputs (:func:`atss_tf.export.detection_outputs`) on an
    already resized image and its ``image_info``.

    Args:
        model: an :class:`~atss_tf.model.ATSSDetector`.
        params: a one-canvas transform (:func:`litert_transform`).
        normalized_boxes: output boxes divided by the image height and width.

    :meth:`serve` is the signature function (``input_spec`` its inputs).
    """

    def __init__(self, model: keras.Model, params: TransformConfig, normalized_boxes: bool = False):
        if len(params.canvases) != 1:
            raise UsageError(f"a LiteRT export runs on one canvas, got {list(params.canvases)}")
        self.model = model
        self.params = params
        self.normalized_boxes = normalized_boxes
        self.category_ids = tf.constant([0, *model.category_ids], tf.int32)  # [C + 1]: 0 padding
        height, width = params.canvases[0]
        self.input_spec = [
            tf.TensorSpec([1, height, width, 3], tf.uint8, name=IMAGE_INPUT),
            tf.TensorSpec([1, 4, 2], tf.float32, name=INFO_INPUT),
        ]

    def serve(self, image: tf.Tensor, image_info: tf.Tensor) -> dict[str, tf.Tensor]:
        """``image`` uint8 ``[1, H, W, 3]``, ``image_info`` float32 ``[1, 4, 2]``
        -> the four outputs of :data:`LITERT_OUTPUT_KEYS`."""
        height, width = self.params.canvases[0]
        valid = valid_image_size(image_info)  # [1, 2] (h, w)
        rows = tf.range(height, dtype=tf.float32)[None, :, None] < valid[:, 0, None, None]
        cols = tf.range(width, dtype=tf.float32)[None, None, :] < valid[:, 1, None, None]
        pad = tf.constant(self.params.pad_value, tf.float32)
        x = tf.where((rows & cols)[..., None], tf.cast(image, tf.float32), pad)  # [1, H, W, 3]
        det = self.model.predict_step({"images": x, "image_info": image_info})
        out = detection_outputs(
            det["boxes"],
            det["scores"],
            det["classes"],
            det["num_detections"],
            image_info,
            self.category_ids,
            self.normalized_boxes,
        )
        return {k: out[k] for k in LITERT_OUTPUT_KEYS}


def _converter(saved_model: str, quantize: str | None) -> tf.lite.TFLiteConverter:
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=[SIGNATURE])
    # Builtins only: conversion fails if any op would need the Flex delegate.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter


def check_quantize(quantize: str | None) -> None:
    """Refuse an unknown mode, and ``int8`` (see :data:`INT8_UNAVAILABLE`).

    Raises:
        UsageError: naming the option and value.
    """
    if quantize == "int8":
        raise UsageError(INT8_UNAVAILABLE)
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise UsageError(
            f"--quantize must be one of {', '.join(QUANTIZE_MODES)} (or none: float32), "
            f"got {quantize!r}"
        )


def export_litert(
    model: keras.Model,
    out_dir: str | os.PathLike,
    *,
    min_size: int | None = None,
    max_size: int | None = None,
    canvases: Sequence[Sequence[int]] | None = None,
    quantize: str | None = None,
    normalized_boxes: bool = False,
) -> str:
    """Write ``out_dir/model.tflite`` and ``out_dir/model.json`` (module docstring).

    Args:
        model: an :class:`~atss_tf.model.ATSSDetector`.
        out_dir: a local or remote folder (created if missing).
        min_size, max_size, canvases: override the model's test-time shorter
            side, longer-side cap and canvases; the first canvas is the input.
        quantize: None (float32), ``float16`` or ``dynamic``.
        normalized_boxes: boxes in ``[0, 1]`` of the image height and width.

    Returns:
        The path of ``model.tflite``.

    Raises:
        UsageError: an invalid option, or ``model.tflite`` exists in ``out_dir``.
    """
    check_quantize(quantize)
    params = litert_transform(model, min_size, max_size, canvases)
    target = files.join(os.fspath(out_dir), LITERT_FILE)
    if files.exists(target):
        raise UsageError(f"{target} exists: export into another --out")
    scratch = tempfile.mkdtemp(prefix="litert-")
    try:
        module = LiteRTServing(model, params, normalized_boxes)
        archive = keras.export.ExportArchive()
        archive.add_endpoint(SIGNATURE, module.serve, input_signature=module.input_spec)
        saved = os.path.join(scratch, "saved_model")
        archive.write_out(saved, verbose=False)
        flatbuffer = _converter(saved, quantize).convert()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    files.makedirs(out_dir)
    with files.open_file(target, "wb") as f:
        f.write(flatbuffer)
    files.write_text(
        files.join(os.fspath(out_dir), METADATA_FILE),
        json.dumps(metadata(model, params, quantize, normalized_boxes), indent=2) + "\n",
    )
    return target


def metadata(
    model: keras.Model, params: TransformConfig, quantize: str | None, normalized_boxes: bool
) -> dict[str, Any]:
    """The ``model.json`` written beside ``model.tflite``."""
    height, width = params.canvases[0]
    return {
        "file": LITERT_FILE,
        "signature": SIGNATURE,
        "quantize": quantize or "float32",
        "inputs": {
            IMAGE_INPUT: {"dtype": "uint8", "shape": [1, height, width, 3]},
            INFO_INPUT: {"dtype": "float32", "shape": [1, 4, 2]},
        },
        "outputs": list(LITERT_OUTPUT_KEYS),
        "min_size": int(max(params.min_size)),
        "max_size": int(params.max_size),
        "canvas": [int(height), int(width)],
        "pad_value": [float(v) for v in params.pad_value],
        "normalized_boxes": bool(normalized_boxes),
        "class_names": list(model.class_names),
        "category_ids": [int(c) for c in model.category_ids],
    }


def read_metadata(folder: str | os.PathLike) -> dict[str, Any]:
    """``folder/model.json`` with ``params`` added: the one-canvas
    :class:`~atss_tf.data.transforms.TransformConfig` to prepare inputs with.

    Raises:
        UsageError: the file is missing or lacks a field (naming it).
    """
    path = files.join(os.fspath(folder), METADATA_FILE)
    if not files.exists(path):
        raise UsageError(f"{path} not found: export with atss-tf export --format litert")
    meta = json.loads(files.read_text(path))
    try:
        meta["params"] = TransformConfig(
            min_size=(int(meta["min_size"]),),
            max_size=int(meta["max_size"]),
            canvases=(tuple(int(v) for v in meta["canvas"]),),
            pad_value=tuple(float(v) for v in meta["pad_value"]),
        )
    except KeyError as e:
        raise UsageError(f"{path}: field {e.args[0]!r} missing") from None
    return meta


class LiteRTDetector:
    """``model.tflite`` in the LiteRT interpreter (``pip install ai-edge-litert``).

    Args:
        folder: the export folder (``model.tflite`` and ``model.json``).
        num_threads: interpreter threads.

    Calling it with a uint8 ``[h, w, 3]`` RGB image returns the outputs of
    :data:`LITERT_OUTPUT_KEYS` as numpy arrays (batch 1).
    """

    def __init__(self, folder: str | os.PathLike, num_threads: int = 2):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise UsageError(
                "running a LiteRT model needs the LiteRT interpreter: pip install ai-edge-litert"
            ) from None
        self.metadata = read_metadata(folder)
        self.params: TransformConfig = self.metadata["params"]
        path = files.join(os.fspath(folder), self.metadata["file"])
        self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner(self.metadata["signature"])

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on prepared inputs (:func:`prepare_input`)."""
        return self.runner(**inputs)

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        return self.run(prepare_input(image, self.params))

"""Export a detector as a SavedModel that TF Serving runs as it is.

The graph does everything :func:`atss_tf.inference.detect` does, with core
TensorFlow ops only (no custom ops, no Python, no ``atss_tf`` or Keras at
load time)::

    inputs -> decode (image_bytes / tf_example) -> check -> test-time resize
      -> pad onto the smallest fitting canvas -> for each canvas that holds an
      image of the request: the network on those images, decoding, clipping,
      class-aware NMS -> boxes back to original pixels -> outputs

Signature ``serving_default``, input key ``inputs`` (Model Garden's input
types):

* ``image_bytes``: ``string [B]``, encoded JPEG/PNG/GIF/BMP, any sizes in one batch;
* ``image_tensor``: ``uint8 [B, H, W, 3]`` RGB;
* ``tf_example``: ``string [B]`` serialized ``tf.train.Example`` with
  ``image/encoded`` (the keys of :mod:`atss_tf.data.tfrecords`).

Outputs (names of Model Garden and the TF Object Detection API),
``D = postprocess.max_detections``, rows sorted by score, padding rows zero:

* ``detection_boxes``: float32 ``[B, D, 4]`` ``[ymin, xmin, ymax, xmax]`` in
  original-image pixels (continuous coordinates, ATSS_SPEC §0), or divided by
  the image's height and width with ``normalized_boxes``;
* ``detection_scores``: float32 ``[B, D]``;
* ``detection_classes``: int32 ``[B, D]``, the dataset's category ids
  (``model.category_ids``; COCO ids for COCO models), 0 in padding rows;
* ``detection_class_names``: string ``[B, D]``, "" in padding rows;
* ``num_detections``: int32 ``[B]``;
* ``image_info``: float32 ``[B, 4, 2]`` (:mod:`atss_tf.data.transforms`: original
  size, resized size, scale, canvas size; rows ``(y, x)``).

The SavedModel's ``assets/labels.txt`` lists ``category_id<TAB>name`` per
class (the graph reads its names from it), and
``assets.extra/tf_serving_warmup_requests`` holds one request per canvas,
which TF Serving replays when it loads the model.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from atss_tf import files
from atss_tf.config import (
    DEFAULT_MAX_PIXELS,
    SERVING_INPUT_TYPES,
    ConfigError,
    validate_detector_config,
)
from atss_tf.data.inference_input import MIN_RESIZED_SIDE
from atss_tf.data.tfrecords import _bytes as bytes_feature
from atss_tf.data.tfrecords import encoded_image_problem, parse_example
from atss_tf.data.transforms import (
    TransformConfig,
    decode_image,
    fitting_canvases,
    image_format_flags,
    pad_to_canvas,
    transform,
)
from atss_tf.errors import UsageError
from atss_tf.model.detector import ATSSDetector

INPUT_TYPES = SERVING_INPUT_TYPES
INPUT_KEY = "inputs"
SIGNATURE = "serving_default"
LABELS_FILE = "labels.txt"
WARMUP_FILE = "tf_serving_warmup_requests"
OUTPUT_KEYS = (
    "detection_boxes",
    "detection_scores",
    "detection_classes",
    "detection_class_names",
    "num_detections",
    "image_info",
)


def serving_transform(
    model: keras.Model,
    min_size: int | None = None,
    max_size: int | None = None,
    canvases: Sequence[Sequence[int]] | None = None,
) -> TransformConfig:
    """The model's own test-time resize and canvases, with any of them overridden.
    Sizes that differ from the model's without ``canvases`` get the canvases
    that fit them (:func:`~atss_tf.data.transforms.fitting_canvases`), not the
    model's: GroupNorm's statistics include the padding.

    Raises:
        UsageError: an override the model cannot run with (naming the value).
    """
    dc = model.detector_config
    test_size = dc.test_size if min_size is None else int(min_size)
    max_size = dc.max_size if max_size is None else int(max_size)
    if canvases is not None:
        canvases = tuple((int(h), int(w)) for h, w in canvases)
    elif (test_size, max_size) != (dc.test_size, dc.max_size):
        canvases = fitting_canvases(test_size, max_size)
    else:
        canvases = dc.canvases
    changed = dataclasses.replace(dc, test_size=test_size, max_size=max_size, canvases=canvases)
    try:
        validate_detector_config(changed)
    except ConfigError as e:
        raise UsageError(
            f"invalid export input size (--min-size/--max-size/--canvases): {e}"
        ) from None
    return TransformConfig.for_detector(changed)


def _image_problem_message(index: tf.Tensor, problem) -> tf.Tensor:
    return tf.strings.join(["image ", tf.strings.as_string(index), " of the request: ", problem])


class DetectionServing:
    """The serving graph of a detector (see the module docstring).

    Args:
        model: an :class:`~atss_tf.model.ATSSDetector`.
        input_type: one of :data:`INPUT_TYPES`.
        params: the test-time resize and canvases (:func:`serving_transform`).
        labels_path: a ``category_id<TAB>name`` file (:func:`write_labels`).
        batch_size: a fixed batch size for the signature, or None (any).
        normalized_boxes: output boxes divided by the image height and width.
        max_pixels: images above this many pixels are refused before
            decoding (0: no limit).

    :meth:`serve` is the signature function (``input_spec`` its input).
    """

    def __init__(
        self,
        model: keras.Model,
        input_type: str,
        params: TransformConfig,
        labels_path: str | os.PathLike,
        batch_size: int | None = None,
        normalized_boxes: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        if input_type not in INPUT_TYPES:
            raise UsageError(
                f"input type must be one of {', '.join(INPUT_TYPES)}, got {input_type!r}"
            )
        if batch_size is not None and batch_size < 1:
            raise UsageError(f"batch size must be >= 1, got {batch_size}")
        self.model = model
        self.input_type = input_type
        self.params = params
        self.normalized_boxes = normalized_boxes
        self.max_pixels = int(max_pixels)
        self.max_detections = model.detector_config.postprocess.max_detections
        self.category_ids = tf.constant([0, *model.category_ids], tf.int32)  # [C + 1]: 0 padding
        self.names = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                os.fspath(labels_path),
                key_dtype=tf.int64,
                key_index=0,
                value_dtype=tf.string,
                value_index=1,
                delimiter="\t",
            ),
            default_value="",
        )
        self.input_spec = input_spec(input_type, batch_size)

    # --------------------------------------------------------------- inputs

    def _decode(self, item: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
        """One request item -> ``uint8 [h, w, 3]``, refused with a message naming
        its index when it is not a complete image or exceeds the pixel limit."""
        if self.input_type == "image_tensor":
            return item
        if self.input_type == "tf_example":
            parsed = parse_example(item, ("image/encoded", "image/height", "image/width"))
            encoded, height, width = parsed["encoded"], parsed["height"], parsed["width"]
        else:
            encoded, height, width = item, tf.constant(-1, tf.int64), tf.constant(-1, tf.int64)
        # A JPEG's size from its header (a PNG's is read by encoded_image_problem),
        # so a huge image is refused before its pixels are decoded.
        jpeg_size = tf.cond(
            image_format_flags(encoded)["jpeg"],
            lambda: tf.cast(tf.image.extract_jpeg_shape(encoded)[:2], tf.int64),
            lambda: tf.stack([height, width]),
        )
        problem = encoded_image_problem(
            encoded, jpeg_size[0], jpeg_size[1], self.max_pixels, "the pixel limit"
        )
        check = tf.debugging.Assert(tf.equal(problem, ""), [_image_problem_message(index, problem)])
        with tf.control_dependencies([check]):
            return decode_image(
                encoded, tf.strings.join(["image ", tf.strings.as_string(index), " of the request"])
            )

    def _check_size(self, image: tf.Tensor, index: tf.Tensor) -> tf.Operation:
        """Refuse images above the pixel limit (GIF, BMP and tensors are only
        measured here) and slivers whose shorter side the test resize would take
        below :data:`atss_tf.data.inference_input.MIN_RESIZED_SIDE`: the graph form of
        :func:`atss_tf.data.inference_input.check_aspect_ratio`, which ``detect`` applies."""
        shape = tf.cast(tf.shape(image), tf.float64)
        short, long = tf.minimum(shape[0], shape[1]), tf.maximum(shape[0], shape[1])
        scale = tf.minimum(
            max(self.params.min_size) / tf.maximum(short, 1.0),
            self.params.max_size / tf.maximum(long, 1.0),
        )
        resized_short = short * scale
        pixels = tf.cast(shape[0] * shape[1], tf.int64)
        too_large = tf.constant(self.max_pixels > 0) & (pixels > self.max_pixels)
        size = tf.strings.as_string(tf.shape(image)[:2])
        problem = tf.where(
            too_large,
            tf.strings.join(
                [tf.strings.as_string(pixels), f" pixels, above the pixel limit {self.max_pixels}"]
            ),
            tf.strings.join(
                [
                    size[0],
                    "x",
                    size[1],
                    " (h x w): after the test resize its shorter side would be ",
                    tf.strings.as_string(resized_short, precision=1),
                    f" px, below {MIN_RESIZED_SIDE}; crop it into tiles of a less extreme "
                    "aspect ratio",
                ]
            ),
        )
        ok = ~too_large & (resized_short >= MIN_RESIZED_SIDE)
        return tf.debugging.Assert(ok, [_image_problem_message(index, problem)])

    def _prepare(self, item: tf.Tensor, index: tf.Tensor):
        """Decode, check, resize and pad one image onto the largest canvas
        extent; returns ``(image [Hmax, Wmax, 3], image_info [4, 2], canvas)``."""
        image = self._decode(item, index)
        with tf.control_dependencies([self._check_size(image, index)]):
            t = transform(image, tf.zeros([0, 4]), self.params)
        height, width = self._extent
        padded = pad_to_canvas(t["image"], height, width, self.params.pad_value)
        padded.set_shape([height, width, 3])
        return padded, t["image_info"], t["canvas_index"]

    @property
    def _extent(self) -> tuple[int, int]:
        return (
            max(h for h, _ in self.params.canvases),
            max(w for _, w in self.params.canvases),
        )

    # ---------------------------------------------------------------- graph

    def _detect_on_canvas(self, images, image_info, rows, canvas):
        """Detections of the batch items ``rows`` (int32 ``[n]``) on ``canvas``."""
        height, width = canvas
        d = self.max_detections

        def run():
            x = tf.ensure_shape(
                tf.gather(images, rows)[:, :height, :width, :], [None, height, width, 3]
            )
            det = self.model.predict_step({"images": x, "image_info": tf.gather(image_info, rows)})
            return det["boxes"], det["scores"], det["classes"], det["num_detections"]

        def skip():
            return (
                tf.zeros([0, d, 4]),
                tf.zeros([0, d]),
                tf.zeros([0, d], tf.int32),
                tf.zeros([0], tf.int32),
            )

        return tf.cond(tf.size(rows) > 0, run, skip)

    def serve(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        """``inputs`` (:attr:`input_spec`) -> the outputs of the module docstring."""
        batch = tf.shape(inputs)[0]
        nonempty = tf.debugging.Assert(batch > 0, [f"empty request: no image in {INPUT_KEY}"])
        with tf.control_dependencies([nonempty]):
            index = tf.range(batch)
        height, width = self._extent
        images, image_info, canvas_index = tf.map_fn(
            lambda e: self._prepare(e[0], e[1]),
            (inputs, index),
            fn_output_signature=(
                tf.TensorSpec([height, width, 3], tf.float32),
                tf.TensorSpec([4, 2], tf.float32),
                tf.TensorSpec([], tf.int32),
            ),
        )
        d = self.max_detections
        boxes = tf.zeros([batch, d, 4])
        scores = tf.zeros([batch, d])
        labels = tf.zeros([batch, d], tf.int32)
        count = tf.zeros([batch], tf.int32)
        for c, canvas in enumerate(self.params.canvases):
            rows = tf.cast(tf.where(tf.equal(canvas_index, c))[:, 0], tf.int32)
            found = self._detect_on_canvas(images, image_info, rows, canvas)
            at = rows[:, None]
            boxes = tf.tensor_scatter_nd_update(boxes, at, found[0])
            scores = tf.tensor_scatter_nd_update(scores, at, found[1])
            labels = tf.tensor_scatter_nd_update(labels, at, found[2])
            count = tf.tensor_scatter_nd_update(count, at, found[3])

        return self.outputs(boxes, scores, labels, count, image_info)

    def outputs(self, boxes, scores, labels, count, image_info) -> dict[str, tf.Tensor]:
        """The signature's outputs (:func:`detection_outputs` and the class names)."""
        out = detection_outputs(
            boxes, scores, labels, count, image_info, self.category_ids, self.normalized_boxes
        )
        out["detection_class_names"] = tf.where(
            labels > 0, self.names.lookup(tf.cast(out["detection_classes"], tf.int64)), ""
        )
        return {k: out[k] for k in OUTPUT_KEYS}


def detection_outputs(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    labels: tf.Tensor,
    count: tf.Tensor,
    image_info: tf.Tensor,
    category_ids: tf.Tensor,
    normalized_boxes: bool = False,
) -> dict[str, tf.Tensor]:
    """The numeric outputs of the module docstring (all but the class names)
    from detections in original pixels: boxes ``[B, D, 4]`` float32 xyxy,
    scores ``[B, D]``, labels ``[B, D]`` int32 (1..C, 0 in padding rows),
    count ``[B]`` int32, ``image_info`` ``[B, 4, 2]`` and ``category_ids``
    int32 ``[C + 1]`` (index 0: the padding rows' 0)."""
    yxyx = tf.gather(boxes, [1, 0, 3, 2], axis=-1)
    if normalized_boxes:
        original = image_info[:, 0, :]  # (height, width)
        yxyx = yxyx / tf.tile(original, [1, 2])[:, None, :]
    return {
        "detection_boxes": yxyx,
        "detection_scores": scores,
        "detection_classes": tf.gather(category_ids, labels),
        "num_detections": count,
        "image_info": image_info,
    }


def input_spec(input_type: str, batch_size: int | None = None) -> tf.TensorSpec:
    """The ``inputs`` spec of an input type (``batch_size`` None: any batch)."""
    if input_type == "image_tensor":
        return tf.TensorSpec([batch_size, None, None, 3], tf.uint8, name=INPUT_KEY)
    return tf.TensorSpec([batch_size], tf.string, name=INPUT_KEY)


def write_labels(model: keras.Model, path: str | os.PathLike) -> str:
    """``category_id<TAB>name`` per class, in label order.

    Raises:
        UsageError: a class name holding a tab or a line break.
    """
    lines = []
    for cid, name in zip(model.category_ids, model.class_names):
        if any(ch in name for ch in "\t\r\n"):
            raise UsageError(f"class name {name!r} (category {cid}) holds a tab or line break")
        lines.append(f"{cid}\t{name}\n")
    files.write_text(path, "".join(lines))
    return os.fspath(path)


def request_input(input_type: str, image: np.ndarray, batch_size: int | None) -> np.ndarray:
    """A request's ``inputs`` of ``batch_size`` (None: 1) copies of ``image``
    (uint8 ``[h, w, 3]``) in the signature's type: the images, PNG bytes, or
    ``tf.train.Example`` records holding them."""
    n = batch_size or 1
    if input_type == "image_tensor":
        return np.repeat(image[None], n, axis=0)
    encoded = tf.io.encode_png(image).numpy()
    if input_type == "tf_example":  # built as make-tfrecords builds its features
        feature = {"image/encoded": bytes_feature([encoded])}
        encoded = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
    return np.array([encoded] * n, dtype=object)


def warmup_inputs(input_type: str, params: TransformConfig, batch_size: int | None) -> list:
    """One request input per canvas: a mid-gray image of the canvas's size, as
    numpy arrays of the signature's type, for each canvas such an image lands on
    after the test resize (the others are left out)."""
    requests = []
    for c, (height, width) in enumerate(params.canvases):
        image = np.full((height, width, 3), 128, np.uint8)
        if int(transform(image, tf.zeros([0, 4]), params)["canvas_index"]) != c:
            continue
        requests.append(request_input(input_type, image, batch_size))
    return requests


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def prediction_log(inputs: np.ndarray, model_name: str = "") -> bytes:
    """A serialized ``tensorflow.serving.PredictionLog`` holding a PredictRequest
    of ``serving_default`` with ``inputs``.

    Written field by field so that tensorflow-serving-api (which pins the
    TensorFlow version) is not a dependency: PredictionLog.predict_log = 6,
    PredictLog.request = 1, PredictRequest.model_spec = 1 and .inputs = 2 (a
    map: entry key = 1, value = 2), ModelSpec.name = 1 and .signature_name = 3.
    """
    tensor = tf.make_tensor_proto(inputs).SerializeToString()
    spec = _field(1, model_name.encode()) + _field(3, SIGNATURE.encode())
    request = _field(1, spec) + _field(2, _field(1, INPUT_KEY.encode()) + _field(2, tensor))
    return _field(6, _field(1, request))


def export_saved_model(
    model: keras.Model,
    export_dir: str | os.PathLike,
    *,
    input_type: str = "image_bytes",
    batch_size: int | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    canvases: Sequence[Sequence[int]] | None = None,
    normalized_boxes: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    version: int = 1,
    warmup: bool = True,
) -> str:
    """Write ``export_dir/<version>/``, a SavedModel TF Serving serves as it is.

    Args:
        model: an :class:`~atss_tf.model.ATSSDetector`.
        export_dir: the model's base folder (TF Serving's ``--model_base_path``),
            local or remote (``gs://bucket/models/atss``).
        input_type: ``image_bytes``, ``image_tensor`` or ``tf_example``.
        batch_size: fix the signature's batch size (default: any).
        min_size, max_size, canvases: override the model's test-time shorter
            side, longer-side cap and canvases ``[(h, w), ...]``; sizes given
            without canvases get canvases that fit them (:func:`serving_transform`).
        normalized_boxes: boxes in ``[0, 1]`` of the image height and width.
        max_pixels: refuse larger images before decoding (0: no limit).
        version: the version folder's number.
        warmup: write ``assets.extra/tf_serving_warmup_requests``.

    Returns:
        The version folder. Locally it is written under a temporary name and
        renamed when complete, so a server watching ``export_dir`` never loads
        half a model; on a remote filesystem (where renaming a folder is a copy)
        it is written locally and copied file by file, ``saved_model.pb`` last.

    Raises:
        UsageError: an invalid option, or the version folder exists.
    """
    params = serving_transform(model, min_size, max_size, canvases)
    return write_saved_model(
        model,
        export_dir,
        version,
        lambda labels: DetectionServing(
            model, input_type, params, labels, batch_size, normalized_boxes, max_pixels
        ),
        warmup_inputs(input_type, params, batch_size) if warmup else None,
    )


def write_saved_model(
    model: keras.Model,
    export_dir: str | os.PathLike,
    version: int,
    make_module: Callable[[str], DetectionServing],
    warmup_requests: Sequence[np.ndarray] | None,
) -> str:
    """Write the serving module ``make_module(labels_path)`` as
    ``export_dir/<version>/`` (the folder handling of :func:`export_saved_model`),
    with ``warmup_requests`` (request inputs) in ``assets.extra`` unless None.

    Raises:
        UsageError: the version is below 1 or its folder exists.
    """
    if version < 1:
        raise UsageError(f"version must be >= 1, got {version}")
    base = os.fspath(export_dir)
    target = files.join(base, str(version))
    if files.exists(target):
        raise UsageError(
            f"{target} exists: export as another --version (TF Serving serves the highest) "
            "or into another --out"
        )
    remote = files.is_remote(base)
    files.makedirs(base)
    # Locally the scratch folder is beside the target, so the final rename is atomic.
    scratch = tempfile.mkdtemp(prefix=f".{version}-", dir=None if remote else base)
    try:
        labels = write_labels(model, os.path.join(tempfile.mkdtemp(dir=scratch), LABELS_FILE))
        module = make_module(labels)
        archive = keras.export.ExportArchive()
        # Variables are tracked from the endpoint (tracking the model too would
        # save each one twice); the label table and its asset file explicitly.
        archive.track(module.names)
        archive.add_endpoint(SIGNATURE, module.serve, input_signature=[module.input_spec])
        saved = os.path.join(scratch, "saved_model")
        archive.write_out(saved, verbose=False)
        if warmup_requests is not None:
            extra = os.path.join(saved, "assets.extra")
            os.mkdir(extra)
            with tf.io.TFRecordWriter(os.path.join(extra, WARMUP_FILE)) as writer:
                for inputs in warmup_requests:
                    writer.write(prediction_log(inputs))
        if remote:
            files.copy_tree(saved, target, last="saved_model.pb")
        else:
            os.rename(saved, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _export_serving(self: ATSSDetector, export_dir: str | os.PathLike, **kwargs) -> str:
    """Write a TF Serving SavedModel to ``export_dir/<version>/``: decoding,
    test-time resize, the network and NMS inside (keyword arguments and
    return value: :func:`export_saved_model`). ``export`` (Keras') writes the
    raw head outputs only."""
    return export_saved_model(self, export_dir, **kwargs)


# The convenience lives with the export, not in the model package (which knows
# nothing of serving); ``import atss_tf`` imports this module and attaches it.
ATSSDetector.export_serving = _export_serving

"""Detect objects in image files or arrays with a trained or converted model.

The model sees what training saw: the image resized by the config's test
size, padded onto a static canvas; detections come back in original image
pixels (continuous xyxy) with contiguous labels 1..C and their names.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from atss_tf import files
from atss_tf.config import DEFAULT_MAX_PIXELS, Config
from atss_tf.data.image_files import check_pixel_limit, read_image_header
from atss_tf.data.inference_input import check_aspect_ratio, inference_transform
from atss_tf.data.transforms import TransformConfig, decode_image, transform
from atss_tf.errors import CheckpointError, DataError, UsageError, first_line


def load_detector(weights: str | os.PathLike, config: Config | None = None) -> keras.Model:
    """Load a detector from a ``.keras`` file (``model.keras`` and the
    checkpoints ``atss-tf train`` writes, the output of ``atss-tf convert``),
    or build ``config`` and load a ``.weights.h5`` file into it.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is not an ATSS detector or does not fit
            ``config``; the message names the file.
    """
    import atss_tf
    from atss_tf.model import build_detector
    from atss_tf.model.loading import load_keras_detector

    atss_tf.load_api()  # registers every Keras class (the console script defers it)
    path = os.fspath(weights)
    if not files.exists(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".keras"):
        return load_keras_detector(path)
    if path.endswith(".weights.h5"):
        if config is None:
            raise UsageError(f"{path} holds weights only: pass --config with the model's config")
        # A compiled run's file holds optimizer variables too; Keras loads the
        # model's part into an uncompiled detector and leaves those out.
        model = build_detector(config)
        try:
            model.load_weights(path)
        except Exception as e:
            raise CheckpointError(
                f"cannot load {path} into the model of the given config: {first_line(e)}"
            ) from None
        return model
    raise UsageError(f"{path}: expected a .keras model or a .weights.h5 checkpoint")


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """``uint8 [h, w, 3]`` RGB from a JPEG/PNG/GIF/BMP file.

    The header is read first: a file that is missing, not an image, truncated
    or above ``max_pixels`` (0: no limit) is refused before any pixel is
    decoded.

    Raises:
        DataError: naming the file and the reason.
    """
    header = read_image_header(path)
    check_pixel_limit(header.height, header.width, max_pixels, os.fspath(path))
    try:
        return decode_image(tf.io.read_file(os.fspath(path)), os.fspath(path)).numpy()
    except tf.errors.OpError as e:
        raise DataError(f"corrupt image file {path}: {e.message.splitlines()[0]}") from None


def check_detect_input(image: Any, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The array :func:`detect` accepts, or a ``DataError`` naming ``name``.

    Accepted: ``uint8 [h, w, 3]`` RGB 0..255, and float arrays with values in
    0..255 (as ``read_image(...).astype("float32")``). Refused, because their
    value range is ambiguous: float images whose values all lie in 0..1 (pass
    ``image * 255``), uint16 and other integer types, non-finite values,
    gray or RGBA shapes, and more than ``max_pixels`` pixels (0: no limit).
    """
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[-1] != 3:
        hint = ""
        if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 1):
            hint = ": a gray image; repeat it to 3 channels, e.g. np.repeat(img[..., None], 3, -1)"
        elif a.ndim == 3 and a.shape[-1] == 4:
            hint = ": RGBA; drop the alpha channel with img[..., :3]"
        raise DataError(f"{name}: expected an RGB image [h, w, 3], got shape {a.shape}{hint}")
    check_pixel_limit(a.shape[0], a.shape[1], max_pixels, name)
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind != "f":
        raise DataError(
            f"{name}: dtype {a.dtype} is ambiguous; pass uint8 RGB 0..255 "
            "(a 16-bit image: (img // 257).astype('uint8'))"
        )
    if a.size and not np.isfinite(a).all():
        raise DataError(f"{name}: the image holds NaN or infinite values")
    low, high = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if low < 0 or high > 255:
        raise DataError(f"{name}: float values span {low:g}..{high:g}; expected RGB 0..255")
    if high <= 1.0:
        raise DataError(
            f"{name}: float image with values in 0..1 is ambiguous; detect expects RGB 0..255: "
            "pass image * 255 or a uint8 array"
        )
    return a


def test_transform(model: keras.Model, config: Config | None = None) -> TransformConfig:
    """The test-time resize and canvases of ``model``: its own, or ``config``'s
    data settings (with the model's padding value)."""
    return inference_transform(model.detector_config, config)


def padded_batch_size(count: int, batch_size: int) -> int:
    """The batch a group of ``count`` images runs as: the next power of two,
    at most ``batch_size``. Each canvas then compiles at most
    ``1 + log2(batch_size)`` signatures instead of one per group size."""
    return min(batch_size, 1 << max(count - 1, 0).bit_length())


def detect(
    model: keras.Model,
    images: Iterable[np.ndarray],
    config: Config | None = None,
    batch_size: int = 8,
    names: Sequence[str] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Run the detector on RGB images of any sizes and orientations.

    Each image is resized by the test-time rule and padded onto its canvas;
    images are grouped by canvas and run ``batch_size`` at a time, so every
    canvas is compiled once (a last, smaller group is padded to a power of
    two, see :func:`padded_batch_size`).

    Args:
        model: an :class:`~atss_tf.model.ATSSDetector`.
        images: ``uint8 [h, w, 3]`` RGB arrays (or float in 0..255; see
            :func:`check_detect_input` for what is refused and why).
        config: a config whose data settings (test size, canvases, pixel limit)
            replace the model's own test-time input settings.
        batch_size: images per model call.
        names: how errors name the images (default ``image <index>``).

    Returns:
        One dict per image, in input order: ``boxes`` ``[n, 4]`` float32 xyxy
        in original pixels, ``scores`` ``[n]``, ``classes`` ``[n]`` int32 (1..C).
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    params = test_transform(model, config)
    max_pixels = config.data.max_image_pixels if config is not None else DEFAULT_MAX_PIXELS
    prepared = []
    for k, image in enumerate(images):
        name = names[k] if names is not None else f"image {k}"
        image = check_detect_input(image, name, max_pixels)
        check_aspect_ratio(image.shape[0], image.shape[1], params, name)
        t = transform(tf.convert_to_tensor(image), tf.zeros([0, 4]), params)
        prepared.append((int(t["canvas_index"]), t["image"], t["image_info"]))
    groups: dict[int, list[int]] = {}
    for i, (canvas, _, _) in enumerate(prepared):
        groups.setdefault(canvas, []).append(i)
    results: list[dict[str, np.ndarray]] = [{} for _ in prepared]
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            rows = chunk + [chunk[0]] * (padded_batch_size(len(chunk), batch_size) - len(chunk))
            info = tf.stack([prepared[i][2] for i in rows])
            det = model.predict_on_batch(
                {"images": tf.stack([prepared[i][1] for i in rows]), "image_info": info}
            )
            boxes = np.asarray(det["boxes"])
            for j, i in enumerate(chunk):
                n = int(det["num_detections"][j])
                results[i] = {
                    "boxes": boxes[j, :n].astype(np.float32),
                    "scores": np.asarray(det["scores"][j, :n], np.float32),
                    "classes": np.asarray(det["classes"][j, :n], np.int32),
                }
    return results

"""Detect objects in image files or arrays with a trained or converted model.

The model sees what training saw: the image resized by the config's test
size, padded onto a static canvas; detections come back in original image
pixels (continuous xyxy) with contiguous labels 1..C and their names.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from atss_tf.config import DEFAULT_MAX_PIXELS, Config
from atss_tf.data.image_files import check_pixel_limit, read_image_header
from atss_tf.data.transforms import TransformConfig, boxes_to_original, decode_image, transform
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
    from atss_tf.model import ATSSDetector

    atss_tf.load_api()  # registers every Keras class (the console script defers it)
    path = Path(weights)
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".keras":
        try:
            model = keras.saving.load_model(path, compile=False)
        except Exception as e:  # Keras raises many types for a foreign or damaged file
            raise CheckpointError(f"cannot load {path} as a Keras model: {first_line(e)}") from None
        if not isinstance(model, ATSSDetector):
            raise CheckpointError(
                f"{path} holds a Keras {type(model).__name__}, not an ATSS detector "
                "(atss-tf train and atss-tf convert write those)"
            )
        return model
    if path.name.endswith(".weights.h5"):
        if config is None:
            raise UsageError(f"{path} holds weights only: pass --config with the model's config")
        # Training checkpoints hold optimizer variables too: load into a compiled twin.
        from atss_tf.trainer import build_training_model

        model = build_training_model(config)
        try:
            model.load_weights(path)
        except Exception as e:
            raise CheckpointError(
                f"cannot load {path} into the model of the given config: {first_line(e)}"
            ) from None
        return model
    raise UsageError(f"{path}: expected a .keras model or a .weights.h5 checkpoint")


def class_names(config: Config) -> list[str]:
    """Names of labels 1..C (``model.class_names`` or ``class <k>``)."""
    names = list(config.model.class_names)
    return names or [f"class {k}" for k in range(1, config.model.num_classes + 1)]


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


# Below this shorter side after the test resize, an image is a sliver the
# detector cannot see into (P3 has stride 8).
MIN_RESIZED_SIDE = 8


def check_aspect_ratio(height: int, width: int, params: TransformConfig, name: str) -> None:
    """``DataError`` when the test resize leaves the shorter side below
    :data:`MIN_RESIZED_SIDE` pixels (a 1 x 5000 image), instead of detections
    on a one-pixel strip."""
    short, long = min(height, width), max(height, width)
    scale = min(max(params.min_size) / short, params.max_size / long)
    if short * scale < MIN_RESIZED_SIDE:
        raise DataError(
            f"{name} is {height}x{width} (h x w): after the test resize (longer side at most "
            f"{params.max_size} px) its shorter side would be {short * scale:.1f} px, below "
            f"{MIN_RESIZED_SIDE}; "
            "crop it into tiles of a less extreme aspect ratio"
        )


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
        config: transform settings; default the model's own.
        batch_size: images per model call.
        names: how errors name the images (default ``image <index>``).

    Returns:
        One dict per image, in input order: ``boxes`` ``[n, 4]`` float32 xyxy
        in original pixels, ``scores`` ``[n]``, ``classes`` ``[n]`` int32 (1..C).
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    cfg = config or model.config
    params = TransformConfig.from_config(cfg, training=False)
    prepared = []
    for k, image in enumerate(images):
        name = names[k] if names is not None else f"image {k}"
        image = check_detect_input(image, name, cfg.data.max_image_pixels)
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
            boxes = boxes_to_original(det["boxes"], info).numpy()
            for j, i in enumerate(chunk):
                n = int(det["num_detections"][j])
                results[i] = {
                    "boxes": boxes[j, :n].astype(np.float32),
                    "scores": np.asarray(det["scores"][j, :n], np.float32),
                    "classes": np.asarray(det["classes"][j, :n], np.int32),
                }
    return results


def draw_detections(
    image: np.ndarray,
    detections: dict[str, np.ndarray],
    names: Sequence[str],
    score_threshold: float = 0.3,
    ax=None,
    title: str | None = None,
):
    """Draw boxes with class names and scores on ``image`` with matplotlib.

    Returns the matplotlib ``Axes`` (a new figure when ``ax`` is None), so a
    notebook shows it inline and scripts can ``savefig``.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6 * image.shape[0] / max(image.shape[1], 1)))
    ax.imshow(image)
    colours = plt.get_cmap("tab10")
    for box, score, cls in zip(detections["boxes"], detections["scores"], detections["classes"]):
        if score < score_threshold:
            continue
        x1, y1, x2, y2 = (float(v) for v in box)
        colour = colours((int(cls) - 1) % 10)
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=colour, lw=1.5))
        ax.text(
            x1,
            y1,
            f"{names[int(cls) - 1]} {score:.2f}",
            color="white",
            fontsize=7,
            va="bottom",
            bbox=dict(facecolor=colour, alpha=0.8, pad=1, lw=0),
        )
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)
    return ax


def save_detection_grid(
    images: Sequence[np.ndarray],
    detections: Sequence[dict[str, np.ndarray]],
    names: Sequence[str],
    path: str | os.PathLike,
    score_threshold: float = 0.3,
    titles: Sequence[str] | None = None,
) -> None:
    """Save a grid of pictures with their detections drawn to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(images)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            draw_detections(
                images[i],
                detections[i],
                names,
                score_threshold,
                ax=ax,
                title=titles[i] if titles else None,
            )
        else:
            ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

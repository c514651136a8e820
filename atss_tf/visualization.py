"""Pictures of detections (matplotlib): for notebooks, ``atss-tf predict`` and TensorBoard."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence

import keras
import numpy as np


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


def make_picture_fn(model: keras.Model, split, count: int = 4) -> Callable[[], bytes | None]:
    """A closure drawing ``model``'s detections on the first ``count`` images
    of ``split`` (a :class:`~atss_tf.data.splits.SplitSource`), returning PNG
    bytes (for TensorBoard; None without readable images)."""
    from atss_tf.data.pipeline import first_images
    from atss_tf.inference import detect

    images, titles = first_images(split, count)

    def picture_fn() -> bytes | None:
        if not images:
            return None
        buffer = io.BytesIO()
        save_detection_grid(images, detect(model, images), model.class_names, buffer, titles=titles)
        return buffer.getvalue()

    return picture_fn

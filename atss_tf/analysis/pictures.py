"""Pictures of a sample-selection analysis (matplotlib), selectors side by side.

Each function draws one figure from a :class:`~atss_tf.analysis.selection.SelectionResult`
and returns it (a notebook shows it inline); :func:`save_all` writes them as PNGs.
"""

from __future__ import annotations

import os

import numpy as np

from atss_tf import files
from atss_tf.analysis.selection import (
    ASPECT_EDGES,
    LEVEL_NAMES,
    SIZE_EDGES,
    SelectionResult,
    by_bins,
    expected_positives,
    position_grid,
)
from atss_tf.anchors import generate_anchors


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _bin_means(result: SelectionResult, name: str, values: np.ndarray, edges):
    """Bin labels and mean positives per object of ``name``'s non-empty bins."""
    rows = [
        r
        for r in by_bins(values, edges, result.positives[name], result.levels[name])
        if r["objects"]
    ]
    return [r["bin"] for r in rows], [r["mean_positives"] for r in rows]


def positives_per_object(result: SelectionResult):
    """Histogram of positives per object, one panel per selector."""
    plt = _plt()
    n = len(result.selectors)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), squeeze=False, sharey=True)
    expected = expected_positives(result)
    for ax, name in zip(axes[0], result.selectors):
        pos = result.positives[name]
        top = int(pos.max()) if len(pos) else 1
        ax.hist(pos, bins=np.arange(0, top + 2) - 0.5, color="tab:blue")
        ax.axvline(expected, color="tab:red", ls="--", label=f"0.2*k*L = {expected:g}")
        ax.set_title(f"{name}: mean {pos.mean():.2f}" if len(pos) else name)
        ax.set_xlabel("positives per object")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("objects")
    fig.tight_layout()
    return fig


def positives_by_object(result: SelectionResult):
    """Mean positives per object against size, aspect ratio and position."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    expected = expected_positives(result)
    for name in result.selectors:
        labels, means = _bin_means(result, name, result.size, SIZE_EDGES)
        axes[0].plot(labels, means, marker="o", label=name)
        labels, means = _bin_means(result, name, result.aspect, ASPECT_EDGES)
        axes[1].plot(labels, means, marker="o", label=name)
        # Position: distance of the centre from the image centre, in thirds of the half-diagonal.
        d = np.linalg.norm(result.position - 0.5, axis=-1) / np.sqrt(0.5)
        labels, means = _bin_means(result, name, d, (0.0, 1 / 3, 2 / 3, np.inf))
        axes[2].plot(labels, means, marker="o", label=name)
    titles = (
        "by size: sqrt(w*h), canvas px",
        "by aspect ratio h / w",
        "by distance of the centre from the image centre",
    )
    for ax, title in zip(axes, titles):
        ax.axhline(expected, color="tab:red", ls="--", lw=1)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("mean positives per object")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def positives_by_position(result: SelectionResult):
    """Mean positives per object by where its centre lies (image in thirds)."""
    plt = _plt()
    n = len(result.selectors)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False)
    for ax, name in zip(axes[0], result.selectors):
        grid = position_grid(result, result.positives[name])
        im = ax.imshow(grid, cmap="viridis")
        for (y, x), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(x, y, f"{v:.1f}", ha="center", va="center", color="w", fontsize=9)
        ax.set_title(name)
        ax.set_xticks([]), ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("mean positives per object by centre position (image in thirds)", fontsize=10)
    fig.tight_layout()
    return fig


def levels_by_size(result: SelectionResult):
    """Which pyramid levels the positives come from, per object size, per selector."""
    plt = _plt()
    n = len(result.selectors)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.6), squeeze=False, sharey=True)
    num_levels = len(result.config.model.anchors.strides)
    for ax, name in zip(axes[0], result.selectors):
        rows = by_bins(result.size, SIZE_EDGES, result.positives[name], result.levels[name])
        rows = [r for r in rows if r["objects"]]
        labels = [r["bin"] for r in rows]
        fractions = np.array([r["level_fractions"] for r in rows]).reshape(-1, num_levels)
        bottom = np.zeros(len(labels))
        for level in range(num_levels):
            ax.bar(labels, fractions[:, level], bottom=bottom, label=LEVEL_NAMES[level])
            bottom += fractions[:, level]
        ax.set_title(name)
        ax.set_xlabel("object size sqrt(w*h), canvas px")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    axes[0][0].set_ylabel("fraction of positives")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def iou_threshold(result: SelectionResult):
    """The ATSS threshold ``mean + std`` of the candidates' IoUs and its two terms."""
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.4))
    edges = np.linspace(0, 1, 41)
    for ax, key, color in zip(
        axes, ("mean", "std", "threshold"), ("tab:blue", "tab:orange", "tab:green")
    ):
        ax.hist(result.threshold[key], bins=edges, color=color)
        label = "mean + std" if key == "threshold" else key
        ax.set_title(f"candidate IoU {label}", fontsize=10)
        ax.set_xlabel("IoU")
    axes[0].set_ylabel("objects")
    order = np.argsort(result.size)
    for key in ("mean", "std", "threshold"):
        axes[3].scatter(result.size[order], result.threshold[key][order], s=3, label=key, alpha=0.5)
    axes[3].set_xscale("log")
    axes[3].set_xlabel("object size sqrt(w*h), canvas px")
    axes[3].set_title("against object size", fontsize=10)
    axes[3].legend(fontsize=8, markerscale=3)
    fig.tight_layout()
    return fig


def selected_anchors(result: SelectionResult, image: int, pixels: np.ndarray | None = None):
    """The anchors each selector picks for one image, one panel per (selector, level).

    ``pixels``: the image resized to ``result.images[image].resized`` (RGB
    uint8), or None for a blank background. Ground truths in white, each
    positive anchor as its box in the colour of its GT.
    """
    plt = _plt()
    g = result.images[image]
    canvas = result.canvases[g.canvas_index]
    grid = generate_anchors(canvas, result.config.model.anchors)
    level_of = np.repeat(np.arange(len(grid.num_per_level)), grid.num_per_level)
    num_levels = len(grid.num_per_level)
    rows = len(result.selectors)
    fig, axes = plt.subplots(
        rows,
        num_levels,
        figsize=(3.2 * num_levels, 3.2 * rows * canvas[0] / canvas[1] + 0.6),
        squeeze=False,
    )
    colors = plt.get_cmap("tab10")
    for r, name in enumerate(result.selectors):
        matched = result.matched[name].get(image)
        for level in range(num_levels):
            ax = axes[r][level]
            if pixels is not None:
                ax.imshow(pixels, extent=(0, g.resized[1], g.resized[0], 0))
            ax.set_xlim(0, canvas[1]), ax.set_ylim(canvas[0], 0)
            for box in g.boxes:
                ax.add_patch(
                    plt.Rectangle(box[:2], *(box[2:] - box[:2]), fill=False, ec="w", lw=1.5)
                )
            count = 0
            if matched is not None:
                for a in np.nonzero((matched >= 0) & (level_of == level))[0]:
                    x1, y1, x2, y2 = grid.boxes[a]
                    c = colors(int(matched[a]) % 10)
                    ax.add_patch(
                        plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=c, lw=0.8)
                    )
                    ax.plot(*grid.centers[a], "o", color=c, ms=2)
                    count += 1
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{name} {LEVEL_NAMES[level]}: {count}", fontsize=9)
    fig.suptitle(
        f"image {g.record['image_id']} ({g.record['file_name']}), canvas {canvas[0]}x{canvas[1]}",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def load_resized(result: SelectionResult, image: int) -> np.ndarray | None:
    """The image's pixels at its training size, or None when the file cannot be read."""
    from PIL import Image

    g = result.images[image]
    try:
        with files.open_file(g.record["path"], "rb") as f:
            pil = Image.open(f).convert("RGB")
            return np.asarray(pil.resize((g.resized[1], g.resized[0]), Image.BILINEAR))
    except (OSError, ValueError):
        return None


def save_all(result: SelectionResult, out: str, images: list[int]) -> list[str]:
    """Write every figure (and one per image in ``images``) under ``out``; return the paths."""
    plt = _plt()
    written = []
    figures = {
        "positives_per_object.png": positives_per_object,
        "positives_by_object.png": positives_by_object,
        "positives_by_position.png": positives_by_position,
        "levels_by_size.png": levels_by_size,
        "iou_threshold.png": iou_threshold,
    }
    for name, draw in figures.items():
        fig = draw(result)
        written.append(_save(fig, out, name))
        plt.close(fig)
    for i in images:
        fig = selected_anchors(result, i, load_resized(result, i))
        name = f"anchors_image_{result.images[i].record['image_id']}.png"
        written.append(_save(fig, out, name, dpi=72))
        plt.close(fig)
    return written


def _save(fig, out: str, name: str, dpi: int = 110) -> str:
    path = files.join(out, name)
    if files.is_remote(out):
        import io

        buf = io.BytesIO()
        fig.savefig(buf, dpi=dpi)
        with files.open_file(path, "wb") as f:
            f.write(buf.getvalue())
    else:
        fig.savefig(os.fspath(path), dpi=dpi)
    return path

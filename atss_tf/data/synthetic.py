"""A synthetic COCO-format detection dataset: coloured shapes on textured noise.

Each image has a smooth random background with pixel noise and a few shapes
(circle, square, triangle, ...) of sizes from ``object_size[0]`` to
``object_size[1]`` pixels, drawn from a log-uniform law so small objects are
common. Shapes may overlap; larger ones are drawn first so small ones stay
visible. A box is the tight continuous bound ``[x, y, w, h]`` of the pixels the
shape covers (pixel ``i`` spans ``[i, i + 1)``). Everything is a function of
``seed`` (image ``i`` uses ``numpy.random.default_rng([seed, i])``), so the
same arguments give byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star", "hexagon")


@dataclass(frozen=True)
class SyntheticPaths:
    """Where :func:`generate_synthetic_coco` wrote a split."""

    annotations: str
    images_dir: str


def _polygon(shape: str, s: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape inscribed in an ``s`` x ``s`` square at the origin."""
    c = s / 2.0
    if shape == "square":
        return [(0, 0), (s, 0), (s, s), (0, s)]
    if shape == "triangle":
        angle = rng.uniform(0, 2 * math.pi)
        return [
            (
                c + c * math.cos(angle + k * 2 * math.pi / 3),
                c + c * math.sin(angle + k * 2 * math.pi / 3),
            )
            for k in range(3)
        ]
    if shape == "diamond":
        return [(c, 0), (s, c), (c, s), (0, c)]
    if shape == "cross":
        t = s / 3.0
        return [
            (t, 0),
            (2 * t, 0),
            (2 * t, t),
            (s, t),
            (s, 2 * t),
            (2 * t, 2 * t),
            (2 * t, s),
            (t, s),
            (t, 2 * t),
            (0, 2 * t),
            (0, t),
            (t, t),
        ]
    if shape == "star":
        pts = []
        for k in range(10):
            r = c if k % 2 == 0 else c * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((c + r * math.cos(a), c + r * math.sin(a)))
        return pts
    if shape == "hexagon":
        return [
            (c + c * math.cos(k * math.pi / 3), c + c * math.sin(k * math.pi / 3)) for k in range(6)
        ]
    raise ValueError(shape)


def _shape_mask(shape: str, s: int, rng: np.random.Generator) -> Image.Image:
    """An ``L`` mask (0 / 255) of ``shape`` drawn in an ``s`` x ``s`` square."""
    mask = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse([0, 0, s - 1, s - 1], fill=255)
    elif shape == "ring":
        draw.ellipse([0, 0, s - 1, s - 1], fill=255)
        inner = max(1, round(s * 0.25))
        if s - 1 - inner > inner:
            draw.ellipse([inner, inner, s - 1 - inner, s - 1 - inner], fill=0)
    else:
        draw.polygon(_polygon(shape, s - 1, rng), fill=255)
    return mask


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random colour field plus pixel noise, uint8 ``[h, w, 3]``."""
    grid = rng.integers(40, 216, size=(int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3))
    smooth = np.asarray(Image.fromarray(grid.astype(np.uint8)).resize((w, h), Image.BILINEAR))
    noise = rng.integers(-18, 19, size=(h, w, 3), dtype=np.int16)
    return np.clip(smooth.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _draw_size(size, rng: np.random.Generator) -> tuple[int, int]:
    size = tuple(size)
    if len(size) == 2 and all(isinstance(v, (int, np.integer)) for v in size):
        return int(size[0]), int(size[1])
    (h0, h1), (w0, w1) = size
    return int(rng.integers(h0, h1 + 1)), int(rng.integers(w0, w1 + 1))


def generate_synthetic_coco(
    out_dir: str | os.PathLike,
    num_images: int,
    image_size: tuple[int, int] | tuple[tuple[int, int], tuple[int, int]] = (256, 320),
    *,
    seed: int = 0,
    num_classes: int = 3,
    objects_per_image: tuple[int, int] = (1, 6),
    object_size: tuple[int, int] | None = None,
    split: str = "train",
    jpeg_quality: int = 90,
    categories: Sequence[tuple[int, str]] | None = None,
    progress: bool = False,
) -> SyntheticPaths:
    """Write ``out_dir/{split}/NNNNNN.jpg`` and ``out_dir/{split}.json``.

    Args:
        out_dir: output folder (created).
        num_images: number of images; ids are 1..num_images.
        image_size: ``(H, W)``, or ``((H_min, H_max), (W_min, W_max))`` to draw
            each image's size uniformly (inclusive).
        seed: everything is determined by it.
        num_classes: categories ``1..num_classes`` named after :data:`SHAPES`
            (at most ``len(SHAPES)``); each object's class is uniform.
        categories: instead, the dataset's ``(category_id, name)`` pairs, in
            any order and of any number (e.g. COCO's 80 ids 1..90 with gaps);
            an object of the ``k``-th pair is drawn as shape ``k % 8``.
        objects_per_image: inclusive range of the number of shapes.
        object_size: inclusive ``(min, max)`` shape side in pixels; default
            ``(8, 0.9 * shorter side)``, capped at the image's shorter side.
        split: names the image folder and the json.
        jpeg_quality: PIL JPEG quality.
        progress: show a progress bar.

    Returns:
        :class:`SyntheticPaths` with the json path and the image folder.
    """
    if categories is None:
        if not 1 <= num_classes <= len(SHAPES):
            raise ValueError(f"num_classes must lie in 1..{len(SHAPES)}, got {num_classes}")
        categories = [(k + 1, SHAPES[k]) for k in range(num_classes)]
    categories = [(int(i), str(n)) for i, n in categories]
    if not categories or len({i for i, _ in categories}) != len(categories):
        raise ValueError(f"categories must be non-empty with unique ids, got {categories}")
    out_dir = os.fspath(out_dir)
    images_dir = os.path.join(out_dir, split)
    os.makedirs(images_dir, exist_ok=True)
    images, annotations = [], []
    bar = None
    if progress:
        from atss_tf.progress import progress_bar

        bar = progress_bar(
            num_images, f"Generating {num_images} {split} images in {images_dir}", "image"
        )
    for i in range(num_images):
        if bar is not None:
            bar.update(i)
        rng = np.random.default_rng([seed, i])
        h, w = _draw_size(image_size, rng)
        short = min(h, w)
        lo, hi = object_size if object_size is not None else (8, int(0.9 * short))
        hi = max(min(hi, short), 1)
        lo = max(min(lo, hi), 1)
        img = Image.fromarray(_background(h, w, rng))
        n = int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))
        sizes = np.exp(rng.uniform(math.log(lo), math.log(hi + 1), size=n)).astype(int)
        sizes = np.clip(sizes, lo, hi)
        for s in sorted(sizes.tolist(), reverse=True):
            label = int(rng.integers(len(categories)))
            x0 = int(rng.integers(0, w - s + 1))
            y0 = int(rng.integers(0, h - s + 1))
            mask = _shape_mask(SHAPES[label % len(SHAPES)], s, rng)
            bbox = mask.getbbox()
            if bbox is None:
                continue
            colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
            under = np.asarray(img.crop((x0, y0, x0 + s, y0 + s))).reshape(-1, 3).mean(0)
            if np.abs(np.asarray(colour) - under).sum() < 150:
                colour = tuple(255 - v for v in colour)
            img.paste(colour, (x0, y0), mask)
            left, top, right, bottom = bbox  # right / bottom exclusive: continuous bounds
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": categories[label][0],
                    "bbox": [
                        float(x0 + left),
                        float(y0 + top),
                        float(right - left),
                        float(bottom - top),
                    ],
                    "area": float(np.count_nonzero(np.asarray(mask))),
                    "iscrowd": 0,
                }
            )
        file_name = f"{i + 1:06d}.jpg"
        img.save(os.path.join(images_dir, file_name), format="JPEG", quality=jpeg_quality)
        images.append({"id": i + 1, "file_name": file_name, "height": h, "width": w})
    if bar is not None:
        bar.update(num_images, finalize=True)
    data = {
        "info": {"description": "atss-tf synthetic shapes", "seed": seed},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "shape"} for i, n in categories],
    }
    ann_path = os.path.join(out_dir, f"{split}.json")
    with open(ann_path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return SyntheticPaths(ann_path, images_dir)

"""Sample selection measured over a dataset (paper Sections 3.3 and 4.1).

:func:`analyze_selection` runs sample selectors (the configured one and any
others for comparison) over every image of a COCO-format split, with the
training resize and canvases of the config, and returns per-object tables:
how many positives each object gets, from which pyramid levels, the ATSS
candidate IoU statistics (``mean``, ``std``, ``mean + std``) and, per image,
the anchors IoU matching ignores. :func:`summarize` turns those into the
JSON summary ``atss-tf analyze`` writes.

Geometry: boxes are continuous xyxy canvas pixels after the training resize
(shorter side drawn per image from ``data.min_size`` with a seeded generator,
capped by ``data.max_size``, shrunk further only when no canvas holds the
image, exactly as :func:`atss_tf.data.transforms.transform`); no flip. An
object's size is ``sqrt(w * h)`` in those pixels, its aspect ratio ``h / w``,
its position the centre over the resized image's width and height (0..1).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from atss_tf.anchors import AnchorGrid, generate_anchors
from atss_tf.config import Config, ConfigError, validate
from atss_tf.data.coco import CocoDataset
from atss_tf.data.transforms import choose_canvas, official_resize_size
from atss_tf.targets import TargetEncoder
from atss_tf.targets.atss import candidate_statistics

# sqrt(area) in canvas pixels; COCO's small / medium / large split at 32 and 96.
SIZE_EDGES = (0.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, math.inf)
# Aspect ratio h / w.
ASPECT_EDGES = (0.0, 0.25, 0.5, 0.8, 1.25, 2.0, 4.0, math.inf)
POSITION_BINS = 3  # the image cut in thirds along each axis
LEVEL_NAMES = ("P3", "P4", "P5", "P6", "P7")
BATCH = 16


@dataclass
class ImageGeometry:
    """Where one image's boxes land on its training canvas."""

    record: dict
    canvas_index: int
    resized: tuple[int, int]  # (height, width) of the image on the canvas
    boxes: np.ndarray  # [n, 4] float32 continuous xyxy canvas pixels


@dataclass
class SelectionResult:
    """Per-object and per-image results of the selectors over a dataset.

    Object arrays have one row per ground-truth box, in image order:
    ``image_index`` (into ``images``), ``box`` ``[N, 4]`` (canvas pixels),
    ``size``, ``aspect``, ``position`` ``[N, 2]`` (x, y in 0..1), ``canvas``.
    ``positives[name]`` ``[N]`` int and ``levels[name]`` ``[N, L]`` int per
    selector; ``ignored[name]`` ``[num_images]`` ignored anchors per image;
    ``threshold`` the ATSS candidate IoU ``"mean"``, ``"std"``, ``"threshold"``
    ``[N]`` for ``k`` = ``assigner.topk``.
    """

    config: Config
    selectors: list[str]
    images: list[ImageGeometry]
    canvases: tuple[tuple[int, int], ...]
    candidates_per_object: int  # K = sum over levels of min(k * #A, anchors in the level)
    image_index: np.ndarray
    box: np.ndarray
    size: np.ndarray
    aspect: np.ndarray
    position: np.ndarray
    canvas: np.ndarray
    positives: dict[str, np.ndarray] = field(default_factory=dict)
    levels: dict[str, np.ndarray] = field(default_factory=dict)
    ignored: dict[str, np.ndarray] = field(default_factory=dict)
    matched: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    threshold: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_objects(self) -> int:
        return len(self.size)


def selector_config(config: Config, name: str) -> Config:
    """``config`` with ``assigner.type`` set to ``name`` (a copy), validated.

    Raises:
        ConfigError: naming the selector when it cannot run with this model
            (e.g. FCOS with several anchors per location).
    """
    cfg = dataclasses.replace(config, assigner=dataclasses.replace(config.assigner, type=name))
    try:
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"selector {name!r} cannot run with this config: {e}") from None
    return cfg


def training_geometry(dataset: CocoDataset, config: Config, seed: int = 0) -> list[ImageGeometry]:
    """Every image's canvas and boxes after the training resize (module docstring)."""
    data = config.data
    records = dataset.records
    if not records:
        return []
    rng = np.random.default_rng(seed)
    min_sizes = np.asarray(data.min_size, np.int64)[
        rng.integers(0, len(data.min_size), len(records))
    ]
    heights = np.array([r["height"] for r in records], np.int64)
    widths = np.array([r["width"] for r in records], np.int64)
    sizes = official_resize_size(heights, widths, min_sizes, data.max_size).numpy().T  # [n, 2]
    canvas_of: dict[tuple[int, int], tuple[int, float]] = {}
    out = []
    for record, (h, w) in zip(records, sizes):
        key = (int(h), int(w))
        if key not in canvas_of:
            index, shrink = choose_canvas(h, w, data.canvases)
            canvas_of[key] = (int(index), float(shrink))
        index, shrink = canvas_of[key]
        rh = max(int(math.floor(h * shrink)), 1)
        rw = max(int(math.floor(w * shrink)), 1)
        scale = np.array([rw / record["width"], rh / record["height"]] * 2, np.float32)
        boxes = np.asarray(record["boxes"], np.float32).reshape(-1, 4) * scale
        out.append(ImageGeometry(record, index, (rh, rw), boxes))
    return out


def _object_table(images: list[ImageGeometry]) -> dict[str, np.ndarray]:
    counts = [len(g.boxes) for g in images]
    boxes = np.concatenate([g.boxes for g in images]) if images else np.zeros((0, 4), np.float32)
    image_index = np.repeat(np.arange(len(images)), counts)
    w = np.maximum(boxes[:, 2] - boxes[:, 0], 0.0)
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 0.0)
    resized = np.array([g.resized for g in images], np.float32).reshape(-1, 2)[image_index]
    centre = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], -1)
    return {
        "image_index": image_index,
        "box": boxes,
        "size": np.sqrt(w * h),
        "aspect": h / np.maximum(w, 1e-6),
        "position": np.clip(centre / np.maximum(resized[:, ::-1], 1.0), 0.0, 1.0),
        "canvas": np.array([g.canvas_index for g in images], np.int64)[image_index]
        if images
        else np.zeros(0, np.int64),
    }


def _statistics_fn(grid: AnchorGrid, k: int):
    """:func:`candidate_statistics` on ``grid``, XLA-compiled (one trace per batch shape)."""

    def stats(boxes, mask):
        return candidate_statistics(grid, boxes, mask, k)

    return tf.function(stats, jit_compile=True, autograph=False)


def _level_ids(grid: AnchorGrid) -> np.ndarray:
    return np.repeat(np.arange(len(grid.num_per_level)), grid.num_per_level)


def analyze_selection(
    dataset: CocoDataset,
    config: Config,
    compare: Sequence[str] = (),
    seed: int = 0,
    keep_matches_for: Sequence[int] = (),
    progress: Callable[[int], None] | None = None,
) -> SelectionResult:
    """Run ``config``'s selector and those named in ``compare`` over ``dataset``.

    Args:
        dataset: a loaded split (:func:`atss_tf.data.coco.load_coco`).
        config: the training config (model anchors, assigner, data sizes).
        compare: other ``assigner.type`` values to run with the same anchors.
        seed: seed of the per-image shorter-side draw.
        keep_matches_for: image indices whose per-anchor matches
            (``matched[name][i]`` ``[A]`` int32, -1 for none) are kept for
            pictures.
        progress: called with the number of images done after each batch.

    Returns:
        A :class:`SelectionResult`.
    """
    names = [config.assigner.type] + [c for c in compare if c != config.assigner.type]
    configs = {name: selector_config(config, name) for name in names}
    images = training_geometry(dataset, config, seed)
    table = _object_table(images)
    result = SelectionResult(
        config=config,
        selectors=names,
        images=images,
        canvases=tuple(tuple(c) for c in config.data.canvases),
        candidates_per_object=0,
        **table,
    )
    n_obj, n_img = result.num_objects, len(images)
    num_levels = len(config.model.anchors.strides)
    for name in names:
        result.positives[name] = np.zeros(n_obj, np.int64)
        result.levels[name] = np.zeros((n_obj, num_levels), np.int64)
        result.ignored[name] = np.zeros(n_img, np.int64)
        result.matched[name] = {}
    for key in ("mean", "std", "threshold"):
        result.threshold[key] = np.zeros(n_obj, np.float32)
    first_object = np.concatenate([[0], np.cumsum([len(g.boxes) for g in images])])
    keep = set(int(i) for i in keep_matches_for)
    max_boxes = max([len(g.boxes) for g in images] + [1])
    k = config.assigner.topk
    done = 0
    for c, canvas in enumerate(result.canvases):
        members = [i for i, g in enumerate(images) if g.canvas_index == c]
        if not members:
            continue
        grid = generate_anchors(canvas, config.model.anchors)
        level_of = _level_ids(grid)
        per_level = np.minimum(k * config.model.anchors.anchors_per_location, grid.num_per_level)
        result.candidates_per_object = max(result.candidates_per_object, int(per_level.sum()))
        encoders = {
            name: TargetEncoder(cfg.model, cfg.assigner, canvas, max_instances=max_boxes)
            for name, cfg in configs.items()
        }
        stats = _statistics_fn(grid, k)
        for start in range(0, len(members), BATCH):
            chunk = members[start : start + BATCH]
            boxes = np.zeros((BATCH, max_boxes, 4), np.float32)
            mask = np.zeros((BATCH, max_boxes), bool)
            for row, i in enumerate(chunk):
                n = len(images[i].boxes)
                boxes[row, :n], mask[row, :n] = images[i].boxes, True
            labels = mask.astype(np.int32)
            rows = [first_object[i] + np.arange(len(images[i].boxes)) for i in chunk]
            s = {key: v.numpy() for key, v in stats(boxes, mask).items()}
            for row in range(len(chunk)):
                for key in result.threshold:
                    result.threshold[key][rows[row]] = s[key][row, : len(rows[row])]
            for name, encoder in encoders.items():
                out = encoder.encode_batch(boxes, labels, mask)
                matched = out["matched_gt"].numpy()
                ignored = (out["cls_targets"].numpy() == -1).sum(axis=1)
                for row, i in enumerate(chunk):
                    anchors = np.nonzero(matched[row] >= 0)[0]
                    counts = np.zeros((max_boxes, num_levels), np.int64)
                    np.add.at(counts, (matched[row, anchors], level_of[anchors]), 1)
                    n = len(rows[row])
                    result.levels[name][rows[row]] = counts[:n]
                    result.positives[name][rows[row]] = counts[:n].sum(axis=1)
                    result.ignored[name][i] = ignored[row]
                    if i in keep:
                        result.matched[name][i] = matched[row].copy()
            done += len(chunk)
            if progress is not None:
                progress(done)
    return result


# --------------------------------------------------------------------------- #
# Summary


def _bin_label(lo: float, hi: float) -> str:
    def fmt(v: float) -> str:
        return "inf" if math.isinf(v) else f"{v:.3g}"

    return f"[{fmt(lo)}, {fmt(hi)})"


def by_bins(
    values: np.ndarray, edges: Sequence[float], positives: np.ndarray, levels: np.ndarray
) -> list[dict]:
    """Per bin of ``values`` [N] (``edges``, last bin open): objects, mean
    positives (``positives`` [N]), objects without a positive, and the fraction
    of the bin's positives on each level (``levels`` [N, L] counts)."""
    rows = []
    which = np.digitize(values, edges[1:-1], right=False)
    for b in range(len(edges) - 1):
        sel = which == b
        n = int(sel.sum())
        level_totals = levels[sel].sum(axis=0)
        rows.append(
            {
                "bin": _bin_label(edges[b], edges[b + 1]),
                "objects": n,
                "mean_positives": float(positives[sel].mean()) if n else None,
                "without_positive": int((positives[sel] == 0).sum()),
                "level_fractions": [float(v) for v in level_totals / max(level_totals.sum(), 1)],
            }
        )
    return rows


def _distribution(values: np.ndarray, edges: np.ndarray) -> dict:
    if len(values) == 0:
        return {"count": 0}
    hist, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    return {
        "count": int(len(values)),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "quantiles": {
            q: float(np.quantile(values, float(q))) for q in ("0.05", "0.25", "0.5", "0.75", "0.95")
        },
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in hist]},
    }


def expected_positives(result: SelectionResult) -> float:
    """The paper's ``0.2 * k * L`` (k candidates per level and anchor per location)."""
    return 0.2 * result.candidates_per_object


def position_grid(result: SelectionResult, values: np.ndarray) -> np.ndarray:
    """Mean of a per-object ``values`` [N] by where the object's centre lies,
    the image cut in ``POSITION_BINS`` x ``POSITION_BINS``: float64 [rows (y),
    columns (x)], NaN where no object falls."""
    which = np.minimum((result.position * POSITION_BINS).astype(np.int64), POSITION_BINS - 1)
    grid = np.full((POSITION_BINS, POSITION_BINS), np.nan)
    for y in range(POSITION_BINS):
        for x in range(POSITION_BINS):
            sel = (which[:, 0] == x) & (which[:, 1] == y)
            if sel.any():
                grid[y, x] = values[sel].mean()
    return grid


def summarize(result: SelectionResult, max_examples: int = 20) -> dict:
    """The JSON summary of a :class:`SelectionResult` (``analysis.json``)."""
    cfg = result.config
    names = [
        LEVEL_NAMES[i] if i < len(LEVEL_NAMES) else f"L{i}"
        for i in range(len(cfg.model.anchors.strides))
    ]
    selectors = {}
    for name in result.selectors:
        pos, lev = result.positives[name], result.levels[name]
        zero = np.nonzero(pos == 0)[0]
        examples = []
        for j in zero[:max_examples]:
            g = result.images[int(result.image_index[j])]
            examples.append(
                {
                    "image_id": g.record["image_id"],
                    "file_name": g.record["file_name"],
                    "box_on_canvas": [round(float(v), 2) for v in result.box[j]],
                    "size": round(float(result.size[j]), 2),
                }
            )
        grid_mean = position_grid(result, pos)
        level_totals = lev.sum(axis=0)
        top = int(pos.max()) if len(pos) else 0
        selectors[name] = {
            "positives_per_object": {
                **_distribution(pos.astype(np.float64), np.arange(0, max(top, 1) + 2) - 0.5),
                "max": top,
            },
            "objects_without_positive": {
                "count": int(len(zero)),
                "fraction": float(len(zero) / max(len(pos), 1)),
                "examples": examples,
            },
            "levels": {
                n: float(v) for n, v in zip(names, level_totals / max(level_totals.sum(), 1))
            },
            "by_size": by_bins(result.size, SIZE_EDGES, pos, lev),
            "by_aspect_ratio": by_bins(result.aspect, ASPECT_EDGES, pos, lev),
            "by_position": [[None if np.isnan(v) else float(v) for v in row] for row in grid_mean],
            "ignored_anchors_per_image": float(result.ignored[name].mean())
            if len(result.ignored[name])
            else 0.0,
        }
    edges = np.linspace(0.0, 1.0, 21)
    threshold = {
        key: _distribution(v.astype(np.float64), edges) for key, v in result.threshold.items()
    }
    threshold["by_size"] = []
    which = np.digitize(result.size, SIZE_EDGES[1:-1])
    for b in range(len(SIZE_EDGES) - 1):
        sel = which == b
        threshold["by_size"].append(
            {
                "bin": _bin_label(SIZE_EDGES[b], SIZE_EDGES[b + 1]),
                "objects": int(sel.sum()),
                **{
                    f"mean_{key}": float(result.threshold[key][sel].mean()) if sel.any() else None
                    for key in ("mean", "std", "threshold")
                },
            }
        )
    return {
        "images": len(result.images),
        "objects": result.num_objects,
        "canvases": {
            f"{h}x{w}": sum(1 for g in result.images if g.canvas_index == i)
            for i, (h, w) in enumerate(result.canvases)
        },
        "assigner": dataclasses.asdict(cfg.assigner),
        "anchors_per_location": cfg.model.anchors.anchors_per_location,
        "levels": len(cfg.model.anchors.strides),
        "candidates_per_object": result.candidates_per_object,
        "selectors": selectors,
        "iou_threshold": threshold,
        "check": headline_check(result),
    }


def headline_check(result: SelectionResult) -> dict:
    """The paper's claim for ATSS: about ``0.2 * k * L`` positives per object,
    whatever its size. Measured for the ATSS selectors among those run."""
    out = {
        "claim": "each object has about 0.2 * k * L positives, invariant to its scale",
        "k": result.config.assigner.topk,
        "anchors_per_location": result.config.model.anchors.anchors_per_location,
        "levels": len(result.config.model.anchors.strides),
        "expected": expected_positives(result),
        "selectors": {},
    }
    for name in result.selectors:
        if not name.startswith("atss"):
            continue
        pos = result.positives[name]
        bins = by_bins(result.size, SIZE_EDGES, pos, result.levels[name])
        means = [b["mean_positives"] for b in bins if b["objects"] >= 10]
        out["selectors"][name] = {
            "mean": float(pos.mean()) if len(pos) else None,
            "ratio_to_expected": float(pos.mean() / out["expected"]) if len(pos) else None,
            "mean_by_size": {b["bin"]: b["mean_positives"] for b in bins if b["objects"]},
            # Spread of the per-size means (size bins with at least 10 objects).
            "size_spread": float(np.std(means) / np.mean(means)) if len(means) > 1 else None,
        }
    return out

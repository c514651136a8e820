"""COCO annotations json + image folder -> in-memory records.

A *record* is one image with its ground truth, in this project's conventions
(ATSS_SPEC §0, §8)::

    {
        "image_id":  int,                       # COCO image id
        "file_name": str,                       # as written in the json
        "path":      str,                       # images_dir / file_name
        "height":    int, "width": int,         # from the json
        "boxes":     np.ndarray [n, 4] float32, # continuous xyxy pixels, clipped
        "labels":    np.ndarray [n] int32,      # contiguous 1..C (CategoryMap)
        "is_crowd":  np.ndarray [n] bool,
        "areas":     np.ndarray [n] float32,    # COCO "area" (box area if absent)
    }

Every annotation or image that is dropped, changed or skipped is counted in a
:class:`DataReport`, whose summary is logged once per dataset.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atss_tf import files
from atss_tf.boxes import xywh_to_xyxy
from atss_tf.data.cleaning import BOX_COUNTS, CROWD_MODES, admit_image, clean_boxes
from atss_tf.data.image_files import (
    BAD_IMAGE_POLICIES,
    DEFAULT_MAX_PIXELS,
    find_bad_images,
)
from atss_tf.errors import DataError

logger = logging.getLogger("atss_tf.data")

# DataReport counters, in the order they are reported.
REPORT_KEYS = {
    "images": "images listed",
    "images_kept": "images kept",
    "images_without_annotations_skipped": "images without annotations skipped",
    "images_without_annotations_kept": "images without annotations kept",
    "images_without_valid_boxes_skipped": "images whose boxes were all dropped, skipped",
    "images_kept_as_negatives": "images without a box kept as negatives (keep_empty_images)",
    "bad_images_skipped": "missing, corrupt, truncated or oversized image files skipped",
    "annotations": "annotations listed",
    "boxes_kept": "boxes kept",
    "crowd_dropped": "crowd boxes dropped",
    "crowd_kept": "crowd boxes kept as ignore regions",
    "nonfinite_dropped": "boxes with NaN or infinite coordinates dropped",
    "degenerate_dropped": "boxes with width or height <= 0 dropped",
    "boxes_clipped": "boxes clipped to the image",
    "outside_dropped": "boxes outside the image dropped",
    "boxes_truncated": "boxes beyond max_instances dropped",
    "images_truncated": "images with more than max_instances boxes",
}
# Counters that mean ground truth or images were lost: logged as a warning.
LOSSY_KEYS = (
    "bad_images_skipped",
    "images_without_valid_boxes_skipped",
    "nonfinite_dropped",
    "outside_dropped",
    "boxes_truncated",
)


@dataclass
class DataReport:
    """Counts of what the reader kept, changed, dropped or skipped.

    ``counts`` maps the keys of :data:`REPORT_KEYS` to integers; ``bad_files``
    lists ``(path, reason)`` of the image files skipped. :meth:`log` logs
    :meth:`summary` and the bad files once (later calls do nothing), so a
    dataset built several times does not repeat itself.
    """

    source: str = ""
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REPORT_KEYS, 0))
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    _logged: bool = field(default=False, init=False, repr=False, compare=False)

    def add(self, key: str, n: int = 1) -> None:
        if key not in REPORT_KEYS:
            raise KeyError(f"unknown DataReport counter {key!r}")
        self.counts[key] += int(n)

    def __getitem__(self, key: str) -> int:
        return self.counts[key]

    def summary(self) -> str:
        """One line: ``source: 5 images listed, 4 images kept, ...`` (zeros omitted)."""
        parts = [f"{v} {REPORT_KEYS[k]}" for k, v in self.counts.items() if v]
        return f"{self.source}: " + (", ".join(parts) if parts else "empty")

    def log(self, log: logging.Logger | None = None, max_files: int = 20) -> None:
        """Log the summary at INFO level (WARNING when something was dropped or
        skipped) and up to ``max_files`` skipped files with their reasons, the
        first time only."""
        if self._logged:
            return
        log = log or logger
        lossy = any(self.counts[k] for k in LOSSY_KEYS)
        log.log(logging.WARNING if lossy else logging.INFO, "%s", self.summary())
        for path, reason in self.bad_files[:max_files]:
            log.warning("skipped %s: %s", path, reason)
        if len(self.bad_files) > max_files:
            log.warning("... and %d more skipped image files", len(self.bad_files) - max_files)
        self._logged = True


@dataclass(frozen=True)
class CategoryMap:
    """Dataset category ids <-> contiguous labels 1..C (0 is background).

    Labels follow the category ids in increasing order, like the official COCO
    mapping (COCO id 1 -> 1, ..., id 90 -> 80).

    Attributes:
        category_ids: sorted dataset ids; ``category_ids[label - 1]``.
        names: category names, same order.
    """

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    def __post_init__(self):
        if len(self.category_ids) != len(self.names):
            raise ValueError("CategoryMap: category_ids and names differ in length")
        if list(self.category_ids) != sorted(set(self.category_ids)):
            raise ValueError(
                f"CategoryMap: category ids must be unique and sorted, got {self.category_ids}"
            )

    @classmethod
    def from_coco(cls, categories: Iterable[Mapping[str, Any]]) -> CategoryMap:
        """From a COCO ``categories`` list (``[{"id": 1, "name": "person"}, ...]``)."""
        cats = sorted(categories, key=lambda c: int(c["id"]))
        return cls(
            tuple(int(c["id"]) for c in cats), tuple(str(c.get("name", c["id"])) for c in cats)
        )

    @classmethod
    def identity(cls, num_classes: int) -> CategoryMap:
        """Category id == label for ids 1..num_classes (names are the ids)."""
        ids = tuple(range(1, num_classes + 1))
        return cls(ids, tuple(str(i) for i in ids))

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def to_labels(self, category_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Dataset ids -> labels ``int32`` in 1..C; ``KeyError`` naming an unknown id."""
        ids = np.asarray(category_ids, dtype=np.int64).reshape(-1)
        table = np.asarray(self.category_ids, dtype=np.int64)
        idx = np.searchsorted(table, ids)
        ok = (idx < len(table)) & (table[np.minimum(idx, len(table) - 1)] == ids)
        if not ok.all():
            raise KeyError(int(ids[~ok][0]))
        return (idx + 1).astype(np.int32)

    def to_category_ids(self, labels: Sequence[int] | np.ndarray) -> np.ndarray:
        """Labels 1..C -> dataset ids ``int64``; raises ``ValueError`` out of range."""
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if labels.size and (labels.min() < 1 or labels.max() > self.num_classes):
            raise ValueError(f"labels must lie in 1..{self.num_classes}, got {labels}")
        return np.asarray(self.category_ids, dtype=np.int64)[labels - 1]

    def to_coco(self) -> list[dict[str, Any]]:
        """The COCO ``categories`` list (``id``, ``name``)."""
        return [{"id": i, "name": n} for i, n in zip(self.category_ids, self.names)]


@dataclass
class CocoDataset:
    """Records of one COCO split plus its category map and report."""

    records: list[dict[str, Any]]
    category_map: CategoryMap
    report: DataReport
    annotations_path: str
    images_dir: str

    def __len__(self) -> int:
        return len(self.records)


def _require(obj: Any, key: str, kind: type | tuple[type, ...], where: str, path: str) -> Any:
    if not isinstance(obj, Mapping) or key not in obj:
        raise DataError(f"{path}: {where} is missing the field {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(f"{path}: {where} field {key!r} must be {names}, got {value!r}")
    return value


def read_coco_json(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and structurally validate a COCO json.

    Requires ``images`` (each with ``id``, ``file_name``, ``height``,
    ``width``) and ``categories`` (each with ``id``); ``annotations`` may be
    absent (image-info files), but each present one needs ``id``,
    ``image_id``, ``category_id`` and a 4-number ``bbox``.

    Raises:
        DataError: unreadable file, malformed json, a missing or mistyped field;
            the message names the file and the field.
    """
    path = os.fspath(path)
    try:
        with files.open_file(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"annotations file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text: {e}") from None
    except OSError as e:
        raise DataError(f"cannot read annotations file {path}: {e.strerror or e}") from None
    if not isinstance(data, dict):
        raise DataError(
            f"{path}: the top level must be a JSON object with 'images' and 'categories'"
        )
    number = (int, float)
    images = _require(data, "images", list, "the top level", path)
    for i, im in enumerate(images):
        where = f"images[{i}]" + (
            f" (id={im['id']})" if isinstance(im, dict) and "id" in im else ""
        )
        _require(im, "id", int, where, path)
        _require(im, "file_name", str, where, path)
        _require(im, "height", int, where, path)
        _require(im, "width", int, where, path)
        if im["height"] <= 0 or im["width"] <= 0:
            raise DataError(f"{path}: {where} has a non-positive size {im['height']}x{im['width']}")
    categories = _require(data, "categories", list, "the top level", path)
    for i, c in enumerate(categories):
        _require(c, "id", int, f"categories[{i}]", path)
    ids = [c["id"] for c in categories]
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: categories has duplicate ids {sorted(ids)}")
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise DataError(f"{path}: the top level field 'annotations' must be list")
    for i, a in enumerate(annotations):
        where = f"annotations[{i}]" + (
            f" (id={a['id']})" if isinstance(a, dict) and "id" in a else ""
        )
        _require(a, "id", int, where, path)
        _require(a, "image_id", int, where, path)
        _require(a, "category_id", int, where, path)
        bbox = _require(a, "bbox", list, where, path)
        if len(bbox) != 4 or not all(
            isinstance(v, number) and not isinstance(v, bool) for v in bbox
        ):
            raise DataError(
                f"{path}: {where} field 'bbox' must be 4 numbers [x, y, w, h], got {bbox!r}"
            )
        if "area" in a and not isinstance(a["area"], number):
            raise DataError(f"{path}: {where} field 'area' must be a number, got {a['area']!r}")
        if "iscrowd" in a and a["iscrowd"] not in (0, 1, True, False):
            raise DataError(f"{path}: {where} field 'iscrowd' must be 0 or 1, got {a['iscrowd']!r}")
    return data


def load_coco(
    annotations: str | os.PathLike,
    images_dir: str | os.PathLike,
    *,
    training: bool,
    crowd: str = "drop",
    max_instances: int | None = 100,
    keep_empty_images: bool = False,
    image_check: str = "quick",
    bad_images: str = "skip",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> CocoDataset:
    """Read a COCO split into records (see the module docstring).

    The boxes are cleaned by the rules of :mod:`atss_tf.data.cleaning` (the
    same as for TFRecords), beyond ``max_instances`` per image (``None``: no
    limit) the first ones in json order are kept, and images with no
    annotation, or none left, are skipped when ``training`` (unless
    ``keep_empty_images``) and kept (with zero boxes) otherwise. Every case is counted in the returned report,
    which is logged once.

    Args:
        annotations: COCO json path.
        images_dir: folder that ``file_name`` is relative to.
        training: skip images without boxes (official training behaviour).
        crowd: ``"drop"`` or ``"ignore"``.
        max_instances: boxes kept per image.
        keep_empty_images: training keeps images without a box too (they
            give only negative targets), counted as ``images_kept_as_negatives``.
        image_check: ``"quick"`` (header, dimensions, truncation, pixel limit;
            ~0.1 ms a file), ``"full"`` (also decode every pixel with PIL, ~5 ms
            a COCO image) or ``"none"``: see :mod:`atss_tf.data.image_files`.
            A file found bad is handled by ``bad_images``.
        bad_images: ``"skip"`` (count, name in the report's log, go on) or
            ``"error"`` (raise naming the files).
        max_pixels: images above ``height * width`` pixels are bad (0: no limit).

    Raises:
        DataError: malformed json or fields, an annotation naming an unknown
            image or category id, bad image files with ``bad_images="error"``,
            every image file missing. The message names the file and the image
            / annotation / category id.
    """
    if crowd not in CROWD_MODES:
        raise ValueError(f"crowd must be one of {CROWD_MODES}, got {crowd!r}")
    if bad_images not in BAD_IMAGE_POLICIES:
        raise ValueError(f"bad_images must be one of {BAD_IMAGE_POLICIES}, got {bad_images!r}")
    ann_path = os.fspath(annotations)
    images_dir = os.fspath(images_dir)
    data = read_coco_json(ann_path)
    category_map = CategoryMap.from_coco(data["categories"])
    report = DataReport(source=ann_path)

    images = data["images"]
    index_of = {im["id"]: i for i, im in enumerate(images)}
    if len(index_of) != len(images):
        raise DataError(f"{ann_path}: images has duplicate ids")
    anns = data.get("annotations", [])
    for a in anns:
        if a["image_id"] not in index_of:
            raise DataError(
                f"{ann_path}: annotation id {a['id']} refers to image id {a['image_id']}, "
                "which is not in 'images'"
            )
    labels = _labels(anns, category_map, ann_path)
    image_index = np.array([index_of[a["image_id"]] for a in anns], dtype=np.int64)
    xywh = np.array([[float(v) for v in a["bbox"]] for a in anns], np.float64).reshape(-1, 4)
    is_crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    areas = np.array(
        [float(a["area"]) if "area" in a else w * h for a, (_, _, w, h) in zip(anns, xywh)],
        np.float32,
    )
    sizes = np.array([(im["height"], im["width"]) for im in images], np.float64).reshape(-1, 2)
    clipped, keep, outcome = (
        np.asarray(t)
        for t in clean_boxes(
            xywh_to_xyxy(xywh),
            is_crowd,
            sizes[image_index, 0],
            sizes[image_index, 1],
            crowd,
        )
    )
    for key, n in zip(BOX_COUNTS, outcome.sum(axis=0) if len(anns) else [0] * len(BOX_COUNTS)):
        report.add(key, int(n))

    # Rows of each image in json order.
    order = np.argsort(image_index, kind="stable")
    bounds = np.searchsorted(image_index[order], np.arange(len(images) + 1))
    records = []
    for i, im in enumerate(images):
        rows = order[bounds[i] : bounds[i + 1]]
        kept = rows[keep[rows]]
        count = admit_image(
            report, len(rows), is_crowd[kept], training, max_instances, keep_empty_images
        )
        if count is None:
            continue
        kept = kept[:count]
        records.append(
            {
                "image_id": im["id"],
                "file_name": im["file_name"],
                "path": os.path.join(images_dir, im["file_name"]),
                "height": im["height"],
                "width": im["width"],
                "boxes": clipped[kept].astype(np.float32).reshape(-1, 4),
                "labels": labels[kept],
                "is_crowd": is_crowd[kept],
                "areas": areas[kept],
            }
        )

    records = _drop_bad_images(records, ann_path, image_check, bad_images, max_pixels, report)
    report.log()
    return CocoDataset(records, category_map, report, ann_path, images_dir)


def _drop_bad_images(
    records: list[dict[str, Any]],
    ann_path: str,
    image_check: str,
    bad_images: str,
    max_pixels: int,
    report: DataReport,
) -> list[dict[str, Any]]:
    """The records whose image file passes ``image_check`` (see :func:`load_coco`)."""
    if image_check == "none" or not records:
        return records
    label = None
    if image_check == "full" or len(records) >= 20000:
        label = f"Checking {len(records)} image files of {ann_path} ({image_check})"
    bad = find_bad_images(
        [(r["path"], r["height"], r["width"]) for r in records],
        check=image_check,
        max_pixels=max_pixels,
        progress_label=label,
    )
    if not bad:
        return records
    missing = [
        records[i]["path"] for i, why in bad.items() if why.startswith("image file not found")
    ]
    if len(missing) == len(records):
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise DataError(
            f"none of the {len(records)} image files listed in {ann_path} exists (e.g. {shown}): "
            "check the images folder"
        )
    if bad_images == "error":
        first = [bad[i] for i in sorted(bad)][:3]
        raise DataError(
            f"{len(bad)} bad image file(s) in {ann_path}: "
            + "; ".join(first)
            + ("; ..." if len(bad) > 3 else "")
            + " (data.bad_images=skip skips them)"
        )
    report.add("bad_images_skipped", len(bad))
    report.add("images_kept", -len(bad))
    report.add("boxes_kept", -sum(len(records[i]["labels"]) for i in bad))
    report.bad_files.extend((records[i]["path"], bad[i]) for i in sorted(bad))
    return [r for i, r in enumerate(records) if i not in bad]


def _labels(anns: list[dict], category_map: CategoryMap, ann_path: str) -> np.ndarray:
    """Contiguous labels ``[n]`` int32 of the annotations; an unknown category
    id fails naming the annotation and its image."""
    ids = np.array([a["category_id"] for a in anns], dtype=np.int64)
    try:
        return category_map.to_labels(ids).astype(np.int32)
    except KeyError:
        known = set(category_map.category_ids)
        a = next(a for a in anns if a["category_id"] not in known)
        raise DataError(
            f"{ann_path}: annotation id {a['id']} of image id {a['image_id']} has unknown "
            f"category id {a['category_id']} (known: {list(category_map.category_ids)})"
        ) from None

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

logger = logging.getLogger("atss_tf.data")

CROWD_MODES = ("drop", "ignore")

# DataReport counters, in the order they are reported.
REPORT_KEYS = {
    "images": "images listed",
    "images_kept": "images kept",
    "images_without_annotations_skipped": "images without annotations skipped",
    "images_without_annotations_kept": "images without annotations kept",
    "images_without_valid_boxes_skipped": "images whose boxes were all dropped, skipped",
    "annotations": "annotations listed",
    "boxes_kept": "boxes kept",
    "crowd_dropped": "crowd boxes dropped",
    "crowd_kept": "crowd boxes kept as ignore regions",
    "degenerate_dropped": "boxes with width or height <= 0 dropped",
    "boxes_clipped": "boxes clipped to the image",
    "outside_dropped": "boxes outside the image dropped",
    "boxes_truncated": "boxes beyond max_instances dropped",
    "images_truncated": "images with more than max_instances boxes",
}


class DataError(ValueError):
    """Invalid input data; the message names the file and the field or item."""


@dataclass
class DataReport:
    """Counts of what the reader kept, changed, dropped or skipped.

    ``counts`` maps the keys of :data:`REPORT_KEYS` to integers. :meth:`log`
    logs :meth:`summary` once (later calls do nothing), so a dataset built
    several times does not repeat itself.
    """

    source: str = ""
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REPORT_KEYS, 0))
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

    def log(self, log: logging.Logger | None = None) -> None:
        """Log the summary at INFO level, the first time only."""
        if not self._logged:
            (log or logger).info("%s", self.summary())
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
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"annotations file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text: {e}") from None
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
    validate_images: bool = False,
    check_files: bool = True,
) -> CocoDataset:
    """Read a COCO split into records (see the module docstring).

    Per annotation, in this order: crowd boxes are dropped (``crowd="drop"``)
    or kept flagged (``"ignore"``); boxes with ``w`` or ``h <= 0`` are dropped;
    boxes are clipped to ``[0, width] x [0, height]`` and dropped if nothing is
    left; beyond ``max_instances`` per image (``None``: no limit) the first
    ones in json order are kept. Images with no annotation, or none left, are
    skipped when ``training`` and kept (with zero boxes) otherwise. Every case
    is counted in the returned report, which is logged once.

    Args:
        annotations: COCO json path.
        images_dir: folder that ``file_name`` is relative to.
        training: skip images without boxes (official training behaviour).
        crowd: ``"drop"`` or ``"ignore"``.
        max_instances: boxes kept per image.
        validate_images: fully decode every kept image with PIL up front (slow
            on COCO, ~5 ms an image) so a corrupt file fails here, named,
            instead of inside ``tf.data``.
        check_files: check that every kept image file exists (cheap).

    Raises:
        DataError: malformed json or fields, an annotation naming an unknown
            image or category id, missing or corrupt image files. The message
            names the file and the image / annotation / category id.
    """
    if crowd not in CROWD_MODES:
        raise ValueError(f"crowd must be one of {CROWD_MODES}, got {crowd!r}")
    ann_path = os.fspath(annotations)
    images_dir = os.fspath(images_dir)
    data = read_coco_json(ann_path)
    category_map = CategoryMap.from_coco(data["categories"])
    report = DataReport(source=ann_path)

    per_image: dict[int, list[dict]] = {}
    images = data["images"]
    known = {im["id"] for im in images}
    if len(known) != len(images):
        raise DataError(f"{ann_path}: images has duplicate ids")
    for a in data.get("annotations", []):
        if a["image_id"] not in known:
            raise DataError(
                f"{ann_path}: annotation id {a['id']} refers to image id {a['image_id']}, "
                "which is not in 'images'"
            )
        per_image.setdefault(a["image_id"], []).append(a)

    records = []
    for im in images:
        anns = per_image.get(im["id"], [])
        report.add("images")
        report.add("annotations", len(anns))
        rec = _image_record(
            im, anns, category_map, crowd, max_instances, images_dir, ann_path, report
        )
        if training and not (~rec["is_crowd"]).any():
            report.add(
                "images_without_valid_boxes_skipped"
                if anns
                else "images_without_annotations_skipped"
            )
            continue
        if not anns:
            report.add("images_without_annotations_kept")
        report.add("images_kept")
        report.add("boxes_kept", rec["boxes"].shape[0])
        records.append(rec)

    if check_files:
        missing = [r["path"] for r in records if not os.path.isfile(r["path"])]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise DataError(
                f"{len(missing)} image file(s) listed in {ann_path} are missing: {shown}"
            )
    if validate_images:
        for r in records:
            validate_image_file(r["path"], r["height"], r["width"])
    report.log()
    return CocoDataset(records, category_map, report, ann_path, images_dir)


def _image_record(
    im: dict,
    anns: list[dict],
    category_map: CategoryMap,
    crowd: str,
    max_instances: int | None,
    images_dir: str,
    ann_path: str,
    report: DataReport,
) -> dict[str, Any]:
    height, width = im["height"], im["width"]
    boxes, labels, crowds, areas = [], [], [], []
    truncated = False
    for a in anns:
        try:
            label = int(category_map.to_labels([a["category_id"]])[0])
        except KeyError:
            raise DataError(
                f"{ann_path}: annotation id {a['id']} of image id {im['id']} has unknown "
                f"category id {a['category_id']} (known: {list(category_map.category_ids)})"
            ) from None
        is_crowd = bool(a.get("iscrowd", 0))
        if is_crowd and crowd == "drop":
            report.add("crowd_dropped")
            continue
        x, y, w, h = (float(v) for v in a["bbox"])
        if w <= 0 or h <= 0:
            report.add("degenerate_dropped")
            continue
        box = np.array([x, y, x + w, y + h], dtype=np.float64)
        clipped = np.clip(box, 0.0, [width, height, width, height])
        if (clipped != box).any():
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                report.add("outside_dropped")
                continue
            report.add("boxes_clipped")
        if max_instances is not None and len(boxes) >= max_instances:
            report.add("boxes_truncated")
            if not truncated:
                report.add("images_truncated")
                truncated = True
            continue
        if is_crowd:
            report.add("crowd_kept")
        boxes.append(clipped)
        labels.append(label)
        crowds.append(is_crowd)
        areas.append(float(a.get("area", w * h)))
    return {
        "image_id": im["id"],
        "file_name": im["file_name"],
        "path": os.path.join(images_dir, im["file_name"]),
        "height": height,
        "width": width,
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=np.int32),
        "is_crowd": np.asarray(crowds, dtype=bool),
        "areas": np.asarray(areas, dtype=np.float32),
    }


IMAGE_MAGIC = {
    b"\xff\xd8\xff": "jpeg",
    b"\x89PNG\r\n\x1a\n": "png",
    b"GIF87a": "gif",
    b"GIF89a": "gif",
    b"BM": "bmp",
}


def sniff_image_format(head: bytes) -> str | None:
    """``"jpeg"``, ``"png"``, ``"gif"``, ``"bmp"`` from the first bytes, else None."""
    for magic, fmt in IMAGE_MAGIC.items():
        if head.startswith(magic):
            return fmt
    return None


def validate_image_file(path: str, height: int | None = None, width: int | None = None) -> None:
    """Decode ``path`` fully with PIL; ``DataError`` naming the file if it is
    unreadable, corrupt or truncated, or if its size differs from
    ``height`` x ``width``."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            w, h = img.size
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ...)
        raise DataError(f"corrupt or unreadable image file {path}: {e}") from None
    if height is not None and (h, w) != (height, width):
        raise DataError(
            f"image file {path} is {h}x{w} (h x w) but its annotations say {height}x{width}"
        )

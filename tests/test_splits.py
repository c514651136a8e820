"""A split's data is decided once (atss_tf.data.splits) and every reader follows it."""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

import pytest

from atss_tf.config import Config
from atss_tf.data.coco import DataError, load_coco
from atss_tf.data.pipeline import (
    build_dataset,
    first_images,
    load_val_annotations,
    resolve_category_map,
)
from atss_tf.data.splits import Cleaning, SplitSource, has_split, split_source
from atss_tf.data.synthetic import generate_synthetic_coco
from atss_tf.data.tfrecords import write_tfrecords
from tests.helpers.tiny import tiny_config

ROOT = Path(__file__).resolve().parents[1]
SPLIT_KEYS = {
    f"{split}_{what}"
    for split in ("train", "val")
    for what in ("annotations", "images", "tfrecords")
}


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """A val split named twice: a json of 6 images and TFRecords of its first 3,
    whose json categories were renamed after the TFRecords were written."""
    root = tmp_path_factory.mktemp("splits")
    paths = generate_synthetic_coco(root, 6, ((64, 96), (64, 96)), seed=3, num_classes=3)
    full = load_coco(paths.annotations, paths.images_dir, training=False, max_instances=None)
    write_tfrecords(full.records[:3], full.category_map, str(root / "few"), 1)
    data = json.loads(Path(paths.annotations).read_text())
    for c in data["categories"]:
        c["name"] = f"json-{c['name']}"
    Path(paths.annotations).write_text(json.dumps(data))
    cfg = tiny_config(["data.batch_size=1"])
    cfg.data.val_annotations, cfg.data.val_images = paths.annotations, paths.images_dir
    cfg.data.val_tfrecords = str(root / "few-*")
    return cfg, [r["image_id"] for r in full.records]


def test_images_from_the_tfrecords_categories_and_ground_truth_from_the_json(both):
    cfg, ids = both
    source = split_source(cfg, "val")
    assert source.format == "tfrecords" and not source.training
    seen = [int(x["image_id"][0]) for x in build_dataset(cfg, "val")]
    assert sorted(seen) == sorted(ids[:3])
    assert resolve_category_map(source, 3).names[0].startswith("json-")
    coco, _ = load_val_annotations(source, 3)
    assert sorted(coco.getImgIds()) == sorted(ids)
    images, names = first_images(source, count=10)
    assert len(images) == len(names) == 3


def test_without_tfrecords_the_json_is_read(both):
    cfg, ids = copy.deepcopy(both[0]), both[1]
    cfg.data.val_tfrecords = None
    assert split_source(cfg, "val").format == "coco"
    seen = [int(x["image_id"][0]) for x in build_dataset(cfg, "val")]
    assert sorted(seen) == sorted(ids)
    assert len(first_images(split_source(cfg, "val"), count=10)[0]) == 6


def test_a_split_named_by_half_is_an_error_naming_the_keys():
    cfg = Config()
    assert not has_split(cfg, "val")
    cfg.data.val_annotations = "val.json"
    assert has_split(cfg, "val")
    with pytest.raises(
        DataError, match=r"data.val_annotations and data.val_images .*val_tfrecords"
    ):
        split_source(cfg, "val")
    with pytest.raises(ValueError, match="split must be one of"):
        SplitSource("test", Cleaning(training=False), tfrecords="x")


def test_no_module_reads_the_split_keys_but_the_split_decision():
    """``data.{train,val}_{annotations,images,tfrecords}`` are read in
    atss_tf/data/splits.py only (the config package defines them; commands may
    set them)."""
    readers = []
    for path in sorted((ROOT / "atss_tf").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("atss_tf/config") or rel == "atss_tf/data/splits.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in SPLIT_KEYS
                and isinstance(node.ctx, ast.Load)
                and ast.unparse(node.value).split(".")[-1] == "data"
            ):
                readers.append(f"{rel}:{node.lineno} reads .{node.attr}")
    assert not readers, readers

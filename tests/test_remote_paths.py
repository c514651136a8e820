"""Runs, data and exports on a remote filesystem (``gs://`` for users; TF's
in-memory ``ram://`` filesystem here, which goes through the same
``tf.io.gfile`` code), and the path helpers that make it work."""

from __future__ import annotations

import dataclasses
import json
import os
import uuid

import numpy as np
import pytest
import tensorflow as tf

from atss_tf import files
from atss_tf.config import load_config, save_config
from atss_tf.errors import ConfigError, DataError
from atss_tf.training.fit import train
from tests.helpers.tiny import tiny_config, with_synthetic_data


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


def ram_dir(name: str) -> str:
    return f"ram://atss-test-{uuid.uuid4().hex[:8]}/{name}"


def test_remote_path_helpers_keep_the_scheme_and_raise_os_errors():
    root = ram_dir("helpers")
    assert files.is_remote(root) and not files.is_remote("/tmp/x")
    assert files.join(root, "a", "b.txt") == root + "/a/b.txt"  # pathlib would give ram:/...
    files.makedirs(files.join(root, "a"))
    files.write_text(files.join(root, "a", "b.txt"), "hello")
    assert files.read_text(files.join(root, "a", "b.txt")) == "hello"
    files.replace(files.join(root, "a", "b.txt"), files.join(root, "a", "c.txt"))
    assert files.glob(files.join(root, "a", "*")) == [files.join(root, "a", "c.txt")]
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        files.read_text(files.join(root, "missing.txt"))
    files.remove(files.join(root, "missing.txt"))  # no error


def copy_to(local_dir, remote_dir: str) -> str:
    files.copy_tree(local_dir, remote_dir)
    return remote_dir


def test_train_evaluate_resume_and_export_on_a_remote_filesystem(data_root):
    """Data, config, checkpoints, TensorBoard logs, metrics, detections,
    model.keras and the SavedModel all on ``ram://``; a second run resumes
    from the remote checkpoint."""
    cfg = with_synthetic_data(
        tiny_config(["train.steps_per_epoch=1", "train.max_iters=2", "train.eval_every_epochs=0"]),
        data_root,
    )
    data = copy_to(data_root, ram_dir("data"))
    cfg.data.train_annotations = files.join(data, "train.json")
    cfg.data.train_images = files.join(data, "train")
    cfg.data.val_annotations = files.join(data, "val.json")
    cfg.data.val_images = files.join(data, "val")
    config_path = files.join(ram_dir("configs"), "tiny.yaml")
    save_config(cfg, config_path)
    cfg = load_config(config_path)  # a config read from the remote filesystem
    assert cfg.data.train_images.startswith("ram://")

    out = ram_dir("run")
    train(cfg, out, verbose=0)
    info = json.loads(files.read_text(files.join(out, "checkpoints", "latest.json")))
    assert info["step"] == 2
    for name in ("config.yaml", "model.keras", "metrics.json", "detections.json"):
        assert files.exists(files.join(out, name)), name
    assert json.loads(files.read_text(files.join(out, "metrics.json")))["AP"] >= 0
    assert files.glob(files.join(out, "logs", "train", "events.out.tfevents.*"))

    resumed = []
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_iters=3))
    model = train(longer, out, verbose=0, on_resume=resumed.append)
    assert [r["step"] for r in resumed] == [2]
    assert int(model.optimizer.iterations.numpy()) == 3
    steps = sorted(
        int(os.path.basename(p)[5:13])
        for p in files.glob(files.join(out, "checkpoints", "ckpt-*.keras"))
    )
    assert steps == [2, 3]  # the oldest is pruned on the remote filesystem too (keep=2)

    export_dir = ram_dir("models/atss")
    version = model.export_serving(export_dir, input_type="image_tensor", warmup=False)
    assert version == files.join(export_dir, "1")
    served = tf.saved_model.load(version)
    image = np.full((1, 96, 112, 3), 128, np.uint8)
    outputs = served.signatures["serving_default"](inputs=tf.constant(image))
    assert outputs["detection_boxes"].shape[0] == 1


def test_remote_errors_name_the_path():
    missing = ram_dir("nothing")
    with pytest.raises(ConfigError, match="config file not found: " + missing):
        load_config(files.join(missing, "cfg.yaml"))
    from atss_tf.data.coco import read_coco_json

    with pytest.raises(DataError, match="annotations file not found: " + missing):
        read_coco_json(files.join(missing, "train.json"))
    from atss_tf.data.image_files import read_image_header

    with pytest.raises(DataError, match="image file not found: " + missing):
        read_image_header(files.join(missing, "a.jpg"))

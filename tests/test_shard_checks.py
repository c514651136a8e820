"""Damaged TFRecord shards: make-tfrecords' checksum manifest stops training
before it starts, and without one a read error names the shard and offset."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import tensorflow as tf

from atss_tf import cli
from atss_tf.config import save_config
from atss_tf.data import shard_checks
from atss_tf.data.synthetic import generate_synthetic_coco
from atss_tf.errors import DataError
from tests.helpers.tiny import tiny_config


def _record_starts(path: Path) -> list[int]:
    """Byte offsets of the records of a TFRecord file (8-byte length, 4-byte
    CRC, data, 4-byte CRC)."""
    data, starts, at = path.read_bytes(), [], 0
    while at < len(data):
        starts.append(at)
        at += 16 + int.from_bytes(data[at : at + 8], "little")
    return starts


@pytest.fixture()
def shards(tmp_path, capsys):
    """make-tfrecords of 6 synthetic 64 x 64 images into 2 shards."""
    coco = generate_synthetic_coco(tmp_path / "coco", 6, (64, 64), seed=3, num_classes=3)
    prefix = str(tmp_path / "rec" / "train")
    argv = ["make-tfrecords", "--annotations", str(coco.annotations), "--images"]
    assert cli.main([*argv, str(coco.images_dir), "--out", prefix, "--shards", "2"]) == 0
    assert "train.manifest.json" in capsys.readouterr().out
    return prefix, sorted(Path(tmp_path / "rec").glob("train-*.tfrecord"))


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_manifest_lists_every_shard_and_finds_a_damaged_one(shards):
    prefix, paths = shards
    manifest = json.loads(Path(shard_checks.manifest_path(prefix)).read_text())
    assert [s["file"] for s in manifest["shards"]] == [p.name for p in paths]
    assert [s["records"] for s in manifest["shards"]] == [3, 3]
    assert [s["bytes"] for s in manifest["shards"]] == [p.stat().st_size for p in paths]
    files = [str(p) for p in paths]
    assert shard_checks.check_manifest(files) == 2

    _flip_byte(paths[1], _record_starts(paths[1])[1] + 20)  # inside record 1's data
    with pytest.raises(DataError, match=rf"^{paths[1]}: damaged TFRecord shard: its SHA-256"):
        shard_checks.check_manifest(files)
    # Cut short at a record boundary: it reads without error, only its size tells.
    paths[0].write_bytes(paths[0].read_bytes()[: _record_starts(paths[0])[2]])
    with pytest.raises(DataError, match=rf"^{paths[0]}: damaged .* bytes, the manifest says"):
        shard_checks.check_manifest(files)


def test_a_read_error_names_the_shard_and_offset(shards):
    prefix, paths = shards
    _flip_byte(paths[1], _record_starts(paths[1])[1] + 20)
    with pytest.raises(tf.errors.DataLossError) as raised:
        for _ in tf.data.TFRecordDataset([str(p) for p in paths]):
            pass
    assert str(paths[1]) not in raised.value.message  # TensorFlow names no file
    at = re.search(r"record at (\d+)", raised.value.message).group(1)
    error = shard_checks.bad_shard_error([prefix + "-*.tfrecord"], raised.value)
    assert isinstance(error, DataError)
    assert str(error).startswith(
        f"{paths[1]}: corrupted or truncated TFRecord at byte offset {at};"
    )


def test_training_on_a_damaged_shard_stops_with_one_line(shards, tmp_path, capsys):
    """Without a manifest, ``atss-tf train`` stops at the damaged record with one
    line naming the shard and offset; with it, before reading any record."""
    prefix, paths = shards
    for p in paths:  # the first record of each shard: the first read fails
        _flip_byte(p, 20)
    cfg = tiny_config(["data.min_size=[64]", "data.max_size=64", "data.canvases=[[64, 64]]"])
    cfg.data.train_tfrecords = prefix + "-*.tfrecord"
    save_config(cfg, tmp_path / "tiny.yaml")
    argv = ["train", "--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run")]

    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{paths[0]}: damaged TFRecord shard" in err[0]

    Path(shard_checks.manifest_path(prefix)).unlink()
    assert cli.main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "atss-tf train" in line]
    assert len(err) == 1, err
    shard = next(str(p) for p in paths if str(p) in err[0])
    assert f"error: {shard}: corrupted or truncated TFRecord at byte offset " in err[0]

"""Damaged TFRecord shards: found before training by a checksum manifest, and
named when a read fails during training.

``atss-tf make-tfrecords`` writes ``PREFIX.manifest.json`` beside its shards::

    {"format": 1, "shards": [{"file": "train-00000-of-00004.tfrecord",
                              "bytes": 1234567, "records": 30, "sha256": "..."}, ...]}

When a split's shards have one, :func:`check_manifest` compares each shard's
size and SHA-256 with it as the split is opened, before training starts (a
shard cut short at a record boundary reads without any error: only its size
tells). Without a manifest, or for a
shard damaged later, TensorFlow's reader raises ``DataLossError: corrupted
record at OFFSET`` naming no file: :func:`naming_bad_shards` turns it into
one :class:`~atss_tf.errors.DataError` line naming the shard and the offset,
found by reading the split's shards again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from atss_tf.data.splits import tfrecord_patterns
from atss_tf.data.tfrecords import SHARD_RE, match_files
from atss_tf.errors import DataError, first_line

MANIFEST_FORMAT = 1
MANIFEST_SUFFIX = ".manifest.json"
_CHUNK = 1 << 22


def manifest_path(prefix: str) -> str:
    """``PREFIX.manifest.json``."""
    return prefix + MANIFEST_SUFFIX


def shard_digest(path: str) -> tuple[int, str]:
    """``(bytes, sha256 hex)`` of a file (local or remote), read in 4 MiB chunks."""
    h, n = hashlib.sha256(), 0
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def write_manifest(prefix: str, paths: Sequence[str], records: Sequence[int]) -> str:
    """Write ``PREFIX.manifest.json`` for the shards ``paths`` holding
    ``records[i]`` records each; returns its path."""
    shards = []
    for path, count in zip(paths, records):
        size, digest = shard_digest(path)
        entry = {"file": os.path.basename(path), "bytes": size, "records": int(count)}
        shards.append({**entry, "sha256": digest})
    out = manifest_path(prefix)
    with tf.io.gfile.GFile(out, "w") as f:
        json.dump({"format": MANIFEST_FORMAT, "shards": shards}, f, indent=1)
    return out


def _read_manifest(path: str) -> dict[str, dict[str, Any]]:
    try:
        with tf.io.gfile.GFile(path) as f:
            data = json.load(f)
        return {s["file"]: s for s in data["shards"] if {"bytes", "sha256"} <= set(s)}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: malformed shard manifest: {e}") from None


def check_manifest(files: Sequence[str]) -> int:
    """Check every shard in ``files`` that a manifest beside it lists: same
    size and SHA-256 (each listed shard is read once). Returns how many
    shards were checked.

    Raises:
        DataError: naming the first shard whose size or checksum differs.
    """
    manifests: dict[str, dict[str, dict[str, Any]]] = {}
    checked = 0
    for path in files:
        m = SHARD_RE.match(path)
        if not m:
            continue
        where = manifest_path(m.group("prefix"))
        if where not in manifests:
            exists = tf.io.gfile.exists(where)
            manifests[where] = _read_manifest(where) if exists else {}
        entry = manifests[where].get(os.path.basename(path))
        if entry is None:
            continue
        size = tf.io.gfile.stat(path).length
        digest = shard_digest(path)[1] if size == entry["bytes"] else None
        if size != entry["bytes"] or digest != entry["sha256"]:
            what = (
                f"{size} bytes, the manifest says {entry['bytes']} (cut short or appended to)"
                if size != entry["bytes"]
                else "its SHA-256 differs from the manifest's (corrupted)"
            )
            raise DataError(
                f"{path}: damaged TFRecord shard: {what} ({where}); rewrite it with "
                "atss-tf make-tfrecords or leave it out of the data.*_tfrecords pattern"
            )
        checked += 1
    return checked


def _failure(path: str) -> tuple[int | None, str] | None:
    """``(offset, message)`` of the first read error in one shard, None if it reads."""
    try:
        tf.data.TFRecordDataset(path).reduce(0, lambda n, _: n + 1)
    except tf.errors.DataLossError as e:
        found = re.search(r"record at (\d+)", e.message)
        return (int(found.group(1)) if found else None), first_line(e)
    return None


def bad_shard_error(patterns: Sequence[str], error: tf.errors.DataLossError) -> Exception:
    """The :class:`DataError` naming the shard of ``patterns`` that raised
    ``error`` (the shard failing at the same offset, else the first failing
    one); ``error`` itself when every shard reads."""
    found = re.search(r"record at (\d+)", error.message)
    offset = int(found.group(1)) if found else None
    failing = []
    for path in match_files(list(patterns)):
        failure = _failure(path)
        if failure is not None:
            failing.append((path, *failure))
    if not failing:
        return error
    path, at, _ = next((f for f in failing if f[1] == offset), failing[0])
    more = f" ({len(failing) - 1} other shards fail too)" if len(failing) > 1 else ""
    return DataError(
        f"{path}: corrupted or truncated TFRecord at byte offset {at}{more}; rewrite the "
        "shard with atss-tf make-tfrecords or leave it out of the data.*_tfrecords pattern"
    )


def naming_bad_shards(fn: Callable) -> Callable:
    """Decorate ``fn(cfg, ...)``: a ``DataLossError`` raised inside becomes
    :func:`bad_shard_error` over the TFRecord globs of ``cfg``'s splits
    (:func:`atss_tf.data.splits.tfrecord_patterns`)."""

    @functools.wraps(fn)
    def wrapper(cfg, *args, **kwargs):
        try:
            return fn(cfg, *args, **kwargs)
        except tf.errors.DataLossError as e:
            patterns = tfrecord_patterns(cfg)
            if not patterns:
                raise
            raise bad_shard_error(patterns, e) from None

    return wrapper

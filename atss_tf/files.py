"""Paths that may be local or remote (``gs://bucket/run``, ``ram://...``,
any filesystem TensorFlow has a plugin for).

Every file the trainer, evaluator, checkpoints, TensorBoard, exports and data
readers touch goes through here, as a ``str``: ``pathlib.Path("gs://b/r")``
collapses the ``//`` into ``gs:/b/r``. Local paths use Python's own file
functions (same speed and errors as before); remote ones use ``tf.io.gfile``,
whose errors are translated to the matching ``OSError`` subclasses so callers
handle both the same way. TensorFlow is imported only for remote paths (the
config loader uses this module, and ``atss-tf --help`` must stay fast).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
from collections.abc import Iterator
from typing import IO, Any

PathLike = str | os.PathLike


def is_remote(path: PathLike) -> bool:
    """Whether ``path`` names a filesystem other than the local one (``scheme://``)."""
    return "://" in os.fspath(path)


def join(*parts: PathLike) -> str:
    """``os.path.join`` that keeps ``scheme://`` intact (a str)."""
    return os.path.join(*(os.fspath(p) for p in parts))


def _tf():
    import tensorflow as tf

    return tf


def _os_error(e: Exception, path: PathLike) -> OSError:
    tf = _tf()
    if isinstance(e, tf.errors.NotFoundError):
        return FileNotFoundError(errno.ENOENT, "No such file or directory", os.fspath(path))
    if isinstance(e, tf.errors.PermissionDeniedError):
        return PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
    return OSError(errno.EIO, e.message.splitlines()[0] if e.message else str(e), os.fspath(path))


@contextlib.contextmanager
def remote_errors(path: PathLike) -> Iterator[None]:
    """Inside: ``tf.errors.OpError`` from ``tf.io.gfile`` becomes an ``OSError`` naming ``path``."""
    try:
        yield
    except Exception as e:
        tf = sys.modules.get("tensorflow")  # no TensorFlow imported: no TensorFlow error
        if tf is not None and isinstance(e, tf.errors.OpError):
            raise _os_error(e, path) from None
        raise


@contextlib.contextmanager
def open_file(path: PathLike, mode: str = "r", encoding: str | None = None) -> Iterator[IO[Any]]:
    """``open(path, mode)``, through ``tf.io.gfile.GFile`` for remote paths
    (text is UTF-8 there). Errors while opening, reading or writing are
    ``OSError``\\ s (``FileNotFoundError`` for a missing file)."""
    if not is_remote(path):
        kwargs = {} if "b" in mode else {"encoding": encoding or "utf-8"}
        with open(path, mode, **kwargs) as f:
            yield f
        return
    with remote_errors(path), _tf().io.gfile.GFile(os.fspath(path), mode) as f:
        yield f


def exists(path: PathLike) -> bool:
    return _tf().io.gfile.exists(os.fspath(path)) if is_remote(path) else os.path.exists(path)


def makedirs(path: PathLike) -> None:
    """Create ``path`` and its parents (no error if it exists)."""
    if is_remote(path):
        with remote_errors(path):
            _tf().io.gfile.makedirs(os.fspath(path))
    else:
        os.makedirs(path, exist_ok=True)


def read_text(path: PathLike) -> str:
    with open_file(path, "r") as f:
        return f.read()


def write_text(path: PathLike, text: str) -> None:
    with open_file(path, "w") as f:
        f.write(text)


def glob(pattern: PathLike) -> list[str]:
    """Sorted paths matching ``pattern`` (``*`` and ``?`` in the last parts)."""
    with remote_errors(pattern):
        return sorted(_tf().io.gfile.glob(os.fspath(pattern)))


def remove(path: PathLike) -> None:
    """Delete a file; no error if it does not exist."""
    with contextlib.suppress(FileNotFoundError), remote_errors(path):
        if is_remote(path):
            _tf().io.gfile.remove(os.fspath(path))
        else:
            os.remove(path)


def replace(src: PathLike, dst: PathLike) -> None:
    """Rename the file ``src`` to ``dst``, overwriting it: atomic on a local
    filesystem; on object stores (GCS) a copy and a delete, where the new
    object appears whole or not at all."""
    if is_remote(src) or is_remote(dst):
        with remote_errors(dst):
            _tf().io.gfile.rename(os.fspath(src), os.fspath(dst), overwrite=True)
    else:
        os.replace(src, dst)


def remove_tree(path: PathLike) -> None:
    """Delete a directory and everything under it; no error if it does not exist."""
    if is_remote(path):
        if exists(path):
            with remote_errors(path):
                _tf().io.gfile.rmtree(os.fspath(path))
    else:
        shutil.rmtree(path, ignore_errors=True)


def copy_tree(src: PathLike, dst: PathLike, last: str | None = None) -> None:
    """Copy the local directory ``src`` to ``dst`` (local or remote), file by
    file; the file named ``last`` (relative to ``src``) is copied after all
    others, so a reader waiting for it sees a complete directory."""
    src = os.fspath(src)
    relative = []
    for root, _, names in os.walk(src):
        relative += [os.path.relpath(os.path.join(root, n), src) for n in names]
    relative.sort(key=lambda rel: (rel == last, rel))
    for rel in relative:
        target = join(dst, *rel.split(os.sep))
        makedirs(os.path.dirname(target))
        with remote_errors(target):
            _tf().io.gfile.copy(os.path.join(src, rel), target, overwrite=True)

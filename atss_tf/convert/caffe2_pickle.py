"""Read Detectron's Caffe2 ``.pkl`` weight files without running pickled code.

Detectron (and the official configs' ``catalog://ImageNetPretrained/...``
weights: ``20171220/X-101-32x8d.pkl``, ``FBResNeXt/X-101-64x4d.pkl``, MSRA's
``R-50.pkl``) stores a Python 2 pickle (protocol 2) of ``{"blobs": {name:
ndarray}}`` or of the blob dict itself. An array pickles as::

    numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b"b")   # REDUCE
    BUILD (1, shape, numpy.dtype("f4", 0, 1) [BUILD (3, "<", ...)], fortran, raw)

``raw`` is a Python 2 ``str``, read as latin-1 text and encoded back to bytes
(NumPy's own rule); a Python 3 protocol 2 pickle writes it as
``_codecs.encode(text, "latin1")``, NumPy 2 names ``numpy._core.multiarray``.
Those globals are replaced by stand-ins that only build plain numeric arrays,
every other global is refused before anything is unpickled
(:func:`atss_tf.convert.torch_pickle.restricted_load`), and an array's bytes
must be exactly what its shape and dtype need.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from atss_tf.convert.torch_pickle import (
    RestrictedUnpickler,
    check_file,
    is_torch_checkpoint,
    reading_errors,
    restricted_load,
)
from atss_tf.errors import CheckpointError

_NUMERIC = frozenset("f2 f4 f8 i1 i2 i4 i8 u1 u2 u4 u8 b1".split())


class _DType:
    """Stand-in for ``numpy.dtype(spec, align, copy)`` and its BUILD state."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = True):
        if spec not in _NUMERIC:
            raise CheckpointError(f"array dtype {spec!r} is not a plain numeric type")
        self.dtype = np.dtype(spec)

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        if not (isinstance(state, tuple) and len(state) >= 5):
            raise CheckpointError(f"invalid dtype state {state!r}")
        order = state[1]
        if any(x is not None for x in state[2:5]) or order not in ("<", ">", "|", "="):
            raise CheckpointError(f"dtype state {state!r} is not a plain numeric type")
        if order in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(order)


class _NDArrayType:
    """Stand-in for the ``numpy.ndarray`` class an array names as its type."""


class _Array:
    """Stand-in for an unpickled ndarray: ``array`` is set by its BUILD."""

    def __init__(self, subtype: Any, shape: Any = (0,), code: Any = b"b"):
        if subtype is not _NDArrayType:
            raise CheckpointError(f"array subtype {subtype!r} is not numpy.ndarray")
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 5:  # version 1
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise CheckpointError("invalid array state")
        shape, dtype, fortran, raw = state
        if not isinstance(dtype, _DType):
            raise CheckpointError(f"array dtype {dtype!r} is not a numpy dtype")
        if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise CheckpointError(f"invalid array shape {shape!r}")
        if isinstance(raw, str):
            raw = raw.encode("latin-1")
        if not isinstance(raw, (bytes, bytearray)):
            raise CheckpointError("array data is not raw bytes (an object array?)")
        need = math.prod(shape) * dtype.dtype.itemsize
        if len(raw) != need:
            raise CheckpointError(
                f"array of shape {shape} and dtype {dtype.dtype} needs {need} bytes, "
                f"the file holds {len(raw)}"
            )
        flat = np.frombuffer(raw, dtype.dtype, count=math.prod(shape))
        array = flat.reshape(shape, order="F" if fortran else "C")
        self.array = np.ascontiguousarray(array.astype(dtype.dtype.newbyteorder("=")))


def _encode(text: Any, encoding: Any = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``, which Python 3 protocol 2 uses for bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointError(f"unsupported _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin-1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDArrayType,
    ("numpy", "dtype"): _DType,
    ("numpy.core.multiarray", "_reconstruct"): _Array,
    ("numpy._core.multiarray", "_reconstruct"): _Array,
    ("_codecs", "encode"): _encode,
}


def _arrays(obj: Any) -> Any:
    """``obj`` with every array stand-in replaced by its array."""
    if isinstance(obj, _Array):
        if obj.array is None:
            raise CheckpointError("an array has no data (its BUILD is missing)")
        return obj.array
    if isinstance(obj, Mapping):
        return {k: _arrays(v) for k, v in obj.items()}
    return obj


def load_caffe2_blobs(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The named arrays of a Detectron Caffe2 ``.pkl`` (``{"blobs": ...}`` or bare).

    Args:
        path: the pickle file.

    Returns:
        ``{blob name: np.ndarray}`` in file order (non-array entries dropped).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the pickle names a global other than NumPy's array
            reconstruction.
        CheckpointError: a torch checkpoint, not a dict of arrays, truncated or
            inconsistent array sizes.
    """
    path = check_file(path)
    if is_torch_checkpoint(path):
        raise CheckpointError(
            f"{path} is a torch.save checkpoint, not a Detectron Caffe2 pickle: name it "
            ".pth (torchvision ImageNet weights) or convert it with atss-tf convert"
        )
    with open(path, "rb") as stream, reading_errors(path):

        def unpickler(s):
            return RestrictedUnpickler(s, _ALLOWED, encoding="latin1")

        obj = _arrays(restricted_load(stream, _ALLOWED, unpickler))
    if isinstance(obj, Mapping) and isinstance(obj.get("blobs"), Mapping):
        obj = obj["blobs"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of blobs, found {type(obj).__name__}")
    blobs = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
    if not blobs:
        raise CheckpointError(f"{path}: no arrays found (keys: {', '.join(map(str, obj))})")
    return blobs

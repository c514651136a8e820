"""A Detectron (Caffe2) weight-pickle writer for tests, byte for byte as Python 2 wrote them.

Detectron's ``.pkl`` files are Python 2 ``cPickle`` protocol 2 streams of
``{"blobs": {name: ndarray}}``: names and an array's raw data are ``str``
(SHORT_BINSTRING / BINSTRING), arrays are rebuilt by
``numpy.core.multiarray._reconstruct`` with a ``numpy.dtype`` BUILD state.
Python 3 cannot write that layout with ``pickle.dump`` (it writes bytes
through ``_codecs.encode``), so :func:`write_python2_blobs` emits the opcodes.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np


def _str(value: bytes) -> bytes:
    """A Python 2 ``str``: SHORT_BINSTRING or BINSTRING."""
    if len(value) < 256:
        return pickle.SHORT_BINSTRING + bytes([len(value)]) + value
    return pickle.BINSTRING + struct.pack("<i", len(value)) + value


def _int(value: int) -> bytes:
    return pickle.BININT + struct.pack("<i", value)


def _array(array: np.ndarray) -> bytes:
    """``_reconstruct(ndarray, (0,), 'b')`` BUILD ``(1, shape, dtype, False, raw)``."""
    array = np.ascontiguousarray(array)
    dtype = array.dtype
    code = f"{dtype.kind}{dtype.itemsize}".encode()
    order = b"|" if dtype.itemsize == 1 else b"<"
    out = pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n"
    out += pickle.GLOBAL + b"numpy\nndarray\n"
    out += _int(0) + pickle.TUPLE1 + _str(b"b") + pickle.TUPLE3 + pickle.REDUCE
    out += pickle.MARK + _int(1)
    out += pickle.MARK + b"".join(_int(n) for n in array.shape) + pickle.TUPLE
    out += pickle.GLOBAL + b"numpy\ndtype\n" + _str(code) + _int(0) + _int(1)
    out += pickle.TUPLE3 + pickle.REDUCE
    out += pickle.MARK + _int(3) + _str(order) + pickle.NONE * 3
    out += _int(-1) + _int(-1) + _int(0) + pickle.TUPLE + pickle.BUILD
    out += pickle.NEWFALSE + _str(array.astype(dtype.newbyteorder("<")).tobytes())
    out += pickle.TUPLE + pickle.BUILD
    return out


def write_python2_blobs(path: Path, blobs: dict[str, np.ndarray], wrap: bool = True) -> Path:
    """Write ``blobs`` as Detectron does (``{"blobs": blobs}`` with ``wrap``)."""
    body = pickle.EMPTY_DICT + pickle.MARK
    for name, array in blobs.items():
        body += _str(name.encode()) + _array(array)
    body += pickle.SETITEMS
    if wrap:
        body = pickle.EMPTY_DICT + _str(b"blobs") + body + pickle.SETITEM
    Path(path).write_bytes(pickle.PROTO + b"\x02" + body + pickle.STOP)
    return Path(path)

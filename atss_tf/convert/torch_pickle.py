"""Read ``torch.save`` checkpoints without torch and without running pickled code.

A ``torch.save`` file (PyTorch >= 1.6) is a zip archive::

    <archive>/data.pkl        the pickled object (protocol 2)
    <archive>/data/<key>      raw bytes of each storage
    <archive>/byteorder       "little" or "big" (absent in old files: little)

Tensors are pickled as ``torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, ...)`` where ``storage`` is a *persistent id*
``("storage", torch.FloatStorage, "<key>", "cpu", numel)``. This module
replaces every global a state dict needs by a harmless NumPy stand-in and
refuses every other global with :class:`UnsafeCheckpointError`. The opcode
stream is scanned for globals before unpickling starts, so a refused global is
reported before any ``REDUCE`` runs; the unpickler's ``find_class`` enforces the
same allow-list for anything the scan cannot resolve statically.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np


class CheckpointError(ValueError):
    """The file is not a readable ``torch.save`` checkpoint; the message says why."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle references a global outside the state-dict allow-list.

    Attributes:
        refused: the ``module.name`` strings that were refused.
    """

    def __init__(self, refused: list[str], path: str | os.PathLike | None = None):
        self.refused = list(refused)
        where = f"{path}: " if path is not None else ""
        super().__init__(
            f"{where}refusing to load checkpoint: it references "
            f"{', '.join(repr(r) for r in self.refused)}, which a state dict never needs "
            "(loading it could run arbitrary code)"
        )


# Storage classes -> NumPy dtype. bfloat16 has no NumPy dtype: it is widened to
# float32 (exactly) when the storage is read.
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("float64"),
    "FloatStorage": np.dtype("float32"),
    "HalfStorage": np.dtype("float16"),
    "BFloat16Storage": np.dtype("uint16"),
    "LongStorage": np.dtype("int64"),
    "IntStorage": np.dtype("int32"),
    "ShortStorage": np.dtype("int16"),
    "CharStorage": np.dtype("int8"),
    "ByteStorage": np.dtype("uint8"),
    "BoolStorage": np.dtype("bool"),
}


class _StorageType:
    """Stand-in for ``torch.<Type>Storage``: only carries the element dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Storage:
    """A storage read from the archive: a flat NumPy array plus its source name."""

    def __init__(self, array: np.ndarray, bfloat16: bool):
        self.array = array
        self.bfloat16 = bfloat16


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
) -> np.ndarray:
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor storage is {type(storage).__name__}, expected a storage")
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise CheckpointError(
            f"invalid tensor geometry size={size} stride={stride} offset={offset}"
        )
    flat = storage.array
    if 0 in size:
        out = np.zeros(size, dtype=flat.dtype)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= flat.size:
            raise CheckpointError(
                f"tensor size={size} stride={stride} offset={offset} reads past the end of "
                f"its storage ({flat.size} elements)"
            )
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False
        )
        out = np.array(view, copy=True)
    if storage.bfloat16:
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None) -> np.ndarray:
    return data


def _rebuild_parameter_with_state(
    data, requires_grad=False, backward_hooks=None, state=None
) -> np.ndarray:
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
for _name in _STORAGE_DTYPES:
    _ALLOWED[("torch", _name)] = _StorageType(_name)
    _ALLOWED[("torch.storage", _name)] = _StorageType(_name)


def allowed_globals() -> list[str]:
    """The ``module.name`` globals a checkpoint may reference (sorted)."""
    return sorted(f"{m}.{n}" for m, n in _ALLOWED)


def _scan_globals(data: bytes) -> list[str]:
    """Globals named by GLOBAL / INST opcodes that are not allowed, in stream order.

    STACK_GLOBAL (protocol 4+) takes its names from the stack and is checked by
    ``find_class`` instead.
    """
    refused = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                module, _, name = str(arg).partition(" ")
                if (module, name) not in _ALLOWED:
                    full = f"{module}.{name}"
                    if full not in refused:
                        refused.append(full)
    except Exception as e:  # malformed stream: pickletools raises ValueError and others
        raise CheckpointError(f"data.pkl is not a valid pickle stream: {e}") from None
    return refused


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._byteorder = byteorder
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError([f"{module}.{name}"]) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"unsupported persistent id {pid!r} (expected a storage)")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"unsupported storage type {storage_type!r}")
        key = str(key)
        if key in self._storages:
            return self._storages[key]
        record = f"{self._prefix}data/{key}"
        try:
            raw = self._archive.read(record)
        except KeyError:
            raise CheckpointError(
                f"storage record {record!r} is missing from the archive"
            ) from None
        dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
        numel = int(numel)
        if len(raw) < numel * dtype.itemsize:
            raise CheckpointError(
                f"storage {record!r} holds {len(raw)} bytes, {storage_type!r} of "
                f"{numel} elements needs {numel * dtype.itemsize}"
            )
        array = np.frombuffer(raw, dtype=dtype, count=numel).astype(dtype.newbyteorder("="))
        storage = _Storage(array, bfloat16=storage_type.name == "BFloat16Storage")
        self._storages[key] = storage
        return storage


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Unpickle a ``torch.save`` zip archive with tensors as NumPy arrays.

    Args:
        path: the ``.pth`` / ``.pt`` file.

    Returns:
        The saved object (usually a dict), every tensor replaced by an
        ``np.ndarray`` of the tensor's dtype (bfloat16 widened to float32).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the pickle names a global outside the allow-list.
        CheckpointError: not a zip archive (e.g. the legacy pre-1.6 format), no
            ``data.pkl``, missing or short storage records.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory, expected a torch.save checkpoint file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a zip archive: expected a checkpoint written by torch.save "
            "(PyTorch >= 1.6); legacy tar/pickle checkpoints are not supported - re-save "
            "it with a recent PyTorch"
        )
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") <= 1]
        if len(pkl) != 1:
            raise CheckpointError(f"{path}: expected exactly one <archive>/data.pkl, found {pkl}")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in archive.namelist():
            byteorder = archive.read(f"{prefix}byteorder").decode("ascii").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"{path}: unknown byteorder {byteorder!r}")
        data = archive.read(pkl[0])
        refused = _scan_globals(data)
        if refused:
            raise UnsafeCheckpointError(refused, path)
        unpickler = _RestrictedUnpickler(data, archive, prefix, byteorder)
        try:
            return unpickler.load()
        except UnsafeCheckpointError as e:
            raise UnsafeCheckpointError(e.refused, path) from None
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
        except (pickle.UnpicklingError, EOFError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{path}: data.pkl could not be unpickled: {e}") from None


def load_state_dict(path: str | os.PathLike, key: str | None = "model") -> dict[str, np.ndarray]:
    """The tensors of a checkpoint's state dict, by name.

    Args:
        path: the ``torch.save`` file.
        key: entry holding the state dict when the checkpoint is a dict of
            several things (``{"model": ..., "optimizer": ...}`` as the official
            trainer writes); ignored when the top level already is the state
            dict. ``None``: the top level must be the state dict.

    Returns:
        ``{name: np.ndarray}`` in file order.

    Raises:
        CheckpointError: see :func:`load_checkpoint`; also when no state dict of
            arrays is found.
    """
    obj = load_checkpoint(path)
    if (
        key is not None
        and isinstance(obj, Mapping)
        and key in obj
        and isinstance(obj[key], Mapping)
    ):
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    state = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
    others = [str(k) for k, v in obj.items() if not isinstance(v, np.ndarray)]
    if not state:
        raise CheckpointError(
            f"{path}: no tensors found (top-level keys: {', '.join(map(str, obj.keys()))})"
        )
    if others:
        raise CheckpointError(
            f"{path}: state dict entries that are not tensors: {', '.join(others)}"
        )
    return state

"""Read ``torch.save`` checkpoints without torch and without running pickled code.

Two on-disk formats exist, and both are read:

* **zip** (PyTorch >= 1.6)::

      <archive>/data.pkl        the pickled object (protocol 2)
      <archive>/data/<key>      raw bytes of each storage
      <archive>/byteorder       "little" or "big" (absent in old files: little)

* **legacy** (PyTorch 0.4 - 1.5, and later with
  ``_use_new_zipfile_serialization=False``; the authors' 2019 model zoo and
  mmdetection's 2020 checkpoints): one file of consecutive pickles::

      magic number 0x1950a86a20f9469cfc6c, protocol version 1001, sys_info
      the object pickle (storages as persistent ids)
      the sorted list of storage keys
      per key: int64 element count, then the storage's raw bytes

  Storage bytes are always little-endian (torch converts on big-endian
  writers; ``sys_info["little_endian"]`` only records the writer's machine).

Tensors are pickled as ``torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, ...)`` where ``storage`` is a *persistent id*
``("storage", torch.FloatStorage, "<key>", "cpu", numel[, view_metadata])``.
This module replaces every global a checkpoint needs by a harmless stand-in
and refuses every other global with :class:`UnsafeCheckpointError`. Each
pickle's opcode stream is scanned for globals before unpickling starts, so a
refused global is reported before any ``REDUCE`` runs; the unpickler's
``find_class`` enforces the same allow-list for anything the scan cannot
resolve statically.

Nothing is allocated from what a file merely declares: a tensor's size and
strides are checked against its storage's declared element count, and that
count against the bytes the file really holds, before any array is made.
Only the storages of the entry asked for are read (``load_state_dict`` skips
an optimizer's momentum buffers).
"""

from __future__ import annotations

import collections
import contextlib
import io
import math
import os
import pickle
import pickletools
import struct
import zipfile
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

import numpy as np

from atss_tf.errors import CheckpointError

ZIP_MAGIC = b"PK\x03\x04"
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001


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
    """A storage declared by the pickle: its key, element type and count.

    ``array`` (flat, native byte order) is filled in once its bytes are read;
    a legacy *view* storage (``view_metadata``) is a slice of a root storage.
    """

    def __init__(self, key: str, storage_type: _StorageType, numel: int):
        self.key = key
        self.dtype = storage_type.dtype
        self.bfloat16 = storage_type.name == "BFloat16Storage"
        self.numel = numel
        self.array: np.ndarray | None = None
        self.root: _Storage | None = None
        self.offset = 0

    @property
    def source(self) -> _Storage:
        return self.root if self.root is not None else self

    def values(self) -> np.ndarray:
        flat = self.source.array
        assert flat is not None, f"storage {self.source.key} was not read"
        return flat[self.offset : self.offset + self.numel]


class _PendingTensor:
    """A tensor's geometry, checked against its storage, made into an array
    once the storage's bytes are read (:func:`_materialize`)."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def to_array(self) -> np.ndarray:
        flat = self.storage.values()
        if 0 in self.size:
            out = np.zeros(self.size, dtype=flat.dtype)
        else:
            view = np.lib.stride_tricks.as_strided(
                flat[self.offset :],
                shape=self.size,
                strides=tuple(s * flat.itemsize for s in self.stride),
                writeable=False,
            )
            out = np.array(view, copy=True)
        if self.storage.bfloat16:
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
) -> _PendingTensor:
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor storage is {type(storage).__name__}, expected a storage")
    try:
        size = tuple(int(s) for s in size)
        stride = tuple(int(s) for s in stride)
        offset = int(storage_offset)
    except (TypeError, ValueError):
        raise CheckpointError(
            f"invalid tensor geometry size={size!r} stride={stride!r} offset={storage_offset!r}"
        ) from None
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise CheckpointError(
            f"invalid tensor geometry size={size} stride={stride} offset={offset}"
        )
    numel = math.prod(size)
    if numel > storage.numel:
        # Zero strides could make a few stored elements into a huge array.
        raise CheckpointError(
            f"tensor of size {size} ({numel} elements) is larger than its storage "
            f"{storage.key!r} ({storage.numel} elements)"
        )
    if numel > 0:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.numel:
            raise CheckpointError(
                f"tensor size={size} stride={stride} offset={offset} reads past the end of "
                f"its storage ({storage.numel} elements)"
            )
    return _PendingTensor(storage, offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride) -> _PendingTensor:
    """The PyTorch 0.4 form of :func:`_rebuild_tensor_v2`."""
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
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


def scan_globals(stream: IO[bytes], allowed: Mapping[tuple[str, str], Any]) -> list[str]:
    """Globals named by GLOBAL / INST opcodes of the pickle at the stream's
    position that are not in ``allowed`` (``{(module, name): stand-in}``), in
    stream order; the stream is left after the pickle's STOP.

    STACK_GLOBAL (protocol 4+) takes its names from the stack and is checked by
    ``find_class`` instead.
    """
    refused = []
    for op, arg, _ in pickletools.genops(stream):
        if op.name in ("GLOBAL", "INST"):
            module, _, name = str(arg).partition(" ")
            if (module, name) not in allowed:
                full = f"{module}.{name}"
                if full not in refused:
                    refused.append(full)
    return refused


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose globals are only the stand-ins of ``allowed``."""

    def __init__(self, stream: IO[bytes], allowed: Mapping[tuple[str, str], Any], **kwargs):
        super().__init__(stream, **kwargs)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError([f"{module}.{name}"]) from None


def restricted_load(
    stream: IO[bytes], allowed: Mapping[tuple[str, str], Any], unpickler: Callable | None = None
) -> Any:
    """Scan the pickle at the stream's position for globals outside ``allowed``
    (refusing it before anything runs), then unpickle it with ``unpickler(stream)``
    (default: a :class:`RestrictedUnpickler` of ``allowed``).

    Raises:
        UnsafeCheckpointError: naming every refused global.
    """
    start = stream.tell()
    refused = scan_globals(stream, allowed)
    if refused:
        raise UnsafeCheckpointError(refused)
    stream.seek(start)
    return (unpickler or (lambda s: RestrictedUnpickler(s, allowed)))(stream).load()


class _TorchUnpickler(RestrictedUnpickler):
    """Unpickles with the allow-list; storages become :class:`_Storage` records."""

    def __init__(self, stream: IO[bytes], storages: dict[str, _Storage]):
        super().__init__(stream, _ALLOWED)
        self._storages = storages

    def persistent_load(self, pid: Any) -> _Storage:
        # zip: ("storage", type, key, location, numel); legacy adds view_metadata.
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise CheckpointError(f"unsupported persistent id {pid!r} (expected a storage)")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"unsupported storage type {storage_type!r}")
        if not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"storage {key!r} declares an invalid size {numel!r}")
        key = str(key)
        root = self._storages.get(key)
        if root is None:
            root = self._storages[key] = _Storage(key, storage_type, numel)
        elif root.dtype != storage_type.dtype or root.numel != numel:
            raise CheckpointError(f"storage {key!r} is declared twice with different types/sizes")
        if view is None:
            return root
        try:
            view_key, offset, view_size = view
            offset, view_size = int(offset), int(view_size)
        except (TypeError, ValueError):
            raise CheckpointError(f"storage {key!r}: invalid view metadata {view!r}") from None
        if offset < 0 or view_size < 0 or offset + view_size > root.numel:
            raise CheckpointError(
                f"storage view {view_key!r} [{offset}, {offset + view_size}) lies outside its "
                f"root storage {key!r} ({root.numel} elements)"
            )
        sub = _Storage(str(view_key), storage_type, view_size)
        sub.root, sub.offset = root, offset
        return sub


def _unpickle(stream: IO[bytes], storages: dict[str, _Storage]) -> Any:
    """Scan, then unpickle, the pickle at the stream's position."""
    return restricted_load(stream, _ALLOWED, lambda s: _TorchUnpickler(s, storages))


def _pending(obj: Any) -> list[_PendingTensor]:
    """Every pending tensor inside ``obj`` (dicts, lists, tuples, sets)."""
    found: list[_PendingTensor] = []
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, _PendingTensor):
            found.append(item)
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
    return found


def _materialize(obj: Any) -> Any:
    """``obj`` with every pending tensor replaced by its NumPy array."""
    if isinstance(obj, _PendingTensor):
        return obj.to_array()
    if isinstance(obj, Mapping):
        out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _materialize(v)
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata  # what nn.Module.state_dict attaches
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _to_native(raw: bytes | memoryview, storage: _Storage, byteorder: str) -> np.ndarray:
    dtype = storage.dtype.newbyteorder("<" if byteorder == "little" else ">")
    return np.frombuffer(raw, dtype=dtype, count=storage.numel).astype(dtype.newbyteorder("="))


def _read_zip(path: str, select: Callable[[Any], Any]) -> Any:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(
            f"{path} is a corrupt or truncated zip checkpoint (an incomplete download?): {e}"
        ) from None
    with archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
        if len(pkl) != 1:
            raise CheckpointError(f"{path}: expected exactly one <archive>/data.pkl, found {pkl}")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in names:
            byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"{path}: unknown byteorder {byteorder!r}")
        storages: dict[str, _Storage] = {}
        obj = select(_unpickle(io.BytesIO(archive.read(pkl[0])), storages))
        for storage in {id(t.storage.source): t.storage.source for t in _pending(obj)}.values():
            record = f"{prefix}data/{storage.key}"
            try:
                info = archive.getinfo(record)
            except KeyError:
                raise CheckpointError(
                    f"storage record {record!r} is missing from the archive"
                ) from None
            needed = storage.numel * storage.dtype.itemsize
            if info.file_size < needed:
                raise CheckpointError(
                    f"storage {record!r} holds {info.file_size} bytes, {storage.numel} "
                    f"elements of {storage.dtype} need {needed}"
                )
            storage.array = _to_native(archive.read(record)[:needed], storage, byteorder)
    return obj


def _read_legacy(path: str, stream: IO[bytes], select: Callable[[Any], Any]) -> Any:
    size = os.fstat(stream.fileno()).st_size
    header: dict[str, _Storage] = {}
    magic = _unpickle(stream, header)
    if magic != LEGACY_MAGIC_NUMBER:
        raise CheckpointError(
            f"{path} is not a torch checkpoint (no zip archive, no legacy magic number)"
        )
    version = _unpickle(stream, header)
    if version != LEGACY_PROTOCOL_VERSION:
        raise CheckpointError(
            f"{path}: legacy checkpoint protocol {version!r} is unsupported "
            f"(expected {LEGACY_PROTOCOL_VERSION})"
        )
    sys_info = _unpickle(stream, header)
    if not isinstance(sys_info, Mapping):
        raise CheckpointError(f"{path}: legacy checkpoint header is malformed")
    storages: dict[str, _Storage] = {}
    obj = select(_unpickle(stream, storages))
    keys = _unpickle(stream, header)
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
        raise CheckpointError(
            f"{path}: the legacy storage list does not match the storages the object uses"
        )
    wanted = {id(t.storage.source) for t in _pending(obj)}
    for key in map(str, keys):
        storage = storages[key]
        raw_count = stream.read(8)
        if len(raw_count) < 8:
            raise _truncated(path, f"the data of storage {key!r} is missing")
        (count,) = struct.unpack("<q", raw_count)
        if count != storage.numel:
            raise CheckpointError(
                f"{path}: storage {key!r} holds {count} elements but the pickle declares "
                f"{storage.numel} (corrupt file?)"
            )
        nbytes = count * storage.dtype.itemsize
        if stream.tell() + nbytes > size:
            raise _truncated(
                path, f"storage {key!r} needs {nbytes} bytes, {size - stream.tell()} remain"
            )
        if id(storage) in wanted:
            storage.array = _to_native(stream.read(nbytes), storage, "little")
        else:
            stream.seek(nbytes, os.SEEK_CUR)
    return obj


def _truncated(path: str, detail: str) -> CheckpointError:
    return CheckpointError(f"{path} is truncated (an incomplete download?): {detail}")


def check_file(path: str | os.PathLike) -> str:
    """``path`` as a string, once it is known to be an existing file.

    Raises:
        FileNotFoundError: it does not exist.
        CheckpointError: it is a directory.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory, expected a checkpoint file")
    return path


@contextlib.contextmanager
def reading_errors(path: str) -> Iterator[None]:
    """Report what goes wrong while a pickle file is read as a one-line
    :class:`CheckpointError` naming ``path`` (truncated, corrupt, refused)."""
    try:
        yield
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(e.refused, path) from None
    except CheckpointError as e:
        raise CheckpointError(e if str(e).startswith(path) else f"{path}: {e}") from None
    except zipfile.BadZipFile as e:  # a bad CRC shows when a record is read
        raise CheckpointError(f"{path} is a corrupt zip checkpoint: {e}") from None
    except (EOFError, ValueError, struct.error) as e:
        # pickletools and pickle raise these on a stream that stops early.
        raise _truncated(path, f"the pickle stream ends early or is corrupt ({e})") from None
    except (pickle.UnpicklingError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise CheckpointError(f"{path}: the pickle could not be read: {e}") from None


def is_torch_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``torch.save`` file (a zip archive, or a pickle
    stream starting with the legacy magic number); reads only its first pickle."""
    path = check_file(path)
    with open(path, "rb") as stream:
        if stream.read(4) == ZIP_MAGIC or zipfile.is_zipfile(stream):
            return True
        stream.seek(0)
        if stream.read(1) != b"\x80":
            return False
        stream.seek(0)
        try:
            return restricted_load(stream, {}) == LEGACY_MAGIC_NUMBER
        except (CheckpointError, pickle.UnpicklingError, EOFError, ValueError):
            return False


def _read(path: str | os.PathLike, select: Callable[[Any], Any] = lambda obj: obj) -> Any:
    """Read a checkpoint of either format; ``select`` picks what to keep from
    the unpickled object before any tensor data is read."""
    path = check_file(path)
    with open(path, "rb") as stream, reading_errors(path):
        head = stream.read(4)
        is_zip = head == ZIP_MAGIC or zipfile.is_zipfile(stream)
        stream.seek(0)
        if is_zip:
            return _read_zip(path, select)
        if head[:1] == b"\x80":  # a pickle (protocol >= 2): the legacy format
            return _read_legacy(path, stream, select)
    raise CheckpointError(
        f"{path} is not a torch.save checkpoint (neither a zip archive nor the legacy format)"
    )


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Unpickle a ``torch.save`` file (zip or legacy) with tensors as NumPy arrays.

    Args:
        path: the ``.pth`` / ``.pt`` file.

    Returns:
        The saved object (usually a dict), every tensor replaced by an
        ``np.ndarray`` of the tensor's dtype (bfloat16 widened to float32).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the pickle names a global outside the allow-list.
        CheckpointError: not a checkpoint, corrupt (bad CRC, inconsistent
            sizes) or truncated; tensors larger than their storage.
    """
    return _materialize(_read(path))


def _state_dict_entry(obj: Any, key: str | None) -> Any:
    if (
        key is not None
        and isinstance(obj, Mapping)
        and key in obj
        and isinstance(obj[key], Mapping)
    ):
        return obj[key]
    return obj


def load_state_dict(path: str | os.PathLike, key: str | None = "model") -> dict[str, np.ndarray]:
    """The tensors of a checkpoint's state dict, by name.

    Args:
        path: the ``torch.save`` file (zip or legacy format).
        key: entry holding the state dict when the checkpoint is a dict of
            several things (``{"model": ..., "optimizer": ..., "iteration": ...}``
            as the official trainer writes; the other entries are not read);
            ignored when the top level already is the state dict. ``None``: the
            top level must be the state dict.

    Returns:
        ``{name: np.ndarray}`` in file order.

    Raises:
        CheckpointError: see :func:`load_checkpoint`; also when no state dict of
            arrays is found.
    """
    obj = _materialize(_read(path, lambda o: _state_dict_entry(o, key)))
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

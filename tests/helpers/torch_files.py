"""A minimal ``torch.save`` writer for tests: stand-in objects pickled under torch's names.

``write_checkpoint`` writes the zip format (PyTorch >= 1.6), ``write_legacy_checkpoint``
the legacy one (the authors' model zoo); tensors are :class:`Tensor` views into
:class:`Storage` records (``contiguous`` makes one from an array). No torch needed.
"""

from __future__ import annotations

import collections
import pickle
import sys
import types
import zipfile

import numpy as np

_STORAGE_NAMES = {
    np.dtype("float64"): "DoubleStorage",
    np.dtype("float32"): "FloatStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}


def _fake_torch_modules() -> dict[str, types.ModuleType]:
    """Modules named ``torch`` / ``torch._utils`` holding picklable stand-ins."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only pickled by reference
        raise AssertionError

    def _rebuild_parameter(*args):
        raise AssertionError

    for fn in (_rebuild_tensor_v2, _rebuild_parameter):
        fn.__module__, fn.__qualname__ = "torch._utils", fn.__name__
        setattr(utils, fn.__name__, fn)
    for name in _STORAGE_NAMES.values():
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    torch._utils = utils
    return {"torch": torch, "torch._utils": utils}


class Storage:
    """One storage: flat array written as ``data/<key>``; ``declared`` makes the
    file claim another element count (a corrupt or hostile file)."""

    def __init__(self, key: str, flat: np.ndarray, declared: int | None = None):
        self.key, self.flat = key, flat
        self.numel = flat.size if declared is None else declared


class StorageView:
    """A legacy storage view (PyTorch < 1.0): ``size`` elements of ``root`` from ``offset``."""

    def __init__(self, root: Storage, key: str, offset: int, size: int):
        self.root, self.key, self.offset, self.size = root, key, offset, size


class Tensor:
    """A view (offset, size, stride in elements) into a :class:`Storage`."""

    def __init__(self, storage, offset, size, stride, parameter=False):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.parameter = parameter

    def __reduce__(self):
        utils = sys.modules["torch._utils"]
        hooks = collections.OrderedDict()
        tensor = (
            utils._rebuild_tensor_v2,
            (self.storage, self.offset, tuple(self.size), tuple(self.stride), False, hooks),
        )
        if self.parameter:
            inner = Tensor(self.storage, self.offset, self.size, self.stride)
            return (utils._rebuild_parameter, (inner, True, collections.OrderedDict()))
        return tensor


def contiguous(key: str, array: np.ndarray) -> Tensor:
    strides = tuple(s // array.itemsize for s in array.strides)
    return Tensor(Storage(key, array.reshape(-1)), 0, array.shape, strides)


def _pickle_with_fake_torch(obj, persistent_id, protocol: int) -> bytes:
    """Pickle ``obj`` under torch's names, storages replaced by ``persistent_id``."""
    import io

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            return persistent_id(o)

    buf = io.BytesIO()
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules.update(_fake_torch_modules())
    try:
        Pickler(buf, protocol=protocol).dump(obj)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return buf.getvalue()


def _storage_class(flat: np.ndarray):
    return getattr(sys.modules["torch"], _STORAGE_NAMES[flat.dtype])


def write_checkpoint(path, obj, byteorder: str = "little", protocol: int = 2, prefix="archive"):
    """Pickle ``obj`` (Tensor / Storage stand-ins inside) like torch.save does."""
    storages: dict[str, Storage] = {}

    def persistent_id(o):
        if isinstance(o, Storage):
            storages[o.key] = o
            return ("storage", _storage_class(o.flat), o.key, "cpu", o.numel)
        return None

    data = _pickle_with_fake_torch(obj, persistent_id, protocol)
    order = "<" if byteorder == "little" else ">"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{prefix}/data.pkl", data)
        z.writestr(f"{prefix}/byteorder", byteorder)
        for key, s in storages.items():
            z.writestr(
                f"{prefix}/data/{key}", s.flat.astype(s.flat.dtype.newbyteorder(order)).tobytes()
            )
        z.writestr(f"{prefix}/version", "3\n")
    return path


def write_legacy_checkpoint(path, obj, little_endian: bool = True, protocol: int = 2):
    """``torch.save(obj, path, _use_new_zipfile_serialization=False)``: magic number,
    protocol 1001, sys_info, the object pickle, the sorted storage keys, then each
    storage as an int64 count and its little-endian bytes (torch writes them so
    on any machine; ``little_endian`` only sets the sys_info flag)."""
    import struct

    storages: dict[str, Storage] = {}

    def persistent_id(o):
        if isinstance(o, StorageView):
            storages[o.root.key] = o.root
            view = (o.key, o.offset, o.size)
            return ("storage", _storage_class(o.root.flat), o.root.key, "cpu", o.root.numel, view)
        if isinstance(o, Storage):
            storages[o.key] = o
            return ("storage", _storage_class(o.flat), o.key, "cpu", o.numel, None)
        return None

    body = _pickle_with_fake_torch(obj, persistent_id, protocol)
    sys_info = {
        "protocol_version": 1001,
        "little_endian": little_endian,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    }
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, sys_info):
            f.write(pickle.dumps(header, protocol=2))
        f.write(body)
        keys = sorted(storages)
        f.write(pickle.dumps(keys, protocol=2))
        for key in keys:
            flat = storages[key].flat
            f.write(struct.pack("<q", storages[key].numel))
            f.write(flat.astype(flat.dtype.newbyteorder("<")).tobytes())
    return path


WRITERS = {"zip": write_checkpoint, "legacy": write_legacy_checkpoint}

"""Restricted reading of torch.save archives: no torch, no code execution, exact tensors."""

from __future__ import annotations

import collections
import os
import pickle
import sys
import types
import uuid
import zipfile

import numpy as np
import pytest

from atss_tf.config import Config
from atss_tf.convert import (
    CheckpointError,
    ConversionError,
    UnsafeCheckpointError,
    infer_config,
    load_checkpoint,
    load_official_weights,
    load_state_dict,
    official_weight_map,
)

# --------------------------------------------------------------------------- #
# A minimal torch.save writer: stand-in objects pickled under torch's names.
# --------------------------------------------------------------------------- #

_STORAGE_NAMES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
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
    """One storage: flat array written as ``data/<key>``."""

    def __init__(self, key: str, flat: np.ndarray):
        self.key, self.flat = key, flat


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


def write_checkpoint(path, obj, byteorder: str = "little", protocol: int = 2, prefix="archive"):
    """Pickle ``obj`` (Tensor / Storage stand-ins inside) like torch.save does."""
    storages: dict[str, Storage] = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, Storage):
                storages[o.key] = o
                cls = getattr(sys.modules["torch"], _STORAGE_NAMES[o.flat.dtype])
                return ("storage", cls, o.key, "cpu", o.flat.size)
            return None

    import io

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
    order = "<" if byteorder == "little" else ">"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{prefix}/data.pkl", buf.getvalue())
        z.writestr(f"{prefix}/byteorder", byteorder)
        for key, s in storages.items():
            z.writestr(
                f"{prefix}/data/{key}", s.flat.astype(s.flat.dtype.newbyteorder(order)).tobytes()
            )
        z.writestr(f"{prefix}/version", "3\n")
    return path


# --------------------------------------------------------------------------- #
# Refusing code
# --------------------------------------------------------------------------- #


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 4])  # GLOBAL (pre-scan) and STACK_GLOBAL (find_class)
def test_code_running_pickle_is_refused_before_it_runs(tmp_path, protocol):
    marker = tmp_path / f"pwned_{uuid.uuid4().hex}"
    state = collections.OrderedDict(
        [("weight", contiguous("0", np.ones(3, "float32"))), ("x", _Evil(str(marker)))]
    )
    path = write_checkpoint(tmp_path / "evil.pth", {"model": state}, protocol=protocol)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    assert f"{os.system.__module__}.system" in info.value.refused
    assert "system" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()


def test_torch_names_outside_the_allow_list_are_refused(tmp_path):
    data = b"\x80\x02ctorch.nn.modules.linear\nLinear\nq\x00)\x81q\x01."  # a pickled nn.Module
    path = tmp_path / "module.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data)
    with pytest.raises(UnsafeCheckpointError, match="torch.nn.modules.linear.Linear"):
        load_checkpoint(path)


# --------------------------------------------------------------------------- #
# Exact tensors
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_tensors_round_trip_with_offsets_strides_and_dtypes(tmp_path, byteorder):
    rng = np.random.default_rng(0)
    shared = rng.normal(size=40).astype("float32")
    s = Storage("7", shared)
    half = rng.normal(size=(2, 3, 4)).astype("float16")
    state = collections.OrderedDict()
    state["conv.weight"] = contiguous("0", rng.normal(size=(4, 3, 3, 3)).astype("float32"))
    state["view.offset"] = Tensor(s, 5, (3, 4), (4, 1))  # rows 5..16 of the shared storage
    state["view.transposed"] = Tensor(s, 1, (4, 3), (1, 4))  # non-contiguous
    state["half"] = contiguous("1", half)
    state["param"] = Tensor(
        Storage("2", np.arange(6, dtype="float32")), 2, (2, 2), (2, 1), parameter=True
    )
    state["steps"] = contiguous("3", np.array(7, dtype="int64").reshape(()))
    state._metadata = {"": {"version": 1}}  # what nn.Module.state_dict attaches
    path = write_checkpoint(
        tmp_path / "ok.pth", {"model": state, "iteration": 5}, byteorder=byteorder
    )

    obj = load_checkpoint(path)
    assert obj["iteration"] == 5
    assert isinstance(obj["model"], collections.OrderedDict)
    got = load_state_dict(path)
    assert list(got) == list(state)
    np.testing.assert_array_equal(got["view.offset"], shared[5:17].reshape(3, 4))
    np.testing.assert_array_equal(got["view.transposed"], shared[1:13].reshape(3, 4).T)
    assert got["half"].dtype == np.float16 and got["half"].shape == (2, 3, 4)
    np.testing.assert_array_equal(got["half"], half)
    np.testing.assert_array_equal(got["param"], [[2.0, 3.0], [4.0, 5.0]])
    assert got["steps"].shape == () and got["steps"] == 7
    assert got["conv.weight"].dtype == np.float32 and got["conv.weight"].flags.writeable


def test_corrupt_archives_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps({"model": {}}))
    with pytest.raises(CheckpointError, match="not a zip archive"):
        load_checkpoint(legacy)
    # A view that reads past the end of its storage.
    bad = write_checkpoint(
        tmp_path / "bad.pth", {"w": Tensor(Storage("0", np.zeros(4, "float32")), 2, (3,), (1,))}
    )
    with pytest.raises(CheckpointError, match="past the end"):
        load_checkpoint(bad)
    # A storage record missing from the archive.
    path = write_checkpoint(tmp_path / "nodata.pth", {"w": contiguous("0", np.zeros(2, "float32"))})
    stripped = tmp_path / "stripped.pth"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(stripped, "w") as dst:
        for name in src.namelist():
            if "/data/" not in name:
                dst.writestr(name, src.read(name))
    with pytest.raises(CheckpointError, match="missing from the archive"):
        load_checkpoint(stripped)


# --------------------------------------------------------------------------- #
# Key reporting of the official mapping, on a tiny model
# --------------------------------------------------------------------------- #


def _tiny_model():
    from atss_tf.model import build_detector

    cfg = Config()
    m = cfg.model
    m.num_classes, m.backbone.depth, m.backbone.width_multiplier = 2, 18, 0.125
    m.fpn.channels = m.head.channels = 16
    m.head.num_convs, m.head.group_norm_groups = 1, 4
    return build_detector(cfg)


def _official_state(model) -> collections.OrderedDict:
    """The tiny model's weights laid out as an official state dict (random values)."""
    rng = np.random.default_rng(0)
    state = collections.OrderedDict()
    for key, (var, _) in official_weight_map(model).items():
        shape = tuple(var.shape)
        if len(shape) == 4:
            shape = (shape[3], shape[2], shape[0], shape[1])  # HWIO -> OIHW
        elif shape == ():
            shape = (1,)
        state["module." + key] = rng.normal(size=shape).astype("float16")
    return state


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path):
    from atss_tf.convert.official import strip_prefix

    model = _tiny_model()
    state = _official_state(model)
    path = write_checkpoint(
        tmp_path / "good.pth",
        {"model": {k: contiguous(str(i), v) for i, (k, v) in enumerate(state.items())}},
    )
    loaded = strip_prefix(load_state_dict(path))
    tensors, params, ignored = load_official_weights(model, loaded)
    assert tensors == len(model.weights) and ignored == []
    kernel = loaded["backbone.fpn.fpn_inner4.weight"].astype("float32").transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(np.asarray(model.fpn.fpn_inner4.kernel), kernel)
    assert float(model.head.scales[2].scale.numpy()) == float(loaded["rpn.head.scales.2.scale"][0])

    broken = dict(loaded)
    del broken["rpn.head.centerness.bias"]
    broken["rpn.head.extra.weight"] = np.zeros(3, "float16")
    broken["backbone.fpn.p6.weight"] = np.zeros(3, "float16")
    broken["backbone.body.stem.bn1.running_var"] = np.zeros(5, "float16")
    broken["rpn.anchor_generator.cell_anchors.0"] = np.zeros((1, 4), "float32")  # ignored
    before = np.asarray(model.head.cls_logits.kernel).copy()
    with pytest.raises(ConversionError) as info:
        load_official_weights(model, broken)
    msg = str(info.value)
    assert "missing keys (1): rpn.head.centerness.bias" in msg
    assert "rpn.head.extra.weight" in msg and "backbone.fpn.p6.weight" in msg
    assert "mis-shaped keys (1): backbone.body.stem.bn1.running_var (5,)" in msg
    assert "anchor_generator" not in msg
    np.testing.assert_array_equal(np.asarray(model.head.cls_logits.kernel), before)  # untouched


def test_deformable_checkpoints_are_refused_clearly():
    state = {"backbone.body.layer2.0.conv2.offset.weight": np.zeros((27, 128, 3, 3))}
    with pytest.raises(
        ConversionError, match="deformable convolution checkpoints are not supported"
    ):
        infer_config(state)

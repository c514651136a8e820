"""Restricted reading of torch.save archives: no torch, no code execution, exact tensors."""

from __future__ import annotations

import collections
import os
import pickle
import uuid
import zipfile

import numpy as np
import pytest

from atss_tf.convert import (
    CheckpointError,
    ConversionError,
    UnsafeCheckpointError,
    load_checkpoint,
    load_official_weights,
    load_state_dict,
    official_weight_map,
)
from tests.helpers.tiny import tiny_config
from tests.helpers.torch_files import (
    WRITERS,
    Storage,
    StorageView,
    Tensor,
    contiguous,
    write_checkpoint,
    write_legacy_checkpoint,
)

# --------------------------------------------------------------------------- #
# Refusing code
# --------------------------------------------------------------------------- #


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("protocol", [2, 4])  # GLOBAL (pre-scan) and STACK_GLOBAL (find_class)
def test_code_running_pickle_is_refused_before_it_runs(tmp_path, protocol, fmt):
    marker = tmp_path / f"pwned_{uuid.uuid4().hex}"
    state = collections.OrderedDict(
        [("weight", contiguous("0", np.ones(3, "float32"))), ("x", _Evil(str(marker)))]
    )
    path = WRITERS[fmt](tmp_path / "evil.pth", {"model": state}, protocol=protocol)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    assert f"{os.system.__module__}.system" in info.value.refused
    assert "system" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):
        load_state_dict(path)
    assert not marker.exists()


def test_code_in_a_legacy_header_pickle_is_refused(tmp_path):
    marker = tmp_path / f"pwned_{uuid.uuid4().hex}"
    path = tmp_path / "evil_header.pth"
    path.write_bytes(pickle.dumps(_Evil(str(marker)), protocol=2))  # where the magic number goes
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_checkpoint(path)
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


def _mixed_state(rng) -> tuple[collections.OrderedDict, np.ndarray, np.ndarray]:
    """A state dict of views sharing a storage, a transposed view, float16, a
    parameter and a scalar; returns it with the shared and float16 arrays."""
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
    return state, shared, half


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_tensors_round_trip_with_offsets_strides_and_dtypes(tmp_path, byteorder):
    state, shared, half = _mixed_state(np.random.default_rng(0))
    path = write_checkpoint(
        tmp_path / "ok.pth", {"model": state, "iteration": 5}, byteorder=byteorder
    )
    _check_round_trip(path, state, shared, half)


@pytest.mark.parametrize("little_endian", [True, False])
def test_legacy_tensors_round_trip_with_views_dtypes_and_extra_entries(tmp_path, little_endian):
    rng = np.random.default_rng(0)
    state, shared, half = _mixed_state(rng)
    dtypes = {}
    for i, dtype in enumerate(("float64", "int32", "uint8", "bool")):
        values = (rng.normal(size=5) * 50).astype(dtype)
        dtypes[dtype] = values
        state[f"extra.{dtype}"] = contiguous(f"d{i}", values)
    # A PyTorch < 1.0 storage view: elements 10..19 of storage "8", read from 2.
    root = Storage("8", np.arange(30, dtype="float32"))
    state["old_view"] = Tensor(StorageView(root, "8v", 10, 10), 2, (2, 3), (3, 1))
    optimizer = {
        "state": {0: {"momentum_buffer": contiguous("m0", np.ones(4, "float32"))}},
        "param_groups": [{"lr": 0.01, "momentum": 0.9, "nesterov": False, "params": [0]}],
    }
    scheduler = {"milestones": (60000, 80000), "gamma": 0.1, "warmup_method": "constant"}
    obj = {"model": state, "optimizer": optimizer, "scheduler": scheduler, "iteration": 5}
    path = write_legacy_checkpoint(tmp_path / "old.pth", obj, little_endian=little_endian)
    _check_round_trip(path, state, shared, half)
    got = load_state_dict(path)
    for dtype, values in dtypes.items():
        assert got[f"extra.{dtype}"].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got[f"extra.{dtype}"], values)
    np.testing.assert_array_equal(got["old_view"], [[12, 13, 14], [15, 16, 17]])
    full = load_checkpoint(path)
    assert full["scheduler"] == scheduler and full["iteration"] == 5
    np.testing.assert_array_equal(full["optimizer"]["state"][0]["momentum_buffer"], np.ones(4))


def _check_round_trip(path, state, shared, half):
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
    plain = tmp_path / "plain.pth"
    plain.write_bytes(pickle.dumps({"model": {}}))
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        load_checkpoint(plain)
    text = tmp_path / "text.pth"
    text.write_text("<html>404 Not Found</html>")
    with pytest.raises(CheckpointError, match="not a torch.save checkpoint"):
        load_checkpoint(text)
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


def _peak_bytes(fn) -> int:
    """Peak Python/NumPy allocation while ``fn`` runs (NumPy reports to tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
    except CheckpointError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_declared_sizes_are_checked_before_allocating(tmp_path, fmt):
    tiny = Storage("0", np.zeros(4, "float32"))
    # Zero strides: 4 stored floats declared as a 100000 x 100000 tensor (40 GB).
    bomb = WRITERS[fmt](
        tmp_path / "zero_strides.pth", {"w": Tensor(tiny, 0, (10**5, 10**5), (0, 0))}
    )
    assert bomb.stat().st_size < 2000
    with pytest.raises(CheckpointError, match="larger than its storage"):
        load_checkpoint(bomb)
    assert _peak_bytes(lambda: load_checkpoint(bomb)) < 10 * 2**20

    # A storage that declares 10**10 elements (40 GB) whose bytes are not in the file.
    lying = Storage("0", np.zeros(4, "float32"), declared=10**10)
    path = WRITERS[fmt](tmp_path / "lying.pth", {"w": Tensor(lying, 0, (10**5, 10**5), (10**5, 1))})
    assert path.stat().st_size < 2000
    match = "truncated" if fmt == "legacy" else "holds 16 bytes"
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)
    assert _peak_bytes(lambda: load_checkpoint(path)) < 10 * 2**20


def _one_line(error: Exception) -> str:
    text = str(error)
    assert "\n" not in text
    return text


def test_truncated_and_corrupt_downloads_name_the_file(tmp_path, official_legacy_checkpoint):
    from atss_tf import cli

    data = official_legacy_checkpoint.read_bytes()
    # Cut inside the object pickle, inside the key list, inside the storage bytes.
    for cut in (30_000, 50_000, 1_000_000):
        part = tmp_path / f"cut_{cut}.pth"
        part.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as info:
            load_state_dict(part)
        text = _one_line(info.value)
        assert str(part) in text and "truncated" in text, text

    zipped = write_checkpoint(
        tmp_path / "z.pth", {"w": contiguous("0", np.arange(64, dtype="float32"))}
    )
    raw = zipped.read_bytes()
    half = tmp_path / "half.pth"
    half.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError) as info:
        load_state_dict(half)
    text = _one_line(info.value)
    assert str(half) in text and "corrupt or truncated" in text, text

    flipped = bytearray(raw)
    at = raw.index(np.arange(64, dtype="float32").tobytes()) + 100
    flipped[at] ^= 0xFF
    bad_crc = tmp_path / "bad_crc.pth"
    bad_crc.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError) as info:
        load_state_dict(bad_crc)
    text = _one_line(info.value)
    assert str(bad_crc) in text and "corrupt" in text and "CRC" in text, text

    # Through the CLI: one line on stderr, exit 1, no traceback.
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli.main(
            ["convert", "official", str(tmp_path / "cut_1000000.pth"), str(tmp_path / "o.keras")]
        )
    assert rc == 1
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and "truncated" in lines[0] and "Traceback" not in err.getvalue()


def test_legacy_fixture_holds_exactly_the_zip_fixture(
    official_checkpoint, official_legacy_checkpoint
):
    want = load_state_dict(official_checkpoint)
    got = load_state_dict(official_legacy_checkpoint)
    assert list(got) == list(want) and len(got) == 324
    for key in want:
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    # The trainer's other entries (maskrcnn-benchmark's Checkpointer) are plain data.
    full = load_checkpoint(official_legacy_checkpoint)
    assert set(full) == {"model", "optimizer", "scheduler", "iteration"}
    assert full["iteration"] == 90000
    assert full["scheduler"]["milestones"] == (60000, 80000)
    buffers = [v["momentum_buffer"] for v in full["optimizer"]["state"].values()]
    assert len(buffers) == 6 and all(b.dtype == np.float32 for b in buffers)


# --------------------------------------------------------------------------- #
# Key reporting of the official mapping, on a tiny model
# --------------------------------------------------------------------------- #


def _tiny_model():
    from atss_tf.model import build_detector

    return build_detector(
        tiny_config(
            [
                "model.num_classes=2",
                "model.backbone.width_multiplier=0.125",
                "model.fpn.channels=16",
                "model.head.channels=16",
                "model.head.group_norm_groups=4",
            ]
        )
    )


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

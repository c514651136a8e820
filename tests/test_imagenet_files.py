"""ImageNet ResNeXt weight files (Detectron .pkl, torchvision .pth) -> our backbone.

Each test writes a small random file of a tiny ResNeXt-101 (32 x 4 groups
scaled down, stride on the 3x3) in the format itself and checks that the
backbone's C2..C5 equal an independent forward of the file's network (plain
``tf.nn`` convolutions, groups split by hand, each BN as the affine its format
defines), so every tensor must land in its place and every fold
(torchvision's BN epsilon, a Caffe2 conv bias) must be right.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tensorflow as tf

from atss_tf.config import load_config
from atss_tf.convert.imagenet_files import load_imagenet_file
from atss_tf.convert.official import ConversionError
from atss_tf.errors import CheckpointError, ConfigError
from atss_tf.model import ModulatedDeformConv2D, ResNetBackbone
from tests.helpers.caffe2_files import write_python2_blobs
from tests.helpers.torch_files import contiguous, write_checkpoint

TINY = dict(depth=101, groups=4, width_per_group=4, width_multiplier=0.25, stride_in_1x1=False)


def _backbone(**extra) -> ResNetBackbone:
    backbone = ResNetBackbone(**TINY, **extra)
    backbone.build((None, None, None, 3))
    return backbone


def _layers(backbone: ResNetBackbone):
    """``(stage, block, part, conv OIHW shape, groups, stride)`` of every conv:
    part 0 the stem, 1..3 the bottleneck convs, 4 the projection."""
    kernel = backbone.stem_conv1.kernel.shape
    yield None, None, 0, (kernel[3], kernel[2], 7, 7), 1, 2
    for s, blocks in enumerate(backbone.stages, start=1):
        for i, block in enumerate(blocks):
            for j in (1, 2, 3):
                k = getattr(block, f"conv{j}").kernel.shape
                groups = block.groups if j == 2 else 1
                yield s, i, j, (k[3], k[2], k[0], k[1]), groups, block.strides if j == 2 else 1
            if block.downsample_conv is not None:
                k = block.downsample_conv.kernel.shape
                yield s, i, 4, (k[3], k[2], 1, 1), 1, block.strides


def _random_network(backbone, rng) -> dict:
    """Per conv: kernel (OIHW), the BN's scale ``gamma`` and bias, statistics
    (torchvision) and a conv bias (Caffe2's stem)."""
    net = {}
    for s, i, part, shape, groups, stride in _layers(backbone):
        c = shape[0]
        net[(s, i, part)] = {
            "w": rng.normal(0, (2.0 / np.prod(shape[1:])) ** 0.5, shape).astype("f4"),
            "gamma": rng.uniform(0.3, 0.7, c).astype("f4"),  # the scale the BN applies
            "beta": rng.normal(0, 0.1, c).astype("f4"),
            "mean": rng.normal(0, 0.1, c).astype("f4"),
            "var": rng.uniform(0.002, 0.02, c).astype("f4"),  # an epsilon matters
            "conv_b": rng.normal(0, 0.1, c).astype("f4"),
            "groups": groups,
            "stride": stride,
        }
    return net


def _torchvision_state(net) -> dict:
    names = {1: ("conv1", "bn1"), 2: ("conv2", "bn2"), 3: ("conv3", "bn3")}
    names[4] = ("downsample.0", "downsample.1")
    state = {}
    for (s, i, part), p in net.items():
        conv, bn = ("conv1", "bn1") if part == 0 else (f"layer{s}.{i}.{n}" for n in names[part])
        state[f"{conv}.weight"] = p["w"]
        state[f"{bn}.weight"] = p["gamma"] * np.sqrt(p["var"])  # scale ~ gamma
        state[f"{bn}.bias"], state[f"{bn}.running_mean"] = p["beta"], p["mean"]
        state[f"{bn}.running_var"] = p["var"]
        state[f"{bn}.num_batches_tracked"] = np.array(7, "int64")
    state["fc.weight"], state["fc.bias"] = np.zeros((10, 64), "f4"), np.zeros(10, "f4")
    return state


def _detectron_blobs(net) -> dict:
    branch = {1: "branch2a", 2: "branch2b", 3: "branch2c", 4: "branch1"}
    blobs = {}
    for (s, i, part), p in net.items():
        conv, bn = (
            ("conv1", "res_conv1_bn") if part == 0 else (f"res{s + 1}_{i}_{branch[part]}",) * 2
        )
        if part:
            bn = f"{conv}_bn"
        blobs[f"{conv}_w"] = p["w"]
        blobs[f"{bn}_s"], blobs[f"{bn}_b"] = p["gamma"], p["beta"]
        if part == 0:
            blobs["conv1_b"] = p["conv_b"]  # MSRA's stem conv has a bias
            blobs["conv1_w_momentum"] = np.zeros_like(p["w"])
    blobs["pred_w"], blobs["pred_b"] = np.zeros((10, 64), "f4"), np.zeros(10, "f4")
    return blobs


def _affine(p, fmt: str, part: int) -> tuple[np.ndarray, np.ndarray]:
    """The BN after a conv as ``x * scale + shift``, as the format defines it."""
    if fmt == "torchvision":
        scale = p["gamma"] * np.sqrt(p["var"]) / np.sqrt(p["var"] + 1e-5)
        return scale, p["beta"] - p["mean"] * scale
    shift = p["beta"] + (p["gamma"] * p["conv_b"] if part == 0 else 0.0)
    return p["gamma"], shift


def _reference(net, fmt: str, x: np.ndarray) -> dict:
    """C2..C5 of the file's network, from the arrays alone (NHWC, float64)."""

    def conv_bn(x, key, relu=True):
        p = net[key]
        k = np.transpose(p["w"], (2, 3, 1, 0)).astype("f8")  # OIHW -> HWIO
        pad = k.shape[0] // 2
        x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        xs = tf.split(x, p["groups"], axis=3)
        ks = np.split(k, p["groups"], axis=3)
        s = p["stride"]
        y = tf.concat([tf.nn.conv2d(a, b, s, "VALID") for a, b in zip(xs, ks)], axis=3)
        scale, shift = _affine(p, fmt, key[2])
        y = y * scale + shift
        return tf.nn.relu(y) if relu else y

    x = conv_bn(tf.constant(x, tf.float64), (None, None, 0))
    x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=-np.inf)
    x = tf.nn.max_pool2d(x, 3, 2, "VALID")
    out = {}
    stage = 1
    while (stage, 0, 1) in net:
        i = 0
        while (stage, i, 1) in net:
            y = conv_bn(conv_bn(conv_bn(x, (stage, i, 1)), (stage, i, 2)), (stage, i, 3), False)
            short = conv_bn(x, (stage, i, 4), False) if (stage, i, 4) in net else x
            x = tf.nn.relu(y + short)
            i += 1
        out[f"c{stage + 1}"] = x.numpy()
        stage += 1
    return out


def _write(fmt: str, net, tmp_path):
    if fmt == "torchvision":
        state = _torchvision_state(net)
        tensors = {k: contiguous(str(n), v) for n, (k, v) in enumerate(state.items())}
        return write_checkpoint(tmp_path / "resnext101_tiny.pth", tensors)
    return write_python2_blobs(tmp_path / "X-101-tiny.pkl", _detectron_blobs(net))


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def network():
    return _random_network(_backbone(), np.random.default_rng(0))


@pytest.mark.parametrize("fmt", ["detectron", "torchvision"])
def test_imagenet_file_gives_the_files_network(fmt, network, tmp_path):
    """Every tensor lands in place: C2..C5 equal the file's own network (1e-5)."""
    backbone = _backbone()
    copied = load_imagenet_file(backbone, _write(fmt, network, tmp_path))
    assert copied == len(backbone.weights)
    x = np.random.default_rng(1).uniform(-2, 2, (1, 64, 96, 3)).astype("f4")
    ref = _reference(network, fmt, x)
    got = backbone(x)
    for key in ("c2", "c3", "c4", "c5"):
        assert got[key].shape == ref[key].shape
        assert _rel(np.asarray(got[key], "f8"), ref[key]) < 1e-5, key


def test_dcn_stages_take_the_plain_convs_and_keep_their_offset_convs(network, tmp_path):
    """A DCN backbone (official X-101 stages c4, c5) takes the file's conv2 as its
    deformable kernel and keeps its offset convs' own start; with zero offsets
    and unit masks it is the file's network."""
    backbone = _backbone(dcn_stages=("c4", "c5"))
    dcn = [la for la in backbone._flatten_layers() if isinstance(la, ModulatedDeformConv2D)]
    before = [w.numpy().copy() for la in dcn for w in la.offset.weights]
    load_imagenet_file(backbone, _write("detectron", network, tmp_path))
    after = [w.numpy() for la in dcn for w in la.offset.weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    for la in dcn:  # offsets 0 and masks sigmoid(40) = 1: a plain conv
        la.offset.kernel.assign(np.zeros(la.offset.kernel.shape, "f4"))
        la.offset.bias.assign(np.repeat([0.0, 40.0], [18, 9]).astype("f4"))
    x = np.random.default_rng(1).uniform(-2, 2, (1, 64, 96, 3)).astype("f4")
    ref = _reference(network, "detectron", x)
    assert _rel(np.asarray(backbone(x)["c5"], "f8"), ref["c5"]) < 1e-5


def test_wrong_files_are_named(network, tmp_path):
    path = _write("detectron", network, tmp_path)
    other = ResNetBackbone(**dict(TINY, groups=2, width_per_group=8))  # 2 groups, not 4
    other.build((None, None, None, 3))
    with pytest.raises(ConversionError, match=r"X-101-tiny.pkl: .*mis-shaped keys .*conv2"):
        load_imagenet_file(other, path)
    torch_file = _write("torchvision", network, tmp_path)
    renamed = torch_file.rename(tmp_path / "looks_like.pkl")
    with pytest.raises(CheckpointError, match="is a torch.save checkpoint, not a Detectron"):
        load_imagenet_file(_backbone(), renamed)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"blobs": {}, "x": print}, protocol=2))
    with pytest.raises(CheckpointError, match=r"__builtin__.print.*could run arbitrary code"):
        load_imagenet_file(_backbone(), evil)


def test_config_states_the_normalisation_of_its_file():
    ok = ["model.backbone.weights=X-101-32x8d.pkl"]  # the official defaults: BGR, std 1
    assert load_config(None, ok).model.backbone.weights == "X-101-32x8d.pkl"
    with pytest.raises(ConfigError, match=r"torchvision checkpoint .*model.input_bgr=false"):
        load_config(None, ["model.backbone.weights=resnext101_32x8d.pth"])
    with pytest.raises(ConfigError, match=r"\.pkl, \.pth, \.pt"):
        load_config(None, ["model.backbone.weights=coco"])

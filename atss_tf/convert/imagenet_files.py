"""ImageNet ResNet / ResNeXt weight files -> :class:`~atss_tf.model.ResNetBackbone`.

``model.backbone.weights: <file>`` starts training from a file a user
downloaded (the ResNeXt-101 rows of the model zoo; keras.applications has no
ResNeXt), read without torch and without running pickled code:

* **Detectron Caffe2 pickles** (``.pkl``; the official configs'
  ``ImageNetPretrained/20171220/X-101-32x8d.pkl``,
  ``FBResNeXt/X-101-64x4d.pkl``, MSRA ``R-50.pkl`` / ``R-101.pkl``), read by
  :func:`~atss_tf.convert.caffe2_pickle.load_caffe2_blobs`. Blob names are
  renamed as the authors' ``c2_model_loading.py`` does:

  ===============================================  =================================
  Detectron blob                                   official key (``backbone.body.``)
  ===============================================  =================================
  ``conv1_w``                                      ``stem.conv1.weight``
  ``res_conv1_bn_{s,b}``                           ``stem.bn1.{weight,bias}``
  ``res{s+1}_{i}_branch2{a,b,c}_w``                ``layer{s}.{i}.conv{1,2,3}.weight``
  ``res{s+1}_{i}_branch2{a,b,c}_bn_{s,b}``         ``layer{s}.{i}.bn{1,2,3}.{weight,bias}``
  ``res{s+1}_{i}_branch1_w`` / ``_bn_{s,b}``       ``layer{s}.{i}.downsample.{0,1}.*``
  ===============================================  =================================

  Their batch norms are affine channels (``x * s + b``, statistics already
  folded): ``running_mean`` 0, ``running_var`` 1; a conv bias ``<conv>_b``
  (MSRA's ``conv1_b``) is folded in as ``running_mean = -b``.
* **torchvision checkpoints** (``.pth``; ``resnext101_32x8d`` /
  ``resnext101_64x4d``, ``resnet50``, ...), read by
  :func:`~atss_tf.convert.torch_pickle.load_state_dict`: ``conv1`` / ``bn1``
  are ``stem.conv1`` / ``stem.bn1``, ``layer*`` keep their names; BN epsilon
  1e-5 is folded into ``running_var`` (our frozen BN has none).

Both keep the stride on the 3x3 for ResNeXt (``stride_in_1x1: false``). The
classifier (``pred_*`` / ``fc1000_*`` / ``fc.*``), Caffe2 ``*_momentum`` blobs
and BN ``num_batches_tracked`` counters are ignored; every other entry must
map and every backbone weight must be assigned (shapes checked), except the
offset convs of DCN stages, which keep their zero start (official
``DFConv2d``). The normalisation each format implies is in
:mod:`atss_tf.config.pretrained`.
"""

from __future__ import annotations

import os
import re

import numpy as np

from atss_tf.config.pretrained import DETECTRON, TORCHVISION, weight_file_format
from atss_tf.convert.caffe2_pickle import load_caffe2_blobs
from atss_tf.convert.official import ConversionError, assign_weights, backbone_weight_map
from atss_tf.convert.torch_pickle import load_state_dict

TORCHVISION_BN_EPSILON = 1e-5
_DETECTRON_IGNORED = re.compile(r"^(pred|fc1000)_[wb]$|_momentum$|^weight_order$")
_TORCHVISION_IGNORED = re.compile(r"^fc\.|\.num_batches_tracked$")
_BRANCH = {"2a": ("conv1", "bn1"), "2b": ("conv2", "bn2"), "2c": ("conv3", "bn3")}
_BRANCH["1"] = ("downsample.0", "downsample.1")


def _detectron_conv_bn(name: str) -> tuple[str, str] | None:
    """``(conv key, bn key)`` (official names) of a Detectron blob-name stem."""
    if name == "conv1":
        return "stem.conv1", "stem.bn1"
    if m := re.fullmatch(r"res(\d)_(\d+)_branch(2a|2b|2c|1)", name):
        conv, bn = _BRANCH[m.group(3)]
        prefix = f"layer{int(m.group(1)) - 1}.{m.group(2)}"
        return f"{prefix}.{conv}", f"{prefix}.{bn}"
    return None


def detectron_to_official(blobs: dict[str, np.ndarray]) -> tuple[dict, list[str]]:
    """Detectron blobs -> ``(official-named backbone state, ignored blob names)``."""
    state: dict[str, np.ndarray] = {}
    ignored, unknown = [], []
    for name, value in blobs.items():
        if _DETECTRON_IGNORED.search(name):
            ignored.append(name)
            continue
        stem, _, kind = name.rpartition("_")
        if stem.endswith("_bn"):
            stem = stem[: -len("_bn")]
            stem = "conv1" if stem == "res_conv1" else stem
            keys = _detectron_conv_bn(stem)
            if keys is None or kind not in ("s", "b"):
                unknown.append(name)
                continue
            bn = keys[1]
            state[f"{bn}.{'weight' if kind == 's' else 'bias'}"] = value
            state.setdefault(f"{bn}.running_mean", np.zeros_like(value))
            state.setdefault(f"{bn}.running_var", np.ones_like(value))
        elif (keys := _detectron_conv_bn(stem)) is not None and kind == "w":
            state[f"{keys[0]}.weight"] = value
        elif keys is not None and kind == "b":  # a conv bias: folded into its BN
            state[f"{keys[1]}.running_mean"] = -np.asarray(value, np.float32)
        else:
            unknown.append(name)
    if unknown:
        raise ConversionError(
            f"blobs that are not a ResNet/ResNeXt backbone's ({len(unknown)}): "
            + ", ".join(unknown[:8])
            + (", ..." if len(unknown) > 8 else "")
        )
    return state, ignored


def torchvision_to_official(state: dict[str, np.ndarray]) -> tuple[dict, list[str]]:
    """torchvision ResNet/ResNeXt state -> ``(official-named backbone state, ignored keys)``."""
    out: dict[str, np.ndarray] = {}
    ignored = []
    for key, value in state.items():
        if _TORCHVISION_IGNORED.search(key):
            ignored.append(key)
            continue
        if key.startswith(("conv1.", "bn1.")):
            key = f"stem.{key}"
        if key.endswith(".running_var"):
            value = np.asarray(value, np.float32) + TORCHVISION_BN_EPSILON
        out[key] = value
    return out, ignored


def load_imagenet_file(backbone, path: str | os.PathLike) -> int:
    """Initialise a built ``backbone`` from an ImageNet weight file.

    Args:
        backbone: a built :class:`~atss_tf.model.ResNetBackbone` (its depth,
            groups, width and stride placement must be the file's).
        path: a Detectron ``.pkl`` or torchvision ``.pth`` file.

    Returns:
        Number of tensors copied.

    Raises:
        FileNotFoundError, CheckpointError (incl. UnsafeCheckpointError),
        ConversionError: the file's keys or shapes do not fit ``backbone``
        (each missing, unexpected and mis-shaped key named).
    """
    from atss_tf.model import ModulatedDeformConv2D

    path = os.fspath(path)
    fmt = weight_file_format(path)
    if fmt is DETECTRON:
        state, ignored = detectron_to_official(load_caffe2_blobs(path))
    elif fmt is TORCHVISION:
        state, ignored = torchvision_to_official(load_state_dict(path, key=None))
    else:
        raise ConversionError(f"{path}: expected a .pkl (Detectron) or .pth (torchvision) file")
    mapping = backbone_weight_map(backbone, prefix="")
    offsets = {
        id(w)
        for layer in backbone._flatten_layers()
        if isinstance(layer, ModulatedDeformConv2D)
        for w in layer.offset.weights
    }
    mapping = {k: v for k, v in mapping.items() if id(v[0]) not in offsets}
    for key in list(state):  # ImageNet files have plain convs where a DCN stage has one
        dcn = key.replace(".conv2.weight", ".conv2.conv.weight")
        if dcn != key and dcn in mapping:
            state[dcn] = state.pop(key)
    weights = [w for w in backbone.weights if id(w) not in offsets]
    try:
        tensors, _ = assign_weights(mapping, state, ignored, weights, what=fmt.name)
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from None
    return tensors

"""Official ATSS (sfzhang15/ATSS, PyTorch) checkpoints -> :class:`ATSSDetector`.

The architecture is read off the state dict (ResNet depth from the number of
``layer3`` blocks, ResNeXt groups/width from ``conv2`` shapes, classes from
``cls_logits.bias``, FPN/head widths, tower depth, GroupNorm presence); the
settings the weights were trained with are switched on: ``official_compat``,
BGR caffe normalisation with the official mean and std 1, ``p7_from_relu``,
``score_mode="sqrt"``. The one thing shapes cannot tell is where a bottleneck's
stride sits: ``stride_in_1x1`` defaults to True for plain ResNets (official
R-50/101) and False for ResNeXt (official X-101), and can be forced.

Key mapping (after stripping ``module.``):

==============================================  ===========================================
official key                                    Keras variable (``model.<layer>.<weight>``)
==============================================  ===========================================
``backbone.body.stem.conv1.weight``             ``backbone.stem_conv1.kernel`` (OIHW->HWIO)
``backbone.body.stem.bn1.<t>``                  ``backbone.stem_bn1.<t>``
``backbone.body.layer{s}.{i}.conv{j}.weight``   ``backbone.layer{s}_{i}.conv{j}.kernel``
``backbone.body.layer{s}.{i}.bn{j}.<t>``        ``backbone.layer{s}_{i}.bn{j}.<t>``
``backbone.body.layer{s}.{i}.downsample.0.*``   ``backbone.layer{s}_{i}.downsample_conv.kernel``
``backbone.body.layer{s}.{i}.downsample.1.*``   ``backbone.layer{s}_{i}.downsample_bn.<t>``
``backbone.fpn.fpn_inner{k}.{weight,bias}``     ``fpn.fpn_inner{k}.{kernel,bias}``
``backbone.fpn.fpn_layer{k}.{weight,bias}``     ``fpn.fpn_layer{k}.{kernel,bias}``
``backbone.fpn.top_blocks.p6`` / ``p7``         ``fpn.p6`` / ``fpn.p7``
``rpn.head.{cls,bbox}_tower.{3i}.*``            ``head.{cls,bbox}_tower_conv{i}.{kernel,bias}``
``rpn.head.{cls,bbox}_tower.{3i+1}.*``          ``head.{cls,bbox}_tower_norm{i}.{gamma,beta}``
``rpn.head.{cls_logits,bbox_pred,centerness}``  ``head.<same>.{kernel,bias}``
``rpn.head.scales.{l}.scale``                   ``head.scale{l}.scale`` (``[1]`` -> ``()``)
==============================================  ===========================================

Deformable convolutions (DCNv2, the ``dcnv2`` models; ATSS_SPEC §11) are read
off their keys too: a stage whose every block has
``backbone.body.layer{s}.{i}.conv2.offset.weight`` is in
``model.backbone.dcn_stages``, a tower whose last conv is
``rpn.head.{cls,bbox}_tower.{3i}.offset.*`` sets ``model.head.dcn``. Such a
``<conv>`` maps as ``<conv>.offset.{weight,bias}`` ->
``<layer>.offset.{kernel,bias}`` and ``<conv>.conv.{weight,bias}`` ->
``<layer>.{kernel,bias}`` (:class:`~atss_tf.model.ModulatedDeformConv2D`).
Only modulated DCN with one deformable group (27 offset channels) exists there.

``<t>`` is ``weight``, ``bias``, ``running_mean``, ``running_var``. Anchor
buffers ``rpn.anchor_generator.*`` and BN ``num_batches_tracked`` counters are
ignored. Every other key must map, and every model weight must be assigned.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import numpy as np

from atss_tf.config import Config, from_dict, to_dict
from atss_tf.convert.torch_pickle import CheckpointError, load_state_dict
from atss_tf.data.coco_names import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from atss_tf.errors import UsageError

OFFICIAL_PIXEL_MEAN_BGR = (102.9801, 115.9465, 122.7717)
BN_TENSORS = ("weight", "bias", "running_mean", "running_var")
_IGNORED = (re.compile(r"^rpn\.anchor_generator\."), re.compile(r"\.num_batches_tracked$"))
# Deformable-conv keys of other code bases (mmdetection's conv_offset, ...).
_FOREIGN_DCN = re.compile(r"conv\d?_offset")
_STAGE_DCN = re.compile(r"backbone\.body\.layer(\d)\.(\d+)\.conv2\.offset\.weight$")
OFFSET_CONV_CHANNELS = 27  # modulated DCN, one deformable group


class ConversionError(CheckpointError):
    """The checkpoint does not fit the model; the message names the keys."""


@dataclasses.dataclass
class ConversionResult:
    """What :func:`convert_official` produced.

    Attributes:
        model: the built :class:`~atss_tf.model.ATSSDetector` holding the weights.
        config: the config it was built from (``model.detector_config`` is its model part).
        num_tensors: checkpoint tensors copied into the model.
        num_parameters: scalars copied.
        ignored: checkpoint keys deliberately skipped (anchor buffers, counters).
        output: the written ``.keras`` path, if any.
    """

    model: Any
    config: Config
    num_tensors: int
    num_parameters: int
    ignored: list[str]
    output: str | None = None


def strip_prefix(state: dict[str, np.ndarray], prefix: str = "module.") -> dict[str, np.ndarray]:
    """Remove the ``DistributedDataParallel`` prefix from every key that has it."""
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def _require(state: dict, key: str) -> np.ndarray:
    if key not in state:
        raise ConversionError(
            f"checkpoint has no {key!r}: not an official ATSS ResNet-FPN state dict"
        )
    return state[key]


def infer_config(
    state: dict[str, np.ndarray],
    base: Config | None = None,
    stride_in_1x1: bool | None = None,
) -> Config:
    """The :class:`Config` an official state dict needs.

    Args:
        state: state dict with ``module.`` stripped.
        base: config whose other settings (anchors layout, data, training,
            head regression type, GroupNorm groups, ...) are kept; default
            :class:`Config()`.
        stride_in_1x1: bottleneck stride placement; ``None``: True for groups 1
            (official R-50/101), False for ResNeXt (official X-101).

    Raises:
        ConversionError: unsupported depths, P6 on C5, an anchor count the
            base config does not match, DCN layers other than the official
            modulated ones in whole stages and the towers' last convs.
    """
    _check_deformable_keys(state)
    cfg = from_dict(to_dict(base if base is not None else Config()))
    m = cfg.model

    layer3 = {m_.group(1) for k in state if (m_ := re.match(r"backbone\.body\.layer3\.(\d+)\.", k))}
    depth = {6: 50, 23: 101}.get(len(layer3))
    if depth is None:
        raise ConversionError(
            f"backbone.body.layer3 has {len(layer3)} blocks: only ResNet-50 (6) and "
            "ResNet-101 (23) official checkpoints are supported"
        )
    if "backbone.body.layer1.0.conv3.weight" not in state:
        raise ConversionError(
            "backbone.body.layer1.0.conv3.weight missing: not a bottleneck ResNet"
        )
    conv2 = state.get("backbone.body.layer1.0.conv2.conv.weight")  # a DCN in c2
    if conv2 is None:
        conv2 = _require(state, "backbone.body.layer1.0.conv2.weight")
    width, per_group = int(conv2.shape[0]), int(conv2.shape[1])
    groups = width // per_group
    m.backbone.depth = depth
    m.backbone.groups = groups
    m.backbone.width_per_group = width // groups
    m.backbone.width_multiplier = 1.0
    m.backbone.stride_in_1x1 = (groups == 1) if stride_in_1x1 is None else bool(stride_in_1x1)
    m.backbone.weights = None
    m.backbone.dcn_stages = _dcn_stages(state)

    fpn_channels = int(_require(state, "backbone.fpn.fpn_inner2.weight").shape[0])
    p6_in = int(_require(state, "backbone.fpn.top_blocks.p6.weight").shape[1])
    if p6_in != fpn_channels:
        raise ConversionError(
            f"backbone.fpn.top_blocks.p6 takes {p6_in} channels: P6 computed from C5 "
            "(RETINANET.USE_C5) is not supported, only P6 from P5"
        )
    m.fpn.channels = fpn_channels
    m.fpn.p7_from_relu = True

    # The box tower is built alike; a checkpoint whose towers differ fails the
    # weight copy, naming the keys.
    convs, norms, deformable = _tower_layout(state, "cls_tower")
    m.head.num_convs = len(convs)
    m.head.use_group_norm = bool(norms)
    m.head.dcn = bool(deformable)
    m.head.channels = (
        int(state[_tower_conv_key("cls_tower", convs[0], deformable and len(convs) == 1)].shape[0])
        if convs
        else fpn_channels
    )

    num_anchors = int(_require(state, "rpn.head.bbox_pred.bias").shape[0]) // 4
    if num_anchors != m.anchors.anchors_per_location:
        if num_anchors == 9 and m.anchors.anchors_per_location == 1:
            # The paper's #A = 9 setting (Table 7): 3 scales x 3 ratios, sizes 32..512.
            m.anchors.octave_base_scale = 4.0
            m.anchors.scales_per_octave = 3
            m.anchors.aspect_ratios = (0.5, 1.0, 2.0)
        else:
            raise ConversionError(
                f"checkpoint predicts {num_anchors} anchors per location, the base config "
                f"{m.anchors.anchors_per_location}: set model.anchors in the base config"
            )
    m.num_classes = int(_require(state, "rpn.head.cls_logits.bias").shape[0]) // num_anchors
    if m.num_classes == len(COCO_CLASS_NAMES):  # the official zoo is trained on COCO
        if len(m.class_names) != m.num_classes:
            m.class_names = COCO_CLASS_NAMES
        if len(m.category_ids) != m.num_classes:
            m.category_ids = COCO_CATEGORY_IDS

    m.input_bgr = True
    m.pixel_mean = OFFICIAL_PIXEL_MEAN_BGR
    m.pixel_std = (1.0, 1.0, 1.0)
    cfg.set_official_compat(True)
    cfg.postprocess.score_mode = "sqrt"
    return cfg


def _check_deformable_keys(state: dict[str, np.ndarray]) -> None:
    """Refuse deformable convs the model does not have: other code bases' key
    names, DCNv1 or several deformable groups (not 27 offset channels)."""
    foreign = sorted(k for k in state if _FOREIGN_DCN.search(k))
    if foreign:
        raise ConversionError(
            "deformable convolution keys of another code base (not sfzhang15/ATSS's "
            "'<conv>.offset.weight'): "
            + ", ".join(foreign[:6])
            + (", ..." if len(foreign) > 6 else "")
        )
    for key in sorted(k for k in state if k.endswith(".offset.weight")):
        channels = int(state[key].shape[0])
        if channels != OFFSET_CONV_CHANNELS:
            raise ConversionError(
                f"{key} has {channels} output channels: only modulated deformable convs "
                f"(DCNv2) with one deformable group ({OFFSET_CONV_CHANNELS}) are supported"
            )


def _dcn_stages(state: dict[str, np.ndarray]) -> tuple[str, ...]:
    """The stages (``c2`` .. ``c5``) whose every bottleneck has a deformable conv2."""
    with_dcn: dict[int, set[int]] = {}
    for key in state:
        if m_ := _STAGE_DCN.match(key):
            with_dcn.setdefault(int(m_.group(1)), set()).add(int(m_.group(2)))
    stages = []
    for s, blocks in sorted(with_dcn.items()):
        prefix = f"backbone.body.layer{s}."
        every = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
        if blocks != every:
            raise ConversionError(
                f"backbone.body.layer{s} has deformable conv2 in blocks {sorted(blocks)} "
                f"of {sorted(every)}: only whole DCN stages (official "
                "STAGE_WITH_DCN) are supported"
            )
        stages.append(f"c{s + 1}")
    return tuple(stages)


def _tower_conv_key(tower: str, index: int, deformable: bool) -> str:
    return f"rpn.head.{tower}.{index}.{'conv.weight' if deformable else 'weight'}"


def _tower_layout(state: dict[str, np.ndarray], tower: str) -> tuple[list, list, bool]:
    """``(conv indices, GroupNorm indices, last conv deformable)`` of a head tower."""
    layers: dict[int, str] = {}
    for key, value in state.items():
        if m_ := re.fullmatch(rf"rpn\.head\.{tower}\.(\d+)\.(weight|conv\.weight)", key):
            kind = (
                "dcn" if m_.group(2) == "conv.weight" else ("conv" if value.ndim == 4 else "norm")
            )
            layers[int(m_.group(1))] = kind
    convs = sorted(i for i, kind in layers.items() if kind != "norm")
    norms = sorted(i for i, kind in layers.items() if kind == "norm")
    dcn = [i for i in convs if layers[i] == "dcn"]
    if dcn and dcn != convs[-1:]:
        raise ConversionError(
            f"rpn.head.{tower} has deformable convs at {dcn}: only its last conv may be "
            "one (official USE_DCN_IN_TOWER)"
        )
    return convs, norms, bool(dcn)


def _conv_kernel(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, (2, 3, 1, 0))  # OIHW -> HWIO


def _ident(x: np.ndarray) -> np.ndarray:
    return x


def _map_conv(out: dict, key: str, layer) -> None:
    """``<key>.weight`` / ``.bias`` (a DCN: ``.offset.*`` and ``.conv.*``) of ``layer``."""
    from atss_tf.model import ModulatedDeformConv2D

    if isinstance(layer, ModulatedDeformConv2D):
        _map_conv(out, f"{key}.offset", layer.offset)
        key = f"{key}.conv"
    out[f"{key}.weight"] = (layer.kernel, _conv_kernel)
    if layer.bias is not None:
        out[f"{key}.bias"] = (layer.bias, _ident)


def backbone_weight_map(backbone, prefix: str = "backbone.body.") -> dict[str, tuple[Any, Any]]:
    """``{key: (Keras variable, transform)}`` for every weight of a
    :class:`~atss_tf.model.ResNetBackbone` under the official names
    (``<prefix>stem.conv1.weight``, ``<prefix>layer{s}.{i}.bn{j}.running_var``, ...)."""
    out: dict[str, tuple[Any, Any]] = {}

    def bn(key, layer):
        for t in BN_TENSORS:
            out[f"{key}.{t}"] = (getattr(layer, t), _ident)

    _map_conv(out, f"{prefix}stem.conv1", backbone.stem_conv1)
    bn(f"{prefix}stem.bn1", backbone.stem_bn1)
    for s, blocks in enumerate(backbone.stages, start=1):
        for i, block in enumerate(blocks):
            key = f"{prefix}layer{s}.{i}"
            for j in (1, 2, 3):
                if hasattr(block, f"conv{j}"):
                    _map_conv(out, f"{key}.conv{j}", getattr(block, f"conv{j}"))
                    bn(f"{key}.bn{j}", getattr(block, f"bn{j}"))
            if block.downsample_conv is not None:
                _map_conv(out, f"{key}.downsample.0", block.downsample_conv)
                bn(f"{key}.downsample.1", block.downsample_bn)
    return out


def official_weight_map(model) -> dict[str, tuple[Any, Any]]:
    """``{official key: (Keras variable, transform)}`` for every model weight.

    ``transform`` maps the checkpoint array to the variable's layout.
    """
    out = backbone_weight_map(model.backbone)
    ident = _ident

    def conv(key, layer):
        _map_conv(out, key, layer)

    fpn = model.fpn
    for k in (2, 3, 4):
        conv(f"backbone.fpn.fpn_inner{k}", getattr(fpn, f"fpn_inner{k}"))
        conv(f"backbone.fpn.fpn_layer{k}", getattr(fpn, f"fpn_layer{k}"))
    conv("backbone.fpn.top_blocks.p6", fpn.p6)
    conv("backbone.fpn.top_blocks.p7", fpn.p7)

    head = model.head
    step = 3 if head.use_group_norm else 2  # conv, [GroupNorm], ReLU
    for tower, convs, norms in (
        ("cls_tower", head.cls_tower_convs, head.cls_tower_norms),
        ("bbox_tower", head.bbox_tower_convs, head.bbox_tower_norms),
    ):
        for i, layer in enumerate(convs):
            conv(f"rpn.head.{tower}.{step * i}", layer)
        for i, norm in enumerate(norms):
            out[f"rpn.head.{tower}.{step * i + 1}.weight"] = (norm.gamma, ident)
            out[f"rpn.head.{tower}.{step * i + 1}.bias"] = (norm.beta, ident)
    for name in ("cls_logits", "bbox_pred", "centerness"):
        if getattr(head, name) is not None:  # no centerness branch: model.head.centerness off
            conv(f"rpn.head.{name}", getattr(head, name))
    for level, scale in enumerate(head.scales):
        out[f"rpn.head.scales.{level}.scale"] = (scale.scale, lambda x: np.reshape(x, ()))
    return out


def load_official_weights(model, state: dict[str, np.ndarray]) -> tuple[int, int, list[str]]:
    """Copy an official state dict (``module.`` stripped) into a built model.

    Returns:
        ``(tensors copied, parameters copied, ignored keys)``.

    Raises:
        ConversionError: listing every missing, unexpected and mis-shaped key;
            nothing is assigned in that case.
    """
    ignored = [k for k in state if any(p.search(k) for p in _IGNORED)]
    tensors, params = assign_weights(official_weight_map(model), state, ignored, model.weights)
    return tensors, params, ignored


def assign_weights(
    mapping: dict[str, tuple[Any, Any]],
    state: dict[str, np.ndarray],
    ignored: list[str],
    weights: list,
    what: str = "checkpoint",
) -> tuple[int, int]:
    """Assign ``state[key]`` (through its transform) to each variable of ``mapping``.

    Args:
        mapping: ``{key: (variable, transform)}`` covering every one of ``weights``.
        state: the file's arrays by key.
        ignored: keys of ``state`` deliberately skipped.
        weights: the variables that must all be mapped.
        what: the file's kind, as error messages name it.

    Returns:
        ``(tensors copied, parameters copied)``.

    Raises:
        ConversionError: listing every missing, unexpected and mis-shaped key;
            nothing is assigned in that case.
    """
    mapped_ids = {id(v) for v, _ in mapping.values()}
    unmapped = [w.path for w in weights if id(w) not in mapped_ids]
    if unmapped:  # a model layer the mapping does not know: a bug, not a user error
        raise ConversionError(f"model weights without a {what} key: {', '.join(unmapped)}")
    skip = set(ignored)
    used = {k: v for k, v in state.items() if k not in skip}
    missing = [k for k in mapping if k not in used]
    unexpected = [k for k in used if k not in mapping]
    misshaped, values = [], []
    for key, (var, transform) in mapping.items():
        if key not in used:
            continue
        value = transform(np.asarray(used[key], dtype=np.float32))
        if tuple(value.shape) != tuple(var.shape):
            misshaped.append(
                f"{key} {tuple(used[key].shape)} (model expects {tuple(var.shape)} after "
                "layout conversion)"
            )
        else:
            values.append((var, value))
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped keys ({len(misshaped)}): {'; '.join(misshaped)}")
    if problems:
        raise ConversionError(f"{what} does not match the model: " + " | ".join(problems))
    for var, value in values:
        var.assign(value)
    return len(values), int(sum(v.size for _, v in values))


def convert_official(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike | None = None,
    base_config: Config | None = None,
    stride_in_1x1: bool | None = None,
    progress: bool = False,
) -> ConversionResult:
    """Read an official ATSS checkpoint, build the matching model, copy the weights.

    With ``progress``, a progress bar counts the four phases (read, build,
    copy, write).

    Args:
        checkpoint: ``torch.save`` file (``{"model": state_dict}`` or a bare
            state dict), read without torch and without running pickled code.
        output: write the model here as ``.keras`` (loadable with
            ``keras.saving.load_model``); ``None``: do not write.
        base_config: settings to keep that the checkpoint does not determine.
        stride_in_1x1: see :func:`infer_config`.

    Returns:
        A :class:`ConversionResult`.

    Raises:
        FileNotFoundError, UsageError (output name), CheckpointError (incl.
        UnsafeCheckpointError; a full disk while writing), ConversionError.
    """
    from atss_tf.model import build_detector

    if output is not None and not os.fspath(output).endswith(".keras"):
        raise UsageError(f"output {os.fspath(output)!r} must end with .keras")
    bar = None
    if progress:
        from atss_tf.progress import progress_bar

        bar = progress_bar(4, f"Converting {os.fspath(checkpoint)}", "phase")
    state = strip_prefix(load_state_dict(checkpoint))
    if bar is not None:
        bar.update(1)
    cfg = infer_config(state, base_config, stride_in_1x1)
    model = build_detector(cfg)
    if bar is not None:
        bar.update(2)
    tensors, params, ignored = load_official_weights(model, state)
    result = ConversionResult(model, cfg, tensors, params, ignored)
    if bar is not None:
        bar.update(3)
    if output is not None:
        output = os.fspath(output)
        parent = os.path.dirname(os.path.abspath(output))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"output directory does not exist: {parent}")
        from atss_tf.training.callbacks import save_model_file

        save_model_file(model, output)
        result.output = output
    if bar is not None:
        bar.update(4, finalize=True)
    return result

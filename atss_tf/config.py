"""Configuration: nested dataclasses, loaded from YAML, with dotted overrides.

Every setting of the detector lives here, with the official ATSS R-50 defaults.
A YAML file mirrors the dataclass tree; unknown keys are errors that name the
key (``model.head.num_conv``), and ``--set model.head.num_convs=2`` style
overrides are parsed as YAML scalars and type-checked the same way.

The ``official_compat`` switch (ATSS_SPEC §0) groups the places where the
authors' inclusive-pixel code differs from clean continuous geometry. Each can
also be set on its own; ``None`` means "follow ``official_compat``" and is
made concrete once, when the :class:`Config` is built (``Config(...)``,
:func:`from_dict`, :func:`load_config`). Everything downstream reads concrete
values from its own section: anchors from ``model.anchors``, the selectors
from ``assigner``, the losses from ``loss``, post-processing from
``postprocess``, and box coding from ``model``.

:class:`DetectorConfig` is the part a saved model carries (network, anchors,
normalisation, box geometry, post-processing, class names, test-time input
size): no data paths and no schedule.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from atss_tf import files
from atss_tf.errors import ConfigError

ANCHOR_ALIGNMENTS = ("center", "official", "mmdet")
ASSIGNERS = ("atss", "atss_dense", "iou", "fcos", "fcos_center", "topk")
REGRESSIONS = ("box", "point")
BOX_LOSSES = ("giou", "smooth_l1")  # loss.box_loss
IMAGE_CHECKS = ("none", "quick", "full")  # atss_tf.data.image_files
BAD_IMAGE_POLICIES = ("skip", "error")
# Pillow's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS): about 1/4 GiB of RGB.
DEFAULT_MAX_PIXELS = 89_478_485
# What a served SavedModel takes as its "inputs" (atss_tf.export).
SERVING_INPUT_TYPES = ("image_bytes", "image_tensor", "tf_example")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")  # train.precision
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")  # train.strategy


@dataclass
class AnchorConfig:
    """Anchor grid. One square anchor of side ``octave_base_scale * stride`` per
    location by default (#A = 1); ``scales_per_octave=3`` with
    ``aspect_ratios=(0.5, 1, 2)`` and ``octave_base_scale=4`` gives the paper's
    #A = 9 (Table 7). Aspect ratio is h / w."""

    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    octave_base_scale: float = 8.0
    scales_per_octave: int = 1
    aspect_ratios: tuple[float, ...] = (1.0,)
    # Anchor center of cell j on a level of stride s:
    #   "center": j*s + s/2 (geometric), "official": j*s + s/2 + 0.5 (authors' code),
    #   "mmdet": j*s.  None: "official" if official_compat else "center".
    alignment: str | None = None
    # The authors' rounded anchor sides for #A = 9 (atss_tf.anchors.anchor_shapes).
    # None: follow official_compat.
    official_shapes: bool | None = None

    @property
    def anchors_per_location(self) -> int:
        return self.scales_per_octave * len(self.aspect_ratios)


@dataclass
class AssignerConfig:
    """Sample selection (ATSS_SPEC §3)."""

    type: str = "atss"  # atss | atss_dense (same positives, Algorithm 1 dense) | iou | fcos | fcos_center | topk
    topk: int = 9  # ATSS k (per level) and TOPK's k
    # Paper Table 1 "In GT Box": a positive's anchor centre must lie inside its
    # GT (official, all selectors). Off: ATSS / TOPK keep candidates whose
    # centre is outside, and IoU matching keeps such positives instead of
    # ignoring them. FCOS selectors are defined by points inside the box.
    center_in_box: bool = True
    # Anchor center must satisfy min(l, t, r, b) > center_margin to count as
    # inside a box. None: 0.51 if official_compat else 0.01.
    center_margin: float | None = None
    positive_iou: float = 0.5  # iou (RetinaNet) matcher
    negative_iou: float = 0.4
    low_quality_matches: bool = True
    # fcos: per-level ranges of max(l, t, r, b); -1 / inf as in FCOS.
    fcos_ranges: tuple[tuple[float, float], ...] = (
        (-1.0, 64.0),
        (64.0, 128.0),
        (128.0, 256.0),
        (256.0, 512.0),
        (512.0, float("inf")),
    )
    center_radius: float = 1.5  # fcos_center: radius in strides
    # ATSS: give a GT with no positive its best-IoU candidate (off: official).
    fallback_best_candidate: bool = False

    @property
    def inside_margin(self) -> float:
        """The margin selectors test anchor centres against: ``center_margin``,
        or ``-inf`` (every centre counts as inside) with ``center_in_box`` off."""
        return self.center_margin if self.center_in_box else -math.inf


@dataclass
class BackboneConfig:
    """ResNet backbone (ATSS_SPEC §6)."""

    depth: int = 50  # 18 | 34 | 50 | 101
    # True: stride on the first 1x1 of a bottleneck (MSRA/caffe, official R-50/101,
    # keras.applications); False: on the 3x3 (torchvision/mmdet, official X-101).
    stride_in_1x1: bool = True
    groups: int = 1  # ResNeXt cardinality (32 for X-101 32x8d)
    width_per_group: int = 64  # 8 for X-101 32x8d, 4 for 64x4d
    width_multiplier: float = 1.0  # shrink every stage (tiny models for tests/demo)
    freeze_at: int = 2  # 0: nothing frozen, 1: stem, 2: stem + stage 1
    # frozen_bn: fixed affine (pretrained backbones, official); batch_norm:
    # trainable BN for training a backbone from scratch (the synthetic demo).
    norm: str = "frozen_bn"
    weights: str | None = None  # None | "imagenet" (keras.applications, caffe mode)


@dataclass
class FPNConfig:
    channels: int = 256
    p7_from_relu: bool = True  # official: P7 = conv(ReLU(P6)); mmdetection: no ReLU


@dataclass
class HeadConfig:
    num_convs: int = 4
    channels: int = 256
    use_group_norm: bool = True
    group_norm_groups: int = 32
    prior_prob: float = 0.01
    regression: str = "box"  # box | point
    # Paper Table 1 switches (official: both on). centerness off: no centerness
    # branch, no centerness loss, the box loss averaged over positives instead
    # of weighted by centerness targets, and a detection scores its class
    # probability. learnable_scales off: no per-level scalar on the box output.
    centerness: bool = True
    learnable_scales: bool = True


@dataclass
class ModelConfig:
    num_classes: int = 80
    # Names of labels 1..num_classes (for pictures and json); empty: "class <k>".
    class_names: tuple[str, ...] = ()
    # The dataset's category id of each label 1..num_classes (COCO: 1..90 with
    # gaps), what detections are reported as (json, SavedModel); empty: the
    # label itself. Training fills both from the training data when empty.
    category_ids: tuple[int, ...] = ()
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    # Images enter the model as RGB 0-255; normalisation happens inside it:
    # x = (maybe_bgr(image) - pixel_mean) / pixel_std, in the channel order named
    # by input_bgr. Defaults: the official model (BGR, caffe mean, std 1).
    input_bgr: bool = True
    pixel_mean: tuple[float, float, float] = (102.9801, 115.9465, 122.7717)
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    # Inclusive-pixel box geometry like the authors' code (ATSS_SPEC §0.3): POINT
    # distances, GIoU areas and centerness measured on inclusive boxes, and the
    # authors' clamp of decoded boxes. None: follow official_compat.
    inclusive_geometry: bool | None = None


@dataclass
class LossConfig:
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    # giou: GIoU between decoded boxes (official ATSS). smooth_l1: on the coder
    # deltas ((10, 10, 5, 5)-weighted for box regression), the RetinaNet
    # baseline of paper Table 1 (maskrcnn-benchmark: beta 0.11, mean over the
    # four deltas; use reg_loss_weight 1 for its scale).
    box_loss: str = "giou"
    smooth_l1_beta: float = 0.11
    reg_loss_weight: float = 2.0


@dataclass
class PostprocessConfig:
    score_threshold: float = 0.05
    pre_nms_topk: int = 1000  # per level
    nms_iou: float = 0.6
    max_detections: int = 100
    score_mode: str = "sqrt"  # sqrt: sqrt(cls * ctr) (official) | product (mmdetection)


@dataclass
class DataConfig:
    """Input pipeline (filled in by the training issue; defaults are COCO's)."""

    train_annotations: str | None = None
    train_images: str | None = None
    val_annotations: str | None = None
    val_images: str | None = None
    train_tfrecords: str | None = None  # glob of sharded TFRecords
    val_tfrecords: str | None = None
    min_size: tuple[int, ...] = (800,)  # shorter side; several values: multi-scale
    max_size: int = 1333
    # Static canvases (h, w), multiples of 32; an image goes to the smallest
    # canvas of its orientation that holds it after resizing.
    canvases: tuple[tuple[int, int], ...] = ((896, 1344), (1344, 896))
    max_instances: int = 100
    # Image files are checked before training or evaluation starts: "quick"
    # (header, size, truncation; ~0.1 ms a file), "full" (decode every pixel,
    # ~5 ms a file) or "none"; a bad file is skipped and named in the log
    # (bad_images: skip) or stops the run before it starts (bad_images: error).
    image_check: str = "quick"
    bad_images: str = "skip"
    # Images above this many pixels are refused before decoding; 0: no limit.
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    flip_prob: float = 0.5
    crowd: str = "drop"  # drop | ignore
    batch_size: int = 16  # global batch
    shuffle_buffer: int = 1000
    num_parallel_calls: int = -1  # -1: tf.data.AUTOTUNE


@dataclass
class TrainConfig:
    base_lr: float = 0.01  # at batch 16; scaled linearly with data.batch_size
    momentum: float = 0.9
    weight_decay: float = 1e-4  # coupled (PyTorch style), not on biases/norms
    bias_lr_factor: float = 2.0
    warmup_iters: int = 500
    warmup_factor: float = 1.0 / 3.0
    max_iters: int = 90000
    lr_steps: tuple[int, ...] = (60000, 80000)
    lr_gamma: float = 0.1
    # Keras epoch length; a checkpoint (model + optimizer) is written at every epoch end.
    steps_per_epoch: int = 1000
    eval_every_epochs: int = 0  # 0: only at the end
    strategy: str = "default"  # default | mirrored | multi_worker | tpu (training/strategy.py)
    # float32 | mixed_float16 (GPUs; with loss scaling) | mixed_bfloat16 (TPUs,
    # CPUs with AVX-512 BF16): the network computes in 16 bits, its variables,
    # the input normalisation, losses, targets and post-processing stay float32.
    precision: str = "float32"
    # XLA for the train step: true | false | auto (XLA where the replicas are
    # GPUs, not on CPUs, where the XLA step measured slower; TPUs compile every
    # step whatever this says). training/strategy.py resolve_jit_compile.
    jit_compile: bool | str = "auto"
    # Split each step's batch (data.batch_size, the batch the schedule is for)
    # into this many equal chunks, run one after the other with their gradients
    # summed: the memory of a chunk, the update of the whole batch.
    accumulate_steps: int = 1
    # Batches per Keras train_function call (fewer Python round trips per step).
    steps_per_execution: int = 1
    seed: int = 0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    assigner: AssignerConfig = field(default_factory=AssignerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Reproduce the authors' numbers exactly (ATSS_SPEC §0): official anchor
    # alignment and shapes, center margin 0.51, inclusive loss geometry.
    # Settings left None follow this switch; they are filled in when the
    # Config is built, so set it there (Config(official_compat=True), YAML,
    # --set official_compat=true), not by assignment afterwards.
    official_compat: bool = False

    def __post_init__(self) -> None:
        self._fill_compat(overwrite=False)

    def _fill_compat(self, overwrite: bool) -> None:
        compat = self.official_compat
        anchors, model, assigner = self.model.anchors, self.model, self.assigner
        if overwrite or anchors.alignment is None:
            anchors.alignment = "official" if compat else "center"
        if overwrite or anchors.official_shapes is None:
            anchors.official_shapes = compat
        if overwrite or model.inclusive_geometry is None:
            model.inclusive_geometry = compat
        if overwrite or assigner.center_margin is None:
            assigner.center_margin = 0.51 if compat else 0.01

    def set_official_compat(self, on: bool) -> None:
        """Set ``official_compat`` and every setting it groups (overwriting them)."""
        self.official_compat = bool(on)
        self._fill_compat(overwrite=True)

    def detector_config(self) -> DetectorConfig:
        """The part of this config a saved detector carries (a copy)."""
        return DetectorConfig(
            model=_copy(self.model),
            postprocess=_copy(self.postprocess),
            test_size=max(self.data.min_size),
            max_size=self.data.max_size,
            canvases=self.data.canvases,
        )


@dataclass
class DetectorConfig:
    """What defines a detector and its outputs: what a ``.keras`` file holds.

    ``model`` (architecture, anchors, normalisation, box geometry, class
    names) and ``postprocess`` come from the training config's sections of the
    same names; ``test_size`` (shorter side), ``max_size`` and ``canvases``
    are the test-time input geometry (``data.min_size``'s largest value,
    ``data.max_size``, ``data.canvases``). Every compat setting is concrete.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    test_size: int = 800
    max_size: int = 1333
    canvases: tuple[tuple[int, int], ...] = ((896, 1344), (1344, 896))


def _copy(section: Any) -> Any:
    return _build(type(section), to_dict(section))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def validate(cfg: Config) -> None:
    """Check every value of a config.

    Raises:
        ConfigError: listing each invalid ``key=value`` with what is expected,
            on one line.
    """
    problems: list[str] = []

    def check(ok: bool, key: str, value: Any, expected: str) -> None:
        if not ok:
            problems.append(f"{key}={value!r} (expected {expected})")

    a = cfg.model.anchors
    check(
        a.alignment in ANCHOR_ALIGNMENTS,
        "model.anchors.alignment",
        a.alignment,
        f"one of {ANCHOR_ALIGNMENTS}",
    )
    check(
        len(a.strides) > 0 and all(s > 0 for s in a.strides),
        "model.anchors.strides",
        a.strides,
        "positive strides",
    )
    check(a.scales_per_octave >= 1, "model.anchors.scales_per_octave", a.scales_per_octave, ">= 1")
    check(
        len(a.aspect_ratios) >= 1 and all(r > 0 for r in a.aspect_ratios),
        "model.anchors.aspect_ratios",
        a.aspect_ratios,
        "positive ratios",
    )
    check(a.octave_base_scale > 0, "model.anchors.octave_base_scale", a.octave_base_scale, "> 0")
    check(cfg.assigner.type in ASSIGNERS, "assigner.type", cfg.assigner.type, f"one of {ASSIGNERS}")
    check(cfg.assigner.topk >= 1, "assigner.topk", cfg.assigner.topk, ">= 1")
    head = cfg.model.head
    check(
        head.regression in REGRESSIONS,
        "model.head.regression",
        head.regression,
        f"one of {REGRESSIONS}",
    )
    check(head.num_convs >= 0, "model.head.num_convs", head.num_convs, ">= 0")
    check(head.channels >= 1, "model.head.channels", head.channels, ">= 1")
    check(0 < head.prior_prob < 1, "model.head.prior_prob", head.prior_prob, "in (0, 1)")
    if head.use_group_norm:
        check(
            head.group_norm_groups >= 1 and head.channels % head.group_norm_groups == 0,
            "model.head.group_norm_groups",
            head.group_norm_groups,
            f"a divisor of model.head.channels={head.channels}",
        )
    if head.regression == "point" or cfg.assigner.type in ("fcos", "fcos_center"):
        check(
            a.anchors_per_location == 1,
            "model.anchors.scales_per_octave/aspect_ratios",
            (a.scales_per_octave, a.aspect_ratios),
            "one anchor per location for point regression and FCOS assigners",
        )
    if not cfg.assigner.center_in_box:
        check(
            cfg.assigner.type not in ("fcos", "fcos_center"),
            "assigner.center_in_box",
            False,
            f"true with assigner.type={cfg.assigner.type} (FCOS selects points inside the box)",
        )
        check(
            head.regression == "box",
            "assigner.center_in_box",
            False,
            "true with point regression (distances to the sides of a box whose centre "
            "is outside would be negative)",
        )
    if cfg.assigner.type in ("fcos", "fcos_center"):
        check(
            len(cfg.assigner.fcos_ranges) == len(a.strides),
            "assigner.fcos_ranges",
            cfg.assigner.fcos_ranges,
            "one (low, high) range per pyramid level",
        )
    check(
        cfg.model.backbone.depth in (18, 34, 50, 101),
        "model.backbone.depth",
        cfg.model.backbone.depth,
        "18, 34, 50 or 101",
    )
    check(
        cfg.model.backbone.weights in (None, "imagenet"),
        "model.backbone.weights",
        cfg.model.backbone.weights,
        "null or 'imagenet'",
    )
    check(cfg.model.fpn.channels >= 1, "model.fpn.channels", cfg.model.fpn.channels, ">= 1")
    check(cfg.model.num_classes >= 1, "model.num_classes", cfg.model.num_classes, ">= 1")
    check(
        len(cfg.model.class_names) in (0, cfg.model.num_classes),
        "model.class_names",
        cfg.model.class_names,
        f"empty or {cfg.model.num_classes} names (model.num_classes)",
    )
    ids = cfg.model.category_ids
    check(
        len(ids) in (0, cfg.model.num_classes)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in ids)
        and len(set(ids)) == len(ids),
        "model.category_ids",
        ids,
        f"empty or {cfg.model.num_classes} distinct integers >= 1 (model.num_classes)",
    )
    check(
        all(_finite(v) and v > 0 for v in cfg.model.pixel_std),
        "model.pixel_std",
        cfg.model.pixel_std,
        "positive values",
    )
    loss = cfg.loss
    check(0 <= loss.focal_alpha <= 1, "loss.focal_alpha", loss.focal_alpha, "in [0, 1]")
    check(
        _finite(loss.focal_gamma) and loss.focal_gamma >= 0,
        "loss.focal_gamma",
        loss.focal_gamma,
        ">= 0",
    )
    check(loss.box_loss in BOX_LOSSES, "loss.box_loss", loss.box_loss, " | ".join(BOX_LOSSES))
    check(
        _finite(loss.smooth_l1_beta) and loss.smooth_l1_beta >= 0,
        "loss.smooth_l1_beta",
        loss.smooth_l1_beta,
        ">= 0",
    )
    check(
        _finite(loss.reg_loss_weight) and loss.reg_loss_weight >= 0,
        "loss.reg_loss_weight",
        loss.reg_loss_weight,
        ">= 0",
    )
    post = cfg.postprocess
    check(
        post.score_mode in ("sqrt", "product"),
        "postprocess.score_mode",
        post.score_mode,
        "'sqrt' or 'product'",
    )
    check(0 < post.nms_iou <= 1, "postprocess.nms_iou", post.nms_iou, "in (0, 1]")
    check(
        0 <= post.score_threshold < 1,
        "postprocess.score_threshold",
        post.score_threshold,
        "in [0, 1)",
    )
    check(post.pre_nms_topk >= 1, "postprocess.pre_nms_topk", post.pre_nms_topk, ">= 1")
    check(post.max_detections >= 1, "postprocess.max_detections", post.max_detections, ">= 1")
    data = cfg.data
    check(data.crowd in ("drop", "ignore"), "data.crowd", data.crowd, "'drop' or 'ignore'")
    check(data.max_instances >= 1, "data.max_instances", data.max_instances, ">= 1")
    check(data.batch_size >= 1, "data.batch_size", data.batch_size, ">= 1")
    check(
        len(data.min_size) >= 1 and all(s >= 1 for s in data.min_size),
        "data.min_size",
        data.min_size,
        "one or more positive sizes",
    )
    check(
        data.max_size >= max(data.min_size, default=0) and data.max_size >= 1,
        "data.max_size",
        data.max_size,
        f">= the largest data.min_size ({max(data.min_size, default=0)})",
    )
    check(
        len(data.canvases) >= 1
        and all(h > 0 and w > 0 and h % 32 == 0 and w % 32 == 0 for h, w in data.canvases),
        "data.canvases",
        data.canvases,
        "one or more (height, width) pairs, positive multiples of 32",
    )
    check(0 <= data.flip_prob <= 1, "data.flip_prob", data.flip_prob, "in [0, 1]")
    check(data.shuffle_buffer >= 0, "data.shuffle_buffer", data.shuffle_buffer, ">= 0")
    check(
        data.num_parallel_calls >= 1 or data.num_parallel_calls == -1,
        "data.num_parallel_calls",
        data.num_parallel_calls,
        ">= 1, or -1 for tf.data.AUTOTUNE",
    )
    check(
        data.image_check in IMAGE_CHECKS,
        "data.image_check",
        data.image_check,
        f"one of {IMAGE_CHECKS}",
    )
    check(
        data.bad_images in BAD_IMAGE_POLICIES,
        "data.bad_images",
        data.bad_images,
        f"one of {BAD_IMAGE_POLICIES}",
    )
    check(
        data.max_image_pixels >= 0,
        "data.max_image_pixels",
        data.max_image_pixels,
        ">= 0 (0: no limit)",
    )
    t = cfg.train
    check(_finite(t.base_lr) and t.base_lr > 0, "train.base_lr", t.base_lr, "> 0")
    check(0 <= t.momentum < 1, "train.momentum", t.momentum, "in [0, 1)")
    check(
        _finite(t.weight_decay) and t.weight_decay >= 0,
        "train.weight_decay",
        t.weight_decay,
        ">= 0",
    )
    check(t.max_iters >= 1, "train.max_iters", t.max_iters, ">= 1")
    check(t.steps_per_epoch >= 1, "train.steps_per_epoch", t.steps_per_epoch, ">= 1")
    check(t.warmup_iters >= 0, "train.warmup_iters", t.warmup_iters, ">= 0")
    check(0 < t.warmup_factor <= 1, "train.warmup_factor", t.warmup_factor, "in (0, 1]")
    check(
        all(s >= 1 for s in t.lr_steps) and all(b > a for a, b in zip(t.lr_steps, t.lr_steps[1:])),
        "train.lr_steps",
        t.lr_steps,
        "strictly increasing positive steps",
    )
    check(_finite(t.lr_gamma) and t.lr_gamma > 0, "train.lr_gamma", t.lr_gamma, "> 0")
    check(t.eval_every_epochs >= 0, "train.eval_every_epochs", t.eval_every_epochs, ">= 0")
    check(t.precision in PRECISIONS, "train.precision", t.precision, " | ".join(PRECISIONS))
    check(
        t.accumulate_steps >= 1 and cfg.data.batch_size % t.accumulate_steps == 0,
        "train.accumulate_steps",
        t.accumulate_steps,
        f">= 1 and a divisor of data.batch_size ({cfg.data.batch_size})",
    )
    check(
        isinstance(t.jit_compile, bool) or t.jit_compile == "auto",
        "train.jit_compile",
        t.jit_compile,
        "true | false | auto",
    )
    check(t.steps_per_execution >= 1, "train.steps_per_execution", t.steps_per_execution, ">= 1")
    check(t.strategy in STRATEGIES, "train.strategy", t.strategy, " | ".join(STRATEGIES))
    if problems:
        n = len(problems)
        raise ConfigError(
            (f"{n} invalid config values: " if n > 1 else "invalid config value ")
            + "; ".join(problems)
        )


# --------------------------------------------------------------------------- #
# dict <-> dataclass conversion with strict keys and types
# --------------------------------------------------------------------------- #


def to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain dicts/lists (YAML- and JSON-safe)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type ``tp`` or raise naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for a in non_none:
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"config key {key!r} needs {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        try:
            return float(value)  # accepts "inf"
        except ValueError:
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}") from None
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        return value
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(f"unknown config key {key!r} (valid: {', '.join(sorted(names))})")
        kwargs[k] = _coerce(v, hints[k], key)
    return cls(**kwargs)


# Keys that moved: old dotted key -> (new dotted key, how an old value maps to a
# new one). Files written with the old key still load (the value moves, with a
# warning naming both keys).
MOVED_KEYS = {
    "loss.inclusive_geometry": ("model.inclusive_geometry", lambda v: v),
    "train.mixed_precision": (
        "train.precision",
        lambda v: "mixed_float16" if v is True else "float32" if v is False else v,
    ),
}


def _move_keys(data: dict) -> dict:
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for old, (new, convert) in MOVED_KEYS.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section = data.get(old_section)
        if isinstance(section, dict) and old_key in section:
            value = section.pop(old_key)
            target = data.setdefault(new_section, {})
            if isinstance(target, dict) and new_key not in target:
                target[new_key] = convert(value)
            logging.getLogger("atss_tf").warning(
                "config key %r is now %r; please rename it", old, new
            )
    return data


def from_dict(data: dict | None) -> Config:
    """Build a :class:`Config` from nested dicts; unknown keys raise ConfigError.
    Settings left None follow ``official_compat`` (filled in here)."""
    return _build(Config, _move_keys(data or {}))


def detector_config_from_dict(data: dict) -> DetectorConfig:
    """Build and validate a :class:`DetectorConfig`; unknown keys or invalid
    values raise ConfigError."""
    dc = _build(DetectorConfig, data)
    validate_detector_config(dc)
    return dc


def validate_detector_config(dc: DetectorConfig) -> None:
    """Check a :class:`DetectorConfig` with the rules of :func:`validate`.

    Raises:
        ConfigError: as :func:`validate`; also when a compat setting is None.
    """
    unset = [
        key
        for key, value in (
            ("model.anchors.alignment", dc.model.anchors.alignment),
            ("model.anchors.official_shapes", dc.model.anchors.official_shapes),
            ("model.inclusive_geometry", dc.model.inclusive_geometry),
        )
        if value is None
    ]
    if unset:
        raise ConfigError(
            f"{', '.join(unset)} unset in a detector config: build it with "
            "Config(...).detector_config(), which resolves official_compat"
        )
    data = DataConfig(min_size=(dc.test_size,), max_size=dc.max_size, canvases=dc.canvases)
    validate(Config(model=dc.model, postprocess=dc.postprocess, data=data))


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    cls: Any = Config
    for i, p in enumerate(parts):
        names = (
            {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        )
        if p not in names:
            raise ConfigError(f"unknown config key {'.'.join(parts[: i + 1])!r}")
        if i == len(parts) - 1:
            node[p] = value
            return
        cls = typing.get_type_hints(cls)[p]
        node = node.setdefault(p, {})


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a config dict."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from None
        _set_dotted(data, key.strip(), value)
    return data


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def _read_yaml(path: str, seen: tuple[str, ...] = ()) -> dict:
    """Read a config file (local or remote, see :mod:`atss_tf.files`); a
    top-level ``base: other.yaml`` (relative to the file) is loaded first and
    this file's keys are merged over it."""
    key = path if files.is_remote(path) else os.path.realpath(path)
    if key in seen:
        raise ConfigError(f"config file {path} includes itself through 'base'")
    try:
        with files.open_file(path) as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"malformed YAML in config file {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"config file {path}: 'base' must be a file path, got {base!r}")
    parent = _read_yaml(files.join(os.path.dirname(path), base), seen + (key,))
    return _deep_merge(parent, data)


# The configs/ folder ships inside the package as atss_tf.configs (setup.py's
# package_dir); a source checkout that was not installed has it beside atss_tf/.
_SOURCE_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def shipped_configs_dir() -> Path:
    """The folder of the configs shipped with atss-tf (``configs/`` of the repo)."""
    spec = importlib.util.find_spec("atss_tf.configs")  # a namespace package: no __init__
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location).is_dir():
            return Path(location)
    return _SOURCE_CONFIGS


def find_config(name: str | os.PathLike) -> str | Path:
    """A config file: ``name`` itself when it exists or is remote
    (``gs://...``), else the shipped config it names
    (``configs/demo_shapes.yaml``, ``demo_shapes.yaml`` or ``demo_shapes``),
    so the README's commands work from any folder and from a wheel install."""
    if files.is_remote(name):
        return os.fspath(name)
    path = Path(name)
    if path.exists():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    shipped = shipped_configs_dir().joinpath(*parts) if parts else None
    for candidate in (shipped, shipped.with_suffix(".yaml") if shipped else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return path  # load_config names it as not found


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) plus overrides.

    ``path`` is a file (local or remote), or the name of a config shipped with
    atss-tf (``configs/demo_shapes.yaml``, ``demo_shapes``; see
    :func:`find_config`), which works from any folder, a wheel install or
    Colab. A file may start from another with ``base: relative/path.yaml``.

    Raises:
        ConfigError: malformed YAML, unknown keys or invalid values; the message
            names the file and the key.
    """
    data = _read_yaml(os.fspath(find_config(path))) if path is not None else {}
    try:
        data = apply_overrides(data, overrides)
        cfg = from_dict(data)
        validate(cfg)
    except ConfigError as e:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{e}") from None
    return cfg


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: data}


def config_differences(a: Config, b: Config) -> list[tuple[str, Any, Any]]:
    """``(dotted key, value in a, value in b)`` for every setting that differs."""
    fa, fb = _flatten(to_dict(a)), _flatten(to_dict(b))
    return [(k, fa.get(k), fb.get(k)) for k in fa if fa.get(k) != fb.get(k)]


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write ``cfg`` as YAML (local or remote path)."""
    with files.open_file(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)

"""The config's dataclasses and their constants: every setting, its default and its check.

Each setting is declared with :func:`~atss_tf.config.checks.setting`, which
puts its check (:mod:`atss_tf.config.checks`) beside its default; a section
(``model.head``) is a field whose type is a dataclass.
:func:`atss_tf.config.validation.validate` walks the tree and applies every
check, so a setting added here states what it accepts or is refused by the
walker (and by ``tests/test_config.py``).

The defaults are the official ATSS R-50 setting. Settings left ``None`` follow
``official_compat`` and are made concrete when a :class:`Config` is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from atss_tf.config.checks import (
    COMPAT_SWITCH,
    PATH,
    SWITCH,
    FileSuffix,
    Free,
    Items,
    MultipleOf,
    OneOf,
    OrValue,
    Range,
    Related,
    setting,
)
from atss_tf.config.conversion import build, to_dict
from atss_tf.config.tta import TTAConfig

ANCHOR_ALIGNMENTS = ("center", "official", "mmdet")
ASSIGNERS = ("atss", "atss_dense", "iou", "fcos", "fcos_center", "topk")
FCOS_ASSIGNERS = ("fcos", "fcos_center")  # select points inside the box
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

AT_LEAST_0 = Range(ge=0)
AT_LEAST_1 = Range(ge=1)
POSITIVE = Range(gt=0)
# Settings the network itself checks when it is built.
BY_MODEL = Free("checked where the network is built, atss_tf.model")
# Static canvases (h, w): an image goes to the smallest one that holds it.
CANVASES = Items(MultipleOf(32), "(height, width) pairs", min_len=1, quantity="one or more")


@dataclass
class AnchorConfig:
    """Anchor grid. One square anchor of side ``octave_base_scale * stride`` per
    location by default (#A = 1); ``scales_per_octave=3`` with
    ``aspect_ratios=(0.5, 1, 2)`` and ``octave_base_scale=4`` gives the paper's
    #A = 9 (Table 7). Aspect ratio is h / w."""

    strides: tuple[int, ...] = setting((8, 16, 32, 64, 128), Items(POSITIVE, "strides", min_len=1))
    octave_base_scale: float = setting(8.0, POSITIVE)
    scales_per_octave: int = setting(1, AT_LEAST_1)
    aspect_ratios: tuple[float, ...] = setting((1.0,), Items(POSITIVE, "ratios", min_len=1))
    # Anchor center of cell j on a level of stride s:
    #   "center": j*s + s/2 (geometric), "official": j*s + s/2 + 0.5 (authors' code),
    #   "mmdet": j*s.  None: "official" if official_compat else "center".
    alignment: str | None = setting(None, OneOf(ANCHOR_ALIGNMENTS))
    # The authors' rounded anchor sides for #A = 9 (atss_tf.anchors.anchor_shapes).
    # None: follow official_compat.
    official_shapes: bool | None = setting(None, COMPAT_SWITCH)

    @property
    def anchors_per_location(self) -> int:
        """#A: anchors per feature-map location (scales x aspect ratios)."""
        return self.scales_per_octave * len(self.aspect_ratios)


@dataclass
class AssignerConfig:
    """Sample selection (ATSS_SPEC §3)."""

    # atss | atss_dense (same positives, Algorithm 1 dense) | iou | fcos | fcos_center | topk
    type: str = setting("atss", OneOf(ASSIGNERS))
    topk: int = setting(9, AT_LEAST_1)  # ATSS k (per level) and TOPK's k
    # Paper Table 1 "In GT Box": a positive's anchor centre must lie inside its
    # GT (official, all selectors). Off: ATSS / TOPK keep candidates whose
    # centre is outside, and IoU matching keeps such positives instead of
    # ignoring them. FCOS selectors are defined by points inside the box.
    center_in_box: bool = setting(True, Related("assigner.type, model.head.regression"))
    # Anchor center must satisfy min(l, t, r, b) > center_margin to count as
    # inside a box. None: 0.51 if official_compat else 0.01.
    center_margin: float | None = setting(None, Free("any margin in pixels; null: compat"))
    positive_iou: float = setting(0.5, Free("an IoU threshold"))  # iou (RetinaNet) matcher
    negative_iou: float = setting(0.4, Free("an IoU threshold"))
    low_quality_matches: bool = setting(True, SWITCH)
    # fcos: per-level ranges of max(l, t, r, b); -1 / inf as in FCOS.
    fcos_ranges: tuple[tuple[float, float], ...] = setting(
        (
            (-1.0, 64.0),
            (64.0, 128.0),
            (128.0, 256.0),
            (256.0, 512.0),
            (512.0, float("inf")),
        ),
        Related("assigner.type, model.anchors.strides"),
    )
    center_radius: float = setting(1.5, Free("a radius in strides"))  # fcos_center
    # ATSS: give a GT with no positive its best-IoU candidate (off: official).
    fallback_best_candidate: bool = setting(False, SWITCH)

    @property
    def inside_margin(self) -> float:
        """The margin selectors test anchor centres against: ``center_margin``,
        or ``-inf`` (every centre counts as inside) with ``center_in_box`` off."""
        return self.center_margin if self.center_in_box else -math.inf


# Stages whose bottlenecks may use a deformable 3x3 conv (model.backbone.dcn_stages).
DCN_STAGES = ("c2", "c3", "c4", "c5")


@dataclass
class BackboneConfig:
    """ResNet backbone (ATSS_SPEC §6)."""

    depth: int = setting(50, OneOf((18, 34, 50, 101), form="or"))
    # True: stride on the first 1x1 of a bottleneck (MSRA/caffe, official R-50/101,
    # keras.applications); False: on the 3x3 (torchvision/mmdet, official X-101).
    stride_in_1x1: bool = setting(True, SWITCH)
    groups: int = setting(1, BY_MODEL)  # ResNeXt cardinality (32 for X-101 32x8d)
    width_per_group: int = setting(64, BY_MODEL)  # 8 for X-101 32x8d, 4 for 64x4d
    width_multiplier: float = setting(1.0, BY_MODEL)  # shrink every stage (tiny models)
    # 0: nothing frozen, 1: stem, 2: stem + stage 1
    freeze_at: int = setting(2, Free("a number of stages"))
    # frozen_bn: fixed affine (pretrained backbones, official); batch_norm:
    # trainable BN for training a backbone from scratch (the synthetic demo).
    norm: str = setting("frozen_bn", BY_MODEL)
    # None | "imagenet" (keras.applications ResNet-50/101, caffe mode) | the path
    # of an ImageNet file: Detectron's Caffe2 .pkl or torchvision's .pth
    # (ResNet / ResNeXt), whose normalisation model.input_bgr / pixel_mean /
    # pixel_std must state (atss_tf.config.pretrained).
    weights: str | None = setting(
        None, Related("model.input_bgr, model.pixel_mean, model.pixel_std")
    )
    # Stages (of c2..c5) whose every bottleneck's 3x3 conv2 is a modulated
    # deformable conv (ATSS_SPEC §11; official STAGE_WITH_DCN): [c3, c4, c5] for
    # the dcnv2 R-50/101 models, [c4, c5] for X-101. Bottleneck depths only.
    dcn_stages: tuple[str, ...] = setting((), Items(OneOf(DCN_STAGES), "stages"))


@dataclass
class FPNConfig:
    """Feature pyramid P3-P7 (ATSS_SPEC §6)."""

    channels: int = setting(256, AT_LEAST_1)
    # official: P7 = conv(ReLU(P6)); mmdetection: no ReLU
    p7_from_relu: bool = setting(True, SWITCH)


@dataclass
class HeadConfig:
    """The shared classification / regression towers."""

    num_convs: int = setting(4, AT_LEAST_0)
    channels: int = setting(256, AT_LEAST_1)
    use_group_norm: bool = setting(True, SWITCH)
    group_norm_groups: int = setting(32, Related("model.head.channels"))
    prior_prob: float = setting(0.01, Range(gt=0, lt=1))
    regression: str = setting("box", OneOf(REGRESSIONS))  # box | point
    # Paper Table 1 switches (official: both on). centerness off: no centerness
    # branch, no centerness loss, the box loss averaged over positives instead
    # of weighted by centerness targets, and a detection scores its class
    # probability. learnable_scales off: no per-level scalar on the box output.
    centerness: bool = setting(True, SWITCH)
    learnable_scales: bool = setting(True, SWITCH)
    # The last conv of each tower is a modulated deformable conv with bias
    # (official USE_DCN_IN_TOWER, the dcnv2 models).
    dcn: bool = setting(False, Related("model.head.num_convs"))


@dataclass
class ModelConfig:
    """The network, its anchors, input normalisation, box coding and labels."""

    num_classes: int = setting(80, AT_LEAST_1)
    # Names of labels 1..num_classes (for pictures and json); empty: "class <k>".
    class_names: tuple[str, ...] = setting((), Related("model.num_classes"))
    # The dataset's category id of each label 1..num_classes (COCO: 1..90 with
    # gaps), what detections are reported as (json, SavedModel); empty: the
    # label itself. Training fills both from the training data when empty.
    category_ids: tuple[int, ...] = setting((), Related("model.num_classes"))
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    # Images enter the model as RGB 0-255; normalisation happens inside it:
    # x = (maybe_bgr(image) - pixel_mean) / pixel_std, in the channel order named
    # by input_bgr. Defaults: the official model (BGR, caffe mean, std 1).
    input_bgr: bool = setting(True, SWITCH)
    pixel_mean: tuple[float, float, float] = setting(
        (102.9801, 115.9465, 122.7717), Free("any mean per channel")
    )
    pixel_std: tuple[float, float, float] = setting(
        (1.0, 1.0, 1.0), Items(Range(gt=0, finite=True), "values")
    )
    box_weights: tuple[float, float, float, float] = setting(
        (10.0, 10.0, 5.0, 5.0), Free("the box coder's delta weights")
    )
    # Inclusive-pixel box geometry like the authors' code (ATSS_SPEC §0.3): POINT
    # distances, GIoU areas and centerness measured on inclusive boxes, and the
    # authors' clamp of decoded boxes. None: follow official_compat.
    inclusive_geometry: bool | None = setting(None, COMPAT_SWITCH)


@dataclass
class LossConfig:
    """Focal classification loss, box loss and their weights."""

    focal_alpha: float = setting(0.25, Range(ge=0, le=1))
    focal_gamma: float = setting(2.0, Range(ge=0, finite=True))
    # giou: GIoU between decoded boxes (official ATSS). smooth_l1: on the coder
    # deltas ((10, 10, 5, 5)-weighted for box regression), the RetinaNet
    # baseline of paper Table 1 (maskrcnn-benchmark: beta 0.11, mean over the
    # four deltas; use reg_loss_weight 1 for its scale).
    box_loss: str = setting("giou", OneOf(BOX_LOSSES, form="bar"))
    smooth_l1_beta: float = setting(0.11, Range(ge=0, finite=True))
    reg_loss_weight: float = setting(2.0, Range(ge=0, finite=True))


@dataclass
class PostprocessConfig:
    """Decoding, thresholds and NMS of the detections."""

    score_threshold: float = setting(0.05, Range(ge=0, lt=1))
    pre_nms_topk: int = setting(1000, AT_LEAST_1)  # per level
    nms_iou: float = setting(0.6, Range(gt=0, le=1))
    max_detections: int = setting(100, AT_LEAST_1)
    # sqrt: sqrt(cls * ctr) (official) | product (mmdetection)
    score_mode: str = setting("sqrt", OneOf(("sqrt", "product"), form="or"))


@dataclass
class DataConfig:
    """Input pipeline (filled in by the training issue; defaults are COCO's)."""

    train_annotations: str | None = setting(None, PATH)
    train_images: str | None = setting(None, PATH)
    val_annotations: str | None = setting(None, PATH)
    val_images: str | None = setting(None, PATH)
    train_tfrecords: str | None = setting(None, PATH)  # glob of sharded TFRecords
    val_tfrecords: str | None = setting(None, PATH)
    # shorter side; several values: multi-scale
    min_size: tuple[int, ...] = setting(
        (800,), Items(AT_LEAST_1, "sizes", min_len=1, quantity="one or more")
    )
    max_size: int = setting(1333, Related("data.min_size"))
    # Static canvases (h, w), multiples of 32; an image goes to the smallest
    # canvas of its orientation that holds it after resizing.
    canvases: tuple[tuple[int, int], ...] = setting(((896, 1344), (1344, 896)), CANVASES)
    max_instances: int = setting(100, AT_LEAST_1)
    # Image files are checked before training or evaluation starts: "quick"
    # (header, size, truncation; ~0.1 ms a file), "full" (decode every pixel,
    # ~5 ms a file) or "none"; a bad file is skipped and named in the log
    # (bad_images: skip) or stops the run before it starts (bad_images: error).
    image_check: str = setting("quick", OneOf(IMAGE_CHECKS))
    bad_images: str = setting("skip", OneOf(BAD_IMAGE_POLICIES))
    # Images above this many pixels are refused before decoding; 0: no limit.
    max_image_pixels: int = setting(DEFAULT_MAX_PIXELS, Range(ge=0, note="0: no limit"))
    flip_prob: float = setting(0.5, Range(ge=0, le=1))
    crowd: str = setting("drop", OneOf(("drop", "ignore"), form="or"))  # drop | ignore
    # Training keeps images without a box (background images added on purpose)
    # as all-negative examples; false: skips them, as the authors' code does.
    keep_empty_images: bool = setting(False, SWITCH)
    batch_size: int = setting(16, AT_LEAST_1)  # global batch
    shuffle_buffer: int = setting(1000, AT_LEAST_0)
    # -1: tf.data.AUTOTUNE
    num_parallel_calls: int = setting(-1, OrValue(AT_LEAST_1, -1, "tf.data.AUTOTUNE"))


@dataclass
class TrainConfig:
    """Optimizer, schedule, checkpoints, distribution and precision."""

    # at batch 16; scaled linearly with data.batch_size
    base_lr: float = setting(0.01, Range(gt=0, finite=True))
    momentum: float = setting(0.9, Range(ge=0, lt=1))
    # coupled (PyTorch style), not on biases/norms
    weight_decay: float = setting(1e-4, Range(ge=0, finite=True))
    bias_lr_factor: float = setting(2.0, Free("a factor of base_lr for biases"))
    warmup_iters: int = setting(500, AT_LEAST_0)
    warmup_factor: float = setting(1.0 / 3.0, Range(gt=0, le=1))
    max_iters: int = setting(90000, AT_LEAST_1)
    lr_steps: tuple[int, ...] = setting((60000, 80000), Items(AT_LEAST_1, "steps", increasing=True))
    lr_gamma: float = setting(0.1, Range(gt=0, finite=True))
    # Keras epoch length; a checkpoint (model + optimizer) is written at every epoch end.
    steps_per_epoch: int = setting(1000, AT_LEAST_1)
    eval_every_epochs: int = setting(0, AT_LEAST_0)  # 0: only at the end
    # default | mirrored | multi_worker | tpu (training/strategy.py)
    strategy: str = setting("default", OneOf(STRATEGIES, form="bar"))
    # float32 | mixed_float16 (GPUs; with loss scaling) | mixed_bfloat16 (TPUs,
    # CPUs with AVX-512 BF16): the network computes in 16 bits, its variables,
    # the input normalisation, losses, targets and post-processing stay float32.
    precision: str = setting("float32", OneOf(PRECISIONS, form="bar"))
    # XLA for the train step: true | false | auto (XLA where the replicas are
    # GPUs, not on CPUs, where the XLA step measured slower; TPUs compile every
    # step whatever this says). training/strategy.py resolve_jit_compile.
    jit_compile: bool | str = setting("auto", OneOf((True, False, "auto"), form="bar"))
    # Split each step's batch (data.batch_size, the batch the schedule is for)
    # into this many equal chunks, run one after the other with their gradients
    # summed: the memory of a chunk, the update of the whole batch.
    accumulate_steps: int = setting(1, Related("data.batch_size"))
    # Keep only each trainable backbone stage's input for the backward pass and
    # run the stage again inside it (gradient checkpointing, tf.recompute_grad):
    # less activation memory for one more backbone forward pass per step.
    recompute_backbone: bool = setting(False, SWITCH)
    # Host tensors of at least this many bytes are mmapped and given back to the
    # system when freed (glibc's M_MMAP_THRESHOLD, fixed instead of dynamic):
    # the process keeps less freed memory (training/host_memory.py). 0: as glibc sets it.
    host_mmap_threshold: int = setting(
        2**20, Range(ge=0, le=32 * 2**20, note="bytes, at most 32 MiB; 0: glibc's default")
    )
    # Batches per Keras train_function call (fewer Python round trips per step).
    steps_per_execution: int = setting(1, AT_LEAST_1)
    seed: int = setting(0, Free("any seed"))
    # Fine-tuning: start from the weights of this model (a .keras file of
    # atss-tf train or convert, or an official .pth checkpoint) wherever a
    # tensor's name and shape fit; the classification layer of other classes
    # starts afresh (training/init_from.py). A run that resumes from its own
    # checkpoint does not read it; it replaces model.backbone.weights.
    init_from: str | None = setting(
        None, FileSuffix((".keras", ".pth"), "a model file, local or remote,")
    )


@dataclass
class Config:
    """A whole training config: the sections below plus ``official_compat``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    assigner: AssignerConfig = field(default_factory=AssignerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tta: TTAConfig = field(default_factory=TTAConfig)  # test-time augmentation
    # Reproduce the authors' numbers exactly (ATSS_SPEC §0): official anchor
    # alignment and shapes, center margin 0.51, inclusive loss geometry.
    # Settings left None follow this switch; they are filled in when the
    # Config is built, so set it there (Config(official_compat=True), YAML,
    # --set official_compat=true), not by assignment afterwards.
    official_compat: bool = setting(False, SWITCH)

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
    test_size: int = setting(800, AT_LEAST_1)
    max_size: int = setting(1333, Related("test_size"))
    canvases: tuple[tuple[int, int], ...] = setting(((896, 1344), (1344, 896)), CANVASES)


def _copy(section: Any) -> Any:
    """A copy of a section, rebuilt (and its values re-typed) from its dict."""
    return build(type(section), to_dict(section))

"""The suite's tiny config, its variants and synthetic data for end-to-end tests."""

from __future__ import annotations

from pathlib import Path

from atss_tf.boxes import coder_for_model
from atss_tf.config import Config, load_config, save_config
from atss_tf.data.synthetic import generate_synthetic_coco

TINY_OVERRIDES = [
    "model.num_classes=3",
    "model.backbone.depth=18",
    "model.backbone.width_multiplier=0.25",
    "model.backbone.freeze_at=0",
    "model.fpn.channels=32",
    "model.head.num_convs=1",
    "model.head.channels=32",
    "model.head.group_norm_groups=8",
    "model.input_bgr=false",
    "model.pixel_mean=[123.675, 116.28, 103.53]",
    "model.pixel_std=[58.395, 57.12, 57.375]",
    "data.min_size=[128]",
    "data.max_size=128",
    "data.canvases=[[128, 128]]",
    "data.max_instances=8",
    "data.batch_size=4",
    "train.warmup_iters=10",
    "train.base_lr=0.04",
    "train.steps_per_epoch=5",
    "train.max_iters=10",
    "train.lr_steps=[1000]",
]


# Landscape, portrait and (for the larger multi-scale size) square canvases.
THREE_CANVAS_SIZES = [(96, 128), (128, 96), (128, 128)]
# A landscape and a portrait canvas: alternating between two is what "each
# canvas compiled once" needs.
TWO_CANVAS_SIZES = THREE_CANVAS_SIZES[:2]
# What the multi-canvas overrides below share.
_MULTI_CANVAS = [
    "data.max_size=128",
    "data.batch_size=2",
    # An untrained head scores about 0.01: keep its boxes so predictions can be compared.
    "postprocess.score_threshold=0.001",
]
# Overrides of the tiny config: multi-scale training over THREE_CANVAS_SIZES.
THREE_CANVASES = [
    f"data.canvases={[list(c) for c in THREE_CANVAS_SIZES]}",
    "data.min_size=[96, 128]",
    *_MULTI_CANVAS,
]
# Overrides of the tiny config: training on TWO_CANVAS_SIZES (one shorter side, 96).
TWO_CANVASES = [
    f"data.canvases={[list(c) for c in TWO_CANVAS_SIZES]}",
    "data.min_size=[96]",
    *_MULTI_CANVAS,
]


def tiny_config(extra: list[str] | None = None) -> Config:
    return load_config(None, TINY_OVERRIDES + list(extra or []))


def with_synthetic_data(
    cfg: Config,
    root: Path,
    n_train: int = 16,
    n_val: int = 8,
    size: int = 128,
    object_size: tuple[int, int] | None = None,
) -> Config:
    """Generate (or reuse) synthetic train/val splits under ``root`` and point ``cfg`` at them."""
    root = Path(root)
    for split, n, seed in (("train", n_train, 1), ("val", n_val, 2)):
        ann = root / f"{split}.json"
        if not ann.exists():
            generate_synthetic_coco(
                root,
                n,
                (size, size),
                seed=seed,
                num_classes=3,
                object_size=object_size or (8, size * 3 // 4),
                split=split,
            )
    cfg.data.train_annotations, cfg.data.train_images = (
        str(root / "train.json"),
        str(root / "train"),
    )
    cfg.data.val_annotations, cfg.data.val_images = str(root / "val.json"), str(root / "val")
    return cfg


def one_step_config_file(root: Path, with_val: bool = False) -> Path:
    """A YAML config of a one-step, one-epoch tiny run on synthetic data under
    ``root`` (no validation set unless ``with_val``); returns its path."""
    cfg = with_synthetic_data(tiny_config(["train.max_iters=1", "train.steps_per_epoch=1"]), root)
    if not with_val:
        cfg.data.val_annotations = cfg.data.val_images = None
    path = Path(root) / "one_step.yaml"
    save_config(cfg, path)
    return path


def loss_args(cfg: Config) -> tuple:
    """``(coder, loss section)``: the trailing arguments of ``atss_losses`` for ``cfg``."""
    return coder_for_model(cfg.model), cfg.loss


def postprocess_args(cfg: Config) -> tuple:
    """``(coder, postprocess section)``: the trailing arguments of ``postprocess``."""
    return coder_for_model(cfg.model), cfg.postprocess

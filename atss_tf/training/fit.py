"""The fit driver: strategy, model, optimizer, data, callbacks, resume, evaluation.

``train(config, out_dir)`` is what ``atss-tf train`` and ``atss-tf demo`` run:
config -> :func:`~atss_tf.data.pipeline.build_dataset` (with the
:class:`~atss_tf.targets.TargetEncoder` of each canvas) -> detector compiled
with the official optimizer -> ``model.fit`` with checkpoints, TensorBoard and
COCO evaluation (:mod:`atss_tf.evaluation`) -> ``model.keras``. Notebook
users can do the same steps by hand (``build_detector``,
``compile_detector``, ``build_dataset``, ``model.fit``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import TypeVar

import keras
import tensorflow as tf

from atss_tf import files
from atss_tf.config import (
    Config,
    ConfigError,
    DetectorConfig,
    config_differences,
    load_config,
    save_config,
)
from atss_tf.data.coco import CategoryMap
from atss_tf.data.shard_checks import naming_bad_shards

# The one arrow up the layers: a run evaluates its model on the validation set
# during and after fit, with the COCO evaluator that `atss-tf evaluate` uses
# (it lives above training and inference, beside export).
from atss_tf.evaluation import make_validation
from atss_tf.training.callbacks import (
    CocoEvalCallback,
    ResumableCheckpoint,
    StopOnNaN,
    TimeEstimate,
    TrainingLog,
    save_model_file,
)
from atss_tf.training.host_memory import set_mmap_threshold
from atss_tf.training.optimizer import CoupledSGD
from atss_tf.training.schedule import WarmupMultiStepSchedule, scaled_base_lr
from atss_tf.training.strategy import (
    emulated_precision_warning,
    make_strategy,
    resolve_jit_compile,
)

# A training config or a detector config: both have the ``model`` section.
ConfigOrDetector = TypeVar("ConfigOrDetector", Config, DetectorConfig)

logger = logging.getLogger("atss_tf")


def make_optimizer(cfg: Config) -> CoupledSGD:
    """The official SGD with the warmup + multi-step schedule, lr scaled to the batch."""
    t = cfg.train
    schedule = WarmupMultiStepSchedule(
        base_lr=scaled_base_lr(t.base_lr, cfg.data.batch_size),
        milestones=t.lr_steps,
        gamma=t.lr_gamma,
        warmup_iters=t.warmup_iters,
        warmup_factor=t.warmup_factor,
    )
    return CoupledSGD(
        schedule,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        bias_lr_factor=t.bias_lr_factor,
    )


def compile_detector(model: keras.Model, cfg: Config) -> keras.Model:
    """Compile with the official optimizer (mixed precision wraps it in loss
    scaling), ``cfg.assigner``'s sample selection and ``cfg.loss``; called in
    the strategy's scope, whose devices decide ``train.jit_compile: auto``."""
    optimizer = make_optimizer(cfg)
    if cfg.train.precision == "mixed_float16":  # bfloat16 has float32's range: no scaling
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        assigner=cfg.assigner,
        loss_config=cfg.loss,
        accumulate_steps=cfg.train.accumulate_steps,
        steps_per_execution=cfg.train.steps_per_execution,
        jit_compile=resolve_jit_compile(cfg.train.jit_compile, tf.distribute.get_strategy()),
    )
    return model


@contextlib.contextmanager
def dtype_policy(name: str):
    """Layers built inside take Keras dtype policy ``name``; the global policy
    is restored on exit (a model built for mixed precision leaves none behind)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def with_dataset_categories(cfg: ConfigOrDetector, category_map: CategoryMap) -> ConfigOrDetector:
    """``cfg`` (a training or a detector config) with ``model.category_ids`` and
    ``model.class_names`` taken from the training data's categories where the
    config leaves them empty, so the saved model reports detections as the dataset's category ids and names
    (names that are only the ids, from TFRecords without a category list, are
    not copied).

    Raises:
        ConfigError: ``model.category_ids`` is set and differs from the data's.
    """
    model = cfg.model
    ids, names = tuple(category_map.category_ids), tuple(category_map.names)
    if model.category_ids and tuple(model.category_ids) != ids:
        raise ConfigError(
            f"model.category_ids={list(model.category_ids)} differ from the training data's "
            f"category ids {list(ids)}; leave model.category_ids empty to take the data's"
        )
    filled = {"category_ids": ids}
    if not model.class_names and names != tuple(str(i) for i in ids):
        filled["class_names"] = names
    return dataclasses.replace(cfg, model=dataclasses.replace(model, **filled))


def build_training_model(
    cfg: Config,
    strategy: tf.distribute.Strategy | None = None,
    detector: DetectorConfig | None = None,
):
    """Build and compile the detector (``detector``, default ``cfg``'s own) and
    its optimizer variables (``cfg.train``) in ``strategy``'s scope; with ``train.precision`` ``mixed_float16`` or
    ``mixed_bfloat16`` its layers compute in 16 bits (the global dtype policy
    is left as it was). With ``model.backbone.weights: imagenet`` the
    backbone starts from keras.applications' ResNet50/101 (downloaded by
    Keras on first use; :mod:`atss_tf.convert.keras_applications`), with the
    path of a Detectron ``.pkl`` / torchvision ``.pth`` from that file
    (:mod:`atss_tf.convert.imagenet_files`), unless ``train.init_from`` is set: :func:`train` then copies that model's
    weights in (:mod:`atss_tf.training.init_from`). With
    ``train.recompute_backbone`` the backbone's trainable stages recompute
    their activations in the backward pass instead of keeping them. Fixes
    glibc's mmap threshold at ``train.host_mmap_threshold`` for the process
    (:mod:`atss_tf.training.host_memory`)."""
    from atss_tf.config.pretrained import KERAS_APPLICATIONS
    from atss_tf.convert.imagenet_files import load_imagenet_file
    from atss_tf.convert.keras_applications import load_imagenet_backbone
    from atss_tf.model import build_detector

    # Before the weights: every large host tensor from here on is mmapped.
    set_mmap_threshold(cfg.train.host_mmap_threshold)
    strategy = strategy or tf.distribute.get_strategy()
    precision = cfg.train.precision
    policy = precision if precision != "float32" else keras.config.dtype_policy().name
    with strategy.scope(), dtype_policy(policy):
        model = build_detector(detector or cfg)
        weights = cfg.model.backbone.weights
        if weights == KERAS_APPLICATIONS and not cfg.train.init_from:
            load_imagenet_backbone(model.backbone)
        elif weights is not None and not cfg.train.init_from:
            load_imagenet_file(model.backbone, weights)
        model.backbone.recompute_stages = cfg.train.recompute_backbone
        compile_detector(model, cfg)
        model.optimizer.build(model.trainable_variables)
    return model


# Settings a resumed run may change: how long it runs, how it is evaluated,
# compiled and how its files are read - not what its checkpoints mean.
RESUMABLE_KEYS = (
    "train.max_iters",
    "train.eval_every_epochs",
    "train.jit_compile",
    "train.recompute_backbone",
    "train.host_mmap_threshold",
    "train.init_from",  # read only when a run starts, not when it resumes
    "data.val_annotations",
    "data.val_images",
    "data.val_tfrecords",
    "data.num_parallel_calls",
    "data.image_check",
    "data.bad_images",
    "data.max_image_pixels",
)


def check_resume_config(cfg: Config, out: str) -> None:
    """Refuse to resume the run in ``out`` with a config that differs from its
    own in any key but :data:`RESUMABLE_KEYS`.

    Raises:
        ConfigError: listing the differing keys (saved -> new); ``out/config.yaml``
            is left as it is.
    """
    saved_path = files.join(out, "config.yaml")
    if not files.exists(saved_path):
        return
    try:
        saved = load_config(saved_path)
    except ConfigError as e:
        raise ConfigError(
            f"cannot resume the run in {out}: its config.yaml is invalid: {e}"
        ) from None
    diffs = [d for d in config_differences(saved, cfg) if d[0] not in RESUMABLE_KEYS]
    if diffs:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs[:8])
        more = f"; and {len(diffs) - 8} more" if len(diffs) > 8 else ""
        raise ConfigError(
            f"{out} holds a run with a different config ({len(diffs)} key(s) differ: {shown}{more}); "
            "resume it with the same config, or train into a new --out"
        )


@naming_bad_shards  # a TFRecord read error names its shard and offset
def train(
    cfg: Config,
    out_dir: str | os.PathLike,
    *,
    strategy: tf.distribute.Strategy | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
    on_resume: Callable[[dict], None] | None = None,
) -> keras.Model:
    """Train ``cfg`` into ``out_dir`` (local, or remote such as ``gs://bucket/run``),
    resuming from its last checkpoint if any. A run that starts (no checkpoint
    yet) with ``train.init_from`` copies that model's weights in first and
    logs what it loaded and what it initialised (:mod:`atss_tf.training.init_from`);
    a resumed run takes its weights from its checkpoint only.

    Writes ``out_dir/config.yaml``, ``checkpoints/`` (model + optimizer state at
    every epoch end, epoch = ``train.steps_per_epoch`` steps), ``logs/``
    (TensorBoard: ``train/`` losses and learning rate, ``validation/`` COCO
    metrics and a picture of detections at each evaluation), ``model.keras``
    at the end, and, when validation data is configured, ``metrics.json`` and
    ``detections.json``.

    Raises:
        ConfigError: ``out_dir`` holds a checkpointed run of a different config.
        DataError: no usable training data.
        CheckpointError: a checkpoint cannot be written (the previous one is
            kept), or ``train.init_from`` is not a detector or has another backbone.
    """
    from atss_tf.data.pipeline import build_dataset, open_source
    from atss_tf.data.splits import has_split, split_source
    from atss_tf.progress import fit_verbosity
    from atss_tf.targets import TargetEncoder

    # Multi-worker and TPU strategies configure the runtime: before any other op.
    strategy = strategy or make_strategy(cfg.train.strategy)
    slow = emulated_precision_warning(cfg.train.precision, strategy)
    if slow:
        logger.warning(slow)
    out = os.fspath(out_dir)
    # Under multi_worker only the chief writes the run; the other workers take
    # part in every step and save (saving may read variables collectively)
    # into a scratch folder of their own. All of them resume from the run's.
    chief = strategy.extended.should_checkpoint
    written = out if chief else tempfile.mkdtemp(prefix="atss-tf-worker-")
    ckpt = ResumableCheckpoint(files.join(out, "checkpoints"))
    latest = ckpt.latest()
    if latest is not None:
        check_resume_config(cfg, out)
    elif cfg.train.init_from and not files.exists(cfg.train.init_from):
        raise FileNotFoundError(f"train.init_from model not found: {cfg.train.init_from}")
    keras.utils.set_random_seed(cfg.train.seed)
    # A resumed run sees a new (still reproducible) stream of images.
    initial_epoch = int(latest["epoch"]) if latest else 0
    seed = cfg.train.seed + initial_epoch
    train_split = split_source(cfg, "train")
    val_split = split_source(cfg, "val") if has_split(cfg, "val") else None
    source = open_source(cfg, train_split, seed=seed)
    category_map = source.category_map
    train_ds = build_dataset(
        cfg,
        "train",
        encoder_factory=lambda size: TargetEncoder.from_config(cfg, size),
        source=source,
        seed=seed,
    )
    files.makedirs(written)
    if chief:
        save_config(cfg, files.join(out, "config.yaml"))
    detector = with_dataset_categories(cfg.detector_config(), category_map)
    model = build_training_model(cfg, strategy, detector)
    info = ckpt.restore(model)
    if info:
        logger.info(
            "Resumed from %s at step %d (epoch %d).", info["path"], info["step"], initial_epoch
        )
        if on_resume is not None:
            on_resume(info)
        if cfg.train.init_from:
            logger.info("train.init_from=%s not read: the run resumes.", cfg.train.init_from)
    elif cfg.train.init_from:
        from atss_tf.training.init_from import init_from

        for line in init_from(model, cfg.train.init_from).lines():
            logger.info("%s", line)
    epochs = math.ceil(cfg.train.max_iters / cfg.train.steps_per_epoch)

    log = TrainingLog(files.join(written, "logs"), every_n_steps=min(50, cfg.train.steps_per_epoch))
    all_callbacks: list[keras.callbacks.Callback] = [
        ResumableCheckpoint(files.join(written, "checkpoints")),
        StopOnNaN(),
        TimeEstimate(cfg.train.max_iters),
    ]
    evaluate_fn = picture_fn = None
    if val_split is not None and cfg.train.strategy == "multi_worker":
        logger.warning(
            "train.strategy=multi_worker does not evaluate during training: evaluate "
            "%s with atss-tf evaluate when it ends.",
            files.join(out, "model.keras"),
        )
    elif val_split is not None:
        evaluate_fn, picture_fn = make_validation(model, cfg, val_split, out)
        if cfg.train.eval_every_epochs > 0:
            all_callbacks.append(
                CocoEvalCallback(evaluate_fn, cfg.train.eval_every_epochs, picture_fn, log)
            )
    all_callbacks.append(log)  # after the evaluation: its val_* metrics reach TensorBoard
    all_callbacks.extend(callbacks)
    if initial_epoch < epochs:
        model.fit(
            train_ds.repeat(),
            epochs=epochs,
            steps_per_epoch=cfg.train.steps_per_epoch,
            initial_epoch=initial_epoch,
            shuffle=False,  # the dataset shuffles; Keras would warn that it cannot
            callbacks=all_callbacks,
            verbose=fit_verbosity() if verbose == "auto" else verbose,
        )
    save_model_file(model, files.join(written, "model.keras"))
    if not chief:
        files.remove_tree(written)
    if evaluate_fn is not None:
        metrics = evaluate_fn()
        files.write_text(files.join(out, "metrics.json"), json.dumps(metrics, indent=2))
        step = int(model.optimizer.iterations.numpy())
        log.log_metrics(step, metrics)
        log.log_picture(step, picture_fn())
    return model

"""The fit driver: strategy, model, optimizer, data, callbacks, resume, evaluation.

``train(config, out_dir)`` is what ``atss-tf train`` and ``atss-tf demo`` run;
notebook users can do the same steps by hand (``build_detector``,
``compile_detector``, ``build_dataset``, ``model.fit``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from atss_tf.config import Config, ConfigError, config_differences, load_config, save_config
from atss_tf.evaluation import CocoEvalCallback, CocoEvaluator
from atss_tf.training.callbacks import (
    ResumableCheckpoint,
    StopOnNaN,
    TrainingLog,
    save_model_file,
)
from atss_tf.training.optimizer import CoupledSGD
from atss_tf.training.schedule import WarmupMultiStepSchedule, scaled_base_lr


def make_strategy(name: str, devices: Sequence[str] | None = None) -> tf.distribute.Strategy:
    """``"default"`` (one device) or ``"mirrored"`` (all GPUs, else the CPU devices)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if devices is None and not tf.config.list_logical_devices("GPU"):
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    raise ValueError(f"unknown train.strategy {name!r}: expected 'default' or 'mirrored'")


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
    """Compile with the official optimizer (mixed precision wraps it in loss scaling)."""
    optimizer = make_optimizer(cfg)
    if cfg.train.mixed_precision:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, jit_compile=cfg.train.jit_compile)
    return model


def build_training_model(cfg: Config, strategy: tf.distribute.Strategy | None = None):
    """Build and compile the detector (and its optimizer variables) in ``strategy``'s scope."""
    from atss_tf.model import build_detector

    strategy = strategy or tf.distribute.get_strategy()
    if cfg.train.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    with strategy.scope():
        model = build_detector(cfg)
        compile_detector(model, cfg)
        model.optimizer.build(model.trainable_variables)
    return model


def evaluate_model(
    model: keras.Model,
    dataset: tf.data.Dataset,
    evaluator: CocoEvaluator,
    num_images: int | None = None,
) -> dict[str, float]:
    """Run ``model.predict_on_batch`` over a validation dataset and score with COCO.

    The dataset yields ``inputs`` dicts (``images``, ``image_info``, ``image_id``)
    as built by :func:`atss_tf.data.pipeline.build_dataset` with ``split="val"``;
    boxes are mapped back to original image coordinates before scoring. With
    ``num_images``, a progress bar counts the images.
    """
    from atss_tf.data.transforms import boxes_to_original
    from atss_tf.progress import progress_bar

    evaluator.reset()
    bar = (
        progress_bar(num_images, f"Evaluating on {num_images} images", "image")
        if num_images
        else None
    )
    done = 0
    for element in dataset:
        inputs = element[0] if isinstance(element, tuple) else element
        det = model.predict_on_batch(inputs)
        boxes = boxes_to_original(det["boxes"], inputs["image_info"])
        evaluator.add(
            inputs["image_id"].numpy(),
            np.asarray(boxes),
            det["scores"],
            det["classes"],
            det["num_detections"],
        )
        done += int(inputs["image_id"].shape[0])
        if bar is not None:
            bar.update(min(done, num_images))
    return evaluator.evaluate()


# Settings a resumed run may change: how long it runs, how it is evaluated and
# how its files are read - not what its checkpoints mean.
RESUMABLE_KEYS = (
    "train.max_iters",
    "train.eval_every_epochs",
    "data.val_annotations",
    "data.val_images",
    "data.val_tfrecords",
    "data.num_parallel_calls",
    "data.image_check",
    "data.bad_images",
    "data.max_image_pixels",
)


def check_resume_config(cfg: Config, out: Path) -> None:
    """Refuse to resume the run in ``out`` with a config that differs from its
    own in any key but :data:`RESUMABLE_KEYS`.

    Raises:
        ConfigError: listing the differing keys (saved -> new); ``out/config.yaml``
            is left as it is.
    """
    saved_path = out / "config.yaml"
    if not saved_path.exists():
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


def train(
    cfg: Config,
    out_dir: str | os.PathLike,
    *,
    strategy: tf.distribute.Strategy | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
    on_resume: Callable[[dict], None] | None = None,
) -> keras.Model:
    """Train ``cfg`` into ``out_dir``, resuming from its last checkpoint if any.

    Writes ``out_dir/config.yaml``, ``checkpoints/`` (model + optimizer state at
    every epoch end, epoch = ``train.steps_per_epoch`` steps), ``logs/``
    (TensorBoard: ``train/`` losses and learning rate, ``validation/`` COCO
    metrics and a picture of detections at each evaluation), ``model.keras``
    at the end, and, when validation data is configured, ``metrics.json`` and
    ``detections.json``.

    Raises:
        ConfigError: ``out_dir`` holds a checkpointed run of a different config.
        DataError: no usable training data.
        CheckpointError: a checkpoint cannot be written (the previous one is kept).
    """
    from atss_tf.data.pipeline import build_dataset
    from atss_tf.progress import fit_verbosity
    from atss_tf.targets import TargetEncoder

    out = Path(out_dir)
    ckpt = ResumableCheckpoint(out / "checkpoints")
    latest = ckpt.latest()
    if latest is not None:
        check_resume_config(cfg, out)
    keras.utils.set_random_seed(cfg.train.seed)
    # A resumed run sees a new (still reproducible) stream of images.
    initial_epoch = int(latest["epoch"]) if latest else 0
    train_ds = build_dataset(
        cfg,
        "train",
        encoder_factory=lambda size: TargetEncoder(cfg, size),
        seed=cfg.train.seed + initial_epoch,
    )
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    strategy = strategy or make_strategy(cfg.train.strategy)
    model = build_training_model(cfg, strategy)
    info = ckpt.restore(model)
    if info:
        print(f"Resumed from {info['path']} at step {info['step']} (epoch {initial_epoch}).")
        if on_resume is not None:
            on_resume(info)
    epochs = math.ceil(cfg.train.max_iters / cfg.train.steps_per_epoch)

    log = TrainingLog(out / "logs", every_n_steps=min(50, cfg.train.steps_per_epoch))
    all_callbacks: list[keras.callbacks.Callback] = [ckpt, StopOnNaN()]
    evaluate_fn = picture_fn = None
    if cfg.data.val_annotations or cfg.data.val_tfrecords:
        evaluate_fn = make_evaluate_fn(model, cfg, out)
        picture_fn = make_picture_fn(model, cfg)
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
    save_model_file(model, out / "model.keras")
    if evaluate_fn is not None:
        metrics = evaluate_fn()
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        step = int(model.optimizer.iterations.numpy())
        log.log_metrics(step, metrics)
        log.log_picture(step, picture_fn())
    return model


def make_evaluate_fn(model: keras.Model, cfg: Config, out: Path | None = None):
    """A closure that evaluates ``model`` on the configured validation set
    (its data report is logged now, once)."""
    from atss_tf.data.pipeline import build_dataset, load_split, load_val_annotations

    from_json = cfg.data.val_annotations and not cfg.data.val_tfrecords  # as build_dataset
    source = load_split(cfg, "val") if from_json else None
    val_ds = build_dataset(cfg, "val", source=source)
    coco, category_ids = load_val_annotations(cfg)
    evaluator = CocoEvaluator(coco, category_ids)
    num_images = len(source) if source is not None else None

    def evaluate_fn() -> dict[str, float]:
        metrics = evaluate_model(model, val_ds, evaluator, num_images)
        if out is not None:
            evaluator.write(out / "detections.json")
        return metrics

    return evaluate_fn


def make_picture_fn(model: keras.Model, cfg: Config, count: int = 4) -> Callable[[], bytes | None]:
    """A closure drawing ``model``'s detections on the first ``count``
    validation images, returning PNG bytes (for TensorBoard; None without
    readable validation images)."""
    import io

    from atss_tf.data.pipeline import first_images
    from atss_tf.inference import class_names, detect, save_detection_grid

    images, titles = first_images(cfg, "val", count)

    def picture_fn() -> bytes | None:
        if not images:
            return None
        buffer = io.BytesIO()
        save_detection_grid(
            images, detect(model, images, cfg), class_names(cfg), buffer, titles=titles
        )
        return buffer.getvalue()

    return picture_fn

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

from atss_tf.config import Config, save_config
from atss_tf.evaluation import CocoEvalCallback, CocoEvaluator
from atss_tf.training.callbacks import ResumableCheckpoint, StopOnNaN
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
    model: keras.Model, dataset: tf.data.Dataset, evaluator: CocoEvaluator
) -> dict[str, float]:
    """Run ``model.predict_on_batch`` over a validation dataset and score with COCO.

    The dataset yields ``inputs`` dicts (``images``, ``image_info``, ``image_id``)
    as built by :func:`atss_tf.data.pipeline.build_dataset` with ``split="val"``;
    boxes are mapped back to original image coordinates before scoring.
    """
    from atss_tf.data.transforms import boxes_to_original

    evaluator.reset()
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
    return evaluator.evaluate()


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
    (TensorBoard), ``model.keras`` at the end, and, when validation data is
    configured, ``metrics.json`` and ``detections.json``.
    """
    from atss_tf.data.pipeline import build_dataset
    from atss_tf.targets import TargetEncoder

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    keras.utils.set_random_seed(cfg.train.seed)
    strategy = strategy or make_strategy(cfg.train.strategy)
    model = build_training_model(cfg, strategy)

    ckpt = ResumableCheckpoint(out / "checkpoints")
    info = ckpt.restore(model)
    initial_epoch = int(info["epoch"]) if info else 0
    if info:
        print(f"Resumed from {info['path']} at step {info['step']} (epoch {initial_epoch}).")
        if on_resume is not None:
            on_resume(info)
    epochs = math.ceil(cfg.train.max_iters / cfg.train.steps_per_epoch)

    train_ds = build_dataset(
        cfg,
        "train",
        encoder_factory=lambda size: TargetEncoder(cfg, size),
        seed=cfg.train.seed + initial_epoch,
    )
    all_callbacks: list[keras.callbacks.Callback] = [
        ckpt,
        StopOnNaN(),
        keras.callbacks.TensorBoard(str(out / "logs"), update_freq=50),
    ]
    evaluate_fn = None
    if cfg.data.val_annotations or cfg.data.val_tfrecords:
        evaluate_fn = make_evaluate_fn(model, cfg, out)
        if cfg.train.eval_every_epochs > 0:
            all_callbacks.append(CocoEvalCallback(evaluate_fn, cfg.train.eval_every_epochs))
    all_callbacks.extend(callbacks)
    if initial_epoch < epochs:
        model.fit(
            train_ds.repeat(),
            epochs=epochs,
            steps_per_epoch=cfg.train.steps_per_epoch,
            initial_epoch=initial_epoch,
            callbacks=all_callbacks,
            verbose=verbose,
        )
    model.save(out / "model.keras")
    if evaluate_fn is not None:
        metrics = evaluate_fn()
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return model


def make_evaluate_fn(model: keras.Model, cfg: Config, out: Path | None = None):
    """A closure that evaluates ``model`` on the configured validation set."""
    from atss_tf.data.pipeline import build_dataset, load_val_annotations

    val_ds = build_dataset(cfg, "val")
    coco, category_ids = load_val_annotations(cfg)
    evaluator = CocoEvaluator(coco, category_ids)

    def evaluate_fn() -> dict[str, float]:
        metrics = evaluate_model(model, val_ds, evaluator)
        if out is not None:
            evaluator.write(out / "detections.json")
        return metrics

    return evaluate_fn

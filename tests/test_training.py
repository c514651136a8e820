"""End to end: XLA train step, fit, learning, evaluation, resume after SIGKILL."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from atss_tf.config import save_config
from atss_tf.data.pipeline import build_dataset
from atss_tf.evaluation import make_evaluate_fn
from atss_tf.targets import TargetEncoder
from atss_tf.training.fit import build_training_model, train
from tests.helpers.tiny import tiny_config, with_synthetic_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


def test_train_step_compiles_with_xla_and_updates_weights(data_root):
    cfg = with_synthetic_data(tiny_config(["train.jit_compile=true"]), data_root)
    model = build_training_model(cfg)
    ds = build_dataset(
        cfg, "train", encoder_factory=lambda s: TargetEncoder.from_config(cfg, s), seed=0
    )
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(ds.repeat(), steps_per_epoch=2, epochs=1, verbose=0)
    assert model.jit_compile is True
    assert np.isfinite(history.history["loss"][-1])
    assert set(history.history) >= {"loss", "cls_loss", "reg_loss", "centerness_loss"}
    changed = [not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights)]
    assert all(changed)
    assert int(model.optimizer.iterations.numpy()) == 2
    # evaluate() reports the same losses; train_on_batch takes (x, y) directly.
    scores = model.evaluate(ds.take(1), return_dict=True, verbose=0)
    assert set(scores) >= {"loss", "cls_loss", "reg_loss", "centerness_loss"}
    x, y = next(iter(ds))
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]) and int(model.optimizer.iterations.numpy()) == 3


def test_targets_encoded_in_the_step_equal_targets_from_tf_data(data_root):
    """Device-side encoding (x carries padded GT) gives the same losses as tf.data encoding."""
    cfg = with_synthetic_data(tiny_config(), data_root)
    model = build_training_model(cfg)
    encoded = build_dataset(
        cfg, "train", encoder_factory=lambda s: TargetEncoder.from_config(cfg, s), seed=3
    )
    raw = build_dataset(cfg, "train", seed=3)
    x, y = next(iter(encoded))
    x2, gt = next(iter(raw))
    np.testing.assert_array_equal(x["images"].numpy(), x2["images"].numpy())
    a = model.compute_atss_losses(x, y, training=False)
    b = model.compute_atss_losses({**x2, **gt}, None, training=False)
    for key in ("cls_loss", "reg_loss", "centerness_loss"):
        np.testing.assert_allclose(float(a[key]), float(b[key]), rtol=1e-5)


@pytest.mark.slow  # over a minute of the default lane's ten
def test_short_run_learns(data_root, tmp_path):
    """A short run on synthetic shapes lifts AP50 far above the untrained model.

    Measured (200 steps at base_lr 0.12, 2 cores): untrained AP50 0.000,
    trained 0.122 (360 steps at 0.08 gave 0.151 in twice the time; 180 at
    0.08, 0.103). 20 validation images with batch 8 also exercise a partial
    last batch, which Keras predicts with a dynamic batch dimension.
    """
    root = data_root / "learn"
    cfg = with_synthetic_data(
        tiny_config(
            [
                "train.max_iters=200",
                "train.steps_per_epoch=50",
                "train.lr_steps=[170]",
                "data.batch_size=8",
                "train.base_lr=0.12",
                "model.backbone.width_multiplier=0.5",
                "model.backbone.norm=batch_norm",
                "model.fpn.channels=64",
                "model.head.channels=64",
                "model.head.num_convs=2",
                "model.head.group_norm_groups=16",
            ]
        ),
        root,
        n_train=64,
        n_val=20,
        object_size=(16, 96),
    )
    untrained = build_training_model(cfg)
    before = make_evaluate_fn(untrained, cfg)()
    train(cfg, tmp_path / "run", verbose=0)
    after = json.loads((tmp_path / "run" / "metrics.json").read_text())
    print(f"AP50 untrained {before['AP50']:.3f} -> trained {after['AP50']:.3f}")
    assert before["AP50"] < 0.05
    assert after["AP50"] > 0.08
    assert after["AP50"] > before["AP50"] + 0.07
    assert (tmp_path / "run" / "model.keras").exists()
    assert any((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))


def _read_optimizer_state(path: Path) -> list[np.ndarray]:
    """The optimizer variables stored in a ``.keras`` checkpoint's weights file."""
    with zipfile.ZipFile(path) as z, h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as f:
        group = f["optimizer"]["vars"]
        return [np.asarray(group[k]) for k in sorted(group, key=int)]


def test_resume_after_sigkill_restores_step_and_optimizer(data_root, tmp_path):
    cfg = with_synthetic_data(
        tiny_config(["train.steps_per_epoch=2", "train.max_iters=400"]), data_root
    )
    config_path = tmp_path / "cfg.yaml"
    save_config(cfg, config_path)
    out = tmp_path / "run"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "atss_tf.cli",
            "train",
            "--config",
            str(config_path),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    index = out / "checkpoints" / "latest.json"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if index.exists() and json.loads(index.read_text())["step"] >= 4:
                break
            if proc.poll() is not None:
                pytest.fail(f"training exited early with code {proc.returncode}")
            time.sleep(0.5)
        else:
            pytest.fail("no checkpoint within 240 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    info = json.loads(index.read_text())
    saved = _read_optimizer_state(out / "checkpoints" / info["path"])
    assert int(saved[0]) == info["step"]  # iterations is the optimizer's first variable

    seen = {}

    class CaptureRestoredState(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["state"] = [v.numpy().copy() for v in self.model.optimizer.variables]

    cfg.train.max_iters = info["step"] + 2
    model = train(
        cfg,
        out,
        verbose=0,
        callbacks=[CaptureRestoredState()],
        on_resume=lambda i: seen.update(info=i),
    )
    assert seen["info"]["step"] == info["step"]
    assert len(seen["state"]) == len(saved)
    for restored, expected in zip(seen["state"], saved):
        np.testing.assert_array_equal(restored, expected)
    assert int(model.optimizer.iterations.numpy()) == info["step"] + 2


def test_the_training_data_names_the_model_classes_and_a_conflict_is_refused():
    from atss_tf.config import ConfigError
    from atss_tf.data.coco import CategoryMap
    from atss_tf.training.fit import with_dataset_categories

    cfg = tiny_config()
    categories = CategoryMap((2, 5, 9), ("circle", "square", "triangle"))
    filled = with_dataset_categories(cfg, categories)
    assert filled.model.category_ids == (2, 5, 9)
    assert filled.model.class_names == ("circle", "square", "triangle")
    assert cfg.model.category_ids == () and cfg.model.class_names == ()  # a copy
    # TFRecords without a category list: ids only, no names invented.
    assert with_dataset_categories(cfg, CategoryMap.identity(3)).model.class_names == ()
    named = tiny_config(["model.class_names=[a, b, c]"])
    assert with_dataset_categories(named, categories).model.class_names == ("a", "b", "c")
    with pytest.raises(ConfigError, match=r"model.category_ids=\[1, 2, 3\] differ .* \[2, 5, 9\]"):
        with_dataset_categories(tiny_config(["model.category_ids=[1, 2, 3]"]), categories)


def test_a_short_bfloat16_run_trains_with_float32_where_precision_matters(data_root):
    """train.precision=mixed_bfloat16: convolutions in bfloat16; the statistics,
    the losses and the outputs float32; no loss scaling (bfloat16 has float32's
    exponent range)."""
    cfg = with_synthetic_data(tiny_config(["train.precision=mixed_bfloat16"]), data_root)
    model = build_training_model(cfg)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is untouched
    assert model.backbone.stem_conv1.compute_dtype == "bfloat16"
    assert model.backbone.stem_conv1.kernel.dtype == "float32"
    assert model.normalizer.compute_dtype == "float32"
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    ds = build_dataset(
        cfg, "train", encoder_factory=lambda s: TargetEncoder.from_config(cfg, s), seed=0
    )
    x, y = next(iter(ds))
    assert all(v.dtype == "float32" for v in model(x["images"]).values())
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(ds.repeat(), steps_per_epoch=4, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][-1])
    changed = [not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights)]
    assert all(changed)

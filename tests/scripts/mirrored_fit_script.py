"""Run by test_mirrored_fit.py in a fresh process: one fit step on 1 device and
under MirroredStrategy on 2 logical CPU devices, same global batch of 2."""

import json
import sys
from pathlib import Path

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402

from atss_tf.data.pipeline import build_dataset  # noqa: E402
from atss_tf.targets import TargetEncoder  # noqa: E402
from atss_tf.training.fit import build_training_model, make_strategy  # noqa: E402
from tests.helpers.tiny import tiny_config, with_synthetic_data  # noqa: E402

# lr 1 on every variable, no decay, no momentum history: the update is the gradient.
cfg = tiny_config(
    [
        "data.batch_size=2",
        "train.base_lr=8.0",
        "train.warmup_iters=0",
        "train.weight_decay=0.0",
        "train.bias_lr_factor=1.0",
    ]
)
cfg = with_synthetic_data(cfg, Path(sys.argv[1]))
ds = build_dataset(
    cfg, "train", encoder_factory=lambda s: TargetEncoder.from_config(cfg, s), seed=0
)
x, y = next(iter(ds))
batch = tf.data.Dataset.from_tensors((x, y))

single = build_training_model(cfg)
strategy = make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
mirrored = build_training_model(cfg, strategy)
mirrored.set_weights(single.get_weights())
start = [w.numpy().copy() for w in single.trainable_weights]

h1 = single.fit(batch, epochs=1, verbose=0).history
h2 = mirrored.fit(batch, epochs=1, verbose=0).history
g1 = [s - w.numpy() for s, w in zip(start, single.trainable_weights)]
g2 = [s - w.numpy() for s, w in zip(start, mirrored.trainable_weights)]
scale = max(float(np.abs(g).max()) for g in g1)
print(
    json.dumps(
        {
            "replicas": strategy.num_replicas_in_sync,
            "positives": int((y["cls_targets"].numpy() > 0).sum()),
            "per_image_positives": [int(v) for v in (y["cls_targets"].numpy() > 0).sum(1)],
            "loss": [h1["loss"][0], h2["loss"][0]],
            "cls_loss": [h1["cls_loss"][0], h2["cls_loss"][0]],
            "reg_loss": [h1["reg_loss"][0], h2["reg_loss"][0]],
            "centerness_loss": [h1["centerness_loss"][0], h2["centerness_loss"][0]],
            "max_grad": scale,
            "max_grad_diff": max(float(np.abs(a - b).max()) for a, b in zip(g1, g2)),
        }
    )
)

"""Run by test_multi_worker.py: ``atss_tf.training.fit.train`` of a tiny config,
one process (``single``) or as one worker of a ``TF_CONFIG`` cluster
(``worker``); writes the per-step losses and the final weights."""

import json
import sys
from pathlib import Path

import keras
import numpy as np

from atss_tf.training.fit import train
from tests.helpers.tiny import tiny_config, with_synthetic_data

data_dir, out_dir, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
cfg = tiny_config(
    [
        "data.batch_size=4",
        "train.steps_per_epoch=1",
        "train.max_iters=3",
        f"train.strategy={'multi_worker' if mode == 'worker' else 'default'}",
    ]
)
cfg = with_synthetic_data(cfg, data_dir)
cfg.data.val_annotations = cfg.data.val_images = None


class StepLosses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append({k: float(v) for k, v in logs.items()})


def image_batch_sizes(signature) -> list[int]:
    """Batch sizes of this process's 4-D image inputs in a step signature."""
    found = []

    def visit(leaf):
        if isinstance(leaf, tuple) and len(leaf) == 2 and isinstance(leaf[1], str):
            if len(leaf[0]) == 4:
                found.append(leaf[0][0])
        elif isinstance(leaf, tuple):
            for item in leaf:
                visit(item)

    visit(signature[1])
    return found


recorder = StepLosses()
model = train(cfg, out_dir / "run", callbacks=[recorder], verbose=0)
signatures = model.train_function.step.signatures
tag = (
    mode
    if mode == "single"
    else f"worker{json.loads(__import__('os').environ['TF_CONFIG'])['task']['index']}"
)
np.savez(out_dir / f"weights-{tag}.npz", *[w.numpy() for w in model.trainable_weights])
(out_dir / f"losses-{tag}.json").write_text(
    json.dumps(
        {
            "losses": recorder.losses,
            "replicas": model.distribute_strategy.num_replicas_in_sync,
            "step": int(model.optimizer.iterations.numpy()),
            "image_batches": [image_batch_sizes(sig) for sig in signatures],
        }
    )
)

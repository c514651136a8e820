"""train.accumulate_steps (a batch trained as N chunks equals the batch in one
piece: frozen BatchNorm, so exact up to float order), train.steps_per_execution and
train.recompute_backbone (the same update with the backbone recomputed in the backward pass)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from atss_tf.config import ConfigError
from atss_tf.data.pipeline import build_dataset
from atss_tf.targets import TargetEncoder
from atss_tf.training.fit import build_training_model
from tests.helpers.tiny import tiny_config, with_synthetic_data

# Learning rate 1 on every variable, no decay, no momentum history: the update is the gradient.
PLAIN_SGD = [
    "data.batch_size=4",
    "train.base_lr=4.0",
    "train.warmup_iters=0",
    "train.weight_decay=0.0",
    "train.bias_lr_factor=1.0",
]


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    cfg = with_synthetic_data(tiny_config(PLAIN_SGD), tmp_path_factory.mktemp("acc"))
    ds = build_dataset(
        cfg, "train", encoder_factory=lambda s: TargetEncoder.from_config(cfg, s), seed=0
    )
    it = iter(ds)
    return [next(it) for _ in range(2)]


def _train(extra: list[str], batches, initial=None):
    cfg = tiny_config(PLAIN_SGD + extra)
    model = build_training_model(cfg)
    if initial is not None:
        model.set_weights(initial)
    logs = [model.train_on_batch(x, y, return_dict=True) for x, y in batches]
    return model, logs


@pytest.mark.parametrize(
    "extra", [["train.accumulate_steps=2"], ["train.accumulate_steps=4", "train.jit_compile=true"]]
)
def test_chunks_equal_the_whole_batch(batches, extra):
    start = build_training_model(tiny_config(PLAIN_SGD)).get_weights()
    whole, whole_logs = _train([], batches, start)
    chunked, chunked_logs = _train(extra, batches, start)
    assert chunked.accumulate_steps == int(extra[0].split("=")[1])
    for a, b in zip(whole_logs, chunked_logs):
        for key in ("loss", "cls_loss", "reg_loss", "centerness_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
    moved = max(float(np.abs(w - s).max()) for w, s in zip(whole.get_weights(), start))
    assert moved > 1e-3  # the steps changed the weights
    for w1, w2 in zip(whole.get_weights(), chunked.get_weights()):
        np.testing.assert_allclose(w2, w1, rtol=1e-4, atol=1e-5 * moved)


def test_accumulate_steps_must_divide_the_batch():
    with pytest.raises(
        ConfigError, match=r"train.accumulate_steps=3 .*divisor of data.batch_size \(4\)"
    ):
        tiny_config(PLAIN_SGD + ["train.accumulate_steps=3"])


def test_steps_per_execution_runs_several_steps_per_call(batches):
    # A usual learning rate: four steps of PLAIN_SGD's 4.0 on one batch can diverge.
    cfg = tiny_config(PLAIN_SGD + ["train.base_lr=0.01", "train.steps_per_execution=2"])
    model = build_training_model(cfg)
    assert model.steps_per_execution == 2
    x, y = batches[0]
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    history = model.fit(data, steps_per_epoch=4, epochs=1, verbose=0).history
    assert int(model.optimizer.iterations.numpy()) == 4
    assert np.isfinite(history["loss"][0])


def test_recompute_backbone_gives_the_same_gradients(batches):
    """train.recompute_backbone: the backbone's stages run again in the backward
    pass (a stage's first block is called twice while the gradient is traced)
    and the gradients are the plain step's."""
    model = build_training_model(tiny_config(PLAIN_SGD + ["train.recompute_backbone=true"]))
    assert model.backbone.recompute_stages
    block = model.backbone.stages[1][0]
    calls = []
    block_call = block.call

    def counted_call(*args, **kwargs):
        calls.append(1)
        return block_call(*args, **kwargs)

    block.call = counted_call
    x, y = batches[0]

    def gradients():
        with tf.GradientTape() as tape:
            loss = model.compute_atss_losses(x, y, training=True)["loss"]
        return tape.gradient(loss, model.trainable_variables)

    recomputed = tf.function(gradients)()
    assert len(calls) == 2  # traced once forward, once inside the gradient
    model.backbone.recompute_stages = False  # read when the step is traced
    plain = tf.function(gradients)()
    assert len(calls) == 3
    assert all(g is not None for g in recomputed)
    largest = max(float(tf.reduce_max(tf.abs(g))) for g in plain)
    for g_plain, g_recomputed in zip(plain, recomputed):
        np.testing.assert_allclose(g_recomputed, g_plain, rtol=1e-4, atol=1e-6 * largest)

"""The Keras contract of every class atss_tf registers with Keras.

Like KerasHub's ``TestCase.run_layer_test``, one helper checks each layer:
``get_config`` / ``from_config`` round trip, the same weights (count, shapes,
trainable split) after rebuilding, a ``.keras`` round trip with equal
outputs, and mixed precision (float32 variables, float16 outputs). The
registry test fails when a class is registered without a case here.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from atss_tf.model import (
    ATSSHead,
    BasicBlock,
    BottleneckBlock,
    FeaturePyramid,
    FrozenBatchNorm,
    ImageNormalization,
    ResNetBackbone,
    Scale,
    TorchConv2D,
    TorchMaxPool2D,
)
from atss_tf.model.deformable import ModulatedDeformConv2D
from atss_tf.training.optimizer import CoupledSGD
from atss_tf.training.schedule import WarmupMultiStepSchedule


def _x(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, shape).astype("float32")


PYRAMID = {"c3": _x(1, 8, 8, 8), "c4": _x(1, 4, 4, 16, seed=1), "c5": _x(1, 2, 2, 32, seed=2)}
LEVELS = [_x(1, 16 // 2**i, 16 // 2**i, 8, seed=i) for i in range(5)]

# name -> (factory(**kwargs) -> layer, example inputs)
LAYER_CASES = {
    "TorchConv2D": (lambda **kw: TorchConv2D(4, 3, strides=2, **kw), _x(1, 9, 9, 3)),
    "TorchMaxPool2D": (lambda **kw: TorchMaxPool2D(**kw), _x(1, 9, 9, 3)),
    "FrozenBatchNorm": (lambda **kw: FrozenBatchNorm(**kw), _x(1, 4, 4, 3)),
    "ModulatedDeformConv2D": (
        lambda **kw: ModulatedDeformConv2D(8, strides=2, groups=2, use_bias=True, **kw),
        _x(1, 9, 9, 4),
    ),
    "Scale": (lambda **kw: Scale(2.0, **kw), _x(1, 4, 4, 3)),
    "ImageNormalization": (
        lambda **kw: ImageNormalization((1.0, 2.0, 3.0), (2.0, 2.0, 2.0), bgr=True, **kw),
        255 * _x(1, 4, 4, 3),
    ),
    "BasicBlock": (lambda **kw: BasicBlock(8, strides=2, **kw), _x(1, 8, 8, 4)),
    "BottleneckBlock": (lambda **kw: BottleneckBlock(4, 16, strides=2, **kw), _x(1, 8, 8, 8)),
    "ResNetBackbone": (
        lambda **kw: ResNetBackbone(depth=18, width_multiplier=0.125, freeze_at=1, **kw),
        255 * _x(1, 64, 64, 3),
    ),
    "FeaturePyramid": (lambda **kw: FeaturePyramid(channels=8, **kw), PYRAMID),
    "ATSSHead": (
        lambda **kw: ATSSHead(
            num_classes=3,
            num_anchors=1,
            num_levels=5,
            num_convs=1,
            channels=8,
            group_norm_groups=4,
            **kw,
        ),  # fmt: skip
        LEVELS,
    ),
}
# Classes whose contract is checked where they are defined in use.
ELSEWHERE = {
    "ATSSDetector": "tests/test_model.py and tests/test_model_file.py (.keras files, formats)",
}


def _flat(tree) -> list[np.ndarray]:
    return [np.asarray(v) for v in keras.tree.flatten(tree)]


def _symbolic(value):
    return keras.tree.map_structure(lambda a: keras.Input(batch_shape=a.shape), value)


def check_layer_contract(factory, inputs, tmp_path, mixed_output: str = "float16") -> None:
    """The contract every atss_tf layer keeps (module docstring); under
    ``mixed_float16`` its outputs have dtype ``mixed_output``."""
    layer = factory()
    out = layer(inputs)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    clone(inputs)
    assert [tuple(w.shape) for w in clone.weights] == [tuple(w.shape) for w in layer.weights]
    assert len(clone.trainable_weights) == len(layer.trainable_weights)
    assert len(clone.non_trainable_weights) == len(layer.non_trainable_weights)

    symbolic = _symbolic(inputs)
    model = keras.Model(symbolic, layer(symbolic))
    path = tmp_path / f"{type(layer).__name__}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(_flat(loaded(inputs)), _flat(out)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)

    mixed = factory(dtype="mixed_float16")
    mixed_out = mixed(inputs)
    assert all(w.dtype == "float32" for w in mixed.weights)
    dtypes = {keras.backend.standardize_dtype(v.dtype) for v in keras.tree.flatten(mixed_out)}
    assert dtypes == {mixed_output}


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_layer_contract(name, tmp_path):
    factory, inputs = LAYER_CASES[name]
    # ImageNormalization runs in float32 by design (a float16 x - mean loses 0.06 at 255).
    mixed = "float32" if name == "ImageNormalization" else "float16"
    check_layer_contract(factory, inputs, tmp_path, mixed)


def test_schedule_and_optimizer_config_round_trip():
    schedule = WarmupMultiStepSchedule(0.01, (5, 8), gamma=0.1, warmup_iters=3)
    again = WarmupMultiStepSchedule.from_config(schedule.get_config())
    assert [float(again(s)) for s in range(10)] == [float(schedule(s)) for s in range(10)]
    optimizer = CoupledSGD(schedule, momentum=0.9, weight_decay=1e-4, bias_lr_factor=2.0)
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(clone, CoupledSGD)
    a, b = optimizer.get_config(), clone.get_config()
    lr_a, lr_b = a.pop("learning_rate"), b.pop("learning_rate")
    assert a == b
    schedules = [keras.optimizers.schedules.deserialize(lr) for lr in (lr_a, lr_b)]
    assert [float(schedules[1](s)) for s in range(10)] == [float(schedule(s)) for s in range(10)]
    assert [float(schedules[0](s)) for s in range(10)] == [float(schedule(s)) for s in range(10)]


def test_every_registered_class_has_a_contract_case():
    registered = {
        key.split(">", 1)[1]
        for key in keras.saving.get_custom_objects()
        if key.startswith("atss_tf>")
    }
    covered = set(LAYER_CASES) | set(ELSEWHERE) | {"CoupledSGD", "WarmupMultiStepSchedule"}
    assert registered, "no atss_tf class is registered with Keras"
    assert registered <= covered, f"no contract case for {sorted(registered - covered)}"
    assert covered <= registered, f"not registered with Keras: {sorted(covered - registered)}"

"""The official optimiser and schedule against NumPy transcriptions of PyTorch's."""

import keras
import numpy as np
import pytest

from atss_tf.training.optimizer import CoupledSGD, is_bias
from atss_tf.training.schedule import WarmupMultiStepSchedule, scaled_base_lr


def torch_sgd_reference(w, grads, lrs, momentum, wd):
    """torch.optim.SGD(momentum, weight_decay) step by step (dampening 0, no nesterov)."""
    buf = None
    for g, lr in zip(grads, lrs):
        g = g + wd * w
        buf = g.copy() if buf is None else momentum * buf + g
        w = w - lr * buf
    return w


def test_coupled_sgd_matches_pytorch_sgd_with_changing_lr():
    rng = np.random.default_rng(0)
    layer = keras.layers.Dense(3)
    layer.build((None, 4))
    w0, b0 = (v.numpy().copy() for v in layer.weights)
    schedule = WarmupMultiStepSchedule(
        0.1, milestones=(3,), gamma=0.1, warmup_iters=2, warmup_factor=0.5
    )
    opt = CoupledSGD(schedule, momentum=0.9, weight_decay=1e-2, bias_lr_factor=2.0)
    grads = [
        (rng.normal(size=w0.shape).astype("float32"), rng.normal(size=b0.shape).astype("float32"))
        for _ in range(5)
    ]
    for gw, gb in grads:
        opt.apply_gradients([(gw, layer.kernel), (gb, layer.bias)])
    lrs = [float(schedule(i)) for i in range(5)]
    assert lrs == pytest.approx([0.05, 0.1, 0.01, 0.01, 0.01])
    expect_w = torch_sgd_reference(w0, [g[0] for g in grads], lrs, 0.9, 1e-2)
    expect_b = torch_sgd_reference(b0, [g[1] for g in grads], [2 * lr for lr in lrs], 0.9, 0.0)
    np.testing.assert_allclose(layer.kernel.numpy(), expect_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.bias.numpy(), expect_b, rtol=1e-5, atol=1e-6)


def test_bias_detection_by_name():
    dense = keras.layers.Dense(2)
    dense.build((None, 2))
    gn = keras.layers.GroupNormalization(groups=1)
    gn.build((None, 2))
    assert [is_bias(v) for v in dense.weights] == [False, True]
    assert [is_bias(v) for v in gn.weights] == [False, True]  # gamma, beta


def test_official_schedule_points_and_serialisation():
    s = WarmupMultiStepSchedule(scaled_base_lr(0.01, 16), (60000, 80000), 0.1, 500, 1 / 3)
    # 0-based Keras iteration i uses the official rate of iteration i + 1.
    got = [float(s(i)) for i in (0, 498, 499, 59998, 59999, 79999, 89999)]
    assert got == pytest.approx([0.01 / 3, 0.01 / 3, 0.01, 0.01, 0.001, 0.0001, 0.0001])
    again = WarmupMultiStepSchedule.from_config(s.get_config())
    assert float(again(59999)) == pytest.approx(0.001)
    assert scaled_base_lr(0.01, 2) == pytest.approx(0.00125)


def test_optimizer_round_trips_through_config():
    opt = CoupledSGD(0.02, momentum=0.8, weight_decay=3e-4, bias_lr_factor=1.5)
    again = CoupledSGD.from_config(opt.get_config())
    assert (again.momentum, again.coupled_weight_decay, again.bias_lr_factor) == (0.8, 3e-4, 1.5)

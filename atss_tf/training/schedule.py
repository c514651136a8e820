"""The official learning-rate schedule: constant warmup, then multi-step decay."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="atss_tf")
class WarmupMultiStepSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``base_lr * gamma**(#milestones <= i) * (warmup_factor if i < warmup_iters else 1)``.

    ``i`` is the 1-based iteration: the authors' scheduler steps *before* each
    iteration, so Keras' 0-based ``optimizer.iterations`` is shifted by one to
    give the same rate at every iteration as the official run.

    Args:
        base_lr: learning rate after warmup (already scaled for the batch size).
        milestones: iterations at which the rate is multiplied by ``gamma``.
        gamma: decay factor (0.1).
        warmup_iters: length of the constant warmup (500).
        warmup_factor: warmup multiplier (1/3).
    """

    def __init__(
        self,
        base_lr: float,
        milestones=(60000, 80000),
        gamma: float = 0.1,
        warmup_iters: int = 500,
        warmup_factor: float = 1.0 / 3.0,
    ):
        self.base_lr = float(base_lr)
        self.milestones = tuple(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step):
        i = ops.cast(step, "float32") + 1.0
        decays = (
            sum(ops.cast(i >= float(m), "float32") for m in self.milestones)
            if self.milestones
            else 0.0
        )
        warm = ops.where(i < float(self.warmup_iters), self.warmup_factor, 1.0)
        return self.base_lr * ops.power(self.gamma, decays) * warm

    def get_config(self):
        return dict(
            base_lr=self.base_lr,
            milestones=list(self.milestones),
            gamma=self.gamma,
            warmup_iters=self.warmup_iters,
            warmup_factor=self.warmup_factor,
        )


def scaled_base_lr(base_lr: float, batch_size: int, reference_batch: int = 16) -> float:
    """Linear scaling rule: ``base_lr`` is given for ``reference_batch`` images."""
    return base_lr * batch_size / reference_batch

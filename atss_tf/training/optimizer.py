"""SGD exactly as the authors train ATSS (ATSS_SPEC §9).

Keras' ``SGD(weight_decay=...)`` decays weights *decoupled* from the gradient
and its momentum folds the learning rate into the buffer; the official
PyTorch recipe adds ``weight_decay * w`` to the gradient and keeps an
lr-free buffer (``buf = m * buf + g; w -= lr * buf``). The two disagree once
the learning rate changes, so parity needs this small optimiser.
"""

from __future__ import annotations

import keras
from keras import ops

# Keras names the offset of a conv/dense layer "bias" and of a norm layer "beta";
# both are PyTorch "bias" parameters (2x lr, no decay in the official recipe).
BIAS_VARIABLE_NAMES = ("bias", "beta")


def is_bias(variable) -> bool:
    """True for variables the official recipe treats as biases."""
    return variable.name.split("/")[-1] in BIAS_VARIABLE_NAMES


@keras.saving.register_keras_serializable(package="atss_tf")
class CoupledSGD(keras.optimizers.Optimizer):
    """Momentum SGD with coupled weight decay and a bias learning-rate factor.

    Per variable ``w`` with gradient ``g`` (PyTorch ``torch.optim.SGD``)::

        g = g + weight_decay * w          (not for biases)
        buf = momentum * buf + g
        w = w - lr * factor * buf         (factor = bias_lr_factor for biases, else 1)

    Args:
        learning_rate: float or a ``LearningRateSchedule`` of ``iterations``.
        momentum: momentum coefficient (0.9).
        weight_decay: coupled L2 coefficient for non-bias variables (1e-4).
        bias_lr_factor: learning-rate multiplier for biases (2.0).
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        bias_lr_factor: float = 2.0,
        name: str = "coupled_sgd",
        **kwargs,
    ):
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = float(momentum)
        self.coupled_weight_decay = float(weight_decay)
        self.bias_lr_factor = float(bias_lr_factor)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [self.add_variable_from_reference(v, name="momentum") for v in variables]
        # Decided here on the Keras variables: under the TF backend update_step
        # receives the backing tf.Variable, whose name differs.
        self._bias_flags = [is_bias(v) for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        grad = ops.cast(gradient, variable.dtype)
        index = self._get_variable_index(variable)
        if self._bias_flags[index]:
            lr = lr * self.bias_lr_factor
        elif self.coupled_weight_decay:
            grad = grad + self.coupled_weight_decay * variable
        buf = self.momentums[index]
        self.assign(buf, self.momentum * buf + grad)
        self.assign_sub(variable, lr * buf)

    def get_config(self):
        config = super().get_config()
        config.update(
            momentum=self.momentum,
            weight_decay=self.coupled_weight_decay,
            bias_lr_factor=self.bias_lr_factor,
        )
        return config

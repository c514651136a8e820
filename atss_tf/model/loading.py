"""Reading a detector back from a ``.keras`` file, for every command that takes one."""

from __future__ import annotations

import keras

from atss_tf.errors import CheckpointError, first_line
from atss_tf.model.detector import ATSSDetector


def load_keras_detector(path: str) -> ATSSDetector:
    """The :class:`ATSSDetector` saved in the ``.keras`` file ``path``, uncompiled.

    The caller registers the Keras classes first (``atss_tf.load_api()``).

    Raises:
        CheckpointError: the file cannot be read as a Keras model, or holds
            another kind of model; the message names the file.
    """
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for a foreign or damaged file
        raise CheckpointError(f"cannot load {path} as a Keras model: {first_line(e)}") from None
    if not isinstance(model, ATSSDetector):
        raise CheckpointError(
            f"{path} holds a Keras {type(model).__name__}, not an ATSS detector "
            "(atss-tf train and atss-tf convert write those)"
        )
    return model

"""Checkpoint converters: official ATSS (PyTorch) weights -> Keras, without torch."""

from atss_tf.convert.official import (
    ConversionError,
    ConversionResult,
    convert_official,
    infer_config,
    load_official_weights,
    official_weight_map,
)
from atss_tf.convert.torch_pickle import (
    CheckpointError,
    UnsafeCheckpointError,
    load_checkpoint,
    load_state_dict,
)

__all__ = [
    "CheckpointError",
    "ConversionError",
    "ConversionResult",
    "UnsafeCheckpointError",
    "convert_official",
    "infer_config",
    "load_checkpoint",
    "load_official_weights",
    "load_state_dict",
    "official_weight_map",
]

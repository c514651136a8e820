"""atss-tf: ATSS (Adaptive Training Sample Selection) object detection in TensorFlow / Keras 3."""

__version__ = "0.1.0"

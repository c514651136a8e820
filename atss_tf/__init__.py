"""atss-tf: ATSS (Adaptive Training Sample Selection) object detection in TensorFlow / Keras 3.

Importing the package registers every serialisable class (the detector and its
layers, the optimizer and its schedule) with Keras, so
``import atss_tf; keras.saving.load_model("model.keras")`` needs nothing else.

The data flow, with the public entry points of each step::

    load_config("configs/....yaml", ["key=value"])          -> Config
    build_dataset(cfg, "train", encoder_factory)             -> tf.data (x, y) per canvas
        TargetEncoder(cfg, canvas): ATSS targets in tf.data (XLA)
    build_training_model(cfg) / build_detector(cfg)          -> ATSSDetector (keras.Model)
    model.fit(...) / model.evaluate(...) / model.predict(...)
    detect(model, [rgb, ...])                                -> boxes in original pixels
    draw_detections(image, detections, names)                -> matplotlib picture
"""

__version__ = "0.1.0"

from atss_tf.config import Config, ConfigError, load_config, save_config
from atss_tf.data.pipeline import build_dataset
from atss_tf.data.synthetic import generate_synthetic_coco
from atss_tf.inference import (
    class_names,
    detect,
    draw_detections,
    load_detector,
    read_image,
    save_detection_grid,
)
from atss_tf.model import ATSSDetector, build_detector
from atss_tf.targets import TargetEncoder
from atss_tf.trainer import build_training_model, train
from atss_tf.training.optimizer import CoupledSGD
from atss_tf.training.schedule import WarmupMultiStepSchedule

__all__ = [
    "ATSSDetector",
    "Config",
    "ConfigError",
    "CoupledSGD",
    "TargetEncoder",
    "WarmupMultiStepSchedule",
    "__version__",
    "build_dataset",
    "build_detector",
    "build_training_model",
    "class_names",
    "detect",
    "draw_detections",
    "generate_synthetic_coco",
    "load_config",
    "load_detector",
    "read_image",
    "save_config",
    "save_detection_grid",
    "train",
]

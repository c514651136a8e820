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

import importlib as _importlib
import os as _os
import sys as _sys

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


_API = {
    "atss_tf.config": ("Config", "ConfigError", "load_config", "save_config"),
    "atss_tf.data.pipeline": ("build_dataset",),
    "atss_tf.data.synthetic": ("generate_synthetic_coco",),
    "atss_tf.inference": (
        "class_names",
        "detect",
        "draw_detections",
        "load_detector",
        "read_image",
        "save_detection_grid",
    ),
    "atss_tf.model": ("ATSSDetector", "build_detector"),
    "atss_tf.targets": ("TargetEncoder",),
    "atss_tf.trainer": ("build_training_model", "train"),
    "atss_tf.training.optimizer": ("CoupledSGD",),
    "atss_tf.training.schedule": ("WarmupMultiStepSchedule",),
}


def load_api() -> None:
    """Import the API (TensorFlow, Keras) and register every Keras class.

    Runs on ``import atss_tf``, except in the ``atss-tf`` command line, which
    calls it once a command actually runs so that ``atss-tf --help`` does not
    pay for importing TensorFlow.
    """
    for module_name, names in _API.items():
        module = _importlib.import_module(module_name)
        for name in names:
            globals()[name] = getattr(module, name)


def _launched_by_cli() -> bool:
    main = _sys.modules.get("__main__")
    return _os.path.basename(getattr(main, "__file__", None) or "") in ("atss-tf", "atss-tf.exe")


def __getattr__(name: str):
    if name in __all__:
        load_api()
        return globals()[name]
    raise AttributeError(f"module 'atss_tf' has no attribute {name!r}")


if not _launched_by_cli():
    load_api()

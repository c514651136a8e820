"""atss-tf: ATSS (Adaptive Training Sample Selection) object detection in TensorFlow / Keras 3.

Importing the package registers every serialisable class (the detector and its
layers, the optimizer and its schedule) with Keras, so
``import atss_tf; keras.saving.load_model("model.keras")`` needs nothing else.

The data flow, one module (or package) per step::

    config/          load_config("configs/....yaml", ["key=value"])   -> Config
    data/            sources (COCO json + images, TFRecords) -> one parsed
                     example -> cleaning.py -> transforms (resize, flip, pad to a
                     canvas) -> pipeline.build_dataset: tf.data per canvas
    anchors.py       the anchor grid of a canvas (NumPy constants)
    targets/         TargetEncoder.from_config(cfg, canvas): ATSS (or IoU, FCOS,
                     TOPK) sample selection -> dense targets, XLA, inside tf.data
    model/           build_detector(cfg) -> ATSSDetector (keras.Model): backbone,
                     FPN, head; its .keras file holds a DetectorConfig only
    losses.py        focal + GIoU + centerness, called by the train step
    postprocess.py   decode, threshold, class-aware NMS, called by the predict step
    boxes.py         the one definition of box maths (IoU, coders, inclusive shift)
    training/        fit.train(cfg, out): optimizer, schedule, callbacks, resume
    evaluation.py    COCO metrics of a model on a validation set
    inference.py     load_detector, detect(model, [rgb, ...]) -> original pixels
    export.py        export_saved_model(model, dir): the TF Serving SavedModel
                     (decode, resize, canvases, network, NMS in one graph)
    visualization.py draw_detections / save_detection_grid (matplotlib)
    convert/         official PyTorch checkpoints and keras.applications weights
    commands/, cli.py  the atss-tf command line
"""

__version__ = "0.3.0"

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
    "detect",
    "draw_detections",
    "export_saved_model",
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
    "atss_tf.export": ("export_saved_model",),
    "atss_tf.inference": ("detect", "load_detector", "read_image"),
    "atss_tf.model": ("ATSSDetector", "build_detector"),
    "atss_tf.targets": ("TargetEncoder",),
    "atss_tf.training.fit": ("build_training_model", "train"),
    "atss_tf.training.optimizer": ("CoupledSGD",),
    "atss_tf.training.schedule": ("WarmupMultiStepSchedule",),
    "atss_tf.visualization": ("draw_detections", "save_detection_grid"),
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

"""ImageNet weight files a backbone can start from, and the input each expects.

``model.backbone.weights`` is ``null``, ``imagenet`` (keras.applications
ResNet-50/101, caffe mode) or the path of a file a user downloaded; the
file's suffix says its format, and with it the pixel normalisation its
network was trained with, which the config's ``model.input_bgr`` /
``pixel_mean`` / ``pixel_std`` must state (a rule of
:mod:`atss_tf.config.validation` checks it):

=============  =========================================  =====  ==========================  =======================
suffix         format                                     order  mean (0-255)                std
=============  =========================================  =====  ==========================  =======================
``.pkl``       Detectron's Caffe2 pickle (the official    BGR    102.9801 115.9465 122.7717  1 1 1
               configs' ``ImageNetPretrained/...``)
``.pth/.pt``   torchvision's ImageNet checkpoint          RGB    123.675 116.28 103.53       58.395 57.12 57.375
=============  =========================================  =====  ==========================  =======================

Detectron's pickles take the official detector's own input (maskrcnn-benchmark
``PIXEL_MEAN`` / ``PIXEL_STD`` defaults, which the authors' X-101 configs keep);
torchvision's are ``Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224,
0.225))`` on RGB in [0, 1], written here for 0-255 input.
"""

from __future__ import annotations

import dataclasses

KERAS_APPLICATIONS = "imagenet"


@dataclasses.dataclass(frozen=True)
class WeightFileFormat:
    """An ImageNet weight-file format and the normalisation its network expects."""

    name: str
    suffixes: tuple[str, ...]
    input_bgr: bool
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]

    def matches(self, input_bgr: bool, pixel_mean, pixel_std, tol: float = 1e-3) -> bool:
        """Whether a config's normalisation is this format's (to ``tol``)."""
        close = all(abs(a - b) <= tol for a, b in zip(pixel_mean, self.pixel_mean))
        return (
            bool(input_bgr) == self.input_bgr
            and close
            and all(abs(a - b) <= tol for a, b in zip(pixel_std, self.pixel_std))
        )

    def describe(self) -> str:
        """``model.input_bgr=true, model.pixel_mean=[...], model.pixel_std=[...]``."""
        return (
            f"model.input_bgr={'true' if self.input_bgr else 'false'}, "
            f"model.pixel_mean={list(self.pixel_mean)}, model.pixel_std={list(self.pixel_std)}"
        )


DETECTRON = WeightFileFormat(
    "Detectron Caffe2 pickle", (".pkl",), True, (102.9801, 115.9465, 122.7717), (1.0, 1.0, 1.0)
)
TORCHVISION = WeightFileFormat(
    "torchvision checkpoint",
    (".pth", ".pt"),
    False,
    (123.675, 116.28, 103.53),
    (58.395, 57.12, 57.375),
)
WEIGHT_FILE_FORMATS = (DETECTRON, TORCHVISION)


def weight_file_format(path: str) -> WeightFileFormat | None:
    """The format ``path``'s suffix names (None: no known suffix)."""
    for fmt in WEIGHT_FILE_FORMATS:
        if str(path).lower().endswith(fmt.suffixes):
            return fmt
    return None

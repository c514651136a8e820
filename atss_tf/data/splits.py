"""Where a split's images and boxes come from, decided once.

A config names each split's data in ``data.{split}_annotations`` /
``data.{split}_images`` (a COCO json and its image folder: the demo's
synthetic set is one) and ``data.{split}_tfrecords`` (a glob of TFRecord
shards). :func:`split_source` reads those keys and the cleaning settings
once into a :class:`SplitSource`; every reader takes that value, so the rule
below is written here only:

* images and boxes come from the TFRecords when ``{split}_tfrecords`` is set,
  else from the json and the image folder;
* the category list and, for evaluation, the ground truth come from the json
  when one is set (the json is the authority: COCO ``area`` values and
  crowd boxes as annotated), else from the TFRecords (``PREFIX.categories.json``
  beside them, and ground truth rebuilt from their boxes).
"""

from __future__ import annotations

from dataclasses import dataclass

from atss_tf.data.image_files import DEFAULT_MAX_PIXELS
from atss_tf.errors import DataError

SPLITS = ("train", "val")


@dataclass(frozen=True)
class Cleaning:
    """How a split's records are cleaned (:mod:`atss_tf.data.cleaning`); the
    fields are :func:`atss_tf.data.coco.load_coco`'s keyword arguments.

    Attributes:
        training: skip images without a usable box (the official training
            behaviour); evaluation keeps them.
        crowd: ``"drop"`` or ``"ignore"`` (kept as ignore regions).
        max_instances: boxes kept per image (``None``: no limit).
        keep_empty_images: training keeps images without a box as negatives
            (``data.keep_empty_images``).
        image_check: ``"none"``, ``"quick"`` or ``"full"`` (COCO image files).
        bad_images: ``"skip"`` or ``"error"``.
        max_pixels: images above this many pixels are refused (0: no limit).
    """

    training: bool
    crowd: str = "drop"
    max_instances: int | None = 100
    keep_empty_images: bool = False
    image_check: str = "quick"
    bad_images: str = "skip"
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def from_config(cls, config, split: str) -> Cleaning:
        """The cleaning of ``split`` by ``config.data``."""
        data = config.data
        return cls(
            training=split == "train",
            crowd=data.crowd,
            max_instances=data.max_instances,
            keep_empty_images=data.keep_empty_images,
            image_check=data.image_check,
            bad_images=data.bad_images,
            max_pixels=data.max_image_pixels,
        )


@dataclass(frozen=True)
class SplitSource:
    """One split's data: where its images, boxes, categories and ground truth
    come from (the module docstring's rule) and how they are cleaned.

    Attributes:
        split: ``"train"`` or ``"val"``.
        annotations: COCO json path, or None.
        images: the folder the json's ``file_name`` values are relative to.
        tfrecords: TFRecord glob, or None.
        cleaning: the cleaning rules.
    """

    split: str
    cleaning: Cleaning
    annotations: str | None = None
    images: str | None = None
    tfrecords: str | None = None

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if not self.tfrecords and not (self.annotations and self.images):
            raise DataError(
                f"data.{self.split}_annotations and data.{self.split}_images must both be set, "
                f"or data.{self.split}_tfrecords"
            )

    @property
    def format(self) -> str:
        """``"tfrecords"`` or ``"coco"``: what the images and boxes are read from."""
        return "tfrecords" if self.tfrecords else "coco"

    @property
    def training(self) -> bool:
        return self.split == "train"

    @classmethod
    def tfrecords_of(cls, config, split: str, pattern: str) -> SplitSource:
        """``split`` read from the TFRecords ``pattern`` with ``config``'s cleaning."""
        return cls(split, Cleaning.from_config(config, split), tfrecords=pattern)


def _named(config, split: str) -> tuple[str | None, str | None, str | None]:
    """``(annotations, images, tfrecords)`` as ``config.data`` names them for ``split``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data = config.data
    if split == "train":
        return data.train_annotations, data.train_images, data.train_tfrecords
    return data.val_annotations, data.val_images, data.val_tfrecords


def has_split(config, split: str) -> bool:
    """Whether ``config`` names any data for ``split`` (a half-named split is
    reported by :func:`split_source`)."""
    return any(_named(config, split))


def split_source(config, split: str) -> SplitSource:
    """The :class:`SplitSource` of ``split`` (``"train"`` or ``"val"``) from
    ``config.data``.

    Raises:
        DataError: the split names no data (its message names the keys to set).
    """
    return SplitSource(split, Cleaning.from_config(config, split), *_named(config, split))


def tfrecord_patterns(config) -> list[str]:
    """The TFRecord globs ``config``'s splits read (train first), none for a
    split read from COCO json or not named."""
    return [tfrecords for split in SPLITS if (tfrecords := _named(config, split)[2])]

"""Input data: COCO / TFRecord readers, transforms, tf.data pipelines, synthetic data.

Layout: :mod:`~atss_tf.data.coco` (json + images -> records, category map,
report of drops), :mod:`~atss_tf.data.tfrecords` (TF OD API / Model Garden
format), :mod:`~atss_tf.data.transforms` (decode, resize, flip, pad to a
static canvas), :mod:`~atss_tf.data.splits` (a split's source and cleaning,
decided once: :func:`split_source`), :mod:`~atss_tf.data.inference_input`
(test-time input settings shared by inference, evaluation and export),
:mod:`~atss_tf.data.pipeline` (``build_dataset``),
:mod:`~atss_tf.data.synthetic` (shapes dataset).
"""

from atss_tf.data.coco import (
    CategoryMap,
    CocoDataset,
    DataError,
    DataReport,
    load_coco,
    read_coco_json,
)
from atss_tf.data.image_files import check_image_file, read_image_header
from atss_tf.data.pipeline import (
    build_dataset,
    load_split,
    load_val_annotations,
    resolve_category_map,
)
from atss_tf.data.splits import Cleaning, SplitSource, has_split, split_source
from atss_tf.data.synthetic import SyntheticPaths, generate_synthetic_coco
from atss_tf.data.tfrecords import parse_example, read_tfrecords, scan_report, write_tfrecords
from atss_tf.data.transforms import (
    TransformConfig,
    boxes_to_original,
    choose_canvas,
    decode_image,
    official_resize_size,
    rgb_pixel_mean,
    transform,
)

__all__ = [
    "CategoryMap",
    "Cleaning",
    "CocoDataset",
    "DataError",
    "DataReport",
    "SplitSource",
    "SyntheticPaths",
    "TransformConfig",
    "build_dataset",
    "check_image_file",
    "boxes_to_original",
    "choose_canvas",
    "decode_image",
    "generate_synthetic_coco",
    "has_split",
    "load_coco",
    "load_split",
    "load_val_annotations",
    "official_resize_size",
    "parse_example",
    "read_coco_json",
    "read_image_header",
    "read_tfrecords",
    "resolve_category_map",
    "rgb_pixel_mean",
    "scan_report",
    "split_source",
    "transform",
    "write_tfrecords",
]

"""What a detector's ``.keras`` file holds, by format version, and the migrations.

Format 4: format 3 with the deformable-conv settings ``model.backbone.dcn_stages``
and ``model.head.dcn`` (an older file is read with none: its network has no DCN).

Format 3 (atss-tf >= 0.3): ``ATSSDetector.get_config`` stores
``{"format_version": 3, "detector": <DetectorConfig as a dict>}`` - the network,
anchors, normalisation, box geometry, post-processing, class names, the
dataset's category ids and the test-time input size. No data paths, no schedule, no assigner or loss
settings (those are how a model is *trained*, set with ``compile``), and no
compile config (the optimizer's schedule).

Format 2 (atss-tf 0.2): the same without ``model.category_ids`` (read as
labels 1..C, their default).

Format 1 (atss-tf 0.1): ``{"config": <the whole training Config>}``. It is
read by picking out the sections format 2 keeps, so fields of the training
sections (``data``, ``train``, ``assigner``, ``loss``) may be renamed or
removed later without breaking old files.
"""

from __future__ import annotations

from typing import Any

from atss_tf.config import DetectorConfig, detector_config_from_dict, from_dict, to_dict
from atss_tf.errors import CheckpointError, ConfigError

FORMAT_VERSION = 4


def detector_config_to_file(config: DetectorConfig) -> dict[str, Any]:
    """The ``get_config`` entries of a detector (current format)."""
    return {"format_version": FORMAT_VERSION, "detector": to_dict(config)}


def _from_format_1(full: dict[str, Any]) -> DetectorConfig:
    """A v0.1 file's full training config -> its :class:`DetectorConfig`."""
    data = full.get("data") or {}
    kept = {
        "model": full.get("model") or {},
        "postprocess": full.get("postprocess") or {},
        "official_compat": full.get("official_compat", False),
        "data": {k: data[k] for k in ("min_size", "max_size", "canvases") if k in data},
    }
    inclusive = (full.get("loss") or {}).get("inclusive_geometry")
    if inclusive is not None:  # moved to model.inclusive_geometry in format 2
        kept["model"] = {**kept["model"], "inclusive_geometry": inclusive}
    return from_dict(kept).detector_config()


def detector_config_from_file(entries: dict[str, Any]) -> DetectorConfig:
    """The :class:`DetectorConfig` of ``get_config`` entries of any known format.

    Raises:
        CheckpointError: a format newer than this version reads, or settings
            that are not valid (the message names the key).
    """
    version = entries.get("format_version", 1 if "config" in entries else None)
    try:
        if version == 1:
            return _from_format_1(entries["config"])
        if version in (2, 3, FORMAT_VERSION):
            return detector_config_from_dict(entries["detector"])
    except ConfigError as e:
        raise CheckpointError(
            f"invalid detector settings in the model file (format {version}): {e}"
        ) from None
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"the model file has format {version}, written by a newer atss-tf; this version "
            f"reads formats 1..{FORMAT_VERSION}: upgrade atss-tf"
        )
    raise CheckpointError(f"the model file has no ATSS detector settings (format {version!r})")

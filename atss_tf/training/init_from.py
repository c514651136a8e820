"""Fine-tuning: start a detector from another detector's weights (``train.init_from``).

``atss-tf train --init-from MODEL`` (or ``train.init_from: MODEL``) builds the
detector of the config as usual, then copies into it every tensor of MODEL
whose name and shape fit: the backbone, the FPN, the head towers, the box and
centerness branches and the per-level scales. The classification layer
``head/cls_logits`` is copied only when both models predict the same classes
(the same ``num_classes``, category ids and names); for the user's own
classes it keeps the initialisation the head gives it, ``normal(0, 0.01)``
and the prior-probability bias ``-log((1 - p) / p)`` (``model.head.prior_prob``).
Any other tensor that does not fit (another anchor count, head width or tower
depth) also keeps its fresh initialisation, and :class:`InitReport` says which
and why.

The backbone must be the same network: a different depth, width, grouping,
stride placement, deformable stages, norm or input channel order is refused
with one line naming the settings (:func:`check_backbone`), since its tensors
would load into convolutions that compute something else.

MODEL is a ``.keras`` file (``model.keras`` and the checkpoints ``atss-tf
train`` writes, the output of ``atss-tf convert``) or an official ``.pth``
checkpoint, converted in memory as ``atss-tf convert official`` does. Only
weights are copied: the optimizer starts afresh, at step 0. A run that
resumes from its own checkpoint does not read MODEL again (:func:`atss_tf.training.fit.train`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field

import keras
import numpy as np

from atss_tf import files
from atss_tf.errors import CheckpointError, UsageError

logger = logging.getLogger("atss_tf")

# The settings of model.backbone (and the input channel order) that change what
# a backbone tensor means; all must agree between MODEL and the config.
BACKBONE_KEYS = (
    "depth",
    "groups",
    "width_per_group",
    "width_multiplier",
    "stride_in_1x1",
    "dcn_stages",
    "norm",
)
CLASSIFIER = "head/cls_logits/"


@dataclass
class InitReport:
    """What :func:`transfer_weights` did.

    Attributes:
        source: where the weights came from (the file, or a description).
        loaded: paths (``backbone/stem_conv1/kernel``: the variable path
            without the model's name) of the tensors copied.
        initialised: ``(path, reason)`` of the tensors left at the target's
            own initialisation.
        unused: paths of the source's tensors that went nowhere.
        num_parameters: scalars copied.
        notes: other things worth a line (an input mean that differs).
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    initialised: list[tuple[str, str]] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    num_parameters: int = 0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The report as a few lines: counts per part of the network, then each
        initialised tensor with its reason (the same reasons grouped)."""
        total = len(self.loaded) + len(self.initialised)
        out = [
            f"Initialised from {self.source}: loaded {len(self.loaded)} of {total} tensors "
            f"({self.num_parameters:,} parameters)"
        ]
        if self.loaded:
            parts = Counter(_part(p) for p in self.loaded)
            out.append("  loaded: " + ", ".join(f"{k} {n}" for k, n in parts.items()))
        by_reason: dict[str, list[str]] = {}
        for path, reason in self.initialised:
            by_reason.setdefault(reason, []).append(path)
        for reason, paths in by_reason.items():
            shown = ", ".join(paths[:6]) + (
                f", and {len(paths) - 6} more" if len(paths) > 6 else ""
            )
            out.append(f"  initialised ({reason}): {shown}")
        if self.unused:
            shown = ", ".join(self.unused[:4]) + (", ..." if len(self.unused) > 4 else "")
            out.append(f"  not used from the source: {len(self.unused)} tensors ({shown})")
        out.extend(f"  note: {n}" for n in self.notes)
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _part(path: str) -> str:
    """The part of the network a variable path belongs to, for the report."""
    parts = path.split("/")
    if parts[0] != "head" or len(parts) < 2:
        return parts[0]
    layer = parts[1]
    if "tower" in layer:
        return "head towers"
    if layer.startswith("scale"):
        return "head scales"
    return f"head {layer}"


def _named_weights(model: keras.Model) -> dict[str, keras.Variable]:
    """``{path without the model's name: variable}`` of every weight of ``model``."""
    out = {}
    for v in model.weights:
        path = v.path.split("/", 1)[1] if "/" in v.path else v.path
        if path in out:  # names are unique within a detector; a clash is a bug
            raise RuntimeError(f"two weights of {model.name} have the path {path}")
        out[path] = v
    return out


def _backbone_settings(model) -> dict[str, object]:
    m = model.detector_config.model
    settings = {f"model.backbone.{k}": getattr(m.backbone, k) for k in BACKBONE_KEYS}
    settings["model.backbone.dcn_stages"] = tuple(m.backbone.dcn_stages)
    settings["model.input_bgr"] = m.input_bgr
    return settings


def check_backbone(source, target, source_name: str) -> None:
    """Refuse a source whose backbone is another network than the target's.

    Args:
        source, target: :class:`~atss_tf.model.ATSSDetector` models.
        source_name: the file, for the message.

    Raises:
        CheckpointError: one line naming every differing setting with both values.
    """
    a, b = _backbone_settings(source), _backbone_settings(target)
    diffs = [f"{k}={a[k]!r} there, {b[k]!r} here" for k in a if a[k] != b[k]]
    if diffs:
        raise CheckpointError(
            f"--init-from {source_name}: its backbone does not fit the config's ("
            + "; ".join(diffs)
            + "): set the config's backbone to the model's, or start from a model with "
            "this backbone"
        )


def same_classes(source, target) -> bool:
    """Whether two detectors predict the same classes: same count, and the same
    category ids and names where both have them."""
    if source.num_classes != target.num_classes:
        return False
    a, b = source.detector_config.model, target.detector_config.model
    for x, y in ((a.category_ids, b.category_ids), (a.class_names, b.class_names)):
        if x and y and tuple(x) != tuple(y):
            return False
    return True


def transfer_weights(source, target, source_name: str = "the source model") -> InitReport:
    """Copy into ``target`` every weight of ``source`` whose path and shape fit.

    The classification layer is copied only if :func:`same_classes`; every
    weight not copied keeps ``target``'s value (a freshly built detector: its
    initialisers). Call it on a built detector, before training.

    Args:
        source: the :class:`~atss_tf.model.ATSSDetector` to copy from.
        target: the built detector to copy into (any distribution strategy's
            variables; the values are assigned from NumPy arrays).
        source_name: names the source in messages and in the report.

    Returns:
        An :class:`InitReport`.

    Raises:
        CheckpointError: the backbones differ (:func:`check_backbone`).
    """
    check_backbone(source, target, source_name)
    src, dst = _named_weights(source), _named_weights(target)
    report = InitReport(source_name)
    classes_fit = same_classes(source, target)
    if not classes_fit:
        names = target.class_names
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        new_classes = (
            f"new classes: {source.num_classes} -> {target.num_classes} ({shown}); "
            f"prior_prob bias {target.detector_config.model.head.prior_prob}"
        )
    for path, var in dst.items():
        there = src.get(path)
        if there is None:
            report.initialised.append((path, "not in the source"))
        elif path.startswith(CLASSIFIER) and not classes_fit:
            report.initialised.append((path, new_classes))
        elif tuple(there.shape) != tuple(var.shape):
            report.initialised.append(
                (path, f"shape {tuple(there.shape)} there, {tuple(var.shape)} here")
            )
        else:
            value = np.asarray(keras.ops.convert_to_numpy(there))
            var.assign(value.astype(var.dtype))
            report.loaded.append(path)
            report.num_parameters += int(value.size)
    report.unused = [p for p in src if p not in dst]
    a, b = source.detector_config.model, target.detector_config.model
    if tuple(a.pixel_mean) != tuple(b.pixel_mean) or tuple(a.pixel_std) != tuple(b.pixel_std):
        report.notes.append(
            f"the source normalised its input with mean {tuple(a.pixel_mean)} and std "
            f"{tuple(a.pixel_std)}, this config with {tuple(b.pixel_mean)} and "
            f"{tuple(b.pixel_std)} (model.pixel_mean / model.pixel_std)"
        )
    return report


def load_source(path: str | os.PathLike):
    """The detector of an ``--init-from`` file: a ``.keras`` model, or an
    official ``.pth`` checkpoint converted in memory.

    Raises:
        FileNotFoundError: no such file.
        UsageError: another suffix.
        CheckpointError: the file is not an ATSS detector (the message names it).
    """
    import atss_tf
    from atss_tf.model.loading import load_keras_detector

    atss_tf.load_api()  # registers every Keras class (the console script defers it)
    path = os.fspath(path)
    if not files.exists(path):
        raise FileNotFoundError(f"--init-from model not found: {path}")
    if path.endswith(".pth"):
        from atss_tf.convert import convert_official

        return convert_official(path).model
    if not path.endswith(".keras"):
        raise UsageError(
            f"--init-from {path}: expected a .keras model or an official .pth checkpoint"
        )
    return load_keras_detector(path)


def init_from(target, path: str | os.PathLike) -> InitReport:
    """Load ``path`` (:func:`load_source`) and :func:`transfer_weights` into
    ``target``; the source model is dropped afterwards."""
    return transfer_weights(load_source(path), target, os.fspath(path))

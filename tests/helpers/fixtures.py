"""The repository root and the official fixtures beside it (``../shared``).

``fixture_path`` and ``load_fixture`` skip the calling test, naming the file,
when the fixtures are absent; the converters turn the authors' array layouts
into this project's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from atss_tf.boxes import from_inclusive

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "official_atss_r50"
# The authors' DCNv2 models (README there): checkpoint and outputs per architecture.
DCN_FIXTURES = FIXTURES.parent / "official_atss_dcn"
DCN_MODELS = ("r50_dcn", "x50_32x4d_dcn")

# The same weights in torch's two on-disk formats: zip (PyTorch >= 1.6) and the
# legacy stream the authors' 2019 model zoo was written in.
OFFICIAL_CHECKPOINTS = {
    "zip": "official_random_fp16.pth",
    "legacy": "official_legacy_format.pth",
}


def fixture_path(name: str, folder: Path = FIXTURES) -> Path:
    """A file of an official fixtures folder (default ``official_atss_r50``; the
    test skips, naming it, if absent)."""
    path = folder / name
    if not path.exists():
        pytest.skip(f"official fixture {path} is absent (expected ../shared beside the repo)")
    return path


def load_fixture(name: str, folder: Path = FIXTURES):
    """An ``.npz`` of an official fixtures folder (skips like ``fixture_path``)."""
    return np.load(fixture_path(name, folder), allow_pickle=True)


def inclusive_to_continuous(boxes: np.ndarray) -> np.ndarray:
    """Official inclusive-pixel boxes -> this project's continuous boxes (+1 on x2, y2)."""
    return from_inclusive(np.array(boxes, dtype=np.float32))


LEVELS = (3, 4, 5, 6, 7)


def fixture_head_outputs(npz, num_classes: int = 80) -> dict[str, np.ndarray]:
    """Official NCHW per-level head outputs -> ``[1, A, n]`` in anchor order."""

    def flat(prefix: str, n: int) -> np.ndarray:
        return np.concatenate(
            [npz[f"{prefix}_p{lvl}"].transpose(0, 2, 3, 1).reshape(1, -1, n) for lvl in LEVELS],
            axis=1,
        )

    return {
        "cls_logits": flat("cls_logits", num_classes),
        "box_regression": flat("bbox_reg", 4),
        "centerness": flat("centerness", 1),
    }


def dcn_layer_record(npz, name: str) -> dict:
    """One recorded DCN layer of ``official_atss_dcn/*_outputs.npz`` in this
    project's layouts: ``input`` ``[1, H, W, C]``, ``offset_conv_output``
    ``[1, Ho, Wo, 27]``, ``output`` ``[1, Ho, Wo, F]``, ``kernel``
    ``[3, 3, C / groups, F]`` (HWIO), ``bias`` ``[F]`` or None, ``stride``,
    ``groups``. ``name`` as in ``layer_names`` (``rpn.head.cls_tower.9``)."""
    prefix = "layer/" + name.replace(".", "_") + "/"

    def nhwc(key: str) -> np.ndarray:
        return npz[prefix + key].transpose(0, 2, 3, 1)

    bias = npz[prefix + "bias"]
    return {
        "input": nhwc("input"),
        "offset_conv_output": nhwc("offset_conv_output"),
        "output": nhwc("output"),
        "kernel": npz[prefix + "weight"].transpose(2, 3, 1, 0),
        "bias": bias if bias.size else None,
        "stride": int(npz[prefix + "stride"]),
        "groups": int(npz[prefix + "groups"]),
    }

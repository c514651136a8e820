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

# The same weights in torch's two on-disk formats: zip (PyTorch >= 1.6) and the
# legacy stream the authors' 2019 model zoo was written in.
OFFICIAL_CHECKPOINTS = {
    "zip": "official_random_fp16.pth",
    "legacy": "official_legacy_format.pth",
}


def fixture_path(name: str) -> Path:
    """A file of the official fixtures folder (the test skips, naming it, if absent)."""
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"official fixture {path} is absent (expected ../shared beside the repo)")
    return path


def load_fixture(name: str):
    """An ``.npz`` of the official fixtures folder (skips like ``fixture_path``)."""
    return np.load(fixture_path(name), allow_pickle=True)


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

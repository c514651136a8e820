"""``import atss_tf`` is all a user needs: Keras classes registered, the notebook API on top."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import atss_tf
from atss_tf.model import build_detector
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def test_public_api_names_resolve():
    for name in atss_tf.__all__:
        assert getattr(atss_tf, name) is not None, name
    for name in ("ATSSDetector", "load_config", "build_dataset", "TargetEncoder", "detect"):
        assert name in atss_tf.__all__
    assert callable(atss_tf.draw_detections)


def test_import_atss_tf_alone_loads_a_saved_model_in_a_fresh_process(tmp_path):
    path = tmp_path / "tiny.keras"
    build_detector(tiny_config()).save(path)
    code = (
        "import atss_tf, keras, numpy as np\n"
        f"m = keras.saving.load_model({str(path)!r})\n"
        "out = m(np.zeros((1, 128, 128, 3), 'float32'))\n"
        "print(type(m).__name__, tuple(out['cls_logits'].shape))\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "ATSSDetector (1, 341, 3)"

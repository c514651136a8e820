"""A fit step under MirroredStrategy (2 logical CPUs) equals one device on the same batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_two_replicas_equal_one_device(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "mirrored_fit_script.py"), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["replicas"] == 2
    assert min(r["per_image_positives"]) > 0, "both replicas should see positives"
    for key in ("loss", "cls_loss", "reg_loss", "centerness_loss"):
        one, two = r[key]
        assert two == pytest.approx(one, rel=1e-5), key
    # The update is lr * gradient with lr = 1: gradients agree to 1e-5 of their scale.
    assert r["max_grad"] > 1e-3
    assert r["max_grad_diff"] <= 1e-5 * max(1.0, r["max_grad"])

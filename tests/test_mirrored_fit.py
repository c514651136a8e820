"""A fit step under MirroredStrategy (2 logical CPUs) equals one device on the same batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_script(name: str, tmp_path) -> dict:
    """Run ``tests/scripts/<name>`` in a fresh process (2 logical CPUs need a new TF); its json line."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scripts" / name), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # over a minute of the default lane's ten
def test_two_replicas_equal_one_device(tmp_path):
    r = _run_script("mirrored_fit_script.py", tmp_path)
    assert r["replicas"] == 2
    assert min(r["per_image_positives"]) > 0, "both replicas should see positives"
    for key in ("loss", "cls_loss", "reg_loss", "centerness_loss"):
        one, two = r[key]
        assert two == pytest.approx(one, rel=1e-5), key
    # The update is lr * gradient with lr = 1: gradients agree to 1e-5 of their scale.
    assert r["max_grad"] > 1e-3
    assert r["max_grad_diff"] <= 1e-5 * max(1.0, r["max_grad"])


@pytest.mark.slow
def test_two_canvases_under_mirrored_equal_one_device(tmp_path):
    """fit / evaluate / predict with a landscape and a portrait canvas under MirroredStrategy: each
    canvas compiled once, and the same weights, losses and detections as one
    device; on one device, predict_on_batch and detect reuse what they compiled."""
    r = _run_script("mirrored_canvases_script.py", tmp_path)
    assert r["replicas"] == 2
    assert len(r["canvases"]) == 2, r["canvases"]
    assert r["single_train_traces"] == r["mirrored_train_traces"] == [1, 1]
    assert r["max_weight_diff"] <= 1e-5 * max(1.0, r["weight_scale"])
    one, two = r["eval_loss"]
    assert two == pytest.approx(one, rel=1e-5)
    assert all(c == 1 for c in r["mirrored_test_traces"])
    assert r["num_detections"][0] == r["num_detections"][1] and min(r["num_detections"][0]) > 0
    # Six updates in another float order: weights differ by ~1e-5, detections by less than this.
    assert r["max_box_diff"] < 0.01 and r["max_score_diff"] < 1e-4
    assert all(c == 1 for c in r["mirrored_predict_traces"])
    # One device: evaluate, predict_on_batch and detect compile each signature
    # once (predict_on_batch's bare images one per canvas, detect at most
    # batch 1 and 2 per canvas) and give the same detections whatever the
    # order of the photos.
    assert all(c == 1 for c in r["single_test_traces"])
    assert all(c == 1 for c in r["single_predict_traces"])
    assert r["predict_on_batch_signatures_added"] <= len(r["canvases"])
    assert r["detect_signatures_added"] <= 2 * len(r["canvases"])
    assert r["detect_same_classes"]
    assert r["detect_max_box_diff"] <= 1e-3 and r["detect_max_score_diff"] <= 1e-5
    assert min(r["detect_counts"]) > 0 and r["detect_inside_photo"]

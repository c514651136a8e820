"""The atss-tf commands a user runs: demo, evaluate, help, errors."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from atss_tf import cli
from atss_tf.evaluation import METRIC_NAMES

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_commands_and_unknown_command_fails(capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in ("demo", "train", "evaluate", "predict", "assign", "convert", "make-tfrecords"):
        assert name in text
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_demo_end_to_end_tiny_then_evaluate_matches_pycocotools(tmp_path, capsys, monkeypatch):
    from atss_tf import visualization

    drawn, draw = [], visualization.save_detection_grid

    def drawing(images, detections, names, path, score_threshold=0.3, titles=None):
        drawn.append(score_threshold)
        draw(images, detections, names, path, score_threshold, titles)

    monkeypatch.setattr("atss_tf.visualization.save_detection_grid", drawing)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    out = tmp_path / "demo"
    rc = cli.main(
        [
            "demo",
            "--out",
            str(out),
            "--train-images",
            "16",
            "--val-images",
            "6",
            "--verbose",
            "0",
            "--set",
            "train.max_iters=4",
            "--set",
            "train.steps_per_epoch=2",
            "--set",
            "data.canvases=[[128, 128]]",
            "--set",
            "data.min_size=[128]",
            "--set",
            "data.max_size=128",
            "--set",
            "data.batch_size=4",
            "--set",  # 4 steps: not worth the demo's XLA compile (test_training compiles one)
            "train.jit_compile=false",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "COCO AP" in printed
    # a log file gets plain lines (no terminal codes); the picture the confident boxes only
    assert "\x1b" not in printed, printed
    assert drawn[-1] == 0.5 and "(detections scoring >= 0.5)" in printed  # TensorBoard: 0.3
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == list(METRIC_NAMES)
    for name in ("predictions.png", "model.keras", "detections.json", "config.yaml"):
        assert (out / name).exists(), name
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == 4

    # The last training checkpoint (a .keras with the optimizer) is the same model as model.keras.
    from atss_tf.config import load_config
    from atss_tf.inference import load_detector

    canvas = np.random.default_rng(0).uniform(0, 255, (1, 128, 128, 3)).astype("float32")
    from_keras = load_detector(out / "model.keras")(canvas)
    from_ckpt = load_detector(out / "checkpoints" / latest["path"])(canvas)
    weights = tmp_path / "w.weights.h5"
    load_detector(out / "model.keras").save_weights(weights)
    from_weights = load_detector(weights, load_config(out / "config.yaml"))(canvas)
    for key in from_keras:
        for other in (from_ckpt, from_weights):
            np.testing.assert_allclose(
                np.asarray(other[key]), np.asarray(from_keras[key]), atol=1e-5
            )
    with pytest.raises(ValueError, match="pass --config"):
        load_detector(weights)

    # atss-tf evaluate on the demo's model: metrics equal pycocotools on its json.
    eval_dir = tmp_path / "eval"
    rc = cli.main(
        [
            "evaluate",
            "--config",
            str(out / "config.yaml"),
            "--weights",
            str(out / "model.keras"),
            "--out",
            str(eval_dir),
        ]
    )
    assert rc == 0
    ours = json.loads((eval_dir / "metrics.json").read_text())
    dets = json.loads((eval_dir / "detections.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out / "data" / "val.json"))
        if dets:
            ev = COCOeval(coco, coco.loadRes(dets), "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            direct = ev.stats
        else:
            direct = np.zeros(12)
    np.testing.assert_allclose([ours[m] for m in METRIC_NAMES], direct, atol=1e-12)
    assert all(d["category_id"] in {1, 2, 3} for d in dets)

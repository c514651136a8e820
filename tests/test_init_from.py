"""Fine-tuning from another model (``train.init_from``, ``atss-tf train --init-from``):
what loads, what starts afresh, what is refused, and how it meets resuming."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

from atss_tf.errors import CheckpointError
from atss_tf.model import ATSSDetector, build_detector
from atss_tf.training.init_from import init_from, transfer_weights
from tests.helpers.fixtures import ROOT
from tests.helpers.tiny import tiny_config, with_synthetic_data


def _weights(model) -> dict[str, np.ndarray]:
    return {v.path.split("/", 1)[1]: np.asarray(v) for v in model.weights}


def _coco_like(num_classes: int = 5):
    """A tiny detector of ``num_classes`` named classes, standing in for a COCO model."""
    names = ", ".join(f"thing{i}" for i in range(num_classes))
    ids = ", ".join(str(10 + i) for i in range(num_classes))
    return build_detector(
        tiny_config(
            [
                f"model.num_classes={num_classes}",
                f"model.class_names=[{names}]",
                f"model.category_ids=[{ids}]",
            ]
        )
    )


@pytest.fixture(scope="module")
def coco5():
    """A built tiny detector of 5 named classes (its weights are only read)."""
    return _coco_like(5)


@pytest.fixture(scope="module")
def coco3():
    return _coco_like(3)


def test_every_fitting_tensor_loads_and_the_classifier_of_new_classes_starts_afresh(coco5):
    source = coco5
    cfg = tiny_config(["model.class_names=[cat, dog, fox]", "model.head.prior_prob=0.02"])
    target = build_detector(cfg)
    report = transfer_weights(source, target, "coco.keras")
    src, dst = _weights(source), _weights(target)
    classifier = {"head/cls_logits/kernel", "head/cls_logits/bias"}
    assert {p for p, _ in report.initialised} == classifier
    assert set(report.loaded) == set(dst) - classifier
    assert report.num_parameters == sum(dst[p].size for p in report.loaded)
    for path in report.loaded:  # backbone, FPN, towers, box, centerness, scales
        np.testing.assert_array_equal(dst[path], src[path], err_msg=path)
    # The head's own initialisation for 3 classes: the prior-probability bias.
    np.testing.assert_allclose(dst["head/cls_logits/bias"], [-math.log(0.98 / 0.02)] * 3)
    assert dst["head/cls_logits/kernel"].shape == (3, 3, 32, 3)
    assert abs(dst["head/cls_logits/kernel"].std() - 0.01) < 0.002
    text = str(report)
    assert text.startswith(f"Initialised from coco.keras: loaded {len(report.loaded)} of ")
    assert "new classes: 5 -> 3 (cat, dog, fox)" in text
    assert "backbone" in text and "fpn" in text and "head towers" in text
    assert "head bbox_pred 2" in text and "head centerness 2" in text


def test_the_same_classes_load_the_classifier_too(coco3):
    source, target = coco3, _coco_like(3)
    report = transfer_weights(source, target)
    assert not report.initialised and not report.unused
    np.testing.assert_array_equal(
        _weights(target)["head/cls_logits/kernel"], _weights(source)["head/cls_logits/kernel"]
    )


def test_head_tensors_that_do_not_fit_start_afresh_and_are_named(coco3):
    source = coco3
    target = build_detector(tiny_config(["model.head.num_convs=2"]))
    report = dict(transfer_weights(source, target).initialised)
    assert report["head/cls_tower_conv1/kernel"] == "not in the source"
    assert "head/cls_tower_conv0/kernel" not in report  # the first tower conv fits


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("model.backbone.width_multiplier=0.5", "model.backbone.width_multiplier=0.25 there, 0.5"),
        ("model.backbone.stride_in_1x1=false", "model.backbone.stride_in_1x1=True there, False"),
        ("model.input_bgr=true", "model.input_bgr=False there, True here"),
    ],
)
def test_another_backbone_is_one_line_naming_the_settings(coco3, override, named):
    target = ATSSDetector(tiny_config([override]))  # refused before any weight is read
    with pytest.raises(CheckpointError) as e:
        transfer_weights(coco3, target, "coco.keras")
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("--init-from coco.keras: its backbone does not fit")
    assert named in message


def test_init_from_reads_a_keras_file_and_refuses_other_files(coco5, tmp_path):
    path = tmp_path / "coco.keras"
    coco5.save(path)
    target = build_detector(tiny_config())
    report = init_from(target, path)
    assert len(report.initialised) == 2
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        init_from(target, tmp_path / "missing.keras")
    (tmp_path / "model.h5").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"model.h5: expected a .keras model or an official .pth"):
        init_from(target, tmp_path / "model.h5")
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="cannot load .*bad.keras as a Keras model"):
        init_from(target, tmp_path / "bad.keras")


@pytest.mark.slow
def test_a_run_starts_from_init_from_and_resumes_from_its_checkpoint(tmp_path, caplog, monkeypatch):
    """The first run copies the model in; killed and restarted, it resumes from
    its own checkpoint and does not read the model again (here: it is gone).
    Slow lane: two tiny training runs, about 25 s of CPU."""
    from atss_tf.training.fit import train

    source_path = tmp_path / "coco.keras"
    _coco_like(5).save(source_path)
    cfg = with_synthetic_data(
        tiny_config(["train.max_iters=1", "train.steps_per_epoch=1"]), tmp_path / "data", 8, 4
    )
    cfg.data.val_annotations = cfg.data.val_images = None
    cfg.train.init_from = str(source_path)
    out = tmp_path / "run"
    # The CLI, when a test ran it in this process, stops the package logger propagating.
    monkeypatch.setattr(logging.getLogger("atss_tf"), "propagate", True)
    with caplog.at_level(logging.INFO, logger="atss_tf"):
        first = train(cfg, out, verbose=0)
    assert "Initialised from " + str(source_path) in caplog.text
    assert "new classes: 5 -> 3" in caplog.text
    after_one = _weights(first)

    source_path.unlink()
    caplog.clear()
    cfg.train.max_iters = 2
    resumed = {}
    with caplog.at_level(logging.INFO, logger="atss_tf"):
        second = train(cfg, out, verbose=0, on_resume=resumed.update)
    assert resumed["step"] == 1
    assert "not read: the run resumes" in caplog.text
    assert "Initialised from" not in caplog.text
    assert int(second.optimizer.iterations.numpy()) == 2
    moved = _weights(second)
    assert any(not np.array_equal(moved[p], after_one[p]) for p in after_one)


@pytest.mark.slow
def test_readme_fine_tuning_from_the_official_r50(
    official_legacy_checkpoint, tmp_path, monkeypatch, capsys
):
    """The README's fine-tuning commands on the authors' R-50 checkpoint format:
    convert, train 2 steps on a 3-class COCO-format set with gapped category
    ids, evaluate, predict; in-process, in a user's folder, on one 96-px canvas."""
    import json

    from atss_tf import cli
    from tests.helpers.journeys import (
        SPARSE_CATEGORIES,
        first_canvas_only,
        make_dataset,
        readme_commands,
        shrink_overrides,
    )

    commands = readme_commands("Fine-tune a COCO model on your own classes")
    assert [c[0] for c in commands] == ["convert", "train", "evaluate", "predict"]
    monkeypatch.chdir(tmp_path)
    data = make_dataset(tmp_path / "data", SPARSE_CATEGORIES, n_train=6, n_val=3)
    Path(commands[0][2]).symlink_to(official_legacy_checkpoint)
    Path("configs").symlink_to(ROOT / "configs")
    Path("my_photos").symlink_to(data["val_images"])
    small = shrink_overrides("configs/atss_r50_fpn_1x_coco.yaml", data)
    small.append(first_canvas_only(small))

    for argv in commands:
        if "--config" in argv:
            argv = argv + [w for o in small for w in ("--set", o)]
        if argv[0] == "train":  # the journey evaluates with its own command
            argv += ["--set", "data.val_annotations=null", "--set", "data.val_images=null"]
        assert cli.main(argv) == 0, capsys.readouterr().err[-3000:]
        printed = capsys.readouterr()  # the CLI logs to stderr
        if argv[0] == "convert":
            assert "tensors mapped: 324" in printed.out
        elif argv[0] == "train":
            log = printed.err
            assert f"Initialised from {commands[0][3]}: loaded 322 of 324 tensors" in log
            assert "new classes: 80 -> 3 (circle, square, triangle)" in log
    out = Path("runs/my_classes")
    metrics = json.loads((out / "eval/metrics.json").read_text())
    assert "AP" in metrics
    detections = json.loads((out / "pictures/detections.json").read_text())
    assert {d["category_id"] for d in detections} <= {2, 5, 9}
    assert len(list((out / "pictures").glob("*.detections.png"))) == 3


@pytest.mark.slow
def test_an_official_pth_initialises_directly(official_checkpoint):
    """``--init-from`` an official ``.pth``: converted in memory, then the same rules."""
    from atss_tf.config import load_config

    cfg = load_config(
        ROOT / "configs/atss_r50_fpn_1x_coco.yaml",
        ["model.num_classes=3", "model.backbone.weights=null"],
    )
    report = init_from(build_detector(cfg), official_checkpoint)
    assert len(report.loaded) == 322 and len(report.initialised) == 2
    assert all(p.startswith("head/cls_logits/") for p, _ in report.initialised)
    assert any("pixel_mean" in n for n in report.notes)  # the config's ImageNet mean

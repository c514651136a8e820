"""The journeys users take, through the CLI, on the shipped configs and data shaped like theirs.

Every config in ``configs/`` runs the README's ``train -> evaluate -> predict``
commands on COCO-format data of mixed orientations and sizes with
non-contiguous category ids (COCO's own 80 ids for the COCO configs), keeping
its canvases, multi-scale sizes and assigner; only data paths, image sizes,
batch size and step counts change (``journeys.shrink_overrides``), and the
ablations, whose subject is the sample selection or the anchors, run on a
small backbone. The README's
commands are read from the README itself, so it cannot drift from what works.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from atss_tf import cli
from atss_tf.data.coco_names import COCO_CATEGORY_IDS
from atss_tf.evaluation import METRIC_NAMES
from tests.helpers.fixtures import OFFICIAL_CHECKPOINTS, fixture_path
from tests.helpers.journeys import (
    ANY_ON_SMALL_BACKBONE,
    COCO_CATEGORIES,
    CONFIGS,
    NARROW_BACKBONE,
    NO_DOWNLOAD,
    ROOT,
    SMALL_BACKBONE,
    SPARSE_CATEGORIES,
    first_canvas_only,
    make_dataset,
    readme_commands,
    shrink_overrides,
    train_step_key,
)

pytestmark = pytest.mark.slow

MAIN_CONFIG = "configs/atss_r50_fpn_1x_coco.yaml"


@pytest.fixture(scope="module")
def coco80(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("coco80"), COCO_CATEGORIES)


@pytest.fixture(scope="module")
def sparse3(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("sparse3"), SPARSE_CATEGORIES)


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    yield
    keras.backend.clear_session()


def _data_for(config: str, coco80, sparse3) -> dict[str, str]:
    from atss_tf.config import load_config

    return coco80 if load_config(ROOT / config).model.num_classes == 80 else sparse3


def _is_table_config(config: str) -> bool:
    """One of the many configs of the paper's Tables 1-7 (``ablations/table*``)."""
    return "ablations/table" in config


def _with_overrides(argv: list[str], data: dict[str, str], first_canvas: bool = False) -> list[str]:
    """Append the journey overrides to a README command that reads a config.
    The ablations (which change the sample selection, the anchors, the head
    or loss switches) run on a small backbone and keep only their first canvas
    (see :func:`test_every_shipped_config_trains_evaluates_and_predicts`); the
    other configs run on their own backbone and canvases, on the first canvas
    only with ``first_canvas``."""
    if "--config" not in argv:
        return argv
    config = argv[argv.index("--config") + 1]
    small = "ablations/" in config
    overrides = shrink_overrides(config, data, small_backbone=small)
    if small or first_canvas:
        overrides.append(first_canvas_only(overrides))
    return argv + [w for o in overrides for w in ("--set", o)]


def _atss_tf(argv: list[str], cwd: Path) -> str:
    """Run the installed ``atss-tf`` console script as a user does; return stdout."""
    exe = Path(sys.executable).parent / "atss-tf"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "atss_tf.cli"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        command + argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, (
        f"atss-tf {' '.join(argv)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )
    return proc.stdout


def _in_a_user_folder(tmp_path: Path, data: dict[str, str]) -> Path:
    """A working folder as the README assumes: configs/ beside it, a photo folder."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    shutil.copytree(data["val_images"], tmp_path / "my_photos")
    return tmp_path


def _check_evaluation(out: Path, annotations: str) -> dict:
    """metrics.json holds the 12 COCO numbers pycocotools gives on detections.json,
    whose category ids are the dataset's own."""
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == list(METRIC_NAMES)
    detections = json.loads((out / "detections.json").read_text())
    gt = COCO(annotations)
    assert {d["category_id"] for d in detections} <= set(gt.getCatIds())
    if detections:
        ev = COCOeval(gt, gt.loadRes(str(out / "detections.json")), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
        np.testing.assert_allclose(list(metrics.values()), ev.stats, atol=1e-12)
    return {"metrics": metrics, "detections": detections}


def _check_pictures(out: Path, images: Path) -> None:
    names = sorted(f"{p.name}.detections.png" for p in images.iterdir())
    assert sorted(p.name for p in out.glob("*.png")) == names
    records = json.loads((out / "detections.json").read_text())
    assert {f"{Path(r['image']).name}.detections.png" for r in records} <= set(names)


def test_readme_training_on_coco(coco80, tmp_path):
    """The README's commands, verbatim, through the console script, on the R-50 config
    with its four canvases."""
    commands = readme_commands("Training on COCO")
    assert [c[0] for c in commands[:3]] == ["train", "evaluate", "predict"]
    work = _in_a_user_folder(tmp_path, coco80)
    for argv in commands:
        # A command that changes the sample selection (the README's k = 15
        # example) runs on the first canvas, as the ablations do: the R-50
        # train step on all four canvases is the first command's.
        assigner_only = any(w.startswith("assigner.") for w in argv)
        printed = _atss_tf(_with_overrides(argv, coco80, first_canvas=assigner_only), work)
        out = work / argv[argv.index("--out") + 1]
        if argv[0] == "train":
            assert (out / "model.keras").exists() and (out / "config.yaml").exists()
            assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 2
            _check_evaluation(out, coco80["val_annotations"])  # the end-of-training evaluation
        elif argv[0] == "evaluate":
            _check_evaluation(out, coco80["val_annotations"])
            assert "AP50" in printed
        elif argv[0] == "predict":
            _check_pictures(out, work / "my_photos")
    # The --set example of the README changed what it says it changes.
    from atss_tf.config import load_config

    saved = load_config(work / "runs" / "k15" / "config.yaml")
    assert saved.assigner.topk == 15


def _inference_model_key(config: str) -> str:
    """What evaluate and predict depend on beyond the backbone: the model
    section (head, anchors, box coding) and post-processing."""
    from atss_tf.config import load_config, to_dict

    d = to_dict(load_config(ROOT / config, ANY_ON_SMALL_BACKBONE))  # its backbone is dropped
    d["model"].pop("backbone")
    return json.dumps([d["model"], d["postprocess"]], sort_keys=True)


def _new_inference_models() -> set[str]:
    """The configs whose model, without its backbone, no earlier journey
    evaluated and predicted with (the main config's comes first)."""
    seen, new = {_inference_model_key(MAIN_CONFIG)}, set()
    for config in CONFIGS:
        key = _inference_model_key(config)
        if config != MAIN_CONFIG and (key not in seen or "ablations/" not in config):
            new.add(config)
        seen.add(key)
    return new


NEW_INFERENCE_MODELS = _new_inference_models()


def _zoo_backbone_configs() -> list[str]:
    """The model-zoo configs whose backbone (depth, ResNeXt groups and width,
    DCN stages) no config without a head DCN has: the DCN and ResNeXt rows."""
    from atss_tf.config import load_config

    out = []
    for config in CONFIGS:
        backbone = load_config(ROOT / config).model.backbone
        if backbone.dcn_stages or backbone.groups > 1:
            out.append(config)
    return out


ZOO_BACKBONE_CONFIGS = _zoo_backbone_configs()


def _zoo_argv(config: str, data: dict[str, str]) -> list[str]:
    """``atss-tf train`` of a zoo config on ``data``: its first canvas, shrunk
    as every journey's, and :data:`NARROW_BACKBONE`."""
    overrides = shrink_overrides(config, data)
    overrides += [first_canvas_only(overrides)] + NARROW_BACKBONE
    return ["train", "--config", config, "--out", "runs/zoo"] + [
        w for o in overrides for w in ("--set", o)
    ]


def _zoo_step_groups() -> dict[str, list[str]]:
    """The zoo configs grouped by the train step they compile on
    :data:`NARROW_BACKBONE` (R-50-DCN's and R-101-DCN's are one), each group
    named by its first config's file stem."""
    from atss_tf.config import load_config

    groups: dict[str, list[str]] = {}
    for config in ZOO_BACKBONE_CONFIGS:
        key = train_step_key(load_config(ROOT / config, NO_DOWNLOAD + NARROW_BACKBONE))
        groups.setdefault(key, []).append(config)
    return {Path(configs[0]).stem: configs for configs in groups.values()}


ZOO_STEP_GROUPS = _zoo_step_groups()


@pytest.mark.parametrize("group", list(ZOO_STEP_GROUPS))
def test_zoo_configs_train(group, coco80, tmp_path, monkeypatch, subtests):
    """The DCN and ResNeXt rows of the model zoo (R-50/101-DCN, X-101-32x8d /
    64x4d with and without DCN), one subtest per config: the config built at
    its own depth and an eighth of its width has the shipped architecture
    (depth, groups, DCN stages, head DCN); its data pipeline and targets (161
    shorter sides, its canvases shrunk as every journey's) go through two fit
    steps of that architecture at depth 50 (:data:`NARROW_BACKBONE`), on its
    first canvas, configs of one step sharing its model. A full-size X-101
    train step costs minutes to build and compile on 2 cores, and the steps
    of these models share every piece with tests that run them in full: the
    DCN layer and both DCN fixture models (test_deformable, test_model_dcn),
    the ImageNet files (test_imagenet_files), the CLI train / evaluate /
    predict of the R-50 and R-101 configs above."""
    from atss_tf.commands.common import config_from_args
    from atss_tf.config import load_config
    from atss_tf.model import build_detector

    monkeypatch.chdir(_in_a_user_folder(tmp_path, coco80))
    shared = None
    for config in ZOO_STEP_GROUPS[group]:
        with subtests.test(config=config):
            argv = _zoo_argv(config, coco80)
            shipped = load_config(ROOT / config).model
            own_depth = argv + ["--set", f"model.backbone.depth={shipped.backbone.depth}"]
            cfg = config_from_args(cli.build_command_parser("train").parse_args(own_depth[1:]))
            model = build_detector(cfg)
            assert model.backbone.depth == shipped.backbone.depth
            assert model.backbone.groups == shipped.backbone.groups
            assert model.backbone.dcn_stages == shipped.backbone.dcn_stages
            assert model.head.dcn == shipped.head.dcn
            shared = _trains_on_a_compiled_step(argv, shared)
            assert shared.backbone.dcn_stages == shipped.backbone.dcn_stages


def _train_step_groups() -> dict[str, list[str]]:
    """The configs (other than the main one) grouped by the train step their
    journey compiles (the same model, loss and precision on the same canvas:
    the ablations keep their first, the R-50 one; ``train_step_key``), each
    group named by its first config's file stem."""
    from atss_tf.config import load_config

    groups: dict[str, list[str]] = {}
    for config in CONFIGS:
        if config == MAIN_CONFIG or config in ZOO_BACKBONE_CONFIGS:
            continue
        small = SMALL_BACKBONE if "ablations/" in config else []
        key = train_step_key(load_config(ROOT / config, NO_DOWNLOAD + small))
        groups.setdefault(key, []).append(config)
    return {Path(configs[0]).stem: configs for configs in groups.values()}


TRAIN_STEP_GROUPS = _train_step_groups()


def _trains_on_a_compiled_step(argv: list[str], model: keras.Model | None) -> keras.Model:
    """The config of ``argv`` (``atss-tf train``'s arguments) with its own data
    pipeline and targets (assigner, anchors, multi-scale sizes) through two fit
    steps of ``model`` (built from this config when None); returns the model."""
    from atss_tf.commands.common import config_from_args
    from atss_tf.data.pipeline import build_dataset
    from atss_tf.targets import TargetEncoder
    from atss_tf.training.fit import build_training_model

    cfg = config_from_args(cli.build_command_parser("train").parse_args(argv[1:]))
    model = model or build_training_model(cfg)
    data = build_dataset(
        cfg, "train", encoder_factory=lambda size: TargetEncoder.from_config(cfg, size)
    )
    _, y = next(iter(data))
    assert float(tf.reduce_sum(tf.cast(y["cls_targets"] > 0, tf.float32))) > 0
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(data, steps_per_epoch=2, epochs=1, shuffle=False, verbose=0).history
    assert np.all(np.isfinite(history["loss"])), history
    assert any(np.any(a != w.numpy()) for a, w in zip(before, model.trainable_weights))
    return model


def _config_journey(config: str, data: dict[str, str], work: Path, full: bool) -> None:
    """``atss-tf train`` (and with ``full`` evaluate, predict) with ``config``, in ``work``."""
    commands = readme_commands("Training on COCO")[: 3 if full else 1]
    for argv in commands:
        argv = _with_overrides(
            [config if a == MAIN_CONFIG else a for a in argv], data, first_canvas=True
        )
        if argv[0] == "train":
            # The next command evaluates; the end-of-training evaluation is
            # covered by the README journey above.
            argv += ["--set", "data.val_annotations=null", "--set", "data.val_images=null"]
        assert cli.main(argv) == 0, argv
    run = work / "runs" / "r50_1x"
    from atss_tf.config import load_config

    saved = load_config(run / "config.yaml")
    shipped = load_config(ROOT / config)
    # The config's own structure survived the overrides, but for its canvases,
    # shrunk to the first (the README journey runs the R-50 config's four).
    assert len(saved.data.canvases) == 1
    assert len(saved.data.min_size) == len(shipped.data.min_size)
    assert saved.assigner == shipped.assigner and saved.model.head == shipped.model.head
    assert saved.model.anchors == shipped.model.anchors
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 2
    if full:
        _check_evaluation(run / "eval", data["val_annotations"])
        _check_pictures(run / "pictures", work / "my_photos")


@pytest.mark.parametrize("group", list(TRAIN_STEP_GROUPS))
def test_every_shipped_config_trains_evaluates_and_predicts(
    group, coco80, sparse3, tmp_path, monkeypatch, subtests
):
    """The README's train / evaluate / predict commands with each other config
    (in this process: the console script is covered above), one subtest per
    config. An ablation whose model (head, anchors, box coding,
    post-processing) an earlier journey already evaluated and predicted with
    only trains: its subject, the sample selection, acts in training alone.

    Every config runs on its first canvas: the ablations' and the R-101
    config's canvases are the R-50 config's, whose README journey runs all
    four (and the mirrored test alternates two), and each further canvas
    would add a compile to each one's cost, for R-101 a full-depth one. The
    paper-table configs (``ablations/table*``, 26 of them) train two steps; of them, the
    RetinaNet baseline with every Table 1 switch off (no centerness branch,
    no scalar, no GroupNorm, smooth L1, positives outside the box) also
    evaluates and predicts.

    The configs are grouped by the train step they compile: Table 4's k
    values, Table 5's anchor scales and Table 6's ratios, for instance,
    differ in their targets alone. The first config of a group (and any that
    evaluates and predicts) runs ``atss-tf train``; the others run their own
    config, data pipeline and targets through two fit steps of one model they
    share (:func:`_trains_on_a_compiled_step`), which saves a compile each
    (8 s on 2 cores)."""
    shared = None
    for index, config in enumerate(TRAIN_STEP_GROUPS[group]):
        with subtests.test(config=config), monkeypatch.context() as m:
            data = _data_for(config, coco80, sparse3)
            work = _in_a_user_folder(tmp_path / str(index), data)
            m.chdir(work)
            full = config in NEW_INFERENCE_MODELS and (
                not _is_table_config(config) or config.endswith("table1_retinanet_a1.yaml")
            )
            if index == 0 or full:
                _config_journey(config, data, work, full)
            else:
                train_argv = readme_commands("Training on COCO")[0]
                argv = _with_overrides(
                    [config if a == MAIN_CONFIG else a for a in train_argv], data, first_canvas=True
                )
                shared = _trains_on_a_compiled_step(argv, shared)


def test_readme_official_pretrained_models(coco80, official_outputs, tmp_path):
    """Convert the authors' checkpoint with the README's commands, predict on a
    photo, evaluate on data with COCO's 80 category ids. The checkpoint is in
    the legacy torch format their model zoo uses; a zip-format file converts
    to the same model (tests/test_convert_official.py runs both)."""
    fmt = "legacy"
    from PIL import Image

    commands = readme_commands("Use the official pretrained models")
    assert [c[0] for c in commands] == ["convert", "predict", "evaluate"]
    work = _in_a_user_folder(tmp_path, coco80)
    checkpoint = commands[0][2]
    (work / checkpoint).symlink_to(fixture_path(OFFICIAL_CHECKPOINTS[fmt]))
    photo = next(a for a in commands[1] if a.endswith((".jpg", ".png")))
    Image.fromarray(official_outputs["input_rgb_uint8"]).save(work / photo, quality=95)

    for argv in commands:
        printed = _atss_tf(_with_overrides(argv, coco80), work)
        if argv[0] == "convert":
            assert "tensors mapped: 324" in printed
        elif argv[0] == "predict":
            out = work / argv[argv.index("--out") + 1]
            records = json.loads((out / "detections.json").read_text())
            assert len(records) == 100  # the official post-processing keeps 100
            assert all(COCO_CATEGORY_IDS[r["label"] - 1] == r["category_id"] for r in records)
            assert (out / f"{Path(photo).name}.detections.png").exists()
        else:
            out = work / argv[argv.index("--out") + 1]
            result = _check_evaluation(out, coco80["val_annotations"])
            ids = {d["category_id"] for d in result["detections"]}
            # Labels 1..80 became COCO ids: none of the ids COCO skips appears.
            assert ids and ids <= set(COCO_CATEGORY_IDS)
            assert not ids & (set(range(1, 91)) - set(COCO_CATEGORY_IDS))

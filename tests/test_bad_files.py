"""Bad files never crash, hang, lie or lose work: named, skipped or refused before decoding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from atss_tf import cli
from atss_tf.config import save_config
from atss_tf.data.coco import DataError, load_coco
from atss_tf.data.pipeline import build_dataset
from atss_tf.data.tfrecords import match_files, read_tfrecords, scan_report, write_tfrecords
from atss_tf.errors import CheckpointError
from atss_tf.inference import detect, load_detector, read_image
from atss_tf.model import build_detector
from tests.helpers.images import write_huge_png
from tests.helpers.tiny import one_step_config_file, tiny_config, with_synthetic_data

ROOT = Path(__file__).resolve().parents[1]


def photo(path: Path, size=(48, 64), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def truncated_jpeg(path: Path) -> Path:
    photo(path, (200, 300))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # an interrupted copy
    return path


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    return write_huge_png(tmp_path_factory.mktemp("huge") / "huge.png")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    build_detector(tiny_config()).save(path)
    return path


def coco_json(tmp_path: Path, images: list[tuple[str, int, int]], boxes=None) -> Path:
    """A COCO json of ``(file_name, height, width)`` images, one box each by default."""
    data = {
        "images": [
            {"id": i + 1, "file_name": f, "height": h, "width": w}
            for i, (f, h, w) in enumerate(images)
        ],
        "annotations": [
            {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": list(b), "area": 1.0}
            for i, b in enumerate(boxes or [[2, 2, 20, 20]] * len(images))
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


# --------------------------------------------------------------------------- #
# Image size
# --------------------------------------------------------------------------- #


def test_an_oversized_png_is_refused_from_its_header(huge_png, tmp_path):
    assert huge_png.stat().st_size < 2_000_000
    with pytest.raises(DataError, match=r"huge\.png is 20000x20000 = 400,000,000 pixels, above"):
        read_image(huge_png)
    os.link(huge_png, tmp_path / "huge.png")
    photo(tmp_path / "ok.png")
    ann = coco_json(tmp_path, [("huge.png", 20000, 20000), ("ok.png", 48, 64)])
    ds = load_coco(ann, tmp_path, training=True)
    assert [r["file_name"] for r in ds.records] == ["ok.png"]
    assert "above the limit" in ds.report.bad_files[0][1]
    assert load_coco(ann, tmp_path, training=True, max_pixels=0).report["bad_images_skipped"] == 0


def test_an_oversized_png_inside_tfrecords_is_skipped_before_decoding(huge_png, tmp_path, capfd):
    cfg = tiny_config()
    photo(tmp_path / "ok.png")
    os.link(huge_png, tmp_path / "huge.png")
    ann = coco_json(tmp_path, [("huge.png", 20000, 20000), ("ok.png", 48, 64)])
    ds = load_coco(ann, tmp_path, training=False, image_check="none")
    write_tfrecords(ds.records, ds.category_map, str(tmp_path / "r"), 1)
    ids = [int(x["image_id"][0]) for x in build_dataset(cfg, "val", source=str(tmp_path / "r-*"))]
    assert ids == [2]
    assert "image/filename=huge.png: 400000000 pixels, above data.max_image_pixels" in (
        capfd.readouterr().err
    )


@pytest.mark.parametrize(
    "fmt, options",
    [
        ("JPEG", {}),
        ("JPEG", {"progressive": True}),
        ("JPEG", {"exif": b"Exif\x00\x00" + bytes(9000)}),  # SOF beyond the first 4 KB
        ("PNG", {}),
        ("GIF", {}),
        ("BMP", {}),
    ],
)
def test_header_dimensions_agree_with_pil(tmp_path, fmt, options):
    from atss_tf.data.image_files import read_image_header

    path = tmp_path / f"x.{fmt.lower()}"
    Image.new("RGB", (123, 45), (9, 99, 199)).save(path, fmt, **options)
    header = read_image_header(path)
    assert (header.height, header.width) == (45, 123)
    assert read_image_header(path.read_bytes()) == header


# --------------------------------------------------------------------------- #
# predict and detect
# --------------------------------------------------------------------------- #


def test_predict_processes_every_good_file_and_names_each_bad_one(
    tiny_model, huge_png, tmp_path, capsys
):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    photo(a / "one.jpg", seed=1)
    photo(a / "one.png", seed=2)
    photo(b / "one.jpg", seed=3)
    truncated_jpeg(a / "cut.jpg")
    (a / "notes.png").write_text("not an image")
    os.link(huge_png, a / "huge.png")
    Image.new("RGB", (5000, 1)).save(a / "sliver.png")
    out = tmp_path / "out"
    rc = cli.main(
        ["predict", "--weights", str(tiny_model), "--images", str(a), str(b), "--out", str(out)]
    )
    captured = capsys.readouterr()
    assert rc == 1
    for name, reason in (
        ("cut.jpg", "truncated jpeg"),
        ("notes.png", "is not a JPEG/PNG/GIF/BMP file"),
        ("huge.png", "above the limit"),
        ("sliver.png", "shorter side would be 0.0 px"),
    ):
        assert any(name in line and reason in line for line in captured.err.splitlines()), name
    assert "4 of 7 images skipped" in captured.err
    pictures = sorted(p.name for p in out.glob("*.png"))
    assert pictures == [
        "a__one.jpg.detections.png",
        "a__one.png.detections.png",
        "b__one.jpg.detections.png",
    ]
    records = json.loads((out / "detections.json").read_text())  # untrained: few boxes
    good = [a / "one.jpg", a / "one.png", b / "one.jpg"]
    assert {r["image"] for r in records} <= {str(p) for p in good}
    for path in good:
        assert f"{path}: " in captured.out
    assert "(3 of 7 images)" in captured.out


def test_detect_refuses_ambiguous_images_and_accepts_float_0_to_255(tiny_model):
    model = load_detector(tiny_model)
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    cases = {
        "values in 0..1 is ambiguous": image.astype(np.float32) / 255,
        "dtype uint16 is ambiguous": image.astype(np.uint16) * 257,
        "NaN or infinite": np.full((40, 50, 3), np.nan, np.float32),
        "a gray image": image[..., 0],
        "RGBA": np.concatenate([image, image[..., :1]], -1),
        "shorter side would be": np.zeros((1, 5000, 3), np.uint8),
    }
    for message, bad in cases.items():
        with pytest.raises(DataError, match=message):
            detect(model, [image, bad])
    as_float = detect(model, [image.astype(np.float32)])[0]
    as_uint8 = detect(model, [image])[0]
    np.testing.assert_allclose(as_float["scores"], as_uint8["scores"], atol=1e-6)
    cfg = tiny_config(["data.max_image_pixels=1000"])
    with pytest.raises(
        DataError, match=r"image 0 is 40x50 = 2,000 pixels, above the limit of 1,000"
    ):
        detect(model, [image], cfg)


def test_a_keras_file_that_is_not_an_atss_model_is_a_clear_error(tmp_path, capsys):
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    other.save(tmp_path / "other.keras")
    with pytest.raises(
        CheckpointError, match=r"other\.keras holds a Keras Sequential, not an ATSS"
    ):
        load_detector(tmp_path / "other.keras")
    (tmp_path / "junk.keras").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=r"cannot load .*junk\.keras as a Keras model"):
        load_detector(tmp_path / "junk.keras")
    photo(tmp_path / "p.png")
    rc = cli.main(
        [
            "predict",
            "--weights",
            str(tmp_path / "other.keras"),
            "--images",
            str(tmp_path / "p.png"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "not an ATSS detector" in err


# --------------------------------------------------------------------------- #
# Training data
# --------------------------------------------------------------------------- #


def test_training_goes_through_a_truncated_image_and_nan_boxes(tmp_path, capsys):
    cfg = with_synthetic_data(
        tiny_config(["train.max_iters=2", "train.steps_per_epoch=2"]), tmp_path / "data"
    )
    data = json.loads(Path(cfg.data.train_annotations).read_text())
    truncated_jpeg(Path(cfg.data.train_images) / "cut.jpg")
    data["images"].append({"id": 900, "file_name": "cut.jpg", "height": 200, "width": 300})
    data["annotations"].append(
        {"id": 9000, "image_id": 900, "category_id": 1, "bbox": [1, 1, 50, 50], "area": 1.0}
    )
    data["annotations"].append(
        {"id": 9001, "image_id": 1, "category_id": 1, "bbox": [float("nan"), 1, 5, 5], "area": 1.0}
    )
    Path(cfg.data.train_annotations).write_text(json.dumps(data))
    config = tmp_path / "c.yaml"
    save_config(cfg, config)
    rc = cli.main(["train", "--config", str(config), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert (tmp_path / "run" / "model.keras").exists()
    assert "1 missing, corrupt, truncated or oversized image files skipped" in err
    assert "1 boxes with NaN or infinite coordinates dropped" in err
    assert "skipped " in err and "cut.jpg: corrupt image file" in err


def test_an_empty_training_set_is_an_error_before_training(tmp_path, capsys):
    photo(tmp_path / "a.png")
    photo(tmp_path / "b.png")
    ann = coco_json(
        tmp_path, [("a.png", 48, 64), ("b.png", 48, 64)], [[float("nan"), 1, 5, 5], [1, 1, 0, 5]]
    )
    cfg = tiny_config()
    cfg.data.train_annotations, cfg.data.train_images = str(ann), str(tmp_path)
    with pytest.raises(
        DataError, match=r"no usable training image in .*ann\.json: .*2 images listed"
    ):
        build_dataset(cfg, "train")
    config = tmp_path / "c.yaml"
    save_config(cfg, config)
    rc = cli.main(["train", "--config", str(config), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 1 and "no usable training image" in err
    assert not (tmp_path / "run" / "model.keras").exists()
    # The same from TFRecords.
    ds = load_coco(ann, tmp_path, training=False)
    write_tfrecords(ds.records, ds.category_map, str(tmp_path / "r"), 1)
    with pytest.raises(DataError, match=r"no usable training image in .*r-\*"):
        build_dataset(cfg, "train", source=str(tmp_path / "r-*"))


def test_tfrecords_drop_nan_boxes_and_skip_truncated_images(tmp_path, capfd):
    photo(tmp_path / "a.png")
    truncated_jpeg(tmp_path / "cut.jpg")
    ann = coco_json(tmp_path, [("a.png", 48, 64), ("cut.jpg", 200, 300)])
    ds = load_coco(ann, tmp_path, training=False, image_check="none")
    ds.records[0]["boxes"] = np.array([[1, 1, 9, 9], [np.nan, 1, 5, 5]], np.float32)
    ds.records[0]["labels"] = np.array([1, 2], np.int32)
    ds.records[0]["is_crowd"] = np.zeros(2, bool)
    ds.records[0]["areas"] = np.ones(2, np.float32)
    write_tfrecords(ds.records, ds.category_map, str(tmp_path / "r"), 1)
    files = match_files(str(tmp_path / "r-*"))
    report = scan_report(files, ds.category_map, training=True)
    assert report["nonfinite_dropped"] == 1 and report["boxes_kept"] == 2
    cfg = tiny_config()
    batches = list(build_dataset(cfg, "val", source=str(tmp_path / "r-*"), with_gt=True))
    assert [int(i) for x, _ in batches for i in x["image_id"]] == [1]
    gt = batches[0][1]
    assert int(gt["gt_mask"].numpy().sum()) == 1 and np.isfinite(gt["gt_boxes"].numpy()).all()
    assert "image/filename=cut.jpg: truncated image" in capfd.readouterr().err


def test_make_tfrecords_does_not_pack_corrupt_images(tmp_path, capsys):
    photo(tmp_path / "a.png")
    truncated_jpeg(tmp_path / "cut.jpg")
    ann = coco_json(tmp_path, [("a.png", 48, 64), ("cut.jpg", 200, 300)])
    rc = cli.main(
        [
            "make-tfrecords",
            "--annotations",
            str(ann),
            "--images",
            str(tmp_path),
            "--out",
            str(tmp_path / "r"),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0
    assert "cut.jpg" in captured.err and "truncated" in captured.err
    assert [r["file_name"] for r in read_tfrecords(str(tmp_path / "r-*"))] == ["a.png"]


# --------------------------------------------------------------------------- #
# assign, convert, checkpoints
# --------------------------------------------------------------------------- #


def test_assign_refuses_non_utf8_box_files_and_huge_canvases_up_front(tmp_path, capsys):
    boxes = tmp_path / "b.json"
    boxes.write_bytes(b'\xff\xfe{"boxes": []}')
    args = ["assign", "--boxes", str(boxes), "--out", str(tmp_path / "o.npz")]
    assert cli.main([*args, "--image-size", "100", "100"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "b.json: not UTF-8 text" in err
    boxes.write_text('{"boxes": [[1, 1, 50, 50]]}')
    assert cli.main([*args, "--image-size", "20000", "20000"]) == 2
    err = capsys.readouterr().err
    assert "--image-size 20000x20000 is too large for the target encoder" in err
    assert not (tmp_path / "o.npz").exists()


FSIZE_SCRIPT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG, as on a full disk
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from atss_tf import cli
sys.exit(cli.main(sys.argv[2:]))
"""


def _run_with_file_size_limit(limit: int, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-c", FSIZE_SCRIPT, str(limit), *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("atss-tf ")]


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path):
    config = one_step_config_file(tmp_path)
    run = tmp_path / "run"
    assert cli.main(["train", "--config", str(config), "--out", str(run)]) == 0
    ckpt = run / "checkpoints"
    before = (ckpt / "latest.json").read_text()
    size = (ckpt / "ckpt-00000001.keras").stat().st_size
    proc = _run_with_file_size_limit(
        size // 2, "train", "--config", str(config), "--out", str(run), "--set", "train.max_iters=2"
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "checkpoint at step 2 not saved" in lines[0] and "File too large" in lines[0]
    assert "the previous one (ckpt-00000001.keras) is intact" in lines[0]
    assert (ckpt / "latest.json").read_text() == before
    assert sorted(p.name for p in ckpt.iterdir()) == ["ckpt-00000001.keras", "latest.json"]
    # With space again, the same command resumes from step 1.
    rc = cli.main(
        ["train", "--config", str(config), "--out", str(run), "--set", "train.max_iters=2"]
    )
    assert rc == 0
    assert json.loads((ckpt / "latest.json").read_text())["step"] == 2


def test_a_full_disk_while_converting_leaves_no_partial_model(tmp_path, official_legacy_checkpoint):
    out = tmp_path / "m.keras"
    proc = _run_with_file_size_limit(
        1_000_000, "convert", "official", str(official_legacy_checkpoint), str(out)
    )
    assert proc.returncode == 1
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and f"cannot write {out}: File too large" in lines[0]
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- #
# TensorBoard
# --------------------------------------------------------------------------- #


def _events(log_dir: Path) -> dict[str, list[int]]:
    """``{tag: [steps]}`` of every summary under ``log_dir``."""
    found: dict[str, list[int]] = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append(int(event.step))
    return found


def test_tensorboard_logs_losses_lr_metrics_and_pictures_and_continues_after_resume(tmp_path):
    from atss_tf.training.fit import train

    cfg = with_synthetic_data(
        tiny_config(["train.max_iters=6", "train.steps_per_epoch=2", "train.eval_every_epochs=1"]),
        tmp_path / "data",
    )

    class Killed(Exception):
        pass

    class KillAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise Killed

    run = tmp_path / "run"
    with pytest.raises(Killed):
        train(cfg, run, verbose=0, callbacks=[KillAfterFirstEpoch()])
    train(cfg, run, verbose=0)  # resumes at step 2
    tr, val = _events(run / "logs" / "train"), _events(run / "logs" / "validation")
    for tag in ("loss", "cls_loss", "reg_loss", "centerness_loss", "learning_rate"):
        assert sorted(set(tr[tag])) == [2, 4, 6], tag
    assert sorted(val["AP"]) == [2, 4, 6, 6]  # each epoch, and the final evaluation
    assert sorted(val["detections"]) == [2, 4, 6, 6]

"""The TF Serving export: the README's commands, the SavedModel against ``detect`` and
the authors' detections, in a process that never imports atss_tf; bad requests."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from atss_tf import cli
from atss_tf.config import save_config
from atss_tf.data.coco_names import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from atss_tf.export import OUTPUT_KEYS, WARMUP_FILE
from atss_tf.inference import detect, load_detector, read_image
from tests.helpers.fixtures import OFFICIAL_CHECKPOINTS, fixture_path, inclusive_to_continuous
from tests.helpers.images import write_huge_png
from tests.helpers.journeys import README, SPARSE_CATEGORIES, make_dataset, readme_commands
from tests.helpers.tiny import tiny_config

SECTION = "Serve with TF Serving"
CANVASES = [(96, 128), (128, 96), (128, 128)]


def _export(argv: list[str]) -> Path:
    """Run ``atss-tf export ARGV`` in process; return the version folder it wrote."""
    assert cli.main(["export", *argv]) == 0, argv
    out = Path(argv[argv.index("--out") + 1])
    return max(out.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1)


def _readme_export(weights: Path, out: Path, extra: list[str] = ()) -> list[str]:
    """The README's export command with its weights and folder replaced."""
    argv = next(c for c in readme_commands(SECTION) if c[0] == "export")[1:]
    argv[argv.index("--weights") + 1] = str(weights)
    argv[argv.index("--out") + 1] = str(out)
    return argv + list(extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained through ``atss-tf train`` on mixed-size images with
    category ids 2, 5, 9 and three canvases; its validation images."""
    root = tmp_path_factory.mktemp("served")
    data = make_dataset(root / "data", SPARSE_CATEGORIES, n_train=8, n_val=6)
    cfg = tiny_config(
        [
            f"data.canvases={[list(c) for c in CANVASES]}",
            "data.min_size=[96, 128]",
            "data.max_size=128",
            "data.batch_size=2",
            "train.max_iters=2",
            "train.steps_per_epoch=2",
            # An untrained head scores about 0.01: keep its boxes to compare them.
            "postprocess.score_threshold=0.001",
        ]
    )
    for key, value in data.items():
        setattr(cfg.data, key, value)
    cfg.data.val_annotations = cfg.data.val_images = None
    save_config(cfg, root / "tiny.yaml")
    run = root / "run"
    assert cli.main(["train", "--config", str(root / "tiny.yaml"), "--out", str(run)]) == 0
    files = sorted(Path(data["val_images"]).iterdir())
    return {
        "weights": run / "model.keras",
        "model": load_detector(run / "model.keras"),
        "files": files,
        "images": [read_image(f) for f in files],
        "root": root,
    }


def _signature(path: Path):
    return tf.saved_model.load(str(path)).signatures["serving_default"]


def _assert_same_detections(served: dict, i: int, want: dict, model, scale=None) -> None:
    """Row ``i`` of the served outputs equals ``detect``'s dict ``want``."""
    n = int(served["num_detections"][i])
    assert n == len(want["scores"]) and n > 0
    boxes = served["detection_boxes"][i, :n].numpy()[:, [1, 0, 3, 2]]  # yxyx -> xyxy
    if scale is not None:
        boxes = boxes * np.array([scale[1], scale[0], scale[1], scale[0]])
    np.testing.assert_allclose(boxes, want["boxes"], atol=1e-3)
    np.testing.assert_allclose(served["detection_scores"][i, :n], want["scores"], atol=1e-5)
    ids = np.array(model.category_ids)[want["classes"] - 1]
    np.testing.assert_array_equal(served["detection_classes"][i, :n], ids)
    names = [s.decode() for s in served["detection_class_names"][i, :n].numpy()]
    assert names == [model.class_names[c - 1] for c in want["classes"]]
    assert not served["detection_scores"][i, n:].numpy().any()
    assert not served["detection_classes"][i, n:].numpy().any()


def test_training_fills_the_dataset_categories(trained):
    model = trained["model"]
    assert model.category_ids == [c for c, _ in SPARSE_CATEGORIES]
    assert model.class_names == [n for _, n in SPARSE_CATEGORIES]


@pytest.fixture(scope="module")
def readme_export(trained) -> Path:
    """The README's export command on the trained model (image bytes, any batch)."""
    version = _export(_readme_export(trained["weights"], trained["root"] / "serving"))
    assert version == trained["root"] / "serving" / "1"
    return version


@pytest.fixture(scope="module")
def readme_served(readme_export):
    """The serving signature of :func:`readme_export`, loaded once."""
    return _signature(readme_export)


def test_image_bytes_equal_detect_on_mixed_sizes_in_one_request(
    trained, readme_export, readme_served
):
    """JPEG and PNG bytes of landscape, portrait and square images in one request."""
    images = trained["images"]
    shapes = {im.shape[:2] for im in images}
    assert any(h > w for h, w in shapes) and any(h < w for h, w in shapes)
    encoded = [
        f.read_bytes() if k % 2 else tf.io.encode_png(im).numpy()
        for k, (f, im) in enumerate(zip(trained["files"], images))
    ]
    served = readme_served(inputs=tf.constant(encoded))
    want = detect(trained["model"], images)
    for i in range(len(images)):
        _assert_same_detections(served, i, want[i], trained["model"])
    np.testing.assert_array_equal(
        served["image_info"][:, 0].numpy(), [im.shape[:2] for im in images]
    )
    labels = (readme_export / "assets" / "labels.txt").read_text().splitlines()
    assert labels == [f"{c}\t{n}" for c, n in SPARSE_CATEGORIES]


def _export_trained(trained, out: Path, *options: str) -> Path:
    return _export(["--weights", str(trained["weights"]), "--out", str(out), *options])


def test_image_tensor_with_a_fixed_batch_equals_detect(trained, tmp_path):
    version = _export_trained(
        trained, tmp_path / "serving", "--input-type", "image_tensor", "--batch-size", "2"
    )
    serve = _signature(version)
    assert serve.structured_input_signature[1]["inputs"].shape.as_list() == [2, None, None, 3]
    for image in trained["images"][:3]:
        pair = [image, image[::-1, ::-1]]
        served = serve(inputs=tf.constant(np.stack(pair)))
        for i, want in enumerate(detect(trained["model"], pair)):
            _assert_same_detections(served, i, want, trained["model"])


def test_tf_example_with_normalized_boxes_equals_detect(trained, tmp_path):
    from atss_tf.data.tfrecords import FEATURES  # the keys our TFRecords use

    assert "image/encoded" in FEATURES
    version = _export_trained(
        trained,
        tmp_path / "serving",
        "--input-type",
        "tf_example",
        "--normalized-boxes",
        "--no-warmup",
    )
    assert not (version / "assets.extra").exists()
    examples = []
    for f in trained["files"]:
        feature = {
            "image/encoded": tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[f.read_bytes()])
            ),
            "image/filename": tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[f.name.encode()])
            ),
        }
        examples.append(tf.train.Example(features=tf.train.Features(feature=feature)))
    served = _signature(version)(inputs=tf.constant([e.SerializeToString() for e in examples]))
    boxes = served["detection_boxes"].numpy()
    assert 0.0 <= boxes.min() and boxes.max() <= 1.0
    want = detect(trained["model"], trained["images"])
    for i, image in enumerate(trained["images"]):
        _assert_same_detections(served, i, want[i], trained["model"], scale=image.shape[:2])


def test_bad_requests_are_refused_with_a_clear_error(trained, readme_served, tmp_path):
    serve = readme_served
    good = trained["files"][0].read_bytes()
    huge = write_huge_png(tmp_path / "huge.png").read_bytes()
    sliver = tf.io.encode_png(np.zeros((2, 900, 3), np.uint8)).numpy()
    refused = {
        "empty request: no image in inputs": tf.constant([], tf.string),
        "image 1 of the request: not a JPEG/PNG/GIF/BMP image": tf.constant([good, b"hello"]),
        "image 0 of the request: truncated image": tf.constant([good[:-100]]),
        "image 0 of the request: 400000000 pixels, above the pixel limit": tf.constant([huge]),
        "image 0 of the request: 2x900 (h x w): after the test resize": tf.constant([sliver]),
        "expected to be a string tensor but is a float tensor": tf.zeros([1]),
        "expected to be a string tensor but is a uint8 tensor": tf.zeros([1, 8, 8, 3], tf.uint8),
    }
    for message, inputs in refused.items():
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
            serve(inputs=inputs)
    # The process and the model are still fine.
    assert int(serve(inputs=tf.constant([good]))["num_detections"][0]) > 0


def test_warmup_requests_are_prediction_logs_that_run(readme_export, readme_served):
    """TF Serving replays assets.extra/tf_serving_warmup_requests at load time;
    read them with its own protos and replay them the same way."""
    prediction_log_pb2 = pytest.importorskip(
        "tensorflow_serving.apis.prediction_log_pb2",
        reason="tensorflow-serving-api (the [dev] extra) checks the warm-up records",
    )
    serve = readme_served
    records = list(tf.data.TFRecordDataset(str(readme_export / "assets.extra" / WARMUP_FILE)))
    canvases = []
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert request.model_spec.signature_name == "serving_default"
        inputs = tf.make_ndarray(request.inputs["inputs"])
        assert inputs.shape == (1,)
        out = serve(inputs=tf.constant(inputs))
        canvases.append(tuple(out["image_info"][0, 3].numpy().astype(int)))
    assert sorted(canvases) == sorted(CANVASES)  # one request per canvas


def test_export_refuses_bad_options_naming_them(trained, readme_export, capsys):
    base = ["--weights", str(trained["weights"]), "--out", str(readme_export.parent)]
    assert cli.main(["export", *base]) == 2
    assert "serving/1 exists: export as another --version" in capsys.readouterr().err
    base[-1] = str(trained["root"] / "other")
    assert cli.main(["export", *base, "--canvases", "100x128"]) == 2
    err = capsys.readouterr().err
    assert "--canvases" in err and "data.canvases" in err and "multiples of 32" in err
    assert cli.main(["export", *base, "--canvases", "96by128"]) == 2
    assert "'96by128' is not HEIGHTxWIDTH" in capsys.readouterr().err
    assert cli.main(["export", *base, "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
    assert not (trained["root"] / "other").exists() or not any(
        (trained["root"] / "other").iterdir()
    )
    assert [p.name for p in readme_export.parent.iterdir()] == ["1"]  # no leftovers


FRESH_PROCESS = """
import base64, json, sys
import numpy as np
import tensorflow as tf

saved_model, request_path, out_path = sys.argv[1:]
serve = tf.saved_model.load(saved_model).signatures["serving_default"]
# What TF Serving does with the README's REST body: {"b64": ...} -> bytes.
request = json.load(open(request_path))
inputs = tf.constant([base64.b64decode(item["b64"]) for item in request["instances"]])
out = {k: v.numpy() for k, v in serve(inputs=inputs).items()}
out["detection_class_names"] = out["detection_class_names"].astype(str)
assert "atss_tf" not in sys.modules
np.savez(out_path, **out)
"""


def test_official_model_served_in_a_fresh_process_reproduces_the_authors(
    official_outputs, tmp_path
):
    """The authors' checkpoint converted and exported with the README's
    commands (the resize set to keep the 512 x 512 photo as it is; the canvas
    follows it: 512 x 512, not the model's 896 x 1344, whose padding the
    head's GroupNorm would see - 0.19 off in scores), run by a Python process
    that never imports atss_tf, fed the README's REST body."""
    checkpoint = fixture_path(OFFICIAL_CHECKPOINTS["legacy"])
    weights = tmp_path / "atss_r50_1x.keras"
    assert cli.main(["convert", "official", str(checkpoint), str(weights)]) == 0
    extra = ["--min-size", "512", "--max-size", "512"]
    version = _export(_readme_export(weights, tmp_path / "serving", extra))

    photo = tf.io.encode_png(official_outputs["input_rgb_uint8"]).numpy()
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"instances": [{"b64": base64.b64encode(photo).decode()}]}))
    result = tmp_path / "served.npz"
    env = {"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"}
    script = textwrap.dedent(FRESH_PROCESS)
    args = [str(version), str(request), str(result)]
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = np.load(result)

    want_scores = official_outputs["det_scores"]
    order = np.argsort(-want_scores, kind="stable")
    n = int(served["num_detections"][0])
    assert n == len(want_scores)
    assert tuple(served["image_info"][0, 3]) == (512, 512)  # the canvas
    labels = official_outputs["det_labels_1based"][order]
    np.testing.assert_array_equal(
        served["detection_classes"][0, :n], np.array(COCO_CATEGORY_IDS)[labels - 1]
    )
    assert list(served["detection_class_names"][0, :n]) == [COCO_CLASS_NAMES[k - 1] for k in labels]
    np.testing.assert_allclose(served["detection_scores"][0, :n], want_scores[order], atol=1e-4)
    want = inclusive_to_continuous(official_outputs["det_boxes_xyxy_inclusive"][order])
    np.testing.assert_allclose(served["detection_boxes"][0, :n], want[:, [1, 0, 3, 2]], atol=0.01)

    # saved_model_cli (installed with TensorFlow) lists the signature.
    cli_path = Path(sys.executable).parent / "saved_model_cli"
    shown = subprocess.run(
        [str(cli_path), "show", "--dir", str(version), "--all"],
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    signature = shown[shown.index("signature_def['serving_default']") :]
    assert re.search(
        r"inputs\['inputs'\] tensor_info:\s+dtype: DT_STRING\s+shape: \(-1\)", signature
    )
    for key in OUTPUT_KEYS:
        assert f"outputs['{key}']" in signature
    assert "Method name is: tensorflow/serving/predict" in signature

    # The README's example response has the signature's outputs, shaped as served.
    section = README.read_text().split(f"## {SECTION}")[1].split("\n## ")[0]
    example = json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))
    row = example["predictions"][0]
    assert set(row) == set(OUTPUT_KEYS)
    assert len(row["detection_boxes"][0]) == 4 and np.shape(row["image_info"]) == (4, 2)

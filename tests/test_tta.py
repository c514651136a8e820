"""The test-time augmentation against the authors' (``official_tta_outputs.npz``,
fixture README): PIL's resize, each pass's stages, the merge of every case, the
converted R-50 end to end; the config, the CLI and the TTA SavedModel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from atss_tf import cli
from atss_tf.config import ConfigError, TTAConfig, load_config, save_config
from atss_tf.data.pil_resize import pil_bilinear_resize
from atss_tf.tta import TTADetector, merge_detections, pass_detections, tta_passes
from atss_tf.tta.passes import group_passes, pass_rows, serving_canvases
from tests.helpers.fixtures import fixture_path, inclusive_to_continuous, load_fixture
from tests.helpers.tiny import tiny_config, with_synthetic_data

MERGE_TYPES = ("soft-vote", "vote", "nms")


@pytest.fixture(scope="module")
def npz():
    data = load_fixture("official_tta_outputs.npz")
    return {k: data[k] for k in data.files}


def group(npz, prefix: str) -> dict[str, np.ndarray]:
    """A fixture detection group in this project's terms (continuous boxes)."""
    return {
        "boxes": inclusive_to_continuous(npz[f"{prefix}/boxes_xyxy_inclusive"]),
        "scores": npz[f"{prefix}/scores"].astype(np.float32),
        "classes": npz[f"{prefix}/labels_1based"].astype(np.int32),
    }


def fixture_tta(npz) -> TTAConfig:
    """The fixture's shortened scale list with the authors' merge settings."""
    return TTAConfig(
        scales=tuple(int(s) for s in npz["scales"]),
        scale_ranges=tuple(tuple(float(v) for v in r) for r in npz["scale_ranges"]),
        max_size=int(npz["max_size"]),
        vote_iou=float(npz["vote_th"]),
    )


def differences(got: dict, want: dict) -> tuple[float, float]:
    """``(max box difference, max score difference)`` after a stable sort by
    score of both sides, whose counts and labels must agree."""
    assert len(got["scores"]) == len(want["scores"])
    if not len(want["scores"]):
        return 0.0, 0.0
    a = np.argsort(-np.asarray(got["scores"]), kind="stable")
    b = np.argsort(-want["scores"], kind="stable")
    np.testing.assert_array_equal(np.asarray(got["classes"])[a], want["classes"][b])
    boxes = float(np.abs(np.asarray(got["boxes"])[a] - want["boxes"][b]).max())
    return boxes, float(np.abs(np.asarray(got["scores"])[a] - want["scores"][b]).max())


def rows(out: dict, mask: str, boxes: str = "boxes") -> dict:
    keep = out[mask]
    return {
        "boxes": out[boxes][keep],
        "scores": out["scores"][keep],
        "classes": out["classes"][keep],
    }


# ----------------------------------------------------------------- resize


def test_pil_resize_reproduces_every_pass_image_of_the_fixture(npz):
    """The official resize of each pass, PIL's bilinear filter, exactly (max and
    mean difference 0 on all four sizes: a shrink and three enlargements)."""
    image = npz["input_rgb_uint8"]
    for i in range(int(npz["num_passes"])):
        if f"pass{i}/resized_rgb_uint8" not in npz:
            continue  # a flip pass reuses its pass's resize (resized_as_pass)
        want = npz[f"pass{i}/resized_rgb_uint8"]
        got = pil_bilinear_resize(image, want.shape[:2]).numpy()
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want, err_msg=str(npz[f"pass{i}/name"]))


def test_pil_resize_is_pillows_on_random_sizes_in_a_graph():
    """Against Pillow one axis at a time (horizontal then vertical, the authors'
    Pillow; Pillow 13 may start vertically), through one dynamic-shape trace."""
    rng = np.random.default_rng(0)
    resize = tf.function(
        pil_bilinear_resize,
        input_signature=[tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([2], tf.int32)],
    )
    for _ in range(25):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        out_h, out_w = (int(v) for v in rng.integers(1, 150, 2))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        wide = Image.fromarray(image).resize((out_w, h), Image.BILINEAR)
        want = np.asarray(wide.resize((out_w, out_h), Image.BILINEAR))
        got = resize(image, tf.constant([out_h, out_w])).numpy()
        np.testing.assert_array_equal(got, want, err_msg=f"{h}x{w} -> {out_h}x{out_w}")
    assert resize.experimental_get_tracing_count() == 1


# ----------------------------------------------------------------- passes


def test_the_default_passes_are_the_authors_26():
    passes = tta_passes(TTAConfig(), 800, 1333)
    assert len(passes) == 26 and len(group_passes(passes)) == 13
    assert [p.name for p in passes[:4]] == [
        "identity",
        "identity_hflip",
        "scale400",
        "scale400_hflip",
    ]
    by_name = {p.name: p for p in passes}
    assert by_name["identity"].area_range is None and by_name["identity_hflip"].flip
    assert (by_name["scale700"].max_size, by_name["scale900"].max_size) == (1333, 3000)
    assert by_name["scale1800_hflip"].area_range == (0.0, 96.0)
    assert by_name["scale400"].area_range == (96.0, 10000.0)


def test_pass_stages_reproduce_the_fixture_from_its_detections(npz):
    """Flip undone, area filter and scaling to pass 0 (no network): each pass's
    ``detections`` mirrored as the network saw them give back ``detections``,
    ``kept`` and ``in_identity_pixels`` (inclusive BoxList.resize)."""
    passes = tta_passes(fixture_tta(npz), int(npz["min_size_test"]), int(npz["max_size_test"]))
    first_wh = npz["pass0/detections/image_size_wh"]
    for i, p in enumerate(passes):
        assert p.name == str(npz[f"pass{i}/name"]) and p.flip == bool(npz[f"pass{i}/hflip"])
        det = group(npz, f"pass{i}/detections")
        w, h = (int(v) for v in npz[f"pass{i}/detections/image_size_wh"])
        seen = det["boxes"]
        if p.flip:  # what the network gave on the flipped image
            seen = np.stack([w - seen[:, 2], seen[:, 1], w - seen[:, 0], seen[:, 3]], -1)
        n = len(det["scores"])
        raw = {
            "boxes": seen[None],
            "scores": det["scores"][None],
            "classes": det["classes"][None],
            "num_detections": np.array([n], np.int32),
        }
        info = pass_rows([p], [0], (h, w), (int(first_wh[1]), int(first_wh[0])))
        out = {k: np.asarray(v[0]) for k, v in pass_detections(raw, info, inclusive=True).items()}
        assert differences(rows(out, "live"), det)[0] < 1e-4
        assert differences(rows(out, "kept"), group(npz, f"pass{i}/kept"))[0] < 1e-4
        rescaled = rows(out, "kept", "rescaled")
        assert differences(rescaled, group(npz, f"pass{i}/in_identity_pixels"))[0] < 1e-3


# ------------------------------------------------------------------ merge


def merged(inputs: dict, method: str, **kwargs) -> dict:
    out = merge_detections(
        inputs["boxes"],
        inputs["scores"],
        inputs["classes"],
        np.ones(len(inputs["scores"]), bool),
        method=method,
        num_classes=80,
        **kwargs,
    )
    n = int(out["num_detections"])
    return {k: np.asarray(out[k])[:n] for k in ("boxes", "scores", "classes")}


def test_merge_reproduces_final_from_merged_input(npz):
    """Soft voting of the fixture's 576 pass boxes: 574 boxes, 35 of them voted."""
    got = merged(group(npz, "merged_input"), "soft-vote", vote_iou=float(npz["vote_th"]))
    boxes, scores = differences(got, group(npz, "final"))
    assert boxes < 1e-3 and scores < 1e-6


@pytest.mark.parametrize("method", MERGE_TYPES)
def test_merge_reproduces_every_synthetic_case(npz, method):
    for case in range(int(npz["num_merge_cases"])):
        got = merged(group(npz, f"merge{case}/input"), method, vote_iou=float(npz["vote_th"]))
        boxes, scores = differences(got, group(npz, f"merge{case}/{method}"))
        assert boxes < 1e-3 and scores < 1e-6, (case, boxes, scores)


def test_merge_keeps_ties_at_the_cut_and_compiles_with_xla():
    """Hand case: five far-apart boxes of one class, the 3rd and 4th best tied:
    ``max_detections=3`` keeps four (the official kthvalue cut); XLA agrees."""
    boxes = np.array([[k * 100, 0, k * 100 + 50, 50] for k in range(5)], np.float32)
    inputs = {
        "boxes": boxes,
        "scores": np.array([0.9, 0.8, 0.7, 0.7, 0.6], np.float32),
        "classes": np.ones(5, np.int32),
    }
    for method in MERGE_TYPES:
        got = merged(inputs, method, max_detections=3)
        np.testing.assert_allclose(got["scores"], [0.9, 0.8, 0.7, 0.7])
    # Two overlapping boxes vote: the weighted mean box, the best score, and the
    # decayed copy of the weaker one (0.5 * (1 - IoU 0.8) = 0.1 >= 0.05).
    pair = {
        "boxes": np.array([[0, 0, 10, 10], [0, 0, 10, 8]], np.float32),
        "scores": np.array([0.5, 1.0], np.float32),
        "classes": np.array([2, 2], np.int32),
    }
    soft = merged(pair, "soft-vote")
    np.testing.assert_allclose(soft["scores"], [1.0, 0.1], rtol=1e-6)
    np.testing.assert_allclose(soft["boxes"], [[0, 0, 10, 26 / 3], [0, 0, 10, 10]], rtol=1e-6)
    xla = tf.function(
        lambda b, s, c, v: merge_detections(b, s, c, v, method="soft-vote", num_classes=3),
        jit_compile=True,
    )
    out = xla(pair["boxes"], pair["scores"], pair["classes"], tf.ones([2], tf.bool))
    np.testing.assert_allclose(np.asarray(out["scores"])[:2], [1.0, 0.1], rtol=1e-6)
    assert int(out["num_detections"]) == 2


# ----------------------------------------------------------------- config


@pytest.mark.parametrize(
    "override, message",
    [
        ("tta.merge=max", "tta.merge='max' (expected soft-vote | vote | nms)"),
        ("tta.scales=[400, 600]", "tta.scale_ranges="),
        ("tta.scale_ranges=[[10, 5]]", "0 <= min < max"),
        ("tta.vote_iou=1.5", "tta.vote_iou=1.5 (expected in (0, 1])"),
        ("tta.canvas_multiple=48", "tta.canvas_multiple=48 (expected 32, 64, 128 or 256)"),
        ("tta.small_max_size=0", "or null for the test max size"),
        ("tta.flip=true", "unknown config key 'tta.flip'"),
    ],
)
def test_tta_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_tta_config_defaults_are_the_authors_and_a_scale_list_sets_with_its_ranges():
    tta = load_config(None, ["tta.scales=[400]", "tta.scale_ranges=[[96, 10000]]"]).tta
    assert tta.scales == (400,) and tta.scale_ranges == ((96.0, 10000.0),)
    d = TTAConfig()
    assert (d.merge, d.vote_iou, d.decayed_score_threshold, d.max_detections) == (
        "soft-vote",
        0.66,
        0.05,
        1000,
    )
    assert (d.max_size, d.test_flip, d.scale_flip, len(d.scales)) == (3000, True, True, 12)


# ------------------------------------------- the converted R-50, end to end


@pytest.fixture(scope="module")
def r50(npz, tmp_path_factory):
    """The official fixture checkpoint converted, with the fixture's TTA settings."""
    from atss_tf.convert import convert_official
    from atss_tf.inference import load_detector

    path = tmp_path_factory.mktemp("tta_r50") / "r50.keras"
    convert_official(fixture_path("official_random_fp16.pth"), path)
    model = load_detector(path)
    return {"path": path, "runner": TTADetector(model, tta=fixture_tta(npz))}


@pytest.mark.slow
def test_r50_passes_on_the_fixture_images_match_the_authors(npz, r50):
    """Each pass on the authors' own resized image (a flip pass: flipped): its
    detections, kept boxes and boxes in pass 0's pixels (fixture README)."""
    from atss_tf.tta.passes import exact_canvas

    runner = r50["runner"]
    first = npz["pass0/resized_rgb_uint8"].shape[:2]
    for g, indices in enumerate(runner.groups):
        resized = npz[f"pass{indices[0]}/resized_rgb_uint8"]
        canvas = exact_canvas(resized.shape[:2], 32)
        out = runner.run_group(runner.group_batch(g, resized, canvas, first))
        for row, i in enumerate(indices):
            one = {k: v[row] for k, v in out.items()}
            for mask, boxes, key in (
                ("live", "boxes", "detections"),
                ("kept", "boxes", "kept"),
                ("kept", "rescaled", "in_identity_pixels"),
            ):
                box_diff, score_diff = differences(
                    rows(one, mask, boxes), group(npz, f"pass{i}/{key}")
                )
                assert box_diff < 0.01 and score_diff < 1e-4, (i, key, box_diff, score_diff)


@pytest.mark.slow
def test_predict_cli_with_tta_writes_the_authors_final(npz, r50, tmp_path):
    """The whole TTA from ``input_rgb_uint8``, through ``atss-tf predict --tta``
    with the fixture's scales set by --set alone, against
    ``final_original_pixels``. Measured (2 cores, AMD EPYC): boxes 2.4e-4 px,
    scores 2.6e-6 before the json's rounding (the resize is PIL's exactly, so
    only float rounding differs); this project clips to the image, where the
    authors' inclusive scaling leaves x2/y2 up to 0.63 px beyond it."""
    photo = tmp_path / "crop.png"
    Image.fromarray(npz["input_rgb_uint8"]).save(photo)
    ranges = [[int(v) for v in r] for r in npz["scale_ranges"]]
    argv = ["predict", "--weights", str(r50["path"]), "--images", str(photo)]
    argv += ["--out", str(tmp_path / "out"), "--tta"]
    argv += ["--set", f"tta.scales={[int(s) for s in npz['scales']]}"]
    argv += ["--set", f"tta.scale_ranges={ranges}"]
    assert cli.main(argv) == 0
    records = json.loads((tmp_path / "out" / "detections.json").read_text())
    want = group(npz, "final_original_pixels")
    h, w = npz["input_rgb_uint8"].shape[:2]
    want["boxes"] = np.clip(want["boxes"], 0, [w, h, w, h])
    assert len(records) == len(want["scores"]) == 574
    got = {
        "boxes": np.array([r["box_xyxy"] for r in records]),
        "scores": np.array([r["score"] for r in records]),
        "classes": np.array([r["label"] for r in records]),
    }
    # The json rounds scores to 1e-5, which can reorder near-ties: each record
    # takes the closest unmatched official box of its class and score.
    free = np.ones(len(want["scores"]), bool)
    worst = 0.0
    for box, score, cls in zip(got["boxes"], got["scores"], got["classes"]):
        ok = free & (want["classes"] == cls) & (np.abs(want["scores"] - score) < 1e-4)
        assert ok.any(), (box, score, cls)
        diff = np.where(ok, np.abs(want["boxes"] - box).max(axis=1), np.inf)
        j = int(np.argmin(diff))
        free[j] = False
        worst = max(worst, float(diff[j]))
    assert worst < 0.015, worst  # rounded to 0.01 px


# ------------------------------------------------ CLI and SavedModel, tiny

# The tiny model's test size is 128: a 96 pass (and its flip) beside it.
TINY_TTA = ["tta.scales=[96]", "tta.scale_ranges=[[0, 10000]]"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An untrained tiny model (its boxes kept down to 0.001) saved as .keras,
    with a config naming a two-image synthetic validation set."""
    from atss_tf.model import build_detector

    root = tmp_path_factory.mktemp("tta_tiny")
    cfg = with_synthetic_data(
        tiny_config(["postprocess.score_threshold=0.001"]), root / "data", n_train=1, n_val=2
    )
    save_config(cfg, root / "tiny.yaml")
    model = build_detector(cfg)
    model.save(root / "tiny.keras")
    images = sorted(Path(cfg.data.val_images).iterdir())
    return {"root": root, "config": root / "tiny.yaml", "weights": root / "tiny.keras",
            "model": model, "images": images}  # fmt: skip


def test_predict_and_evaluate_cli_with_tta(tiny, tmp_path):
    from atss_tf.inference import read_image

    sets = [a for kv in TINY_TTA for a in ("--set", kv)]
    out = tmp_path / "pred"
    argv = ["predict", "--weights", str(tiny["weights"]), "--images", str(tiny["images"][0])]
    assert cli.main(argv + ["--out", str(out), "--tta", *sets]) == 0
    records = json.loads((out / "detections.json").read_text())
    tta = load_config(None, TINY_TTA).tta
    want = TTADetector(tiny["model"], tta=tta)(read_image(tiny["images"][0]))
    assert len(records) == len(want["scores"]) > 100  # more than one pass's 100
    np.testing.assert_allclose([r["score"] for r in records], want["scores"], atol=1e-5)
    np.testing.assert_allclose([r["box_xyxy"] for r in records], want["boxes"], atol=0.01)

    argv = ["evaluate", "--config", str(tiny["config"]), "--weights", str(tiny["weights"])]
    assert cli.main(argv + ["--out", str(tmp_path / "eval"), "--tta", *sets]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) >= {"AP", "AP50", "AR100"}
    detections = json.loads((tmp_path / "eval" / "detections.json").read_text())
    per_image = {d["image_id"] for d in detections}
    assert len(per_image) == 2 and len(detections) > 200


def test_export_refuses_the_single_scale_size_flags_with_tta(tiny, tmp_path, capsys):
    argv = ["export", "--weights", str(tiny["weights"]), "--out", str(tmp_path / "m"), "--tta"]
    assert cli.main(argv + ["--canvases", "128x128"]) == 2
    assert "--canvases do not apply with --tta" in capsys.readouterr().err
    assert cli.main(argv[:-1] + ["--tta-image-sizes", "128x128"]) == 2
    assert "--tta-image-sizes needs --tta" in capsys.readouterr().err


@pytest.mark.slow  # 23 s on 2 cores: export, load and the first request's graph optimisation
def test_export_tta_savedmodel_gives_the_python_tta(tiny, tmp_path):
    """``export --tta``: the SavedModel against :class:`TTADetector` on the
    same canvases, for an image of a named size (exact canvases) and another."""
    sets = [a for kv in TINY_TTA for a in ("--set", kv)]
    argv = ["export", "--weights", str(tiny["weights"]), "--out", str(tmp_path / "m"), "--tta"]
    argv += ["--input-type", "image_tensor", "--tta-image-sizes", "100x120", *sets]
    assert cli.main(argv) == 0
    serve = tf.saved_model.load(str(tmp_path / "m" / "1")).signatures["serving_default"]
    tta = load_config(None, TINY_TTA).tta
    plain = TTADetector(tiny["model"], tta=tta)
    canvases = serving_canvases(plain.passes, plain.groups, tta.canvas_multiple, [(100, 120)])
    runner = TTADetector(tiny["model"], tta=tta, canvases=canvases)
    rng = np.random.default_rng(3)
    for size in ((100, 120), (90, 60)):
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        out = serve(inputs=tf.constant(image[None]))
        want = runner(image)
        n = int(out["num_detections"][0])
        assert n == len(want["scores"]) > 0
        boxes = out["detection_boxes"][0, :n].numpy()[:, [1, 0, 3, 2]]
        np.testing.assert_allclose(boxes, want["boxes"], atol=1e-3)
        np.testing.assert_allclose(out["detection_scores"][0, :n], want["scores"], atol=1e-5)
        np.testing.assert_array_equal(out["detection_classes"][0, :n], want["classes"])
        if size == (100, 120):  # a named size runs on its exact canvases
            exact = plain(image)
            np.testing.assert_allclose(exact["boxes"], want["boxes"], atol=1e-3)


def test_the_readme_tta_commands_parse():
    from atss_tf.cli import build_command_parser
    from tests.helpers.journeys import readme_commands

    commands = readme_commands("Test-time augmentation (the authors' 50.7 AP setting)")
    assert [c[0] for c in commands] == ["evaluate", "predict", "export"]
    for argv in commands:
        assert build_command_parser(argv[0]).parse_args(argv[1:]).tta

"""``atss-tf assign`` through ``atss_tf.cli.main``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from atss_tf.cli import main
from atss_tf.config import Config
from atss_tf.targets import TargetEncoder

BOXES = [[20.0, 24.0, 90.0, 100.0], [2.5, 2.0, 7.0, 9.0], [0.0, 0.0, 160.0, 128.0]]


def write(tmp_path, payload, name="boxes.json"):
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return str(path)


def run_assign(tmp_path, payload, *extra):
    out = tmp_path / "out.npz"
    rc = main(
        [
            "assign",
            "--image-size",
            "128",
            "160",
            "--boxes",
            write(tmp_path, payload),
            "--out",
            str(out),
            *extra,
        ]
    )
    return rc, out


def test_writes_targets_that_match_the_encoder(tmp_path, capsys):
    rc, out = run_assign(
        tmp_path, {"boxes": BOXES, "labels": [3, 1, 7]}, "--set", "data.max_instances=2"
    )  # fewer than the boxes: padded to 3
    assert rc == 0
    result = np.load(out)
    enc = TargetEncoder.from_config(Config(), (128, 160))
    num_anchors = enc.anchor_grid.num_anchors
    assert result["anchors"].shape == (num_anchors, 4)
    assert result["cls_targets"].shape == (num_anchors,)
    assert result["box_targets"].shape == (num_anchors, 4)
    assert result["matched_gt"].shape == (num_anchors,)
    np.testing.assert_array_equal(result["anchors"], enc.anchor_grid.boxes)
    expected = enc(np.asarray(BOXES, np.float32), [3, 1, 7], [True] * 3)
    for key in ("cls_targets", "matched_gt", "box_targets"):
        np.testing.assert_array_equal(result[key], expected[key].numpy())
    assert set(np.unique(result["cls_targets"])) == {0, 1, 3, 7}
    text = capsys.readouterr().out
    assert "P3" in text and "P7" in text
    positives = int((result["matched_gt"] >= 0).sum())
    assert f"positives {positives}" in text
    for i in range(3):  # one summary row per box: "<i> <label> coords <count> ..."
        count = int((result["matched_gt"] == i).sum())
        row = next(line for line in text.splitlines() if line.split()[:1] == [str(i)])
        assert int(row.split()[6]) == count


def test_official_compat_flag_and_overrides(tmp_path):
    rc, out = run_assign(
        tmp_path, {"boxes": BOXES}, "--official-compat", "--set", "assigner.type=iou"
    )
    assert rc == 0
    result = np.load(out)
    cfg = Config(official_compat=True)
    cfg.assigner.type = "iou"
    enc = TargetEncoder.from_config(cfg, (128, 160))
    np.testing.assert_array_equal(result["anchors"], enc.anchor_grid.boxes)  # +0.5 px centers
    expected = enc(np.asarray(BOXES, np.float32), [1, 1, 1], [True] * 3)
    np.testing.assert_array_equal(result["cls_targets"], expected["cls_targets"].numpy())
    assert (result["cls_targets"] == -1).any()  # the IoU matcher ignores some anchors
    assert set(np.unique(result["cls_targets"])) <= {-1, 0, 1}  # labels default to 1


def test_no_boxes_gives_background(tmp_path):
    rc, out = run_assign(tmp_path, {"boxes": []})
    assert rc == 0
    result = np.load(out)
    assert np.all(result["cls_targets"] == 0) and np.all(result["matched_gt"] == -1)


@pytest.mark.parametrize(
    "payload,message",
    [
        ("{not json", "not valid JSON"),
        ({"box": BOXES}, '"boxes"'),
        ({"boxes": [[1, 2, 3]]}, "boxes[0] must be 4 numbers"),
        ({"boxes": [BOXES[0], [10, 10, 5, 20]]}, "boxes[1] = [10, 10, 5, 20] has x2 <= x1"),
        ({"boxes": [[10, 10, 20, 10]]}, "has y2 <= y1"),
        ({"boxes": [[10, "a", 20, 30]]}, "boxes[0] must be 4 numbers"),
        ({"boxes": BOXES, "labels": [1, 2]}, '"labels" must be a list of 3'),
        (
            {"boxes": BOXES, "labels": [1, 0, 2]},
            "labels[1] = 0 must be an integer class id in 1..80",
        ),
    ],
)
def test_bad_input_names_file_and_field(tmp_path, capsys, payload, message):
    rc, out = run_assign(tmp_path, payload)
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err
    assert "boxes.json" in err
    assert not out.exists()


def test_missing_file_and_bad_config(tmp_path, capsys):
    out = str(tmp_path / "out.npz")
    assert (
        main(
            [
                "assign",
                "--image-size",
                "128",
                "160",
                "--boxes",
                str(tmp_path / "nope.json"),
                "--out",
                out,
            ]
        )
        == 2
    )
    assert "cannot read boxes file" in capsys.readouterr().err
    path = write(tmp_path, {"boxes": BOXES})
    assert (
        main(
            [
                "assign",
                "--image-size",
                "128",
                "160",
                "--boxes",
                path,
                "--out",
                out,
                "--set",
                "assigner.kind=atss",
            ]
        )
        == 2
    )
    assert "assigner.kind" in capsys.readouterr().err
    assert main(["assign", "--image-size", "0", "160", "--boxes", path, "--out", out]) == 2
    assert "--image-size" in capsys.readouterr().err

"""Config loading: strict keys, typed overrides, compat resolution, clear errors."""

import pytest

from atss_tf.config import Config, ConfigError, from_dict, load_config, save_config, to_dict


def test_defaults_are_the_official_r50_setting():
    cfg = Config()
    assert cfg.model.backbone.depth == 50
    assert cfg.assigner.type == "atss" and cfg.assigner.topk == 9
    assert cfg.model.anchors.alignment == "center"
    assert cfg.assigner.center_margin == pytest.approx(0.01)
    assert cfg.model.inclusive_geometry is False
    assert cfg.postprocess.nms_iou == pytest.approx(0.6)


def test_official_compat_switch_resolves_all_three_settings():
    cfg = Config(official_compat=True)
    assert cfg.model.anchors.alignment == "official"
    assert cfg.assigner.center_margin == pytest.approx(0.51)
    assert cfg.model.inclusive_geometry is True


def test_explicit_setting_beats_the_switch():
    cfg = load_config(None, ["official_compat=true", "model.anchors.alignment=mmdet"])
    assert cfg.model.anchors.alignment == "mmdet"
    assert cfg.assigner.center_margin == pytest.approx(0.51)


def test_dotted_overrides_are_typed():
    cfg = load_config(None, ["model.head.num_convs=2", "model.anchors.aspect_ratios=[0.5, 1, 2]"])
    assert cfg.model.head.num_convs == 2
    assert cfg.model.anchors.aspect_ratios == (0.5, 1.0, 2.0)


@pytest.mark.parametrize(
    "override, culprit",
    [
        ("model.head.num_conv=2", "model.head.num_conv"),
        ("model.nope.x=1", "model.nope"),
        ("model.head.num_convs=two", "model.head.num_convs"),
        ("assigner.type=magic", "assigner.type"),
        ("model.anchors.alignment=left", "model.anchors.alignment"),
        ("data.canvases=[[100, 128]]", "data.canvases"),
        ("model.head.num_convs", "model.head.num_convs"),
    ],
)
def test_bad_overrides_name_the_key(override, culprit):
    with pytest.raises(ConfigError, match=culprit.replace(".", r"\.")):
        load_config(None, [override])


def test_yaml_file_errors_name_the_file_and_key(tmp_path):
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text("model:\n  head:\n    num_conv: 3\n")
    with pytest.raises(ConfigError, match=r"bad_key\.yaml.*model\.head\.num_conv"):
        load_config(bad_key)
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"malformed YAML.*malformed\.yaml"):
        load_config(malformed)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_point_regression_needs_one_anchor_per_location():
    with pytest.raises(ConfigError, match="one anchor per location"):
        load_config(None, ["model.head.regression=point", "model.anchors.scales_per_octave=3"])


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(None, ["official_compat=true", "assigner.type=fcos", "train.max_iters=7"])
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert to_dict(again) == to_dict(cfg)
    assert from_dict(to_dict(cfg)) == cfg
    assert again.assigner.fcos_ranges[-1][1] == float("inf")


def test_every_shipped_config_loads():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))
    assert len(configs) >= 8
    for path in configs:
        load_config(path)


def test_ablation_configs_inherit_and_override():
    from pathlib import Path

    root = Path(__file__).parents[1] / "configs"
    a9 = load_config(root / "ablations" / "retinanet_iou_a9.yaml")
    assert a9.assigner.type == "iou"
    assert a9.model.anchors.anchors_per_location == 9
    assert a9.train.max_iters == 90000  # from the base file
    assert a9.model.backbone.weights == "imagenet"


def test_base_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "a.yaml")


def test_renamed_keys_of_older_files_still_load(tmp_path, caplog):
    """v0.1/v0.2 files said loss.inclusive_geometry and train.mixed_precision."""
    path = tmp_path / "old.yaml"
    path.write_text(
        "loss: {inclusive_geometry: true}\ntrain: {mixed_precision: true}\n", encoding="utf-8"
    )
    with caplog.at_level("WARNING", logger="atss_tf"):
        cfg = load_config(path)
    assert cfg.model.inclusive_geometry is True
    assert cfg.train.precision == "mixed_float16"
    assert "'train.mixed_precision' is now 'train.precision'" in caplog.text
    path.write_text("train: {mixed_precision: false}\n", encoding="utf-8")
    assert load_config(path).train.precision == "float32"
    with pytest.raises(ConfigError, match="train.precision='bf16'.*mixed_bfloat16"):
        load_config(None, ["train.precision=bf16"])

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


def _settings(cls, prefix=""):
    """``(dotted key, dataclass field)`` of every setting under ``cls`` (not its sections)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _settings(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f


@pytest.mark.parametrize("root", ["Config", "DetectorConfig"])
def test_every_setting_declares_its_check(root):
    """A new setting cannot forget its validation: each one names a check
    (``Free`` for those that need none), and each ``Related`` one has a rule."""
    from atss_tf import config
    from atss_tf.config.checks import Check, Related, check_of
    from atss_tf.config.validation import RULES

    cls = getattr(config, root)
    keys = []
    for key, f in _settings(cls):
        check = check_of(f)
        assert isinstance(check, Check), f"{root} setting {key} declares no check"
        assert check.expected, key
        if isinstance(check, Related):
            assert any(r.key == key and cls in r.roots for r in RULES), f"no rule checks {key}"
        keys.append(key)
    assert len(keys) >= (80 if root == "Config" else 40)


def test_a_setting_without_a_check_is_refused_by_the_walker():
    import dataclasses

    from atss_tf.config.validation import problems

    @dataclasses.dataclass
    class Forgot:
        size: int = 3

    with pytest.raises(TypeError, match="config setting size declares no check"):
        problems(Forgot())


@pytest.mark.parametrize(
    "override, message",
    [
        (  # choices
            "assigner.type=magic",
            "invalid config value assigner.type='magic' (expected one of "
            "('atss', 'atss_dense', 'iou', 'fcos', 'fcos_center', 'topk'))",
        ),
        ("train.precision=bf16", "train.precision='bf16' (expected float32 | mixed_float16 |"),
        ("model.backbone.weights=coco", "weights='coco' (expected null, 'imagenet' or the path"),
        ("model.backbone.depth=51", "depth=51 (expected 18, 34, 50 or 101)"),
        ("train.jit_compile=often", "train.jit_compile='often' (expected true | false | auto)"),
        # ranges: closed, open, one-sided, with a note, or one special value
        ("loss.focal_alpha=1.5", "loss.focal_alpha=1.5 (expected in [0, 1])"),
        ("model.head.prior_prob=1", "model.head.prior_prob=1.0 (expected in (0, 1))"),
        ("train.momentum=1", "train.momentum=1.0 (expected in [0, 1))"),
        ("postprocess.nms_iou=0", "postprocess.nms_iou=0.0 (expected in (0, 1])"),
        ("train.base_lr=.inf", "train.base_lr=inf (expected > 0)"),
        ("assigner.topk=0", "invalid config value assigner.topk=0 (expected >= 1)"),
        ("data.max_image_pixels=-1", "data.max_image_pixels=-1 (expected >= 0 (0: no limit))"),
        (
            "data.num_parallel_calls=0",
            "data.num_parallel_calls=0 (expected >= 1, or -1 for tf.data.AUTOTUNE)",
        ),
        # tuple shapes
        ("model.anchors.strides=[]", "model.anchors.strides=() (expected positive strides)"),
        ("model.pixel_std=[1, 0, 1]", "model.pixel_std=(1.0, 0.0, 1.0) (expected positive values)"),
        ("data.min_size=[]", "data.min_size=() (expected one or more positive sizes)"),
        ("train.lr_steps=[3, 2]", "(3, 2) (expected strictly increasing positive steps)"),
        (
            "data.canvases=[[100, 128]]",
            "data.canvases=((100, 128),) (expected one or more (height, width) pairs, "
            "positive multiples of 32)",
        ),
        # rules across settings
        (
            "model.head.channels=30",
            "model.head.group_norm_groups=32 (expected a divisor of model.head.channels=30)",
        ),
        ("data.max_size=700", "data.max_size=700 (expected >= the largest data.min_size (800))"),
        (
            "train.accumulate_steps=3",
            "train.accumulate_steps=3 (expected >= 1 and a divisor of data.batch_size (16))",
        ),
    ],
)
def test_declared_checks_name_the_key_and_the_value(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_every_problem_is_listed_in_the_order_of_the_settings():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.max_iters=0", "model.num_classes=0", "data.batch_size=0"])
    assert str(e.value) == (
        "3 invalid config values: model.num_classes=0 (expected >= 1); "
        "data.batch_size=0 (expected >= 1); train.max_iters=0 (expected >= 1)"
    )


def test_check_messages():
    from atss_tf.config.checks import Free, Items, MultipleOf, OneOf, OrValue, Range

    assert Range(gt=0, le=1).expected == "in (0, 1]"
    assert Range(lt=5).expected == "< 5"
    assert not Range(ge=0).accepts(float("nan")) and Range(gt=0).accepts(float("inf"))
    assert not Range(gt=0, finite=True).accepts(float("inf"))
    assert not Range(ge=0).accepts("ten")
    assert OneOf((True, False, "auto"), form="bar").expected == "true | false | auto"
    assert not OneOf((True, False, "auto")).accepts(1)  # a switch is not a number
    assert Items(MultipleOf(32), "sides", min_len=2).accepts((32, 64))
    assert not Items(MultipleOf(32), "sides", min_len=2).accepts((32,))
    assert Items(Range(ge=0, le=1), "scores").expected == "scores, each in [0, 1]"
    assert OrValue(Range(ge=1), None, "no limit").expected == ">= 1, or null for no limit"
    assert Free("a path").accepts(object())


def test_detector_config_problems_name_the_keys_a_user_sets():
    from atss_tf.config import validate_detector_config

    dc = Config().detector_config()
    validate_detector_config(dc)
    dc.test_size, dc.max_size = 0, 0
    with pytest.raises(ConfigError, match=r"data.min_size=\(0,\) \(expected one or more positive"):
        validate_detector_config(dc)
    dc.test_size = 900
    with pytest.raises(
        ConfigError, match=r"^invalid config value data.max_size=0 .*min_size \(900\)"
    ):
        validate_detector_config(dc)

"""keras.applications ResNet50 -> our backbone: same C3..C5 features (offline, random weights)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from atss_tf.convert.keras_applications import copy_keras_resnet_weights, keras_applications_resnet
from atss_tf.model import ResNetBackbone

C_LAYERS = {"c3": "conv3_block4_out", "c4": "conv4_block6_out", "c5": "conv5_block3_out"}


def _randomize_applications(model: keras.Model, seed: int = 0) -> None:
    """Random conv biases and BN statistics, so that both folds are exercised.

    Variances are small (0.002..0.02) so a forgotten epsilon (1.001e-5) changes
    the features by far more than the tolerance.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            layer.bias.assign(rng.normal(0.0, 0.1, layer.bias.shape).astype("float32"))
        elif isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape
            layer.gamma.assign(rng.uniform(0.05, 0.15, c).astype("float32"))
            layer.beta.assign(rng.normal(0.0, 0.1, c).astype("float32"))
            layer.moving_mean.assign(rng.normal(0.0, 0.2, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.002, 0.02, c).astype("float32"))


@pytest.fixture(scope="module")
def pair():
    source = keras_applications_resnet(50, weights=None)
    _randomize_applications(source)
    backbone = ResNetBackbone(depth=50, stride_in_1x1=True)
    backbone.build((None, None, None, 3))
    copied = copy_keras_resnet_weights(source, backbone)
    return source, backbone, copied


def test_every_conv_and_bn_is_copied(pair):
    source, backbone, copied = pair
    assert copied == 1 + 16 * 3 + 4  # stem, 16 bottlenecks x 3, 4 projections
    convs = [layer for layer in source.layers if isinstance(layer, keras.layers.Conv2D)]
    assert copied == len(convs)


def test_backbone_features_match_keras_applications(pair):
    source, backbone, _ = pair
    x = np.random.default_rng(1).uniform(-100, 100, (2, 64, 64, 3)).astype("float32")
    ref_model = keras.Model(source.input, [source.get_layer(n).output for n in C_LAYERS.values()])
    refs = dict(zip(C_LAYERS, ref_model(x)))
    ours = backbone(x)
    for key, ref in refs.items():
        ref = np.asarray(ref, dtype="float64")
        got = np.asarray(ours[key], dtype="float64")
        assert got.shape == ref.shape
        rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        assert np.linalg.norm(ref) > 0 and rel < 1e-4, (key, rel)


def test_incompatible_backbones_are_refused(pair):
    source, _, _ = pair
    for kwargs, message in (
        ({"depth": 50, "stride_in_1x1": False}, "stride_in_1x1=False"),
        ({"depth": 50, "groups": 32, "width_per_group": 4}, "groups=32"),
        ({"depth": 18}, "depth=18"),
    ):
        with pytest.raises(ValueError, match=message):  # checked before any weight is touched
            copy_keras_resnet_weights(source, ResNetBackbone(**kwargs))


def test_training_model_starts_from_imagenet_backbone(pair, monkeypatch):
    """``model.backbone.weights: imagenet`` goes through keras.applications (stubbed
    offline) when the training model is built; a plain detector build loads nothing."""
    from atss_tf import model as model_pkg
    from atss_tf.config import Config
    from atss_tf.convert import keras_applications as imagenet
    from atss_tf.training.fit import build_training_model

    source, _, _ = pair
    requested = []
    monkeypatch.setattr(
        imagenet,
        "keras_applications_resnet",
        lambda depth, weights="imagenet": requested.append((depth, weights)) or source,
    )
    cfg = Config()
    cfg.model.backbone.weights = "imagenet"
    cfg.model.num_classes = 2
    model_pkg.build_detector(cfg)
    assert requested == []
    detector = build_training_model(cfg)
    assert requested == [(50, "imagenet")]
    np.testing.assert_array_equal(
        np.asarray(detector.backbone.stem_conv1.kernel),
        np.asarray(source.get_layer("conv1_conv").kernel),
    )

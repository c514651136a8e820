"""ATSS losses: the official fixture, hand-computed cases, replica normalisation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from atss_tf.anchors import generate_anchors
from atss_tf.boxes import BoxCoder
from atss_tf.config import Config
from atss_tf.losses import atss_losses, sigmoid_focal_loss
from tests.helpers.fixtures import fixture_head_outputs, inclusive_to_continuous
from tests.helpers.tiny import loss_args

LOSS_KEYS = (
    ("cls_loss", "loss_cls"),
    ("reg_loss", "loss_reg"),
    ("centerness_loss", "loss_centerness"),
)


@pytest.fixture(scope="module")
def fixture_inputs(official_outputs):
    outputs = fixture_head_outputs(official_outputs)
    targets = {
        "cls_targets": official_outputs["train_cls_targets"][None].astype(np.int32),
        "box_targets": official_outputs["train_reg_targets"][None].astype(np.float32),
    }
    anchors = generate_anchors((512, 512), Config(official_compat=True).model.anchors).boxes
    return outputs, targets, anchors


def _values(losses: dict) -> dict[str, float]:
    return {k: float(v) for k, v in losses.items()}


def test_fixture_anchors_are_the_official_ones(official_outputs, fixture_inputs):
    _, _, anchors = fixture_inputs
    ref = inclusive_to_continuous(official_outputs["anchors_xyxy_inclusive"])
    np.testing.assert_array_equal(anchors, ref)


def test_official_compat_reproduces_official_losses(official_outputs, fixture_inputs):
    outputs, targets, anchors = fixture_inputs
    ours = _values(atss_losses(outputs, targets, anchors, *loss_args(Config(official_compat=True))))
    for key, ref_key in LOSS_KEYS:
        ref = float(official_outputs[ref_key])
        assert ours[key] == pytest.approx(ref, rel=1e-4), (key, ours[key], ref)


def test_clean_geometry_differs_as_explained(official_outputs, fixture_inputs):
    """Continuous GIoU areas / centerness distances (spec §0.3): cls unchanged,
    reg 0.44% lower (0.8962 vs 0.9002), centerness slightly lower."""
    outputs, targets, anchors = fixture_inputs
    ours = _values(
        atss_losses(outputs, targets, anchors, *loss_args(Config(official_compat=False)))
    )
    assert ours["cls_loss"] == pytest.approx(float(official_outputs["loss_cls"]), rel=1e-4)
    ref_reg = float(official_outputs["loss_reg"])
    ref_ctr = float(official_outputs["loss_centerness"])
    assert ours["reg_loss"] == pytest.approx(0.896214, rel=2e-5)
    assert ours["reg_loss"] / ref_reg - 1 == pytest.approx(-0.00443, abs=1e-4)
    assert ours["centerness_loss"] == pytest.approx(0.657568, rel=2e-5)
    assert ours["centerness_loss"] / ref_ctr - 1 == pytest.approx(-0.00153, abs=1e-4)


def test_inclusive_geometry_can_be_set_alone(official_outputs, fixture_inputs):
    outputs, targets, anchors = fixture_inputs
    cfg = Config(official_compat=False)
    cfg.model.inclusive_geometry = True
    ours = _values(atss_losses(outputs, targets, anchors, *loss_args(cfg)))
    assert ours["reg_loss"] == pytest.approx(float(official_outputs["loss_reg"]), rel=1e-4)


def test_xla_compiled_losses_match_eager(fixture_inputs):
    outputs, targets, anchors = fixture_inputs
    cfg = Config(official_compat=True)
    eager = _values(atss_losses(outputs, targets, anchors, *loss_args(cfg)))
    compiled = tf.function(
        lambda o, t: atss_losses(o, t, anchors, *loss_args(cfg)), jit_compile=True
    )
    jit = _values(compiled(outputs, targets))
    for key in eager:
        assert jit[key] == pytest.approx(eager[key], rel=1e-5), key


def test_float16_outputs_are_computed_in_float32(fixture_inputs):
    outputs, targets, anchors = fixture_inputs
    cfg = Config(official_compat=True)
    half = {k: tf.constant(v, tf.float16) for k, v in outputs.items()}
    upcast = {k: tf.cast(v, tf.float32) for k, v in half.items()}
    a = atss_losses(half, targets, anchors, *loss_args(cfg))
    b = atss_losses(upcast, targets, anchors, *loss_args(cfg))
    for key in a:
        assert a[key].dtype == tf.float32
        assert float(a[key]) == float(b[key])


# --------------------------------------------------------------------------- #
# hand-computed cases
# --------------------------------------------------------------------------- #


def numpy_focal(logits: np.ndarray, labels: np.ndarray, alpha=0.25, gamma=2.0) -> np.ndarray:
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    onehot = labels[..., None] == np.arange(1, logits.shape[-1] + 1)
    pos = -alpha * (1 - p) ** gamma * np.log(p)
    neg = -(1 - alpha) * p**gamma * np.log(1 - p)
    return np.where(onehot, pos, np.where(labels[..., None] >= 0, neg, 0.0))


def test_focal_loss_matches_numpy_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2, 7, 5)).astype(np.float32)
    labels = rng.integers(-1, 6, (2, 7)).astype(np.int32)
    ours = sigmoid_focal_loss(logits, labels).numpy()
    np.testing.assert_allclose(ours, numpy_focal(logits, labels), rtol=1e-5, atol=1e-7)
    ours = sigmoid_focal_loss(logits, labels, alpha=0.6, gamma=1.5).numpy()
    np.testing.assert_allclose(ours, numpy_focal(logits, labels, 0.6, 1.5), rtol=1e-5, atol=1e-7)
    # One element by hand: label 2, class 2, logit 0 -> p = 0.5:
    # 0.25 * 0.5**2 * log(2) = 0.0433217
    one = sigmoid_focal_loss(np.zeros((1, 3), np.float32), np.array([2])).numpy()
    assert one[0, 1] == pytest.approx(0.25 * 0.25 * np.log(2.0), rel=1e-6)
    assert one[0, 0] == pytest.approx(0.75 * 0.25 * np.log(2.0), rel=1e-6)


def test_focal_loss_is_finite_for_extreme_logits():
    logits = np.array([[-200.0, 200.0]], np.float32)
    for label in (0, 1, 2):
        loss = sigmoid_focal_loss(logits, np.array([label])).numpy()
        assert np.all(np.isfinite(loss))
    # Confidently wrong positive: alpha * |logit|.
    assert sigmoid_focal_loss(logits, np.array([1])).numpy()[0, 0] == pytest.approx(50.0)


def _one_anchor_case(pred_box, target_box, anchor=(0.0, 0.0, 10.0, 10.0), ctr_logit=0.3):
    """One positive anchor of class 1 with given decoded prediction and target."""
    coder = BoxCoder()
    anchors = np.array([anchor], np.float32)
    deltas = coder.encode(tf.constant([pred_box], tf.float32), anchors).numpy()
    target = coder.encode(tf.constant([target_box], tf.float32), anchors).numpy()
    outputs = {
        "cls_logits": np.zeros((1, 1, 2), np.float32),
        "box_regression": deltas[None],
        "centerness": np.full((1, 1, 1), ctr_logit, np.float32),
    }
    targets = {"cls_targets": np.array([[1]], np.int32), "box_targets": target[None]}
    return outputs, targets, anchors


@pytest.mark.parametrize(
    ("pred", "inclusive", "expected_giou"),
    [
        ((5.0, 0.0, 15.0, 10.0), False, 1.0 / 3.0),  # overlap 50 of union 150
        ((20.0, 0.0, 30.0, 10.0), False, -1.0 / 3.0),  # disjoint: 0 - 100 / 300
        ((0.0, 0.0, 10.0, 10.0), False, 1.0),
        ((5.0, 0.0, 15.0, 10.0), True, 2.0 / 7.0),  # boxes shrunk to 9x9: 36 / 126
    ],
)
def test_regression_loss_is_weighted_giou(pred, inclusive, expected_giou):
    outputs, targets, anchors = _one_anchor_case(pred, (0.0, 0.0, 10.0, 10.0))
    cfg = Config()
    cfg.model.inclusive_geometry = inclusive
    losses = atss_losses(outputs, targets, anchors, *loss_args(cfg))
    # One positive: the centerness weight cancels in the normalisation.
    assert float(losses["reg_loss"]) == pytest.approx(2.0 * (1.0 - expected_giou), rel=1e-5)


def test_two_positives_weighted_by_centerness_target():
    coder = BoxCoder()
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    target_boxes = np.array([[0, 0, 10, 10], [2, 1, 10, 13]], np.float32)
    pred_boxes = np.array([[5, 0, 15, 10], [2, 1, 10, 13]], np.float32)
    outputs = {
        "cls_logits": np.zeros((1, 2, 1), np.float32),
        "box_regression": coder.encode(pred_boxes, anchors).numpy()[None],
        "centerness": np.array([[[0.0], [1.5]]], np.float32),
    }
    targets = {
        "cls_targets": np.array([[1, 1]], np.int32),
        "box_targets": coder.encode(target_boxes, anchors).numpy()[None],
    }
    losses = atss_losses(outputs, targets, anchors, *loss_args(Config()))
    # Center (5, 5): first target l=t=r=b=5 -> 1; second l=3 r=5 t=4 b=8 -> sqrt(0.3).
    w = np.array([1.0, np.sqrt(0.3)])
    giou_loss = np.array([2.0 / 3.0, 0.0])
    expected_reg = 2.0 * (w * giou_loss).sum() / w.sum()
    assert float(losses["reg_loss"]) == pytest.approx(expected_reg, rel=1e-5)
    x = np.array([0.0, 1.5])
    bce = np.maximum(x, 0) - x * w + np.log1p(np.exp(-np.abs(x)))
    assert float(losses["centerness_loss"]) == pytest.approx(bce.sum() / 2.0, rel=1e-5)
    # Focal: two positives of the only class at logit 0, divided by P = 2.
    assert float(losses["cls_loss"]) == pytest.approx(0.25 * 0.25 * np.log(2.0), rel=1e-5)


def test_centerness_target_inclusive_distances():
    outputs, targets, anchors = _one_anchor_case((2, 1, 10, 13), (2, 1, 10, 13), ctr_logit=0.0)
    cfg = Config()
    cfg.model.inclusive_geometry = True
    loss = float(atss_losses(outputs, targets, anchors, *loss_args(cfg))["centerness_loss"])
    # Distances each 0.5 px shorter: l=2.5 r=4.5 t=3.5 b=7.5.
    z = np.sqrt(2.5 / 4.5 * 3.5 / 7.5)
    assert loss == pytest.approx(np.log(2.0), rel=1e-6)  # logit 0: BCE = log 2 for any target
    outputs["centerness"] = np.full((1, 1, 1), 2.0, np.float32)
    loss = float(atss_losses(outputs, targets, anchors, *loss_args(cfg))["centerness_loss"])
    assert loss == pytest.approx(2.0 - 2.0 * z + np.log1p(np.exp(-2.0)), rel=1e-6)


def test_ignored_anchors_are_excluded_and_division_by_positives():
    rng = np.random.default_rng(1)
    num, classes = 12, 4
    logits = rng.normal(0, 2, (1, num, classes)).astype(np.float32)
    labels = np.array([[0, 1, -1, 3, 0, -1, 0, 0, 2, -1, 0, 0]], np.int32)
    anchors = np.tile(np.array([[0, 0, 16, 16]], np.float32), (num, 1))
    outputs = {
        "cls_logits": logits,
        "box_regression": np.zeros((1, num, 4), np.float32),
        "centerness": np.zeros((1, num, 1), np.float32),
    }
    targets = {"cls_targets": labels, "box_targets": np.zeros((1, num, 4), np.float32)}
    loss = float(atss_losses(outputs, targets, anchors, *loss_args(Config()))["cls_loss"])
    keep = labels[0] >= 0
    expected = numpy_focal(logits[0][keep], labels[0][keep]).sum() / 3.0
    assert loss == pytest.approx(expected, rel=1e-5)
    # Whatever the ignored anchors predict, the loss does not move.
    outputs["cls_logits"] = np.where((labels == -1)[..., None], 50.0, logits).astype(np.float32)
    assert float(
        atss_losses(outputs, targets, anchors, *loss_args(Config()))["cls_loss"]
    ) == pytest.approx(loss, rel=1e-6)


def test_no_positives_gives_zero_losses_and_finite_gradients():
    num, classes = 6, 3
    anchors = np.tile(np.array([[0, 0, 16, 16]], np.float32), (num, 1))
    box_regression = tf.Variable(np.full((2, num, 4), 30.0, np.float32))  # exp overflow if used
    centerness = tf.Variable(np.zeros((2, num, 1), np.float32))
    cls_logits = tf.Variable(np.zeros((2, num, classes), np.float32))
    filler = np.full((2, num, 4), np.nan, np.float32)
    filler[0, 0] = np.inf
    targets = {
        "cls_targets": np.array([[0, -1, 0, 0, 0, 0], [0] * num], np.int32),
        "box_targets": filler,
    }
    with tf.GradientTape() as tape:
        outputs = {
            "cls_logits": cls_logits,
            "box_regression": box_regression,
            "centerness": centerness,
        }
        losses = atss_losses(outputs, targets, anchors, *loss_args(Config()))
        total = tf.add_n(list(losses.values()))
    assert float(losses["reg_loss"]) == 0.0
    assert float(losses["centerness_loss"]) == 0.0
    # 11 background anchors x 3 classes at p = 0.5, divided by max(0, 1) = 1.
    assert float(losses["cls_loss"]) == pytest.approx(33 * 0.75 * 0.25 * np.log(2.0), rel=1e-6)
    grads = tape.gradient(total, [cls_logits, box_regression, centerness])
    for g in grads:
        assert g is not None and np.all(np.isfinite(tf.convert_to_tensor(g).numpy()))
    assert np.all(tf.convert_to_tensor(grads[1]).numpy() == 0.0)


def test_nonfinite_filler_of_background_rows_is_harmless(fixture_inputs):
    outputs, targets, anchors = fixture_inputs
    clean = _values(
        atss_losses(outputs, targets, anchors, *loss_args(Config(official_compat=True)))
    )
    noisy_targets = dict(targets)
    background = (targets["cls_targets"] <= 0)[..., None]
    noisy_targets["box_targets"] = np.where(background, np.nan, targets["box_targets"])
    noisy_outputs = dict(outputs)
    noisy_outputs["box_regression"] = np.where(background, 1e4, outputs["box_regression"]).astype(
        np.float32
    )
    assert (
        _values(
            atss_losses(
                noisy_outputs, noisy_targets, anchors, *loss_args(Config(official_compat=True))
            )
        )
        == clean
    )


# --------------------------------------------------------------------------- #
# replica normalisation (MirroredStrategy on 2 logical CPUs, in a subprocess)
# --------------------------------------------------------------------------- #

_MIRRORED_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from atss_tf.boxes import coder_for_model
    from atss_tf.config import Config
    from atss_tf.losses import atss_losses

    cfg = Config()
    data = np.load(sys.argv[1])
    anchors = data["anchors"]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    result = {"replicas": strategy.num_replicas_in_sync, "cases": []}
    for case in ("a", "b"):
        def per_replica(ctx, case=case):
            i = ctx.replica_id_in_sync_group
            return {k: tf.constant(data[f"{case}_{k}"][i:i + 1])
                    for k in ("cls_logits", "box_regression", "centerness",
                              "cls_targets", "box_targets")}

        inputs = strategy.experimental_distribute_values_from_function(per_replica)

        def step(x):
            outputs = {k: x[k] for k in ("cls_logits", "box_regression", "centerness")}
            targets = {k: x[k] for k in ("cls_targets", "box_targets")}
            with tf.GradientTape() as tape:
                tape.watch(outputs)
                losses = atss_losses(
                    outputs, targets, anchors, coder_for_model(cfg.model), cfg.loss)
                scaled = tf.add_n(list(losses.values())) / float(
                    tf.distribute.get_replica_context().num_replicas_in_sync)
            return losses, tape.gradient(scaled, outputs)

        losses, grads = strategy.run(tf.function(step), args=(inputs,))
        result["cases"].append({
            "losses": {k: [float(v) for v in strategy.experimental_local_results(t)]
                       for k, t in losses.items()},
            "grads": {k: np.concatenate(
                [g.numpy() for g in strategy.experimental_local_results(t)]).tolist()
                for k, t in grads.items()},
        })
    print("RESULT" + json.dumps(result))
    """
)


def _synthetic_batch(rng, anchors, num_classes, positives_per_image):
    """A batch with ATSS-like targets: positives whose GT box contains the anchor center."""
    batch, num = len(positives_per_image), anchors.shape[0]
    labels = np.zeros((batch, num), np.int32)
    box_targets = np.zeros((batch, num, 4), np.float32)
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    for b, count in enumerate(positives_per_image):
        order = rng.permutation(num)
        idx = order[:count]
        labels[b, idx] = rng.integers(1, num_classes + 1, size=count)
        labels[b, order[count : count + 5]] = -1
        sides = rng.uniform(4, 60, size=(count, 4)).astype(np.float32)
        gt = np.concatenate([centers[idx] - sides[:, :2], centers[idx] + sides[:, 2:]], axis=1)
        box_targets[b, idx] = BoxCoder().encode(gt, anchors[idx]).numpy()
    return {
        "cls_logits": rng.normal(-2, 1.5, (batch, num, num_classes)).astype(np.float32),
        "box_regression": (box_targets + rng.normal(0, 0.3, box_targets.shape)).astype(np.float32),
        "centerness": rng.normal(0, 1, (batch, num, 1)).astype(np.float32),
        "cls_targets": labels,
        "box_targets": box_targets,
    }


def test_mirrored_replicas_reproduce_single_device_loss_and_gradients(tmp_path):
    """Keras sums replica gradients, so replica r contributes grad(loss_r / N).

    Equality that must hold (for P >= N positives in the global batch):
    ``sum_r loss_r / N == L`` where L is the one-device loss of the whole batch,
    for each of the three losses, and likewise for the gradients. Case "b" has
    a replica without any positive.
    """
    rng = np.random.default_rng(3)
    anchors = generate_anchors((128, 128), Config().model.anchors).boxes
    cases = {
        "a": _synthetic_batch(rng, anchors, 3, [7, 3]),
        "b": _synthetic_batch(rng, anchors, 3, [6, 0]),
    }
    path = tmp_path / "inputs.npz"
    np.savez(
        path,
        anchors=anchors,
        **{f"{c}_{k}": v for c, batch in cases.items() for k, v in batch.items()},
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", _MIRRORED_CHILD, str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT") :])
    n = result["replicas"]
    assert n == 2

    for name, child in zip(cases, result["cases"]):
        batch = cases[name]
        outputs = {k: tf.constant(batch[k]) for k in ("cls_logits", "box_regression", "centerness")}
        targets = {k: batch[k] for k in ("cls_targets", "box_targets")}
        with tf.GradientTape() as tape:
            tape.watch(outputs)
            single = atss_losses(outputs, targets, anchors, *loss_args(Config()))
            total = tf.add_n(list(single.values()))
        grads = tape.gradient(total, outputs)
        for key, value in single.items():
            per_replica = child["losses"][key]
            assert sum(per_replica) / n == pytest.approx(float(value), rel=1e-5, abs=1e-7), (
                name,
                key,
            )
        for key, g in grads.items():
            np.testing.assert_allclose(
                np.asarray(child["grads"][key], np.float32), g.numpy(), rtol=1e-5, atol=1e-7
            )
        if name == "b":
            assert child["losses"]["reg_loss"][1] == 0.0
            assert child["losses"]["centerness_loss"][1] == 0.0
            # Replica 0 alone is not the full-batch loss: the normalisers are global.
            assert child["losses"]["reg_loss"][0] == pytest.approx(
                2 * float(single["reg_loss"]), rel=1e-5
            )

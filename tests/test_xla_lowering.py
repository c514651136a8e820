"""Every shipped config's train step, on each of its canvases, lowers to one
XLA computation (HLO): what a TPU compiles. tf2xla refuses any op without an
XLA kernel (host-only ops such as ``tf.py_function``, string ops, prints) and
any dynamic shape, so this fails on anything that would stop a TPU run.

Lowering, not compiling or running, still costs about 4 s per canvas for R-50
on this CPU, so the work is shared out: the R-50 config is lowered on every
one of its canvases (all COCO configs share them); every other distinct train
step is lowered on one canvas, a different one each, so each step variant and
each canvas is covered. The train step's ops depend on the model (backbone
aside: the ablations run on a small one, their subject is the anchors and the
head; of the anchors, only their number per location), the loss and the
precision, not on the assigner (it runs in the input pipeline), so configs
whose step is the same as one already lowered are not lowered again. The zoo
configs (DCN, ResNeXt) lower on ``NARROW_BACKBONE``: every kind of layer of
theirs, at depth 50 and an eighth of the width.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from atss_tf.config import load_config
from atss_tf.targets import TargetEncoder
from atss_tf.training.fit import build_training_model
from tests.helpers.fixtures import ROOT
from tests.helpers.journeys import (
    ANY_ON_SMALL_BACKBONE,
    NARROW_BACKBONE,
    NO_DOWNLOAD,
    SMALL_BACKBONE,
    train_step_key,
)

SHIPPED = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml"))


def one_image_batch(cfg, canvas: tuple[int, int]):
    """``(x, y)`` of one image on ``canvas`` with one box, targets from the
    config's own encoder (batch 1: the ops are the same for any batch)."""
    height, width = canvas
    m = cfg.data.max_instances
    boxes = np.zeros((1, m, 4), np.float32)
    boxes[0, 0] = [0.1 * width, 0.2 * height, 0.6 * width, 0.7 * height]
    labels = np.zeros((1, m), np.int32)
    labels[0, 0] = 1
    mask = np.zeros((1, m), bool)
    mask[0, 0] = True
    y = TargetEncoder.from_config(cfg, canvas).encode_batch(boxes, labels, mask)
    x = {
        "images": tf.zeros((1, height, width, 3)),
        "image_info": tf.ones((1, 4, 2)),
        "image_id": tf.zeros((1,), tf.int64),
    }
    return x, y


def lower_train_step(model, data) -> str:
    step = tf.function(model.train_step, jit_compile=True, autograph=False)
    return step.experimental_get_compiler_ir(data)(stage="hlo")


R50 = "configs/atss_r50_fpn_1x_coco.yaml"


def shipped_variants() -> list[tuple[str, list[str], list[int]]]:
    """``(config, overrides, canvas indices)`` per distinct train step of the
    shipped configs, plus R-50 in ``mixed_bfloat16`` (what a TPU run uses)."""
    variants, seen = [], set()
    candidates = [(R50, [])] + [(n, []) for n in SHIPPED if n != R50]
    candidates.append((R50, ["train.precision=mixed_bfloat16"]))
    for name, extra in candidates:
        small = SMALL_BACKBONE if name.startswith("configs/ablations/") else []
        if "dcnv2_" in name or "x101_" in name:
            small = NARROW_BACKBONE  # the zoo's kinds of layer, as their journeys train them
        overrides = NO_DOWNLOAD + small + extra
        cfg = load_config(ROOT / name, overrides)
        key = train_step_key(load_config(ROOT / name, NO_DOWNLOAD + ANY_ON_SMALL_BACKBONE + extra))
        if key in seen:
            continue
        seen.add(key)
        count = len(cfg.data.canvases)
        canvases = list(range(count)) if not variants else [len(variants) % count]
        variants.append((name, overrides, canvases))
    return variants


VARIANTS = shipped_variants()


def test_lowering_refuses_a_host_only_op():
    """The check itself: a step with an op XLA cannot compile does not lower."""

    class HostStep:
        def train_step(self, data):
            return tf.py_function(lambda t: t * 2, [data["images"]], tf.float32)

    with pytest.raises(Exception, match="(?i)py_?func|EagerPyFunc|compil"):
        lower_train_step(HostStep(), {"images": tf.zeros((1, 8, 8, 3))})


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "overrides", "canvases"),
    VARIANTS,
    ids=[" ".join([n, *o[1:]]) for n, o, _ in VARIANTS],
)
def test_train_step_lowers_to_one_xla_computation(name, overrides, canvases):
    cfg = load_config(ROOT / name, overrides)
    model = build_training_model(cfg)
    for index in canvases:
        height, width = cfg.data.canvases[index]
        hlo = lower_train_step(model, one_image_batch(cfg, (height, width)))
        assert hlo.startswith("HloModule"), hlo[:200]
        assert f"[1,{height},{width},3]" in hlo  # the canvas is static in the computation


def test_the_lowered_variants_cover_every_canvas_and_every_shipped_step():
    covered = {tuple(load_config(ROOT / n, o).data.canvases[i]) for n, o, c in VARIANTS for i in c}
    every = {tuple(c) for n in SHIPPED for c in load_config(ROOT / n, NO_DOWNLOAD).data.canvases}
    assert covered == every
    lowered = {
        train_step_key(load_config(ROOT / n, NO_DOWNLOAD + ANY_ON_SMALL_BACKBONE))
        for n, _, _ in VARIANTS
    }
    for name in SHIPPED:
        assert (
            train_step_key(load_config(ROOT / name, NO_DOWNLOAD + ANY_ON_SMALL_BACKBONE)) in lowered
        ), name

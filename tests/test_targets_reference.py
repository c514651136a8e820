"""The fast (windowed, XLA) selectors against dense NumPy references on random images.

Hundreds of random images over several canvases (square, non-square, not
multiples of 32 or 128) and settings (default, official-compat, mmdet
alignment, k = 3 / 9 / 15, fallback, #A = 9), with 0..M boxes: tiny (2 px),
huge (bigger than the canvas), touching the border, overlapping, duplicated,
on a quarter-pixel lattice (many exact distance ties) or arbitrary floats.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from atss_tf.config import Config
from atss_tf.targets import TargetEncoder, atss
from tests.helpers.reference_atss import grid_centers, reference_atss, reference_fcos


def random_boxes(rng: np.random.Generator, canvas: tuple[int, int], n: int) -> np.ndarray:
    """``[n, 4]`` float32 continuous boxes of mixed kinds (see module doc)."""
    h, w = canvas
    lattice = rng.random() < 0.6  # quarter pixels: exact ties in distances, IoUs, areas
    out = np.zeros((n, 4), np.float64)
    for i in range(n):
        kind = rng.choice(
            ["normal", "tiny", "huge", "border", "copy", "twin"],
            p=[0.45, 0.15, 0.1, 0.15, 0.05, 0.1],
        )
        if kind in ("copy", "twin") and i > 0:
            src = out[rng.integers(i)]
            if kind == "copy" or not lattice:
                out[i] = src
            else:  # same size, shifted by whole strides: equal IoUs and areas
                out[i] = src + np.repeat(rng.integers(-2, 3, 2) * 8.0, 2)[[0, 2, 1, 3]]
            continue
        if kind == "tiny":
            bw, bh = rng.uniform(1.0, 3.0, 2)
        elif kind == "huge":
            bw, bh = w * rng.uniform(1.0, 1.6), h * rng.uniform(1.0, 1.6)
        else:
            bw, bh = np.exp(rng.uniform(np.log(4.0), np.log(max(h, w) * 0.9), 2))
        x1 = rng.uniform(-0.25 * bw, w - 0.75 * bw)
        y1 = rng.uniform(-0.25 * bh, h - 0.75 * bh)
        if kind == "huge":
            x1, y1 = rng.uniform(-0.5, 0.0) * (bw - w) - 1, rng.uniform(-0.5, 0.0) * (bh - h) - 1
        if kind == "border":
            x1 = 0.0 if rng.random() < 0.5 else w - bw
            y1 = rng.choice([0.0, h - bh, y1])
        out[i] = [x1, y1, x1 + bw, y1 + bh]
    if lattice:
        out = np.round(out * 4.0) / 4.0
        bad = out[:, 2] <= out[:, 0]
        out[bad, 2] = out[bad, 0] + 0.25
        bad = out[:, 3] <= out[:, 1]
        out[bad, 3] = out[bad, 1] + 0.25
    return out.astype(np.float32)


def random_batch(seed: int, canvas, batch: int, max_boxes: int):
    rng = np.random.default_rng(seed)
    boxes = np.zeros((batch, max_boxes, 4), np.float32)
    mask = np.zeros((batch, max_boxes), bool)
    counts = rng.integers(0, max_boxes + 1, batch)
    counts[0] = 0
    for b, n in enumerate(counts):
        rows = rng.permutation(max_boxes)[:n]  # valid rows anywhere, not only first
        boxes[b, rows] = random_boxes(rng, canvas, n)
        mask[b, rows] = True
        # padded rows hold junk: it must not matter
        boxes[b, ~mask[b]] = rng.uniform(-50, 900, (max_boxes - n, 4))
    labels = rng.integers(1, 81, (batch, max_boxes)).astype(np.int32)
    return boxes, labels, mask


def make_config(compat: bool = False, **assigner) -> Config:
    cfg = Config(official_compat=compat)
    for key, value in assigner.items():
        if key == "alignment":
            cfg.model.anchors.alignment = value
        elif key == "a9":
            cfg.model.anchors.octave_base_scale = 4.0
            cfg.model.anchors.scales_per_octave = 3
            cfg.model.anchors.aspect_ratios = (0.5, 1.0, 2.0)
        else:
            setattr(cfg.assigner, key, value)
    return cfg


def compare(
    ours: np.ndarray, ref: np.ndarray, ambiguous: np.ndarray, rows, boxes, what: str
) -> int:
    """Assert ``ours == ref`` on every anchor not flagged ambiguous by the reference
    (decided by a float32-sized difference); return how many ambiguous ones differ."""
    ref = np.where(ref >= 0, np.append(rows, -1)[ref], -1)
    bad = np.nonzero((ours != ref) & ~ambiguous)[0]
    assert len(bad) == 0, (
        f"{what}: {len(bad)} anchors differ, e.g. anchors {bad[:8].tolist()}: "
        f"ours {ours[bad[:8]].tolist()} reference {ref[bad[:8]].tolist()}; "
        f"valid boxes {boxes[rows].tolist()[:6]}"
    )
    return int(((ours != ref) & ambiguous).sum())


ATSS_GROUPS = [
    # (id, canvas, config, images, max boxes)
    ("default-640x800-k9", (640, 800), make_config(), 40, 30),
    ("compat-640x800-k9", (640, 800), make_config(compat=True), 40, 30),
    ("default-320x480-k3", (320, 480), make_config(topk=3), 40, 20),
    (
        "mmdet-256x256-k15-fallback",
        (256, 256),
        make_config(compat=True, topk=15, alignment="mmdet", fallback_best_candidate=True),
        40,
        20,
    ),
    ("default-200x328-fallback", (200, 328), make_config(fallback_best_candidate=True), 40, 20),
    ("compat-320x480-A9", (320, 480), make_config(compat=True, a9=True), 16, 10),
]


@pytest.mark.parametrize(
    "canvas,config,images,max_boxes",
    [g[1:] for g in ATSS_GROUPS],
    ids=[g[0] for g in ATSS_GROUPS],
)
def test_atss_matches_dense_reference(canvas, config, images, max_boxes):
    enc = TargetEncoder.from_config(config, canvas)
    grid = enc.anchor_grid
    cfg = config
    # Anchor centers of the spec (j * s + offset), shared by a location's anchors.
    centers = grid_centers(grid.level_shapes, grid.strides, grid.offsets, grid.anchors_per_location)
    seed = sum(canvas) + 7 * cfg.assigner.topk + grid.anchors_per_location
    boxes, labels, mask = random_batch(seed, canvas, images, max_boxes)
    out = enc.encode_batch(boxes, labels, mask)
    matched = out["matched_gt"].numpy()
    total_pos = loose = 0
    for b in range(images):
        rows = np.nonzero(mask[b])[0]
        ref, ambiguous = reference_atss(
            grid.boxes,
            centers,
            grid.num_per_level,
            grid.anchors_per_location,
            boxes[b, rows],
            k=cfg.assigner.topk,
            margin=cfg.assigner.center_margin,
            fallback=cfg.assigner.fallback_best_candidate,
            return_ambiguous=True,
        )
        loose += compare(matched[b], ref, ambiguous, rows, boxes[b], f"image {b}")
        total_pos += int((ref >= 0).sum())
    assert total_pos > 20 * images  # the comparison is not vacuous
    assert loose <= total_pos // 1000, f"{loose} float-ambiguous anchors differ"
    cls = out["cls_targets"].numpy()
    assert np.array_equal(cls > 0, matched >= 0)
    assert np.all(np.isfinite(out["box_targets"].numpy()))


FCOS_GROUPS = [
    ("fcos-default-640x800", (640, 800), make_config(type="fcos"), 30, 30),
    ("fcos-compat-320x480", (320, 480), make_config(compat=True, type="fcos"), 30, 20),
    ("fcos_center-default-640x800", (640, 800), make_config(type="fcos_center"), 30, 30),
    (
        "fcos_center-compat-200x328-r2.5",
        (200, 328),
        make_config(compat=True, type="fcos_center", center_radius=2.5),
        30,
        20,
    ),
]


@pytest.mark.parametrize(
    "canvas,config,images,max_boxes", [g[1:] for g in FCOS_GROUPS], ids=[g[0] for g in FCOS_GROUPS]
)
def test_fcos_matches_dense_reference(canvas, config, images, max_boxes):
    enc = TargetEncoder.from_config(config, canvas)
    grid, cfg = enc.anchor_grid, config
    centers = grid_centers(grid.level_shapes, grid.strides, grid.offsets, 1)
    strides = np.repeat(np.asarray(grid.strides, np.float64), grid.num_per_level)
    ranges = np.repeat(np.asarray(cfg.assigner.fcos_ranges), grid.num_per_level, axis=0)
    boxes, labels, mask = random_batch(sum(canvas) + 1, canvas, images, max_boxes)
    matched = enc.encode_batch(boxes, labels, mask)["matched_gt"].numpy()
    total_pos = loose = 0
    for b in range(images):
        rows = np.nonzero(mask[b])[0]
        ref, ambiguous = reference_fcos(
            centers,
            strides,
            ranges,
            boxes[b, rows],
            margin=cfg.assigner.center_margin,
            range_offset=0.5 if cfg.model.inclusive_geometry else 0.0,
            center_radius=cfg.assigner.center_radius
            if cfg.assigner.type == "fcos_center"
            else None,
            return_ambiguous=True,
        )
        loose += compare(matched[b], ref, ambiguous, rows, boxes[b], f"image {b}")
        total_pos += int((ref >= 0).sum())
    assert total_pos > 10 * images
    assert loose <= total_pos // 1000, f"{loose} float-ambiguous anchors differ"


def test_grid_centers_are_anchor_centers():
    """The windowed ATSS measures distances from j*s + offset: the grid's own centers."""
    for compat, alignment in [(False, None), (True, None), (False, "mmdet")]:
        cfg = make_config(compat=compat, alignment=alignment) if alignment else make_config(compat)
        grid = TargetEncoder.from_config(cfg, (200, 328)).anchor_grid
        spec = grid_centers(grid.level_shapes, grid.strides, grid.offsets, 1)
        assert np.array_equal(spec.astype(np.float32), grid.centers)


def dense_candidates(grid, center: np.ndarray, k: int) -> list[set[int]]:
    """Per GT the set of the k * #A nearest anchors of every level: a dense float32
    top-k (same distance formula as the encoder), ties to the lowest index."""
    locations = grid_centers(grid.level_shapes, grid.strides, grid.offsets, 1).astype(np.float32)
    apl = grid.anchors_per_location

    @tf.function(jit_compile=True)
    def per_level(points, c, kk):
        dx = points[None, :, 0] - c[:, None, 0]
        dy = points[None, :, 1] - c[:, None, 1]
        return tf.math.top_k(-tf.sqrt(dx * dx + dy * dy), kk).indices

    sets = [set() for _ in range(len(center))]
    start_loc, start = 0, 0
    for h, w in grid.level_shapes:
        n = h * w
        kk = min(k, n)
        top = per_level(
            tf.constant(locations[start_loc : start_loc + n]), tf.constant(center, tf.float32), kk
        ).numpy()
        for g in range(len(center)):
            for loc in top[g]:
                sets[g].update(start + loc * apl + a for a in range(apl))
        start_loc += n
        start += n * apl
    return sets


@pytest.mark.parametrize("k", [1, 3, 9, 15])
def test_window_candidates_equal_dense_topk(k):
    """The window never misses one of the k nearest, wherever the GT center is:
    on anchor centers, exactly between them (ties), next to and far outside the
    canvas, on tiny levels (P7 of 200x328 has 2x3 cells)."""
    canvas = (200, 328)
    cfg = make_config(topk=k)
    grid = TargetEncoder.from_config(cfg, canvas).anchor_grid
    rng = np.random.default_rng(k)
    special = [
        -900.0,
        -130.0,
        -64.0,
        -4.0,
        0.0,
        4.0,
        8.0,
        12.0,
        100.0,
        196.0,
        200.0,
        328.0,
        333.0,
        400.0,
        2000.0,
    ]
    xs = np.concatenate([special, rng.uniform(-100, 430, 12), np.arange(0, 330, 4.0)[::3]])
    ys = np.concatenate([special, rng.uniform(-100, 300, 12), np.arange(0, 200, 4.0)[::3]])
    center = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2).astype(np.float32)
    half = np.float32(1.0)
    boxes = np.concatenate([center - half, center + half], axis=-1)
    anchor, chosen = atss.candidates(grid, boxes, np.ones(len(boxes), bool), k)
    anchor, chosen = anchor.numpy(), chosen.numpy()
    expected = dense_candidates(grid, center, k)
    for g in range(len(boxes)):
        got = set(anchor[g][chosen[g]].tolist())
        assert len(got) == int(chosen[g].sum()), "an anchor was chosen twice"
        assert got == expected[g], (
            f"GT center {center[g]}: window {sorted(got - expected[g])} "
            f"dense {sorted(expected[g] - got)}"
        )


def test_fallback_gives_stranded_gt_its_best_candidate():
    """A 2 px GT between anchor centers has no positive (official behaviour); with
    the fallback it gets exactly its highest-IoU candidate."""
    box = np.array([[13.0, 13.0, 15.0, 15.0]], np.float32)  # center 14: no anchor center inside
    mask = np.array([True])
    plain = TargetEncoder.from_config(make_config(), (128, 128))
    assert int((plain(box, [1], mask)["matched_gt"].numpy() >= 0).sum()) == 0
    enc = TargetEncoder.from_config(make_config(fallback_best_candidate=True), (128, 128))
    matched = enc(box, [1], mask)["matched_gt"].numpy()
    grid = enc.anchor_grid
    ref = reference_atss(grid.boxes, grid.centers, grid.num_per_level, 1, box, fallback=True)
    assert int((matched >= 0).sum()) == 1
    assert np.array_equal(matched, ref)


@pytest.mark.parametrize(
    "canvas,config,images,max_boxes",
    [g[1:] for g in ATSS_GROUPS if not g[2].assigner.fallback_best_candidate],
    ids=[g[0] for g in ATSS_GROUPS if not g[2].assigner.fallback_best_candidate],
)
def test_windowed_atss_equals_dense_algorithm_1(canvas, config, images, max_boxes):
    """The windowed selector is an optimisation of ``targets/dense_atss.py``:
    the same positives on random images (a float32-rounding tie in the
    threshold may flip at most one anchor in a thousand)."""
    dense_cfg = dataclasses.replace(
        config, assigner=dataclasses.replace(config.assigner, type="atss_dense")
    )
    windowed = TargetEncoder.from_config(config, canvas)
    dense = TargetEncoder.from_config(dense_cfg, canvas)
    boxes, labels, mask = random_batch(sum(canvas) + 11, canvas, images, max_boxes)
    a = windowed.encode_batch(boxes, labels, mask)["matched_gt"].numpy()
    b = dense.encode_batch(boxes, labels, mask)["matched_gt"].numpy()
    positives = int((b >= 0).sum())
    assert positives > 10 * images  # not vacuous
    assert int((a != b).sum()) <= positives // 1000, f"{int((a != b).sum())} anchors differ"

"""What the journey tests need: user-shaped data, shrunk configs, the README's commands.

A journey runs a shipped config through the CLI the way the README says, with
only data paths, image sizes, batch size and step counts changed (plus no
ImageNet download: tests never reach the network).
"""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import yaml

from atss_tf.config import load_config, to_dict
from atss_tf.data.coco_names import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from atss_tf.data.synthetic import generate_synthetic_coco
from tests.helpers.fixtures import ROOT

README = ROOT / "README.md"
CONFIGS = sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml") if p.is_file()
)

COCO_CATEGORIES = list(zip(COCO_CATEGORY_IDS, COCO_CLASS_NAMES))
# Three categories with gaps, as a user's own dataset often has.
SPARSE_CATEGORIES = [(2, "circle"), (5, "square"), (9, "triangle")]

# Heights and widths drawn independently: landscape, portrait, square and
# elongated images (up to 3.3:1) in one set.
MIXED_SIZES = ((60, 200), (60, 200))
SMALLEST_CANVAS_SIDE = 96


def make_dataset(root: Path, categories, n_train: int = 10, n_val: int = 4) -> dict[str, str]:
    """COCO-format train/val splits of mixed sizes and orientations under ``root``."""
    paths = {}
    for split, n, seed in (("train", n_train, 11), ("val", n_val, 12)):
        p = generate_synthetic_coco(
            root, n, MIXED_SIZES, seed=seed, split=split, categories=categories, object_size=(8, 56)
        )
        paths[f"{split}_annotations"], paths[f"{split}_images"] = p.annotations, p.images_dir
    return paths


def _ceil32(x: float) -> int:
    return max(32, 32 * math.ceil(x / 32))


# No download at test time: ImageNet weights only change the variables' values.
NO_DOWNLOAD = ["model.backbone.weights=null"]


def train_step_key(cfg) -> str:
    """What the compiled train step's ops depend on: model, loss, precision.
    Of the anchors only their number per location: sizes and ratios are
    constants in the computation (Tables 5 and 6 change nothing else); the
    assigner runs in the input pipeline."""
    d = to_dict(cfg)
    d["model"]["anchors"] = cfg.model.anchors.anchors_per_location
    return json.dumps([d["model"], d["loss"], d["train"]["precision"]], sort_keys=True)


# A ResNet-18 at a quarter width instead of the config's backbone.
SMALL_BACKBONE = ["model.backbone.depth=18", "model.backbone.width_multiplier=0.25"]
# The zoo backbones at an eighth of their width and at depth 50: every kind of
# layer, group count, stride and DCN of the config, a fraction of its channels.
# Depth 101 adds 17 more of c4's blocks, the same ops, and doubles the trace
# of a step (43 to 86 s for R-101-DCN on 2 cores); the R-101 journey runs a
# full-depth step, and the zoo journeys build each config at its own depth.
NARROW_BACKBONE = ["model.backbone.width_multiplier=0.125", "model.backbone.depth=50"]
# Any shipped config on SMALL_BACKBONE (basic blocks take no DCN, one group):
# for keys that compare what is around the backbone.
ANY_ON_SMALL_BACKBONE = [
    *SMALL_BACKBONE,
    "model.backbone.dcn_stages=[]",
    "model.backbone.groups=1",
    "model.backbone.width_per_group=64",
]


def shrink_overrides(
    config: str | Path, data: dict[str, str], batch_size: int = 2, small_backbone: bool = False
) -> list[str]:
    """``--set`` values that run ``config`` on ``data`` at a small scale.

    Every image size of the config (canvases, shorter sides, longer-side cap) is
    divided by one factor that makes its smallest canvas side 96 px; canvases
    round up to multiples of 32. The number of canvases, the multi-scale list and
    everything else the config says stays as it is; with ``small_backbone`` the
    backbone is :data:`SMALL_BACKBONE` (for configs whose subject is not the
    backbone: the ablations of the sample selection and the anchors).
    """
    cfg = load_config(ROOT / config)
    factor = min(min(c) for c in cfg.data.canvases) / SMALLEST_CANVAS_SIDE
    canvases = [[_ceil32(h / factor), _ceil32(w / factor)] for h, w in cfg.data.canvases]
    min_size = [max(1, round(s / factor)) for s in cfg.data.min_size]
    max_size = max(max(min_size), round(cfg.data.max_size / factor))
    overrides = [f"data.{k}={v}" for k, v in data.items()]
    overrides += [
        f"data.canvases={canvases}",
        f"data.min_size={min_size}",
        f"data.max_size={max_size}",
        f"data.batch_size={batch_size}",
        "data.shuffle_buffer=16",
        "train.max_iters=2",
        "train.steps_per_epoch=2",
    ]
    if cfg.model.backbone.weights is not None:
        overrides.append("model.backbone.weights=null")  # no download in tests
    if small_backbone:
        overrides += SMALL_BACKBONE
    return overrides


def first_canvas_only(overrides: list[str]) -> str:
    """The ``data.canvases=`` override that keeps only the first canvas of the
    one in ``overrides`` (as :func:`shrink_overrides` gives it)."""
    canvases = next(o for o in overrides if o.startswith("data.canvases="))
    return f"data.canvases=[{yaml.safe_load(canvases.split('=', 1)[1])[0]}]"


def readme_commands(section: str) -> list[list[str]]:
    """The ``atss-tf`` commands of the README section titled ``section``, as argv
    lists (without the program name), backslash continuations joined."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, f"README has no section '## {section}'"
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", match.group(1), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line)
            if words and words[0] == "atss-tf":
                commands.append(words[1:])
    assert commands, f"README section '## {section}' has no atss-tf command"
    return commands

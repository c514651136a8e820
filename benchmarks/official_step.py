"""One train step of the authors' PyTorch ATSS, timed like ``precision.py``'s variants.

    TORCH_PYTHON -m benchmarks.official_step --code ATSS_CHECKOUT [--steps 5] [--size 512] [--batch 2]

Run by ``python -m benchmarks.precision --official ATSS_CHECKOUT --torch-python PY``
as ``PY -m benchmarks.official_step`` from the repository root, with an
interpreter that has PyTorch (CPU) and ``yacs`` but need not have atss_tf:
this file imports neither TensorFlow nor atss_tf, only ``benchmarks.common``
(found in the current directory, the repository root; it imports NumPy
only). ``ATSS_CHECKOUT`` is a checkout of
github.com/sfzhang15/ATSS (no build needed): its R-50 1x config, model,
ATSS loss and SGD optimiser, in train mode on the CPU. Three things are
patched at import, none of which runs in the timed step's arithmetic:

* ``atss_core._C`` (the CUDA/C++ extension) is a stand-in module: training on
  the CPU calls none of it (NMS, ROIAlign and DCN are not used).
* ``numpy.float`` (removed in NumPy 1.24) is ``float`` for the anchor generator.
* The CPU focal loss indexes ``gamma[0]``/``alpha[0]`` while its caller passes
  floats; the caller's floats are wrapped in lists.

The images and boxes are ``benchmarks.common.random_train_batch``, as for
``precision.py``'s variants, so both sides train on identical data. Prints one JSON
line: ``times`` (s per step), ``first_step``, ``peak_rss_mib``, ``loss``.
"""

from __future__ import annotations

import argparse
import json
import sys
import types

from benchmarks.common import random_train_batch, time_train_steps


def build_official_step(code: str, size: int, batch: int):
    """The authors' R-50 1x model and SGD in train mode on the CPU, on
    ``random_train_batch(size, batch)``: returns ``step()``, one train step
    that returns its loss. ``code`` is the ATSS checkout (put on ``sys.path``)."""
    # The authors' package is not installed: atss_core is imported from the checkout.
    sys.path.insert(0, code)

    extension = types.ModuleType("atss_core._C")
    extension.nms = extension.ml_nms = None  # bound at import, called only at inference
    sys.modules["atss_core._C"] = extension
    sys.modules.setdefault("cv2", types.ModuleType("cv2"))  # keypoint post-processing only
    import numpy as np
    import torch

    np.float = float  # noqa: NPY001 (the official anchor generator still uses it)
    import atss_core.layers.sigmoid_focal_loss as focal
    from atss_core.config import cfg
    from atss_core.modeling.detector import build_detection_model
    from atss_core.solver import make_optimizer
    from atss_core.structures.bounding_box import BoxList
    from atss_core.structures.image_list import to_image_list

    cpu_focal = focal.sigmoid_focal_loss_cpu
    focal.sigmoid_focal_loss_cpu = lambda l, t, g, a: cpu_focal(l, t, [g], [a])

    cfg.merge_from_file(f"{code}/configs/atss/atss_R_50_FPN_1x.yaml")
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHT", ""])
    cfg.freeze()
    torch.manual_seed(0)
    model = build_detection_model(cfg)
    model.train()
    optimizer = make_optimizer(cfg, model)

    images, boxes, labels = random_train_batch(size, batch)
    targets = []
    for b in range(batch):
        target = BoxList(torch.tensor(boxes[b], dtype=torch.float32), (size, size), mode="xyxy")
        target.add_field("labels", torch.tensor(labels[b]))
        targets.append(target)
    image_list = to_image_list(
        list(torch.from_numpy(images).permute(0, 3, 1, 2)), cfg.DATALOADER.SIZE_DIVISIBILITY
    )

    def step() -> float:
        losses = model(image_list, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    step.model = model  # for byte counts (benchmarks/memory.py)
    step.optimizer = optimizer
    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--code", required=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()

    import torch

    step = build_official_step(args.code, args.size, args.batch)
    result = time_train_steps(step, args.steps)
    print(json.dumps({**result, "peak_gpu_mib": None, "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

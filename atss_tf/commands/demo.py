"""``atss-tf demo --out DIR``: the synthetic-shapes demo, end to end on a CPU.

Generates a COCO-format dataset of shapes, trains the small model of
``configs/demo_shapes.yaml`` from scratch, evaluates it with pycocotools on
held-out images and draws its predictions. Writes ``DIR/metrics.json``
(``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AR*``),
``DIR/predictions.png``, ``DIR/model.keras``, checkpoints and TensorBoard logs.
Running it again on the same DIR resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from atss_tf.commands.common import add_config_arguments, find_config, shipped_config
from atss_tf.errors import UsageError

DEMO_OBJECT_SIZE = (8, 200)
# predictions.png shows the confident detections; COCO AP ranks all of them
# (down to postprocess.score_threshold, 0.05), most of which are duplicates
# of lower score.
DEMO_PICTURE_SCORE = 0.5


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    add_config_arguments(parser, config_help="default: configs/demo_shapes.yaml")
    parser.add_argument(
        "--train-images", type=int, default=480, help="synthetic training images (default 480)"
    )
    parser.add_argument(
        "--val-images", type=int, default=100, help="synthetic held-out images (default 100)"
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=DEMO_PICTURE_SCORE,
        help=f"draw detections at or above this score in predictions.png (default "
        f"{DEMO_PICTURE_SCORE}); metrics.json counts every detection",
    )
    parser.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=None,
        help="Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch "
        "(default: 1 in a terminal, 2 when the output is a file)",
    )


def prepare_demo_config(args, out: Path):
    """Generate the synthetic dataset (once) and point the demo config at it."""
    from atss_tf.config import load_config
    from atss_tf.data.synthetic import SHAPES, generate_synthetic_coco

    path = find_config(args.config) if args.config else shipped_config("demo_shapes.yaml")
    cfg = load_config(path, args.overrides)
    (h, w) = cfg.data.canvases[0]
    data_dir = out / "data"
    splits = {}
    for split, count, seed in (("train", args.train_images, 1), ("val", args.val_images, 2)):
        ann = data_dir / f"{split}.json"
        if ann.exists() and len(json.loads(ann.read_text())["images"]) == count:
            splits[split] = (str(ann), str(data_dir / split))
            continue
        paths = generate_synthetic_coco(
            data_dir,
            count,
            (h, w),
            seed=seed,
            num_classes=cfg.model.num_classes,
            object_size=DEMO_OBJECT_SIZE,
            split=split,
            progress=True,
        )
        splits[split] = (paths.annotations, paths.images_dir)
    cfg.data.train_annotations, cfg.data.train_images = splits["train"]
    cfg.data.val_annotations, cfg.data.val_images = splits["val"]
    cfg.model.class_names = tuple(SHAPES[: cfg.model.num_classes])
    return cfg


def run(args) -> int:
    from atss_tf.data.splits import split_source
    from atss_tf.inference import detect, read_image
    from atss_tf.progress import fit_verbosity
    from atss_tf.training.fit import train
    from atss_tf.visualization import save_detection_grid

    for name in ("train_images", "val_images"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0.0 <= args.score_threshold <= 1.0:
        raise UsageError(f"--score-threshold must lie in [0, 1], got {args.score_threshold}")
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = prepare_demo_config(args, out)
    print(
        f"Synthetic dataset ready in {out / 'data'} ({time.time() - start:.0f} s). Training "
        f"{cfg.train.max_iters} steps of batch {cfg.data.batch_size} on {cfg.data.canvases[0]} canvases."
    )
    verbose = fit_verbosity() if args.verbose is None else args.verbose
    model = train(cfg, out, verbose=verbose)
    metrics = json.loads((out / "metrics.json").read_text())

    val_split = split_source(cfg, "val")
    val = json.loads(Path(val_split.annotations).read_text())
    files = [Path(val_split.images) / im["file_name"] for im in val["images"][:8]]
    images = [read_image(f) for f in files]
    save_detection_grid(
        images,
        detect(model, images),
        model.class_names,
        out / "predictions.png",
        score_threshold=args.score_threshold,
        titles=[f.name for f in files],
    )
    minutes = (time.time() - start) / 60
    print(
        f"Done in {minutes:.1f} min. COCO AP {metrics['AP']:.3f}, AP50 {metrics['AP50']:.3f}, "
        f"AP75 {metrics['AP75']:.3f} on {len(val['images'])} held-out images."
    )
    print(
        f"Wrote {out / 'metrics.json'}, {out / 'predictions.png'} (detections scoring "
        f">= {args.score_threshold}), {out / 'model.keras'}"
    )
    return 0

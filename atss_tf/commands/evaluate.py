"""``atss-tf evaluate --config C --weights W [--out DIR]``: COCO metrics on the validation set.

The data settings (validation annotations/images, test size, canvases) come from
``--config``; everything about the model comes from the weights' own config.
``--tta`` evaluates with the authors' test-time augmentation (the config's
``tta`` section, e.g. ``--set tta.scales=[400,600]``), see :mod:`atss_tf.tta`.
"""

from __future__ import annotations

import json

from atss_tf import files
from atss_tf.commands.common import add_config_arguments, config_from_args
from atss_tf.errors import ConfigError


def add_arguments(parser) -> None:
    add_config_arguments(
        parser,
        required=True,
        config_help="YAML config naming the validation set (data.val_*); the model's own "
        "settings come from --weights",
    )
    parser.add_argument("--weights", required=True, help=".keras model or .weights.h5 checkpoint")
    parser.add_argument("--out", default=".", help="folder for metrics.json and detections.json")
    parser.add_argument(
        "--tta",
        action="store_true",
        help="multi-scale, flipped test passes merged by box voting (the config's tta "
        "section; 26 passes by default, about 30x the time)",
    )


def run(args) -> int:
    from atss_tf.data.inference_input import inference_config
    from atss_tf.data.splits import has_split

    cfg = config_from_args(args)
    if not has_split(cfg, "val"):
        raise ConfigError(
            f"{args.config} sets neither data.val_annotations nor data.val_tfrecords: "
            "evaluate needs a validation set"
        )
    from atss_tf.evaluation import make_evaluate_fn, make_tta_evaluate_fn
    from atss_tf.inference import load_detector

    model = load_detector(args.weights, cfg)
    # --set data.min_size/max_size without data.canvases: canvases that fit them.
    cfg = inference_config(model.detector_config, cfg, args.overrides)
    out = args.out
    files.makedirs(out)
    make = make_tta_evaluate_fn if args.tta else make_evaluate_fn
    metrics = make(model, cfg, out)()
    files.write_text(files.join(out, "metrics.json"), json.dumps(metrics, indent=2))
    for name, value in metrics.items():
        print(f"{name:>6}: {value:.4f}")
    print(f"Wrote {files.join(out, 'metrics.json')} and {files.join(out, 'detections.json')}")
    return 0

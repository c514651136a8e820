"""``atss-tf train --config C [--set k=v ...] [--init-from MODEL] --out DIR``: train,
resuming if DIR has checkpoints; ``--init-from`` fine-tunes from another model's weights."""

from __future__ import annotations

from atss_tf.commands.common import add_config_arguments, config_from_args
from atss_tf.config import validate


def add_arguments(parser) -> None:
    add_config_arguments(parser, required=True)
    parser.add_argument(
        "--out",
        required=True,
        help="output folder (config.yaml, checkpoints, TensorBoard logs, model.keras); "
        "an existing run there resumes from its last checkpoint",
    )
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="MODEL",
        help="fine-tune: start from the weights of MODEL (a .keras file of atss-tf train or "
        "convert, or an official .pth checkpoint) wherever a tensor's name and shape fit; "
        "the classification layer starts afresh for other classes (sets train.init_from; "
        "a resumed run ignores it)",
    )


def run(args) -> int:
    cfg = config_from_args(args)  # before TensorFlow is imported: config errors are instant
    if args.init_from is not None:
        cfg.train.init_from = args.init_from
        validate(cfg)
    from atss_tf.progress import fit_verbosity
    from atss_tf.training.fit import train

    train(cfg, args.out, verbose=fit_verbosity())
    print(f"Model written to {args.out}/model.keras")
    return 0

"""``atss-tf train --config C [--set k=v ...] --out DIR``: train, resuming if DIR has checkpoints."""

from __future__ import annotations

from atss_tf.commands.common import add_config_arguments, config_from_args


def add_arguments(parser) -> None:
    add_config_arguments(parser, required=True)
    parser.add_argument(
        "--out",
        required=True,
        help="output folder (config.yaml, checkpoints, TensorBoard logs, model.keras); "
        "an existing run there resumes from its last checkpoint",
    )


def run(args) -> int:
    cfg = config_from_args(args)  # before TensorFlow is imported: config errors are instant
    from atss_tf.progress import fit_verbosity
    from atss_tf.training.fit import train

    train(cfg, args.out, verbose=fit_verbosity())
    print(f"Model written to {args.out}/model.keras")
    return 0

"""``atss-tf train --config C [--set k=v ...] --out DIR``: train, resuming if DIR has checkpoints."""

from __future__ import annotations

from atss_tf.commands.common import add_config_arguments, config_from_args


def add_arguments(parser) -> None:
    add_config_arguments(parser, required=True)
    parser.add_argument("--out", required=True, help="output folder (checkpoints, logs, model)")


def run(args) -> int:
    from atss_tf.trainer import train

    cfg = config_from_args(args)
    train(cfg, args.out)
    print(f"Model written to {args.out}/model.keras")
    return 0

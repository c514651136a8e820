"""The ``atss-tf`` command line.

Each subcommand lives in ``atss_tf/commands/<name>.py`` and provides
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only
when their command runs, so ``atss-tf --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "demo": "Generate the synthetic dataset, train a small model on it, evaluate, draw predictions.",
    "train": "Train a detector from a config.",
    "evaluate": "COCO metrics of a trained model on the validation set.",
    "predict": "Detect objects in images; write detections json and pictures.",
    "assign": "Show which anchors a set of boxes selects (sample selection).",
    "convert": "Convert an official ATSS (PyTorch) checkpoint to a .keras model.",
    "make-tfrecords": "Write a COCO-format dataset as sharded TFRecords.",
}


def _module_name(command: str) -> str:
    return "atss_tf.commands." + command.replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atss-tf", description="ATSS object detection in TensorFlow / Keras."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"atss-tf: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name = argv[0]
    module = importlib.import_module(_module_name(name))
    sub = argparse.ArgumentParser(prog=f"atss-tf {name}", description=COMMANDS[name])
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

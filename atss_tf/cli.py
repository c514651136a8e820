"""The ``atss-tf`` command line.

Each subcommand lives in ``atss_tf/commands/<name>.py`` and provides
``add_arguments(parser)`` and ``run(args) -> int``; command modules import
TensorFlow only inside ``run``, so ``--help`` and ``--version`` are fast.

Errors a user can fix (a config key, a data file, a checkpoint, a missing
file, an invalid value) are printed as one line on stderr naming what is
wrong; the exit code is 2 for usage and config errors and 1 for runtime
errors. ``--debug`` (or ``ATSS_TF_DEBUG=1``) prints the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback

import atss_tf
from atss_tf.errors import AtssError, first_line

COMMANDS = {
    "demo": "Generate the synthetic dataset, train a small model on it, evaluate, draw predictions.",
    "train": "Train a detector from a config.",
    "evaluate": "COCO metrics of a trained model on the validation set.",
    "predict": "Detect objects in images; write detections json and pictures.",
    "assign": "Show which anchors a set of boxes selects (sample selection).",
    "analyze": "Sample selection over a dataset: positives per object, levels, IoU thresholds.",
    "export": "Export a SavedModel for TF Serving: pre-processing, network and NMS inside.",
    "convert": "Convert an official ATSS (PyTorch) checkpoint to a .keras model.",
    "make-tfrecords": "Write a COCO-format dataset as sharded TFRecords.",
}
DEBUG_HELP = "print the full traceback of an error (also: environment ATSS_TF_DEBUG=1)"


def _module_name(command: str) -> str:
    return "atss_tf.commands." + command.replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atss-tf",
        description="ATSS object detection in TensorFlow / Keras.",
        epilog="`atss-tf COMMAND --help` describes a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"atss-tf {atss_tf.__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def build_command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one subcommand (imports its module, not TensorFlow)."""
    module = importlib.import_module(_module_name(name))
    parser = argparse.ArgumentParser(prog=f"atss-tf {name}", description=COMMANDS[name])
    module.add_arguments(parser)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the message."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging() -> None:
    """Show the package's INFO messages (what the data readers dropped or
    skipped) on stderr, once, without touching the root logger."""
    log = logging.getLogger("atss_tf")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (TensorFlow errors: their first line)."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.filename}: {error.strerror}"
    if isinstance(error, AtssError):
        return " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return first_line(error)


def _is_tf_error(error: BaseException) -> bool:
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(error, tf.errors.OpError)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    debug = os.environ.get("ATSS_TF_DEBUG", "") not in ("", "0")
    while argv and argv[0] == "--debug":
        debug = True
        argv = argv[1:]
    if not argv or argv[0].startswith("-") or argv[0] not in COMMANDS:
        if argv and not argv[0].startswith("-"):
            parser.print_usage(sys.stderr)
            print(f"atss-tf: error: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        try:
            parser.parse_args(argv)
        except SystemExit as e:  # --help, --version, or a bad option
            return int(e.code or 0)
        parser.print_help()
        return 0
    name = argv[0]
    try:
        args = build_command_parser(name).parse_args(argv[1:])
    except SystemExit as e:
        return int(e.code or 0)
    debug = debug or args.debug
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    configure_logging()
    try:
        module = importlib.import_module(_module_name(name))
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"atss-tf {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            traceback.print_exc()
        known = isinstance(e, (AtssError, OSError)) or _is_tf_error(e)
        if not known:
            if not debug:
                traceback.print_exc()
            print(
                f"atss-tf {name}: internal error ({type(e).__name__}); please report it with "
                "the traceback above",
                file=sys.stderr,
            )
            return 1
        hint = "" if debug or isinstance(e, AtssError) else " (--debug shows the traceback)"
        print(f"atss-tf {name}: error: {one_line(e)}{hint}", file=sys.stderr)
        return getattr(e, "exit_code", 1)


if __name__ == "__main__":
    sys.exit(main())

"""Progress bars that suit both a terminal and a log file.

Keras' ``Progbar`` redraws one line in a terminal or notebook; written to a
file (CI, ``> log.txt``) every update becomes a new line. Here, without a
terminal, a bar prints at most one line every ``LOG_INTERVAL_S`` seconds.
"""

from __future__ import annotations

import sys

LOG_INTERVAL_S = 30.0


def interactive() -> bool:
    """A terminal or a notebook is showing stdout."""
    return bool(getattr(sys.stdout, "isatty", lambda: False)()) or "ipykernel" in sys.modules


def fit_verbosity() -> int:
    """Keras ``fit`` ``verbose``: 1 (progress bar) interactively, 2 (a line per epoch) in logs."""
    return 1 if interactive() else 2


def progress_bar(total: int | None, label: str, unit: str = "step"):
    """A ``keras.utils.Progbar`` for ``total`` items, printing ``label`` first."""
    import keras

    print(label, flush=True)
    return keras.utils.Progbar(
        total, unit_name=unit, interval=0.05 if interactive() else LOG_INTERVAL_S
    )

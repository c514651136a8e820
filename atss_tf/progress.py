"""Progress bars that suit both a terminal and a log file.

Keras' ``Progbar`` redraws one line in a terminal or notebook. Written to a
file (CI, ``> log.txt``) it would add a line per update, with the terminal's
colour codes; there :class:`PlainProgress` prints plain lines instead, at most
one every ``LOG_INTERVAL_S`` seconds, and one when the work is done.
"""

from __future__ import annotations

import sys
import time

LOG_INTERVAL_S = 30.0


def interactive() -> bool:
    """A terminal or a notebook is showing stdout."""
    return bool(getattr(sys.stdout, "isatty", lambda: False)()) or "ipykernel" in sys.modules


def fit_verbosity() -> int:
    """Keras ``fit`` ``verbose``: 1 (progress bar) interactively, 2 (a line per epoch) in logs."""
    return 1 if interactive() else 2


class PlainProgress:
    """``keras.utils.Progbar``'s ``update`` for a log file: lines such as
    ``  250/1000 images, 12 s``, no escape codes."""

    def __init__(self, total: int | None, unit: str, interval: float = LOG_INTERVAL_S):
        self.total, self.unit, self.interval = total, unit, interval
        self.start = self.last = time.monotonic()
        self.finished = False

    def update(self, current: int, values=None, finalize: bool | None = None) -> None:
        if self.finished:
            return
        now = time.monotonic()
        done = (
            finalize if finalize is not None else self.total is not None and current >= self.total
        )
        if not done and now - self.last < self.interval:
            return
        self.last = now
        self.finished = bool(done)
        of = f"/{self.total}" if self.total is not None else ""
        print(f"  {current}{of} {self.unit}s, {now - self.start:.0f} s", flush=True)


def progress_bar(total: int | None, label: str, unit: str = "step"):
    """A progress display for ``total`` items (``update(current, finalize=None)``),
    printing ``label`` first: Keras' ``Progbar`` interactively, else
    :class:`PlainProgress`."""
    import keras

    print(label, flush=True)
    if not interactive():
        return PlainProgress(total, unit)
    return keras.utils.Progbar(total, unit_name=unit, interval=0.05)

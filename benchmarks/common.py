"""What every benchmark shares: the machine line, the command line and appending
to RESULTS.md; the train-step data and timing loop.

Every benchmark is a module of this package, run from the repository root as
``python -m benchmarks.NAME``; one that starts another benchmark in a
subprocess does so the same way (``module_command``), with ``cwd=ROOT``.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def module_command(name: str, *args: str, python: str | None = None) -> list[str]:
    """``[python, "-m", "benchmarks.NAME", *args]`` (default: this interpreter),
    to run with ``cwd`` at the root of the checkout that holds the benchmark."""
    return [python or sys.executable, "-m", f"benchmarks.{name}", *args]


def command_line(argv: list[str] | None = None) -> str:
    """The benchmark's command as ``python -m benchmarks.NAME ARGS``: the module
    that runs as ``__main__`` and ``argv`` (default ``sys.argv[1:]``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    module = spec.name if spec is not None else f"benchmarks.{Path(sys.argv[0]).stem}"
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "-m", module, *args])


def machine_line() -> str:
    """Date, OS, CPU model, core count and 16-bit arithmetic flags, Python and
    TensorFlow versions."""
    import tensorflow as tf

    from atss_tf.training.strategy import NATIVE_CPU_FLAGS, cpu_flags

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags() or set()
    native = sorted({f for names in NATIVE_CPU_FLAGS.values() for f in names} & flags)
    return (
        f"{datetime.date.today().isoformat()}, {platform.platform()}, CPU: {cpu} "
        f"({os.cpu_count()} cores, 16-bit: {', '.join(native) or 'none'}), Python {platform.python_version()}, TensorFlow {tf.__version__}"
    )


def append_results(
    title: str, body: str, argv: list[str] | None = None, path: Path = RESULTS
) -> None:
    """Append ``### title``, the machine line (date first), the command
    (``command_line(argv)``) and ``body`` to ``path`` (default RESULTS.md)."""
    if not path.exists():
        path.write_text("# Benchmark results\n\nAppended by the scripts in this folder.\n")
    with path.open("a", encoding="utf-8") as f:
        f.write(
            f"\n### {title}\n\n{machine_line()}.\n\nCommand: `{command_line(argv)}`.\n\n"
            f"{body.rstrip()}\n"
        )


def random_train_batch(size: int, batch: int, objects: int = 10):
    """The train-step benchmarks' data, the same for every side that draws it:
    ``images`` float32 [batch, size, size, 3] in 0..255, ``boxes`` float64
    [batch, objects, 4] (x1, y1, x2, y2 pixels), ``labels`` int64
    [batch, objects] in 1..80. NumPy only (the PyTorch side imports it too)."""
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    xy = rng.uniform(0, size * 0.75, (batch, objects, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(16, size * 0.4, (batch, objects, 2))], -1)
    labels = rng.integers(1, 81, (batch, objects))
    return images, boxes, labels


def time_train_steps(step, steps: int) -> dict:
    """Run ``step()`` (one train step, returns its loss) once for the compile
    or warm-up (``first_step`` seconds), once more untimed, then ``steps`` times
    timed (``times``); with the process's peak resident memory so far."""
    import resource
    import time

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    return {
        "times": times,
        "first_step": first,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loss": float(loss),
    }


class PhaseMemory:
    """Resident memory (RSS) of this process phase by phase, Linux only.

    ``mark(name)`` records the phase that just ended: the RSS now and the peak
    RSS since the previous mark (``VmHWM``, reset at each mark by writing 5 to
    ``/proc/self/clear_refs``). Where the reset is refused, the peaks are the
    process's peak so far. Standard library only (the PyTorch side uses it too).
    """

    def __init__(self) -> None:
        self.phases: list[dict] = []
        self._can_reset = self._reset()

    @staticmethod
    def _status_mib(field: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"/proc/self/status has no {field}")

    @staticmethod
    def _reset() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def mark(self, name: str) -> dict:
        """Record phase ``name`` (``rss_mib`` now, ``peak_mib`` during it) and start the next."""
        phase = {
            "phase": name,
            "rss_mib": self._status_mib("VmRSS"),
            "peak_mib": self._status_mib("VmHWM"),
            "peak_reset": self._can_reset,
        }
        self.phases.append(phase)
        self._reset()
        return phase

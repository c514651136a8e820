"""What every benchmark shares: the machine line and appending to RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


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


def append_results(title: str, body: str) -> None:
    """Append ``### title`` + the machine line + ``body`` to RESULTS.md."""
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nAppended by the scripts in this folder.\n")
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write(f"\n### {title}\n\n{machine_line()}.\n\n{body.rstrip()}\n")

"""train.host_mmap_threshold (atss_tf/training/host_memory.py): with glibc's
dynamic threshold a freed large block below a live one stays resident; with the
threshold fixed it is mmapped and given back at free. Each side in a fresh
Python without TensorFlow (the setting is per process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from atss_tf.training import host_memory

SCRIPT = """
import importlib.util, json, sys
from pathlib import Path

# The module alone, without the package (and TensorFlow) around it.
spec = importlib.util.spec_from_file_location("host_memory", sys.argv[2])
host_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(host_memory)

def rss_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

done = host_memory.set_mmap_threshold(int(sys.argv[1]))
block = 16 * 2**20  # below glibc's 32 MiB cap on the dynamic threshold
first = bytearray(block)  # mmapped under either threshold; freeing it raises the dynamic one
del first
large = bytearray(block)  # from the heap once the threshold rose
small = bytearray(4096)  # lies above it: the heap cannot shrink past it
before = rss_mib()
del large
print(json.dumps({"set": done, "kept_mib": rss_mib() - before + 16}))
"""


def _kept(threshold: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(threshold), host_memory.__file__],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_fixed_threshold_gives_freed_blocks_back():
    dynamic, fixed = _kept(0), _kept(2**20)
    assert not dynamic["set"] and fixed["set"]
    assert dynamic["kept_mib"] > 15  # the freed 16 MiB stayed resident
    assert fixed["kept_mib"] < 2


def test_zero_leaves_malloc_alone():
    assert host_memory.set_mmap_threshold(0) is False

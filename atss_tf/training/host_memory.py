"""Give the host memory of freed tensors back to the system (glibc's malloc).

TensorFlow's CPU allocator takes every tensor from ``malloc``. glibc serves a
request of at least ``M_MMAP_THRESHOLD`` bytes with its own ``mmap`` and
unmaps it at ``free``; smaller ones come from heaps that keep freed memory
for reuse. By default the threshold is dynamic: each freed mmapped block
raises it (up to 32 MiB), so after the first train steps most activations and
gradients live in the heaps, and the process keeps the high-water mark of
every step's tensors, fragmented, as resident memory. A fixed threshold keeps
large tensors mmapped, so the resident memory between and across steps
follows the tensors alive (``benchmarks/memory.py`` measures it).
"""

from __future__ import annotations

import ctypes
import logging
import sys

logger = logging.getLogger("atss_tf")

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
GLIBC_MAX_MMAP_THRESHOLD = 32 * 2**20  # HEAP_MAX_SIZE / 2 on 64-bit


def set_mmap_threshold(nbytes: int) -> bool:
    """Fix glibc's mmap threshold at ``nbytes`` for this process (0: leave it
    as it is). Returns whether it was set: False off Linux or where the C
    library has no ``mallopt`` or refuses the value (musl, other libcs)."""
    if nbytes <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, int(nbytes)))
    if not done:
        logger.debug("mallopt(M_MMAP_THRESHOLD, %d) was refused", nbytes)
    return done

"""Image files made on purpose for the tests."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def write_huge_png(path: Path, height: int = 20000, width: int = 20000) -> Path:
    """A real, valid gray PNG of ``height x width`` pixels, about 0.4 MB on disk
    (decoded to RGB it would take 1.2 GB)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    comp = zlib.compressobj(1)
    row = b"\0" * (width + 1)  # filter byte + pixels
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path

"""Hostile image files for tests: a header claiming a huge size, a text chunk that inflates past PIL's limit.

Each is a few hundred bytes on disk, as an attacker would send them; none is ever decoded in full.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says ``width`` x ``height`` (1-bit grey) but whose pixel data is one compressed row
    of zeros: a decoder that trusted the header would allocate the whole image first."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * (1 + (width + 7) // 8), 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b""))
    return path


def png_with_huge_text(path: Path, key: str, inflated_bytes: int = 8 << 20) -> Path:
    """A valid 8x8 PNG with a zTXt chunk ``key`` that inflates to ``inflated_bytes`` (a few KB on disk)."""
    header = struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)
    text = key.encode("latin-1") + b"\0\0" + zlib.compress(b"[" * inflated_bytes, 9)
    pixels = zlib.compress(b"\0" * 9 * 8, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"zTXt", text) + _chunk(b"IDAT", pixels)
                     + _chunk(b"IEND", b""))
    return path

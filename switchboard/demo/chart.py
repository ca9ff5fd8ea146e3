"""A small bar chart as a PNG, drawn without an imaging library (the demo's generated image).

PNG is a few zlib-compressed rows of RGB pixels behind three chunks (IHDR, IDAT, IEND), each with
its CRC; that is all a browser needs to show it.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from typing import Final

WIDTH: Final = 240
HEIGHT: Final = 120
_BACKGROUND: Final = (255, 255, 255)
_AXIS: Final = (120, 120, 120)
_BARS: Final = ((37, 99, 235), (22, 163, 74), (220, 38, 38), (234, 179, 8))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def bar_chart_png(values: Sequence[float]) -> bytes:
    """A WIDTH x HEIGHT PNG with one bar per value (scaled to the largest), on a white background."""
    pixels = [[_BACKGROUND] * WIDTH for _ in range(HEIGHT)]
    base = HEIGHT - 10
    for x in range(8, WIDTH - 8):
        pixels[base][x] = _AXIS
    top = max(values, default=0) or 1
    slot = (WIDTH - 16) // max(len(values), 1)
    for index, value in enumerate(values):
        height = round((base - 10) * max(value, 0) / top)
        left = 8 + index * slot + slot // 6
        for y in range(base - height, base):
            for x in range(left, left + slot * 2 // 3):
                pixels[y][x] = _BARS[index % len(_BARS)]
    raw = b"".join(b"\x00" + bytes(channel for pixel in row for channel in pixel) for row in pixels)
    header = struct.pack(">IIBBBBB", WIDTH, HEIGHT, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )

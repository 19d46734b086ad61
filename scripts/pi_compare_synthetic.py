"""Synthetic stand-ins for `pi_compare.py inputs` when the data set is not there.

Standard library only (pi_check.sh runs this with the machine's own python3, which need not have
NumPy or Pillow), hence the hand-written PNG encoder. The pictures only have to be deterministic
and cell-like enough for the model to give non-trivial outputs on both sides of the comparison.
"""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path


def _png(path: Path, w: int, h: int, pixel) -> None:
    """An 8-bit RGB PNG, pixel(x, y) -> 3 bytes."""
    raw = bytearray()
    for y in range(h):
        raw.append(0)
        for x in range(w):
            raw.extend(pixel(x, y))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(bytes(raw), 6))
        + chunk(b"IEND", b"")
    )


def synthetic_cell(path: Path, k: int, seed: int) -> None:
    """A pink disc with a nucleus whose size and shade depend on the class index."""
    rng = random.Random(seed)
    size, c = 128, 64 + rng.randint(-4, 4)
    r_cell, r_nuc = 30 + 3 * k, 10 + 2 * k
    nuc = (60 + 15 * k, 40 + 5 * k, 140 + 10 * (k % 4))

    def pixel(x, y):
        d2 = (x - c) ** 2 + (y - c) ** 2
        n = (x * 7 + y * 13 + seed) % 9
        if d2 < r_nuc**2:
            return bytes(v + n for v in nuc)
        if d2 < r_cell**2:
            return bytes((225 - n, 190 - n, 205 - n))
        return bytes((240 - n, 225 - n, 215 - n))

    _png(path, size, size, pixel)


def synthetic_field(path: Path, seed: int) -> None:
    """640x480: pale background, pink red cells, two or three purple nuclei."""
    rng = random.Random(seed)
    w, h = 640, 480
    rbcs = [(rng.randint(0, w), rng.randint(0, h)) for _ in range(40)]
    wbcs = [(rng.randint(80, w - 80), rng.randint(80, h - 80)) for _ in range(rng.randint(2, 3))]

    def pixel(x, y):
        for cx, cy in wbcs:
            d2 = (x - cx) ** 2 + (y - cy) ** 2
            if d2 < 30**2:
                return bytes((90, 50, 150))
            if d2 < 48**2:
                return bytes((215, 200, 225))
        for cx, cy in rbcs:
            if (x - cx) ** 2 + (y - cy) ** 2 < 45**2:
                return bytes((220, 150, 160))
        return bytes((235, 228, 215))

    _png(path, w, h, pixel)

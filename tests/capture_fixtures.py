"""Inputs for the capture path without a microscope: synthetic blood-smear fields (red cells,
white cells with nuclei, a platelet) and a camera that stops delivering frames."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

BG, RBC, CYTO, NUC = (226, 222, 214), (205, 150, 160), (214, 198, 212), (95, 60, 165)


def _disc(d, cx, cy, r, colour):
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)


def synthetic_field(seed=0):
    """640x480, red cells of 100 px (the default scale), a round-nucleus cell, a cell with three
    separate lobes, two cells whose nuclei touch, and a platelet. Returns (rgb, truth boxes)."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (640, 480), BG)
    d = ImageDraw.Draw(im)
    for cx, cy in [(45, 430), (300, 60), (560, 420), (450, 440), (50, 250)]:
        _disc(d, cx, cy, 48, RBC)
    # lymphocyte-like: big round nucleus, thin cytoplasm
    _disc(d, 140, 130, 58, CYTO)
    _disc(d, 140, 130, 46, NUC)
    # segmented neutrophil-like: three lobes with visible gaps
    _disc(d, 470, 250, 95, CYTO)
    for dx, dy in [(-45, -10), (0, 25), (45, -10)]:
        _disc(d, 470 + dx, 250 + dy, 24, NUC)
    # two large cells side by side whose nuclei touch
    for cx in (180, 305):
        _disc(d, cx, 370, 78, CYTO)
    for cx in (180, 305):
        _disc(d, cx, 370, 65, NUC)
    _disc(d, 590, 70, 9, NUC)  # platelet: stained like a nucleus, far too small
    arr = np.asarray(im).astype(np.float32) + rng.normal(0, 4, (480, 640, 3))
    truth = [(82, 72, 198, 188), (375, 155, 565, 345), (102, 292, 258, 448), (227, 292, 383, 448)]
    return np.clip(arr, 0, 255).astype(np.uint8), truth


def random_field(seed: int, n_wbc: int = 3, noise_seed: int | None = None, size=(640, 480)) -> np.ndarray:
    """A field with n_wbc white cells far enough apart that locate() finds each, and red cells."""
    rng = np.random.default_rng(seed)
    w, h = size
    im = Image.new("RGB", size, BG)
    d = ImageDraw.Draw(im)
    placed: list[tuple[float, float, float]] = []

    def free(cx, cy, r, gap):
        return r < cx < w - r and r < cy < h - r and all(np.hypot(cx - x, cy - y) > r + q + gap for x, y, q in placed)

    for _ in range(10000):
        if len(placed) == n_wbc:
            break
        r, cx, cy = rng.uniform(50, 65), rng.uniform(0, w), rng.uniform(0, h)
        if free(cx, cy, r, 90):
            placed.append((cx, cy, r))
    assert len(placed) == n_wbc, "no room for the white cells in this field size"
    wbc = list(placed)
    for _ in range(300):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        if free(cx, cy, 48, 10):
            placed.append((cx, cy, 48))
            d.ellipse([cx - 48, cy - 48, cx + 48, cy + 48], fill=RBC)
    for cx, cy, r in wbc:
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=CYTO)
        d.ellipse([cx - 0.78 * r, cy - 0.78 * r, cx + 0.78 * r, cy + 0.78 * r], fill=NUC)
    noise = np.random.default_rng(seed + 1000 if noise_seed is None else noise_seed).normal(0, 4, (h, w, 3))
    return np.clip(np.asarray(im, np.float32) + noise, 0, 255).astype(np.uint8)


class FakeCamera:
    """Delivers `frames` frames, then reads fail (a cable pulled out)."""

    def __init__(self, frames: int):
        self.left = frames
        self.released = False

    def isOpened(self):
        return True

    def read(self):
        if self.left <= 0:
            return False, None
        self.left -= 1
        return True, np.full((4, 4, 3), 7, np.uint8)

    def release(self):
        self.released = True

"""Generated cell images (no data set needed): one synthetic cell, a labelled folder tree like
PBC's, a single PNG and a flat folder of cells for capture's cell mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from edge_bloodcls.edge_runtime.core.spec import LABELS

# An easy, learnable stand-in for PBC: each class is a disc of its own colour and size on a
# pale background, with noise, jitter and random position so nothing is pixel-identical.
_COLOURS = [
    (120, 40, 160),
    (220, 90, 60),
    (60, 30, 90),
    (90, 140, 200),
    (40, 60, 180),
    (150, 120, 170),
    (200, 160, 200),
    (230, 30, 120),
]


def synthetic_cell(label_index: int, rng: np.random.Generator, size: int = 64) -> Image.Image:
    bg = np.full((size, size, 3), (235, 220, 215), np.float32)
    bg += rng.normal(0, 6, bg.shape)
    im = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    r = size * (0.15 + 0.03 * label_index)
    cx, cy = size / 2 + rng.uniform(-4, 4), size / 2 + rng.uniform(-4, 4)
    col = tuple(int(np.clip(c + rng.normal(0, 8), 0, 255)) for c in _COLOURS[label_index])
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
    return im


def make_dataset(root: Path, n_per_class: int = 12, size: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i, label in enumerate(LABELS):
        (root / label).mkdir(parents=True, exist_ok=True)
        for j in range(n_per_class):
            synthetic_cell(i, rng, size).save(root / label / f"{label[:3].upper()}_{j:04d}.jpg", quality=92)
    return root


def cell_png(path: Path, label_index: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    synthetic_cell(label_index, np.random.default_rng(label_index)).save(path)
    return path


def cell_folder(d: Path, labels: list[int], seed=0) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k, i in enumerate(labels):
        synthetic_cell(i, rng).save(d / f"{k:04d}.png")
    return d

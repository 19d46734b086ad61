"""Generated cell images (no data set needed): one synthetic cell, a labelled folder tree like
PBC's, a single PNG and a flat folder of cells for capture's cell mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_bloodcls.benchmarks.quick import synthetic_cell
from edge_bloodcls.edge_runtime.core.spec import LABELS


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

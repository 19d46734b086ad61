"""`bench --quick`: the whole harness on a tiny model and generated images, in seconds.

The images are drawn here (a disc of a colour and size of its own per class on a pale, noisy
background), so the harness needs neither the PBC data nor the test suite; the split, the
training record and the exports are made by the toolkit's own functions, so --quick runs the
same code paths as a full benchmark.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from edge_bloodcls.edge_runtime.core.preprocess import normalise
from edge_bloodcls.edge_runtime.core.spec import LABELS, InputSpec
from edge_bloodcls.train.data import make_split, read_split, scan, write_split
from edge_bloodcls.train.pipeline import load_pixels

SIZE = 32
QUICK_ARCH = "tiny"

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


def synthetic_cell(label_index: int, rng: np.random.Generator, size: int = 64, jitter: float = 4.0) -> Image.Image:
    """An easy, learnable stand-in for a PBC cell (also the tests' generated cells): a disc of the
    class's colour and size on a pale background, with noise and a position jittered by +-jitter px."""
    bg = np.full((size, size, 3), (235, 220, 215), np.float32)
    bg += rng.normal(0, 6, bg.shape)
    im = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    r = size * (0.15 + 0.03 * label_index)
    cx, cy = size / 2 + rng.uniform(-jitter, jitter), size / 2 + rng.uniform(-jitter, jitter)
    col = tuple(int(np.clip(c + rng.normal(0, 8), 0, 255)) for c in _COLOURS[label_index])
    ImageDraw.Draw(im).ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
    return im


def synthetic_cells(root: Path, n_per_class: int = 24, size: int = 48, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i, label in enumerate(LABELS):
        (root / label).mkdir(parents=True, exist_ok=True)
        for j in range(n_per_class):
            im = synthetic_cell(i, rng, size, jitter=3)
            im.save(root / label / f"{label[:3].upper()}_{j:04d}.jpg", quality=92)
    return root


def tiny_model(size: int = SIZE):
    """A few conv layers: small enough to train and convert in seconds, shaped like the real
    networks (conv-BN-ReLU, depthwise conv, pooling, dense softmax) so every format applies."""
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tf_keras as k

    inp = k.Input((size, size, 3), name="image")
    h = k.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inp)
    # BatchNorm's moving statistics must catch up within a few dozen steps here (the default
    # momentum 0.99 leaves inference-mode accuracy near chance, as train/archs.py notes).
    bn = lambda: k.layers.BatchNormalization(momentum=0.8)  # noqa: E731
    h = k.layers.ReLU(6.0)(bn()(h))
    h = k.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(h)
    h = k.layers.ReLU(6.0)(bn()(h))
    h = k.layers.Conv2D(16, 1, use_bias=False)(h)
    h = k.layers.ReLU(6.0)(bn()(h))
    h = k.layers.GlobalAveragePooling2D(name="pool")(h)
    out = k.layers.Dense(len(LABELS), activation="softmax", name="probs")(h)
    return k.Model(inp, out, name=QUICK_ARCH)


def make_quick_run(base: Path, seed: int = 0, epochs: int = 40) -> tuple[Path, Path]:
    """Generated cells -> split.csv -> a trained tiny run dir laid out as `edge-bloodcls train`
    leaves one (model.keras, config.json, metrics.json). Returns (run_dir, split_csv)."""
    base = Path(base)
    run = base / f"{QUICK_ARCH}_{SIZE}"
    split_csv = base / "split.csv"
    if (run / "model.keras").exists() and split_csv.exists():
        return run, split_csv
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tf_keras

    cells = synthetic_cells(base / "cells", seed=seed)
    # Unequal val and test sizes: the pixel cache names files by split hash, size and count.
    rows, report = make_split(scan(cells), (0.5, 0.3, 0.2), seed=seed)
    digest = write_split(rows, report, split_csv, cells)
    split = read_split(split_csv)
    spec = InputSpec.named(SIZE)
    paths, y = split.items("train")
    x = normalise(load_pixels(paths, spec.size), spec)
    tf_keras.utils.set_random_seed(seed)
    model = tiny_model()
    model.compile(tf_keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    h = model.fit(x, y, epochs=epochs, batch_size=16, verbose=0)
    run.mkdir(parents=True, exist_ok=True)
    model.save(run / "model.keras")
    (run / "config.json").write_text(
        json.dumps(
            {
                "train": {"arch": QUICK_ARCH, "img_size": SIZE, "epochs": epochs},
                "input": spec.to_json(),
                "labels": list(LABELS),
                "params": int(model.count_params()),
                "split": {"csv": str(split_csv), "sha256": digest, "root": str(cells)},
            },
            indent=2,
        )
    )
    (run / "metrics.json").write_text(
        json.dumps(
            {
                "arch": QUICK_ARCH,
                "epochs_run": epochs,
                "epochs_planned": epochs,
                "stop_reason": "completed all epochs",
                "train_accuracy": float(h.history["accuracy"][-1]),
            },
            indent=2,
        )
    )
    return run, split_csv

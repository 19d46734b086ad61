"""Train/serve parity: the training evaluation path and the runtime give the same model input."""

from __future__ import annotations

import numpy as np
import pytest
from cell_images import make_dataset

from edge_bloodcls.edge_runtime.core.preprocess import ImageError, load_rgb, prepare, resize
from edge_bloodcls.edge_runtime.core.spec import InputSpec


@pytest.mark.parametrize("normalisation", ["symmetric", "caffe"])
def test_training_eval_path_matches_runtime(tmp_path, normalisation):
    pytest.importorskip("tensorflow")
    from edge_bloodcls.train.pipeline import eval_dataset, load_pixels

    root = make_dataset(tmp_path / "cells", n_per_class=2, size=80)
    paths = sorted(root.rglob("*.jpg"))
    spec = InputSpec.named(48, normalisation)
    pixels = load_pixels(paths, spec.size)
    batches = [x.numpy() for x, _ in eval_dataset(pixels, np.zeros(len(paths)), spec, batch_size=5)]
    train_side = np.concatenate(batches)
    runtime_side = np.stack([prepare(str(p), spec) for p in paths])
    assert train_side.shape == runtime_side.shape == (len(paths), 48, 48, 3)
    np.testing.assert_allclose(train_side, runtime_side, atol=1e-5)
    if normalisation == "symmetric":
        assert -1.0 <= runtime_side.min() < 0 < runtime_side.max() <= 1.0


def test_augmentation_keeps_range_and_is_reproducible():
    pytest.importorskip("tensorflow")
    from edge_bloodcls.train.pipeline import Augment, train_dataset

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(20) % 8
    spec = InputSpec.named(32)
    first = [x.numpy() for x, _ in train_dataset(pixels, labels, spec, 4, Augment(), 7, 0, 2)[0]]
    again = [x.numpy() for x, _ in train_dataset(pixels, labels, spec, 4, Augment(), 7, 0, 2)[0]]
    resumed = [x.numpy() for x, _ in train_dataset(pixels, labels, spec, 4, Augment(), 7, 1, 2)[0]]
    assert len(first) == 10  # 2 epochs x 5 steps
    np.testing.assert_array_equal(np.stack(first), np.stack(again))
    # Starting at epoch 1 draws exactly the batches of epoch 1 of the full run.
    np.testing.assert_array_equal(np.stack(first[5:]), np.stack(resumed))
    allx = np.stack(first)
    assert allx.min() >= -1.0 - 1e-6 and allx.max() <= 1.0 + 1e-6
    assert not np.allclose(allx[0], allx[5])  # epochs differ


def test_geometric_preset_only_moves_pixels():
    pytest.importorskip("tensorflow")
    from edge_bloodcls.train.pipeline import augment_preset, train_dataset

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    spec = InputSpec.named(16)
    ((x, y),) = list(train_dataset(pixels, np.arange(8), spec, 8, augment_preset("geometric"), 3, 0, 1)[0])
    moved = 0
    for img, i in zip(x.numpy(), y.numpy()):
        src = (pixels[i].astype(np.float32) - 127.5) / 127.5
        # One of the 8 symmetries of the square, with the colours untouched.
        variants = [np.rot90(f, k) for f in (src, src[:, ::-1]) for k in range(4)]
        assert any(np.allclose(img, v, atol=1e-5) for v in variants)
        moved += not np.allclose(img, src, atol=1e-5)
    assert moved > 0
    assert augment_preset(True) == augment_preset("full") and augment_preset(False) == augment_preset("none")
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_preset("heavy")


def test_resize_centre_crops_non_square():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 50:150] = 255  # the centre square is all white
    out = resize(img, (20, 20))
    assert out.shape == (20, 20, 3) and out.min() == 255


def test_load_rgb_rejects_non_image(tmp_path):
    f = tmp_path / "x.jpg"
    f.write_text("not an image")
    with pytest.raises(ImageError, match="x.jpg: not an image"):
        load_rgb(f)

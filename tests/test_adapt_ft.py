"""Pieces of adapt's fine-tune measured in docs/adapt.md: balanced self-training labels, the
weight-space ensemble with the base model (WiSE-FT) and the colour augmentations."""

from __future__ import annotations

import numpy as np
import pytest

from edge_bloodcls.adapt import core as core
from edge_bloodcls.adapt.finetune import FinetuneConfig, pseudo_labels


def test_pseudo_labels_threshold_allowed_classes_and_balance():
    p = np.array(
        [
            [0.95, 0.05, 0.0],
            [0.99, 0.01, 0.0],
            [0.2, 0.8, 0.0],
            [0.91, 0.09, 0.0],
            [0.5, 0.5, 0.0],
            [0.0, 0.05, 0.95],
            [0.03, 0.97, 0.0],
        ]
    )
    # Sure enough and a class the site labelled (0, 1); class 2 was not labelled.
    assert pseudo_labels(p, 0.9, [0, 1]).tolist() == [0, 0, -1, 0, -1, -1, 1]
    # At most one per class, the surest: the majority class no longer dominates.
    assert pseudo_labels(p, 0.9, [0, 1], per_class=1).tolist() == [-1, 0, -1, -1, -1, -1, 1]
    assert pseudo_labels(p, 0.9, [0, 1], per_class=2).tolist() == [0, 0, -1, -1, -1, -1, 1]


def test_colour_modes_keep_shape_and_light_adds_no_colour_cast():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (24, 24, 3)).astype(np.uint8)
    grey = np.repeat(rng.integers(40, 220, (24, 24, 1)), 3, axis=2).astype(np.uint8)
    for mode in ("stain", "light", "hed"):
        cfg = FinetuneConfig(colour_mode=mode, scale=0.0, blur=0.0)
        out = core.augment(img, rng, cfg)
        assert out.shape == img.shape and out.dtype == np.uint8
    # Brightness/contrast/gamma act on the three channels alike: a grey cell stays grey.
    light = core.augment(grey, np.random.default_rng(1), FinetuneConfig(colour_mode="light", scale=0.0, blur=0.0))
    assert np.abs(light.astype(int) - light[..., :1].astype(int)).max() <= 1
    stain = core.augment(grey, np.random.default_rng(1), FinetuneConfig(colour_mode="stain", scale=0.0, blur=0.0))
    assert np.abs(stain.astype(int) - stain[..., :1].astype(int)).max() > 1  # the stain mix does shift hue


def test_hed_round_trip_without_perturbation():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.05, 1.0, (8, 8, 3))
    back = core._hed_jitter(x, rng, 0.0)
    assert np.allclose(back, x, atol=1e-6)


def test_wise_mixes_weights_and_returns_the_tuned_ones():
    tf_keras = pytest.importorskip("tf_keras")
    from edge_bloodcls.adapt.finetune import wise

    model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(2)])
    base = [np.ones_like(w) for w in model.get_weights()]
    tuned = [3 * np.ones_like(w) for w in model.get_weights()]
    model.set_weights(tuned)
    back = wise(model, base, 0.25)
    assert all(np.allclose(w, 1.5) for w in model.get_weights())  # 0.75 * 1 + 0.25 * 3
    assert all(np.allclose(w, 3) for w in back)
    model.set_weights(back)
    wise(model, base, 1.0)
    assert all(np.allclose(w, 3) for w in model.get_weights())


def test_anchor_keeps_the_weights_near_the_base():
    tf_keras = pytest.importorskip("tf_keras")
    from edge_bloodcls.adapt.finetune import train
    from edge_bloodcls.edge_runtime.core.spec import InputSpec

    spec = InputSpec.named(8)
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (16, 8, 8, 3)).astype(np.uint8)
    y = rng.integers(0, 2, 16)

    def drift(anchor):
        tf_keras.utils.set_random_seed(0)
        model = tf_keras.Sequential(
            [tf_keras.Input((8, 8, 3)), tf_keras.layers.Flatten(), tf_keras.layers.Dense(2, activation="softmax")]
        )
        base = model.get_weights()
        cfg = FinetuneConfig(lr=1e-2, batch=8, scale=0.0, blur=0.0, colour=0.0, anchor=anchor)
        train(model, spec, px, y, px[:0], y[:0], cfg, steps=30, base_weights=base)
        return float(((model.get_weights()[0] - base[0]) ** 2).sum())

    free, anchored = drift(0.0), drift(10.0)
    assert anchored < 0.5 * free, (anchored, free)

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


def test_site_look_moves_a_home_crop_to_the_site_crops_colour_statistics():
    rng = np.random.default_rng(0)
    # A pinkish "home" crop and a greyish-blue "site" crop, with texture.
    home = np.clip(rng.normal((230, 190, 200), 20, (32, 32, 3)), 0, 255).astype(np.uint8)
    site = np.clip(rng.normal((170, 175, 200), 12, (32, 32, 3)), 0, 255).astype(np.uint8)
    looks = core.lab_stats(np.stack([home, site]))
    assert looks.shape == (2, 2, 3)
    moved = core.site_look(home, looks[1])
    assert moved.shape == home.shape and moved.dtype == np.uint8
    got = core.lab_stats(moved[None])[0]
    assert np.allclose(got, looks[1], atol=1.0)  # mean and spread of L, a, b now the site's
    assert not np.allclose(looks[0], looks[1], atol=1.0)
    # The crop's own look changes nothing (up to uint8 rounding): the cell's shape is kept.
    assert np.abs(core.site_look(home, looks[0]).astype(int) - home.astype(int)).max() <= 2


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


def test_transfer_gives_home_cells_only_the_sites_looks(monkeypatch):
    tf_keras = pytest.importorskip("tf_keras")
    from edge_bloodcls.adapt import finetune
    from edge_bloodcls.edge_runtime.core.spec import InputSpec

    spec = InputSpec.named(8)
    rng = np.random.default_rng(0)
    site_px, home_px = (rng.integers(0, 256, (16, 8, 8, 3)).astype(np.uint8) for _ in range(2))
    y = rng.integers(0, 2, 16)
    looks = core.lab_stats(site_px)
    seen = []

    def spy(img, target):
        seen.append((img.copy(), target.copy()))
        return core.site_look(img, target)

    monkeypatch.setattr(finetune, "site_look", spy)
    model = tf_keras.Sequential(
        [tf_keras.Input((8, 8, 3)), tf_keras.layers.Flatten(), tf_keras.layers.Dense(2, activation="softmax")]
    )
    base = FinetuneConfig(lr=1e-3, batch=8, scale=0.0, blur=0.0, colour=0.0)
    finetune.train(model, spec, site_px, y, home_px, y, base, steps=3, site_looks=looks)
    assert seen == []  # off by default
    cfg = FinetuneConfig(lr=1e-3, batch=8, scale=0.0, blur=0.0, colour=0.0, transfer=1.0)
    finetune.train(model, spec, site_px, y, home_px, y, cfg, steps=3, site_looks=looks)
    assert len(seen) == 3 * 4  # every home cell of the 3 batches (4 of 8 each), no site cell
    homes = {p.tobytes() for p in home_px}
    assert all(img.tobytes() in homes for img, _ in seen)
    assert all(any(np.array_equal(t, row) for row in looks) for _, t in seen)


def _head_model(tf_keras, seed, name):
    """The training head's shape (image -> ... -> "pool" -> "probs"), tiny."""
    tf_keras.utils.set_random_seed(seed)
    x = tf_keras.Input((8, 8, 3), name="image")
    h = tf_keras.layers.Conv2D(4, 3, activation="relu")(x)
    f = tf_keras.layers.GlobalAveragePooling2D(name="pool")(h)
    return tf_keras.Model(x, tf_keras.layers.Dense(3, activation="softmax", name="probs")(f), name=name)


def test_router_separates_home_from_site_on_cells_it_never_saw():
    from edge_bloodcls.adapt.route import fit_router, gate

    rng = np.random.default_rng(0)
    home = rng.normal(0, 1, (400, 6))
    site = rng.normal(0, 1, (60, 6)) + [4, 0, 0, 0, 0, -3]  # another stain: the features move
    w, b = fit_router(home[:300], site[:40])
    assert (gate(home[300:], w, b) < 0.5).mean() >= 0.97
    assert (gate(site[40:], w, b) >= 0.5).mean() >= 0.95


def test_routed_model_answers_with_the_expert_the_router_picks(tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    from edge_bloodcls.adapt.route import routed
    from edge_bloodcls.convert.export import carries_features, probs_shape, with_features

    home, site = _head_model(tf_keras, 0, "home_net"), _head_model(tf_keras, 1, "site_net")
    x = np.random.default_rng(0).normal(0, 1, (4, 8, 8, 3)).astype(np.float32)
    pool = lambda m: tf_keras.Model(m.inputs, m.get_layer("pool").output)(x).numpy()  # noqa: E731
    w = np.zeros(4, np.float32)
    for bias, expert in ((-30.0, home), (30.0, site)):  # the router sure of home, then of the site
        model = routed(home, site, w, bias, name="routed")
        model.save(tmp_path / "m.keras")  # plain layers only: it loads back without unsafe code
        model = tf_keras.models.load_model(tmp_path / "m.keras", compile=False)
        probs, feats = model(x)
        assert np.allclose(probs.numpy(), expert(x).numpy(), atol=1e-6)
        assert np.allclose(feats.numpy(), pool(expert), atol=1e-6)
        # convert takes the features from the model itself and sees 3 classes
        assert carries_features(model) and probs_shape(model)[-1] == 3 and with_features(model)[0] is model
    # Halfway, the answer is the mean of the two experts'.
    half = routed(home, site, w, 0.0, name="routed")(x)[0].numpy()
    assert np.allclose(half, (home(x).numpy() + site(x).numpy()) / 2, atol=1e-6)


def test_weight_average_is_the_mean_of_the_snapshots():
    from edge_bloodcls.adapt.finetune import WeightAverage

    snaps = [[np.full((2, 2), v, np.float32), np.array([v, -v], np.float32)] for v in (1.0, 2.0, 6.0)]
    avg = WeightAverage()
    for s in snaps:
        avg.add(s)
    out = avg.weights(snaps[0])
    assert avg.n == 3
    assert np.allclose(out[0], 3.0) and np.allclose(out[1], [3.0, -3.0])
    assert [w.dtype for w in out] == [np.float32, np.float32]


def test_batches_made_ahead_come_in_order_and_errors_reach_the_caller():
    from edge_bloodcls.adapt.finetune import _ahead

    assert list(_ahead(iter(range(5)))) == [0, 1, 2, 3, 4]

    def broken():
        yield 1
        raise ValueError("bad crop")

    with pytest.raises(ValueError, match="bad crop"):
        list(_ahead(broken()))


def test_average_takes_the_mean_of_the_last_steps_snapshots(monkeypatch):
    """cfg.average: the model ends on the mean of the snapshots of the last part of the run (every
    average_every steps), not on its last step; an averager passed in is filled and not applied."""
    tf_keras = pytest.importorskip("tf_keras")
    from edge_bloodcls.adapt import finetune
    from edge_bloodcls.adapt.finetune import WeightAverage, train
    from edge_bloodcls.edge_runtime.core.spec import InputSpec

    spec = InputSpec.named(8)
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (16, 8, 8, 3)).astype(np.uint8)
    y = rng.integers(0, 2, 16)

    def run(cfg, averager=None):
        tf_keras.utils.set_random_seed(0)
        model = tf_keras.Sequential(
            [tf_keras.Input((8, 8, 3)), tf_keras.layers.Flatten(), tf_keras.layers.Dense(2, activation="softmax")]
        )
        snaps = []

        class Spy(WeightAverage):
            def add(self, weights):
                snaps.append([w.copy() for w in weights])
                super().add(weights)

        monkeypatch.setattr(finetune, "WeightAverage", Spy)
        train(model, spec, px, y, px[:0], y[:0], cfg, steps=20, averager=averager)
        return model.get_weights(), snaps

    plain = FinetuneConfig(lr=1e-2, batch=8, scale=0.0, blur=0.0, colour=0.0)
    last, none = run(plain)
    assert none == []  # off by default
    averaged, snaps = run(
        FinetuneConfig(lr=1e-2, batch=8, scale=0.0, blur=0.0, colour=0.0, average=0.5, average_every=5)
    )
    assert len(snaps) == 2  # steps 15 and 20 of 20: the last half, every 5
    assert np.allclose(snaps[-1][0], last[0])  # the same run: its last snapshot is the plain run's end
    assert np.allclose(averaged[0], (snaps[0][0] + snaps[1][0]) / 2)
    assert not np.allclose(averaged[0], last[0])
    mine = WeightAverage()
    kept, _ = run(FinetuneConfig(lr=1e-2, batch=8, scale=0.0, blur=0.0, colour=0.0, average=0.5, average_every=5), mine)
    assert mine.n == 2 and np.allclose(kept[0], last[0])  # filled, not applied


def test_batches_made_ahead_are_the_batches_made_in_turn(monkeypatch):
    """The worker thread changes when a batch is made, not which: augmented training with and
    without it ends on the same weights."""
    tf_keras = pytest.importorskip("tf_keras")
    from edge_bloodcls.adapt import finetune
    from edge_bloodcls.edge_runtime.core.spec import InputSpec

    spec = InputSpec.named(8)
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (16, 8, 8, 3)).astype(np.uint8)
    y = rng.integers(0, 2, 16)
    cfg = FinetuneConfig(lr=1e-2, batch=8, colour_mode="hed")  # flips, rotation, zoom, blur, stain

    def end_weights():
        tf_keras.utils.set_random_seed(0)
        model = tf_keras.Sequential(
            [tf_keras.Input((8, 8, 3)), tf_keras.layers.Flatten(), tf_keras.layers.Dense(2, activation="softmax")]
        )
        finetune.train(model, spec, px, y, px, y, cfg, steps=6)
        return model.get_weights()

    monkeypatch.setattr(finetune, "MAKE_AHEAD", True)
    ahead = end_weights()
    monkeypatch.setattr(finetune, "MAKE_AHEAD", False)
    in_turn = end_weights()
    assert all(np.array_equal(a, b) for a, b in zip(ahead, in_turn))


def test_freeze_keeps_the_stem_as_the_base_trained_it():
    """cfg.freeze = 4: the backbone's layers finer than 1/4 of the input (the stride-2 stem) keep
    their weights and BatchNorm statistics; the coarser layers and the head train."""
    tf_keras = pytest.importorskip("tf_keras")
    from edge_bloodcls.adapt import finetune
    from edge_bloodcls.edge_runtime.core.spec import InputSpec

    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((16, 16, 3))
    h = tf_keras.layers.Conv2D(4, 3, strides=2, padding="same", name="stem")(inp)  # 8 x 8: 1/2
    h = tf_keras.layers.BatchNormalization(name="stem_bn")(h)
    h = tf_keras.layers.Conv2D(4, 3, strides=2, padding="same", name="down")(h)  # 4 x 4: 1/4
    h = tf_keras.layers.BatchNormalization(name="down_bn")(h)
    backbone = tf_keras.Model(inp, h, name="backbone")
    x = tf_keras.Input((16, 16, 3), name="image")
    f = tf_keras.layers.GlobalAveragePooling2D(name="pool")(backbone(x))
    model = tf_keras.Model(x, tf_keras.layers.Dense(2, activation="softmax", name="probs")(f))
    assert [layer.name for layer in finetune.frozen_stem(model, 4)] == [backbone.layers[0].name, "stem", "stem_bn"]
    with pytest.raises(ValueError, match="1/64"):
        finetune.frozen_stem(model, 64)

    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (16, 16, 16, 3)).astype(np.uint8)
    y = rng.integers(0, 2, 16)
    before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in backbone.layers}
    cfg = FinetuneConfig(lr=1e-2, batch=8, scale=0.0, blur=0.0, colour=0.0, freeze=4)
    finetune.train(model, InputSpec.named(16), px, y, px[:0], y[:0], cfg, steps=5)
    for name in ("stem", "stem_bn"):  # kernels, and the BatchNorm's moving statistics too
        assert all(np.array_equal(a, b) for a, b in zip(before[name], backbone.get_layer(name).get_weights()))
    for name in ("down", "down_bn"):
        assert not all(np.array_equal(a, b) for a, b in zip(before[name], backbone.get_layer(name).get_weights()))

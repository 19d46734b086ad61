"""The colour statistic of the trust gate (edge_runtime.core.trust.colour_features, ColourStats):
the features, the fit, the score and threshold, malformed statistics refused, bundles without it
unchanged, and the shipped bundles carrying it. Runtime only, except the fit (scikit-learn)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import SHARED_DATA

from edge_bloodcls.edge_runtime.core.bundle import (
    DEFAULT_MODEL,
    FAST_MODEL,
    MODELS_DIR,
    load_bundle,
    manifest_sha256,
    sha256_file,
)
from edge_bloodcls.edge_runtime.core.classifier import Classifier
from edge_bloodcls.edge_runtime.core.images import list_images
from edge_bloodcls.edge_runtime.core.preprocess import load_rgb, normalise, pixels_of, prepare
from edge_bloodcls.edge_runtime.core.spec import InputSpec
from edge_bloodcls.edge_runtime.core.trust import (
    COLOUR_DIM,
    COLOUR_FALSE_ALARM,
    COLOUR_REASON,
    COLOUR_TAIL,
    DEFAULT_FALSE_ALARM,
    ColourStats,
    TrustError,
    TrustStats,
    colour_features,
    luminance,
    review_reason,
)

SHIPPED = sorted(p.stem for p in MODELS_DIR.glob("*.tflite"))
DEMO_CELLS = MODELS_DIR.parents[2] / "demo" / "cells"


# --- the features ---------------------------------------------------------------------------------


def test_colour_features_of_a_flat_crop_are_its_optical_density():
    crop = np.empty((20, 20, 3), np.uint8)
    crop[:] = (200, 100, 50)
    c = colour_features(crop)
    od = -np.log(np.array([200, 100, 50]) / 255.0)
    assert c.shape == (COLOUR_DIM,) and c.dtype == np.float32
    np.testing.assert_allclose(c[0:3], od, rtol=1e-5)  # mean OD
    np.testing.assert_allclose(c[3:6], 0.0, atol=1e-5)  # std OD
    np.testing.assert_allclose(c[6:9], od, rtol=1e-5)  # darkest 20%
    np.testing.assert_allclose(c[9:12], od, rtol=1e-5)  # brightest 20%


def test_colour_features_split_nucleus_from_background():
    crop = np.full((10, 10, 3), 240, np.uint8)  # background: 80 pixels
    crop[:2] = (80, 20, 120)  # a dark purple "nucleus": 20 pixels, exactly the darkest 20%
    c = colour_features(crop)
    np.testing.assert_allclose(c[6:9], -np.log(np.array([80, 20, 120]) / 255.0), rtol=1e-5)
    np.testing.assert_allclose(c[9:12], -np.log(240 / 255.0), rtol=1e-5)
    # black pixels are clipped to 1/255, not infinite
    assert np.isfinite(colour_features(np.zeros((16, 16, 3), np.uint8))).all()


def _od(rgb) -> np.ndarray:
    return -np.log(np.maximum(np.asarray(rgb, np.float64), 1) / 255.0)


def _reference(crop: np.ndarray) -> np.ndarray:
    """The features as their definition reads: a log per pixel and a sort by luminance. Exact
    only where no luminance tie straddles the 20% cut (the caller checks), where any order works."""
    px = crop.reshape(-1, 3)
    od = _od(px)
    order = np.argsort(luminance(px), kind="stable")
    k = max(1, int(round(COLOUR_TAIL * len(px))))
    return np.concatenate([od.mean(0), od.std(0), od[order[:k]].mean(0), od[order[-k:]].mean(0)])


def test_colour_features_match_the_sorting_reference_on_random_crops():
    rng = np.random.default_rng(5)
    checked = 0
    for _ in range(60):
        h, w = rng.integers(6, 20, 2)
        crop = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        y = np.sort(luminance(crop).ravel())
        k = max(1, int(round(COLOUR_TAIL * y.size)))
        if y[k - 1] == y[k] or y[-k - 1] == y[-k]:
            continue  # a tie across the cut: the sort's pick would depend on pixel order
        np.testing.assert_allclose(colour_features(crop), _reference(crop), rtol=2e-6, atol=1e-6)
        checked += 1
    assert checked >= 20, checked  # enough crops without a tie at either cut


def test_luminance_is_rec601_in_integers():
    rng = np.random.default_rng(6)
    px = rng.integers(0, 256, (5000, 3), dtype=np.uint8)
    y = luminance(px)
    assert y.min() >= 0 and y.max() <= 255 and luminance(np.full((1, 3), 255, np.uint8))[0] == 255
    assert np.abs(y - px.astype(np.float64) @ [0.299, 0.587, 0.114]).max() <= 1.0


def test_pixels_tied_at_the_cut_count_alike_whatever_their_order():
    """Two colours of one luminance straddle each 20% cut: each tied pixel counts the same share,
    so the tail is the tied group's mean OD, and shuffling the pixels changes nothing."""
    dark_a, dark_b = (100, 100, 100), (140, 80, 100)
    light_c, light_d = (250, 250, 250), (254, 249, 246)
    assert luminance(np.array([dark_a, dark_b], np.uint8)).tolist() == [100, 100]
    assert luminance(np.array([light_c, light_d], np.uint8)).tolist() == [250, 250]
    # 100 pixels, k = 20 at each end: 30 dark pixels tied for the darkest 20, 70 light for the brightest 20
    px = np.array([dark_a] * 10 + [dark_b] * 20 + [light_c] * 30 + [light_d] * 40, np.uint8)
    assert int(round(COLOUR_TAIL * len(px))) == 20
    c = colour_features(px.reshape(10, 10, 3))
    np.testing.assert_allclose(c[6:9], (10 * _od(dark_a) + 20 * _od(dark_b)) / 30, rtol=1e-6)
    np.testing.assert_allclose(c[9:12], (30 * _od(light_c) + 40 * _od(light_d)) / 70, rtol=1e-6)
    rng = np.random.default_rng(7)
    for _ in range(5):
        shuffled = rng.permutation(px).reshape(10, 10, 3)
        np.testing.assert_allclose(colour_features(shuffled), c, rtol=1e-6, atol=1e-7)


def test_colour_features_batch_equals_one_at_a_time_and_wants_uint8():
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (4, 24, 24, 3), dtype=np.uint8)
    np.testing.assert_array_equal(colour_features(crops), np.stack([colour_features(c) for c in crops]))
    with pytest.raises(ValueError, match="uint8"):
        colour_features(crops.astype(np.float32))


@pytest.mark.parametrize("norm", ["symmetric", "caffe"])
def test_pixels_of_inverts_normalise_exactly(norm):
    spec = InputSpec.named(16, norm)
    px = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3) % 256
    px = px.astype(np.uint8)
    np.testing.assert_array_equal(pixels_of(normalise(px, spec), spec), px)


# --- fit, score, threshold ------------------------------------------------------------------------


def _gaussian_colours(n, centre, seed):
    rng = np.random.default_rng(seed)
    a = (np.eye(COLOUR_DIM) + 0.3 * rng.normal(size=(COLOUR_DIM, COLOUR_DIM))) * 0.05
    return (centre + rng.normal(size=(n, COLOUR_DIM)) @ a).astype(np.float32)


def test_fit_whitens_and_scores_the_nearest_component():
    from edge_bloodcls.convert.trust_fit import fit_colour

    home = _gaussian_colours(4000, np.full(COLOUR_DIM, 0.5), 1)
    site = _gaussian_colours(4000, np.full(COLOUR_DIM, 1.5), 2)
    means, whiten = fit_colour(np.r_[home, site], np.r_[np.zeros(4000), np.ones(4000)])
    assert means.shape == (2, COLOUR_DIM) and whiten.shape == (2, COLOUR_DIM, COLOUR_DIM)
    s = ColourStats(means, whiten, threshold=6.0)
    # Whitened: the squared distance of a cell of its own component averages the dimension (a
    # little less: Ledoit-Wolf shrinks the covariance towards a sphere, which widens it).
    d_home, d_site = s.scores(home), s.scores(site)
    for d in (d_home, d_site):
        assert 0.9 * COLOUR_DIM < np.mean(d**2) <= 1.02 * COLOUR_DIM
    # One component alone does not know the other domain; the pair does.
    only_home = ColourStats(means[:1], whiten[:1], threshold=6.0)
    assert (only_home.scores(site) > 6.0).all() and (s.scores(site) < 6.0).mean() > 0.9
    assert s.score(home[0]) == pytest.approx(float(d_home[0]), rel=1e-6)


def test_threshold_is_the_validation_quantile():
    from edge_bloodcls.convert.trust_fit import colour_stats

    rng = np.random.default_rng(3)
    base = rng.integers(60, 200, (1, 12, 12, 3))

    def cells(n):
        # the same "cell", lit and stained a little differently each time
        jitter = rng.normal(0, 6, (n, 1, 1, 3)) + rng.normal(0, 3, (n, 12, 12, 3))
        return np.clip(base + jitter, 0, 255).astype(np.uint8)

    stats, fields = colour_stats(cells(400), cells(500), false_alarm=0.1)
    section = fields["colour"]
    val_share = section["val_flagged"]
    assert 0.08 <= val_share <= 0.1 and section["components"] == 1 and section["fit"]["n"] == [400]
    assert fields["colour_false_alarm_target"] == 0.1 and fields["colour_ood_threshold"] == pytest.approx(
        stats.threshold
    )
    # A crop with another stain (red and blue swapped) is far outside.
    swapped = cells(20)[..., ::-1].copy()
    assert (stats.scores(colour_features(swapped)) > stats.threshold).all()


def test_one_cell_domain_is_refused():
    from edge_bloodcls.convert.trust_fit import fit_colour

    with pytest.raises(ValueError, match="domain 1 has 1 cell"):
        fit_colour(np.random.default_rng(0).normal(size=(5, COLOUR_DIM)), np.array([0, 0, 0, 0, 1]))


# --- what a bundle stores -------------------------------------------------------------------------


def _trust(colour=True):
    rng = np.random.default_rng(1)
    t = TrustStats(
        rng.normal(size=6).astype(np.float32),
        rng.normal(size=(6, 3)).astype(np.float32),
        rng.normal(size=(2, 3)).astype(np.float32),
        threshold=2.0,
    )
    if colour:
        t.colour = ColourStats(np.zeros((2, COLOUR_DIM), np.float32), np.stack([np.eye(COLOUR_DIM)] * 2), 5.0)
    section = {"ood_threshold": 2.0, "format": 2, **({"colour_ood_threshold": 5.0} if colour else {})}
    return t, section


def test_colour_statistic_round_trips_through_the_arrays():
    t, section = _trust()
    back = TrustStats.from_arrays(t.arrays(), section, "b.json", 2)
    assert back.colour is not None and back.colour.threshold == 5.0
    np.testing.assert_array_equal(back.colour.whiten, t.colour.whiten)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a, t: a.update(colour_mean=np.zeros((2, 11))), "'colour_mean' has shape"),
        (lambda a, t: a.update(colour_mean=np.zeros(COLOUR_DIM)), "'colour_mean' has shape"),
        (lambda a, t: a.update(colour_whiten=np.zeros((1, COLOUR_DIM, COLOUR_DIM))), "'colour_whiten' has shape"),
        (lambda a, t: a.update(colour_whiten=np.full((2, COLOUR_DIM, COLOUR_DIM), np.inf)), "'colour_whiten' holds"),
        (lambda a, t: a.pop("colour_whiten"), "lack 'colour_whiten'"),
        (lambda a, t: t.pop("colour_ood_threshold"), "'colour_ood_threshold'"),
        (lambda a, t: t.update(colour_ood_threshold=-1.0), "'colour_ood_threshold'"),
        (lambda a, t: t.update(format=3), "'format' is 3"),
    ],
)
def test_malformed_colour_statistics_are_refused_naming_the_field(change, match):
    t, section = _trust()
    arrays = t.arrays()
    change(arrays, section)
    with pytest.raises(TrustError, match=match):
        TrustStats.from_arrays(arrays, section, "b.json", 2)


def test_a_threshold_without_its_arrays_is_refused():
    t, section = _trust(colour=False)
    with pytest.raises(TrustError, match="lack 'colour_mean'"):
        TrustStats.from_arrays(t.arrays(), {**section, "colour_ood_threshold": 5.0}, "b.json", 2)


def test_statistics_without_colour_behave_as_before():
    t, section = _trust(colour=False)
    section.pop("format")  # a format-1 manifest may predate the field
    back = TrustStats.from_arrays(t.arrays(), section, "b.json", 2)
    assert back.colour is None and not any(k.startswith("colour") for k in t.arrays())
    scores = np.array([1.0, 3.0])
    np.testing.assert_array_equal(back.flags(scores, None), [False, True])
    np.testing.assert_array_equal(back.flags(scores, np.array([99.0, 99.0])), [False, True])  # no colour: ignored


def test_either_statistic_flags_and_the_reason_says_which():
    t, _ = _trust()
    np.testing.assert_array_equal(
        t.flags(np.array([1.0, 3.0, 1.0, 3.0]), np.array([1.0, 1.0, 6.0, 6.0])), [False, True, True, True]
    )
    r = review_reason(0.99, 0.9, 1.0, 2.0, 6.0, 5.0)
    assert r.startswith("out of distribution (colour 6.0 > 5.0)") and COLOUR_REASON in r
    assert review_reason(0.99, 0.9, 3.0, 2.0, 1.0, 5.0) == (
        "out of distribution (score 3.0 > 2.0): unlike the training cells"
    )
    assert review_reason(0.99, 0.9, 1.0, 2.0, None, None) == ""


# --- the shipped bundles --------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_runtime_shipped_bundles_carry_the_colour_statistic_and_load(name):
    b = load_bundle(MODELS_DIR / name)
    t = b.manifest["trust"]
    assert b.trust is not None and b.trust.colour is not None
    assert t["format"] == 2 and t["colour_ood_threshold"] == pytest.approx(b.trust.colour.threshold)
    assert b.trust.colour.means.shape == (1, COLOUR_DIM)  # PBC only
    # Recorded with it: the val false alarms of each statistic, near their own targets; the
    # colour statistic's is the lower one (COLOUR_FALSE_ALARM).
    v = t["val"]
    assert t["colour_false_alarm_target"] == COLOUR_FALSE_ALARM < t["false_alarm_target"] == DEFAULT_FALSE_ALARM
    assert abs(v["colour_ood_flagged"] - t["colour_false_alarm_target"]) < 0.002
    assert v["feature_ood_flagged"] <= v["ood_flagged"] <= v["feature_ood_flagged"] + v["colour_ood_flagged"]


def _copy(name, dest):
    dest.mkdir(parents=True, exist_ok=True)
    for p in MODELS_DIR.glob(f"{name}.*"):
        shutil.copy(p, dest / p.name)
    return dest / f"{name}.tflite"


def test_runtime_a_colour_shifted_cell_is_flagged_and_its_reason_says_colour(tmp_path):
    clf = Classifier(load_bundle(FAST_MODEL), threads=1)
    assert clf.trust is not None and clf.trust.colour is not None
    cells = [load_rgb(p) for p in list_images(DEMO_CELLS).files]
    home = [clf.classify(c) for c in cells]
    # PBC cells (the training distribution): their colours are familiar, but for the share the
    # threshold gives away (COLOUR_FALSE_ALARM of val): the demo ig cell is one of PBC's
    # cooler-lit images, in that tail.
    assert all(p.colour_score is not None for p in home)
    assert sum(p.colour_score <= clf.trust.colour.threshold for p in home) >= 7
    # The same cells under another stain or lamp: a blue cast, or red and blue swapped.
    bluer = [np.clip(c.astype(np.int16) + (-40, -10, 30), 0, 255).astype(np.uint8) for c in cells]
    for shifted in (bluer, [c[..., ::-1].copy() for c in cells]):
        preds = [clf.classify(c) for c in shifted]
        assert all(p.ood and p.review and p.colour_score > clf.trust.colour.threshold for p in preds)
        assert all(COLOUR_REASON in p.review_reason for p in preds)


def test_runtime_predict_many_agrees_with_classify():
    clf = Classifier(load_bundle(FAST_MODEL), threads=1)
    cells = [load_rgb(p) for p in list_images(DEMO_CELLS).files]
    cells += [c[..., ::-1].copy() for c in cells]
    out = clf.predict_many(prepare(c, clf.spec) for c in cells)
    one = [clf.classify(c) for c in cells]
    np.testing.assert_allclose(out["colour_score"], [p.colour_score for p in one], rtol=1e-6)
    np.testing.assert_array_equal(out["ood"], [p.ood for p in one])


def test_runtime_a_bundle_without_the_colour_statistic_is_unchanged(tmp_path):
    """The shipped fast bundle with its colour statistic stripped (a format-1 bundle): no colour
    score, and OOD and review exactly as the features and the confidence say."""
    p = _copy(FAST_MODEL, tmp_path)
    npz = p.with_suffix(".trust.npz")
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files if not k.startswith("colour")}
    arrays["format"] = np.array(1)
    np.savez(npz, **arrays)
    j = p.with_suffix(".json")
    m = json.loads(j.read_text())
    for k in ("colour_ood_threshold", "colour"):
        m["trust"].pop(k)
    m["trust"].update(format=1, sha256=sha256_file(npz), size_bytes=npz.stat().st_size)
    m["manifest_sha256"] = manifest_sha256(m)
    j.write_text(json.dumps(m))
    old, new = Classifier(load_bundle(p), threads=1), Classifier(load_bundle(FAST_MODEL), threads=1)
    assert old.trust is not None and old.trust.colour is None
    swapped = load_rgb(list_images(DEMO_CELLS).files[0])[..., ::-1].copy()
    a, b = old.classify(swapped), new.classify(swapped)
    assert a.colour_score is None and b.colour_score is not None
    assert a.ood_score == b.ood_score and a.probs == b.probs  # same model, same feature statistics
    assert a.ood == (a.ood_score > old.trust.threshold)
    assert "colour" not in a.review_reason and COLOUR_REASON in b.review_reason
    out = old.predict_many([prepare(swapped, old.spec)])
    assert out["colour_score"] is None and out["ood"].tolist() == [a.ood]


@pytest.mark.parametrize("name", [FAST_MODEL, DEFAULT_MODEL])
def test_runtime_another_labs_cells_read_as_foreign_by_colour(name):
    """bccd_site: 41 white cells of another lab (../shared/data, skipped when absent). The colour
    statistic, fitted on PBC alone, calls every one of them foreign."""
    site = SHARED_DATA / "bccd_site"
    if not site.is_dir():
        pytest.skip(f"shared BCCD site data not found at {site}")
    clf = Classifier(load_bundle(name), threads=1)
    files = list_images(site).files
    assert len(files) == 41
    out = clf.predict_many(prepare(f, clf.spec) for f in files)
    assert clf.trust is not None and clf.trust.colour is not None
    assert (out["colour_score"] > clf.trust.colour.threshold).all() and out["ood"].all()

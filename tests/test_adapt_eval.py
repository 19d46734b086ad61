"""adapt's honest figures (adapt/evaluate.py): intervals, balanced accuracy, the EM estimate of
a site's class proportions, capture's view of a labelled crop; and `adapt` without TensorFlow.
No TensorFlow needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_bloodcls.adapt import evaluate as ev

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_wilson_interval():
    lo, hi = ev.wilson(51, 60)
    assert lo < 51 / 60 < hi
    assert (round(lo, 3), round(hi, 3)) == (0.739, 0.919)  # the textbook Wilson 95% bounds for 51/60
    assert ev.wilson(0, 0) == (0.0, 1.0)


def test_balanced_accuracy_counts_only_classes_with_enough_cells():
    labels = ["a", "b", "c"]
    y = np.array([0] * 10 + [1] * 5 + [2] * 2)
    pred = y.copy()
    pred[:5] = 1  # class a: 5 of 10
    pred[15:] = 0  # class c: 0 of 2, but it has fewer than 5 cells
    e = ev.estimate(y, pred, labels)
    assert e.balanced_classes == ["a", "b"] and e.balanced_accuracy == pytest.approx(0.75)
    assert e.accuracy == pytest.approx(10 / 17) and e.per_class["c"] == {"right": 0, "n": 2}
    assert e.balanced_ci[0] <= 0.75 <= e.balanced_ci[1]
    assert "balanced 75.0%" in e.line()


def test_em_recovers_the_class_proportions_of_a_shifted_sample():
    """Posteriors of a calibrated classifier trained under uniform proportions, on a sample drawn
    70/20/10: EM (Saerens et al. 2002) finds the sample's proportions, and re-weighting by them
    is what a bias shift of log(new/old) on the logits does."""
    rng = np.random.default_rng(0)
    means = np.array([[0, 0], [2, 0], [0, 2]], float)
    y = rng.choice(3, size=4000, p=[0.7, 0.2, 0.1])
    x = means[y] + rng.normal(0, 1, (len(y), 2))
    logits = -0.5 * ((x[:, None, :] - means[None]) ** 2).sum(-1)  # Bayes posteriors under equal priors
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    uniform = np.full(3, 1 / 3)
    prior = ev.em_priors(p, uniform)
    assert np.abs(prior - [0.7, 0.2, 0.1]).max() < 0.03
    assert np.abs(p.mean(0) - [0.7, 0.2, 0.1]).max() > 0.05  # the plain average is biased
    shifted = logits + ev.log_prior_shift(uniform, prior)
    q = np.exp(shifted - shifted.max(1, keepdims=True))
    np.testing.assert_allclose(q / q.sum(1, keepdims=True), ev.adjust(p, uniform, prior), atol=1e-9)
    assert (ev.adjust(p, uniform, prior).argmax(1) == y).mean() > (p.argmax(1) == y).mean()


def test_field_stem():
    assert ev.field_stem("x/neutrophil/BloodImage_00008_1.jpg") == "BloodImage_00008"
    assert ev.field_stem("s.db#cell3") == "s"


@pytest.mark.skipif(not (DATA / "bccd_site").is_dir(), reason="../shared/data not present")
def test_capture_view_of_a_labelled_bccd_crop():
    """A bccd_site crop is found in its own field, capture's locate finds the same cell, and the
    view is capture's crop of it (square, about 3.9 red cells wide)."""
    from edge_bloodcls.edge_runtime.capture.locate import default_rbc_px
    from edge_bloodcls.edge_runtime.core.preprocess import load_rgb

    f = sorted((DATA / "bccd_site" / "lymphocyte").glob("*.jpg"))[0]
    tight = load_rgb(f)
    v = ev.capture_views([tight], [str(f)], DATA / "bccd" / "JPEGImages")[0]
    assert v.crop is not None, v.why
    assert v.field == ev.field_stem(f.name) and v.iou >= ev.MATCH_IOU
    assert v.crop.shape[0] == v.crop.shape[1] >= round(3.9 * default_rbc_px((480, 640)))
    x0, y0, x1, y1 = v.box
    assert (x1 - x0, y1 - y0) == (tight.shape[1], tight.shape[0])
    missing = ev.capture_views([tight], ["elsewhere/Other_1.jpg"], DATA / "bccd" / "JPEGImages")[0]
    assert missing.crop is None and "not in the folder" in missing.why


def test_site_review_threshold_holds_for_the_site_cells_on_their_own():
    """400 PBC val cells nearly all right and 60 site cells 65% right, all equally sure: pooled, the
    PBC cells would carry the bound and accept the site's cells wholesale; the site's own bound
    sends them to review."""
    from edge_bloodcls.adapt.core import site_operating_point

    rng = np.random.default_rng(0)

    def sure(y, right, conf):
        p = np.full((len(y), 3), (1 - conf) / 2)
        pred = np.where(right, y, (y + 1) % 3)
        p[np.arange(len(y)), pred] = conf
        return p

    py = rng.integers(3, size=400)
    ly = rng.integers(3, size=60)
    praw = sure(py, rng.random(400) < 0.99, 0.95)
    lraw = sure(ly, np.arange(60) < 39, 0.95)
    no = np.zeros(400, bool)
    sp = site_operating_point(praw, py, no, lraw, ly, np.zeros(60, bool), 0.90)
    assert sp["by_set"]["local_out_of_fold"]["coverage"] == 0.0
    assert sp["operating_point"]["set_by"] == "local_out_of_fold"
    alone = site_operating_point(praw, py, no, np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros(0, bool), 0.90)
    assert alone["by_set"]["pbc_val"]["coverage"] > 0.9  # PBC val alone: accepted

"""edge_runtime.core.trust without a model: the session gate, the statistics' checks, the metrics."""

from __future__ import annotations

import numpy as np
import pytest

from edge_bloodcls.edge_runtime.core.trust import (
    SessionGate,
    TrustError,
    TrustStats,
    apply_temperature,
    ece,
    nll,
    trust_summary,
)


def test_gate_trips_when_ood_cells_dominate_and_latches():
    g = SessionGate(window=50, share=1 / 3, min_cells=10)
    tripped = [g.add(i % 2 == 0) for i in range(30)]  # half of the cells foreign
    assert tripped.count(True) == 1 and tripped.index(True) == 9  # at the 10th cell, once
    assert g.tripped and "UNVALIDATED" in g.message() and g.to_json()["tripped_at_cell"] == 10
    for _ in range(100):
        g.add(False)
    assert g.tripped and g.share == 0.0  # latched: the differential already holds foreign cells


def test_gate_stays_quiet_on_in_distribution_cells():
    rng = np.random.default_rng(0)
    g = SessionGate()
    # A 2% false-alarm rate (the bundles' OOD threshold) over a 500-cell session.
    assert not any(g.add(bool(f)) for f in rng.random(500) < 0.02)
    assert not g.tripped and g.to_json()["message"] == ""


def test_gate_needs_enough_cells():
    g = SessionGate(min_cells=10)
    assert not any(g.add(True) for _ in range(9))
    assert g.add(True)


def _stats(d=6, k=3, c=2):
    rng = np.random.default_rng(1)
    return TrustStats(
        rng.normal(size=d).astype(np.float32),
        rng.normal(size=(d, k)).astype(np.float32),
        rng.normal(size=(c, k)).astype(np.float32),
        threshold=2.0,
    )


def test_batch_and_single_scores_agree():
    s = _stats()
    f = np.random.default_rng(2).normal(size=(5, 6)).astype(np.float32)
    np.testing.assert_allclose(s.scores(f), [s.score(x) for x in f], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a, t: a.update(proj=np.zeros((5, 3))), "'proj' has shape"),
        (lambda a, t: a.update(centres=np.zeros((3, 3))), "'centres' has shape"),
        (lambda a, t: a.pop("mean"), "lack 'mean'"),
        (lambda a, t: a.update(mean=np.full(6, np.nan)), "NaN"),
        (lambda a, t: t.update(temperature=0), "'temperature'"),
        (lambda a, t: t.update(temperature=float("inf")), "'temperature'"),
        (lambda a, t: t.update(ood_threshold=None), "'ood_threshold'"),
        (lambda a, t: t.update(review_threshold=-0.1), "'review_threshold'"),
    ],
)
def test_invalid_statistics_are_refused_naming_the_field(change, match):
    s = _stats()
    arrays = s.arrays()
    trust = {"ood_threshold": 2.0, "temperature": 1.5, "review_threshold": 0.9}
    TrustStats.from_arrays(arrays, trust, "b.json", 2)  # valid as given
    change(arrays, trust)
    with pytest.raises(TrustError, match=match):
        TrustStats.from_arrays(arrays, trust, "b.json", 2)


def test_temperature_keeps_the_argmax_and_softens():
    p = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]], np.float32)
    q = apply_temperature(p, 2.0)
    assert (q.argmax(1) == p.argmax(1)).all() and (q.max(1) < p.max(1)).all()
    np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-6)
    assert apply_temperature(p, 1.0) is p


def test_ece_and_nll_known_values():
    y = np.array([0, 0, 1, 1])
    perfect = np.eye(2)[y].astype(np.float32)
    assert ece(perfect, y) == 0.0 and nll(perfect, y) == pytest.approx(0.0, abs=1e-5)
    # Confidence 0.8 everywhere, 50% right: ECE = |0.5 - 0.8|.
    p = np.array([[0.8, 0.2]] * 4, np.float32)
    assert ece(p, y) == pytest.approx(0.3)


def test_trust_summary_counts():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]], np.float32)
    s = trust_summary(p, np.array([0, 1, 1]), np.array([False, False, True]), np.array([False, True, True]), True, 0.8)
    assert s["ood"] == 1 and s["review"] == 2 and s["errors"] == 1 and s["errors_flagged"] == 1
    assert s["coverage"] == pytest.approx(1 / 3) and s["accepted_accuracy"] == 1.0
    assert "out of distribution 1 of 3" in s["line"]

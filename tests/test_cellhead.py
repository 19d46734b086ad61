"""The cell-feature head: its features see what they claim to (a nucleus, its lobes, red
granules), its fusion leaves home cells alone and multiplies the site's, its fit separates what it
is shown, and a bundle carrying one is fused by the runtime or refused with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_bloodcls.edge_runtime.core.bundle import BundleError, load_bundle, write_bundle
from edge_bloodcls.edge_runtime.core.cellhead import FEATURES, N_FEATURES, CellHead, CellHeadError, cell_features
from edge_bloodcls.edge_runtime.core.classifier import Classifier
from edge_bloodcls.edge_runtime.core.preprocess import pixels_of, prepare
from edge_bloodcls.edge_runtime.core.spec import LABELS

pytest.importorskip("cv2")

BACKGROUND, CYTOPLASM, NUCLEUS = (240, 240, 235), (230, 170, 180), (90, 60, 160)


def cell(size=96, lobes=3, granules=True) -> np.ndarray:
    """A pale field, a pink (granular) or grey cytoplasm disc, a purple nucleus of `lobes` pieces."""
    yy, xx = np.mgrid[:size, :size]
    px = np.empty((size, size, 3), np.uint8)
    px[:] = BACKGROUND
    c = size / 2
    px[np.hypot(yy - c, xx - c) < 0.28 * size] = CYTOPLASM if granules else (200, 200, 210)
    for k in range(lobes):
        a = 2 * np.pi * k / max(lobes, 1)
        cy, cx = c + (0.1 * size * np.sin(a) if lobes > 1 else 0), c + (0.1 * size * np.cos(a) if lobes > 1 else 0)
        px[np.hypot(yy - cy, xx - cx) < (0.06 if lobes > 1 else 0.15) * size] = NUCLEUS
    return px


def test_features_see_the_nucleus_its_lobes_and_the_granules():
    three, one, empty = cell(lobes=3), cell(lobes=1, granules=False), np.full((96, 96, 3), 240, np.uint8)
    f3, f1, f0 = (cell_features(p) for p in (three, one, empty))
    assert f3.shape == (N_FEATURES,) and f3.dtype == np.float32
    assert all(np.isfinite(f).all() for f in (f3, f1, f0))
    assert f3[-1] == 3 and f1[-1] == 1 and f0[-1] == 0  # lobes
    assert f3[0] > 0 and f0[0] == 0  # the nucleus's share of the crop
    red = N_FEATURES - 4  # the share of red granules
    assert f3[red] > 0.2 and f1[red] == 0
    assert np.array_equal(cell_features(three), f3)  # deterministic


def _section(k=2, route_b=0.0, f=N_FEATURES, **kw) -> dict:
    rng = np.random.default_rng(0)
    d = {
        "features": FEATURES,
        "classes": ["eosinophil", "neutrophil", "lymphocyte"][:k],
        "mean": [0.0] * f,
        "scale": [1.0] * f,
        "coef": rng.normal(size=(k, f)).tolist(),
        "intercept": [0.0] * k,
        "route_coef": [0.0] * f,
        "route_intercept": route_b,
    }
    d.update(kw)
    return d


def test_fusion_leaves_home_cells_alone_and_multiplies_the_sites():
    feats = np.random.default_rng(1).normal(size=(5, N_FEATURES))
    p = np.random.default_rng(2).dirichlet(np.ones(len(LABELS)), 5).astype(np.float32)
    home = CellHead.from_json(_section(route_b=-60.0), LABELS, "t")
    assert np.allclose(home.fuse(p, feats), p, atol=1e-6)
    site = CellHead.from_json(_section(route_b=60.0), LABELS, "t")
    g, logq = site.parts(feats)
    assert np.allclose(g, 1) and np.allclose(logq.mean(1), 0)
    fused = site.fuse(p, feats)
    assert np.allclose(fused.sum(1), 1, atol=1e-5)
    # On the head's classes the odds are the network's times the head's; elsewhere the network's,
    # relative to the head's average class.
    e, n, b = LABELS.index("eosinophil"), LABELS.index("neutrophil"), LABELS.index("basophil")
    q = np.exp(logq)
    assert np.allclose(fused[:, e] / fused[:, n], p[:, e] / p[:, n] * q[:, 0] / q[:, 1], rtol=1e-4)
    assert np.allclose(fused[:, b] / fused[:, n], p[:, b] / p[:, n] / q[:, 1], rtol=1e-4)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"features": "cellfeat-0"}, "features"),
        ({"classes": ["eosinophil", "blast"]}, "classes"),
        ({"classes": ["eosinophil", "eosinophil"]}, "classes"),
        ({"coef": [[0.0] * N_FEATURES]}, "coef"),
        ({"scale": [0.0] * N_FEATURES}, "scale"),
        ({"mean": [float("nan")] * N_FEATURES}, "mean"),
        ({"route_intercept": "x"}, "route_intercept"),
    ],
)
def test_a_malformed_head_is_refused_naming_the_field(change, field):
    with pytest.raises(CellHeadError, match=field):
        CellHead.from_json(_section(**change), LABELS, "m.json")
    bad = _section()
    del bad["intercept"]
    with pytest.raises(CellHeadError, match="lacks 'intercept'"):
        CellHead.from_json(bad, LABELS, "m.json")


def test_fit_separates_the_sites_classes_and_routes_home_apart():
    pytest.importorskip("sklearn")
    from edge_bloodcls.adapt import cellhead as ch

    rng = np.random.default_rng(0)
    three = [cell(lobes=3) for _ in range(4)]
    one = [cell(lobes=1, granules=False) for _ in range(4)]
    x = ch.features(np.stack(three + one)) + rng.normal(0, 0.01, (8, N_FEATURES))
    y = np.r_[[LABELS.index("neutrophil")] * 4, [LABELS.index("lymphocyte")] * 4]
    home = ch.features(np.stack([np.full((96, 96, 3), v, np.uint8) for v in (200, 210, 220, 230)]))
    section = ch.fit(x, y, LABELS, home, x)
    assert json.loads(json.dumps(section)) == section  # goes in the manifest as it is
    head = CellHead.from_json(section, LABELS, "t")
    assert section["classes"] == ["lymphocyte", "neutrophil"]  # a two-class head: both rows
    g, logq = head.parts(x)
    assert (g > 0.5).all() and (head.parts(home)[0] < 0.5).all()
    assert (np.array(head.classes)[logq.argmax(1)] == y).all()
    assert ch.fit(x[:4], y[:4], LABELS, home, x) is None  # one class: nothing to tell apart


@pytest.mark.parametrize("k", [2, 3])
def test_the_fitted_head_is_the_two_regressions_it_was_fitted_as(k):
    """The head's q and g are scikit-learn's own probabilities, though the router's standardisation
    (home and site together) is folded into the head's (the site's labelled cells)."""
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    from edge_bloodcls.adapt import cellhead as ch

    rng = np.random.default_rng(k)
    scales = 10.0 ** rng.uniform(-3, 3, N_FEATURES)  # uneven, as the real features are
    y = np.repeat([LABELS.index(c) for c in ("eosinophil", "lymphocyte", "neutrophil")[:k]], 10)
    x = (rng.normal(size=(len(y), N_FEATURES)) + y[:, None] * 0.3) * scales
    home = (rng.normal(size=(40, N_FEATURES)) + 2) * scales
    site = np.concatenate([x, (rng.normal(size=(12, N_FEATURES)) - 1) * scales])
    head = CellHead.from_json(ch.fit(x, y, LABELS, home, site), LABELS, "t")
    mean, sd = x.mean(0), x.std(0)
    clf = LogisticRegression(C=ch.HEAD_C, max_iter=5000, random_state=0).fit((x - mean) / sd, y)
    r = np.concatenate([home, site])
    mu, rsd = r.mean(0), r.std(0)
    router = LogisticRegression(C=ch.ROUTE_C, class_weight="balanced", max_iter=5000, random_state=0)
    router.fit((r - mu) / rsd, np.r_[np.zeros(len(home)), np.ones(len(site))])
    test = np.concatenate([x[:5], home[:5]])
    g, logq = head.parts(test)
    q = np.exp(logq) / np.exp(logq).sum(1, keepdims=True)
    assert np.allclose(q, clf.predict_proba((test - mean) / sd), atol=1e-6)
    assert np.allclose(g, router.predict_proba((test - mu) / rsd)[:, 1], atol=1e-6)


def test_a_bundle_with_a_head_is_fused_by_the_runtime(bundles, tmp_path):
    src = load_bundle(bundles["float32"])
    plain = Classifier(src)
    assert plain.head is None
    section = _section(route_b=60.0, classes=["eosinophil", "neutrophil"])
    b = write_bundle(src.tflite.read_bytes(), {**src.manifest, "cell_head": section}, tmp_path, "tiny_head")
    assert b.head is not None
    fused = Classifier(b)
    px = cell(32)
    x = prepare(px, src.spec)
    raw, _ = plain.predict(x)
    assert np.allclose(fused.predict(x)[0], b.head.fuse(raw, cell_features(pixels_of(x, src.spec)))[0], atol=1e-6)
    r = fused.classify(px)
    assert r.label in LABELS and abs(sum(r.probs.values()) - 1) < 1e-4
    many = fused.predict_many([x, x])  # the batch path answers as the single one
    assert np.allclose(many["raw"], fused.predict(x)[0], atol=1e-6)
    assert b.manifest["schema"] == 2 and load_bundle(bundles["float32"]).manifest["schema"] == 1
    # A head the manifest hash covers: edited afterwards, the bundle is refused with one line.
    m = json.loads((tmp_path / "tiny_head.json").read_text())
    m["cell_head"]["intercept"] = [5.0, 0.0]
    (tmp_path / "tiny_head.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="edited after export"):
        load_bundle(tmp_path / "tiny_head.tflite")
    # A malformed head, hash and all: refused naming the field.
    bad = write_bundle(src.tflite.read_bytes(), {**src.manifest, "cell_head": None}, tmp_path, "bad")
    assert bad.head is None
    (tmp_path / "bad.json").unlink()
    with pytest.raises(BundleError, match="cell_head field 'scale'"):
        write_bundle(
            src.tflite.read_bytes(), {**src.manifest, "cell_head": _section(scale=[-1.0] * N_FEATURES)}, tmp_path, "bad"
        )
    assert not (tmp_path / "bad.json").exists()  # refused before anything was written
    # A runtime that reads schema 1 only (one that would ignore the head) refuses schema 2, and a
    # manifest whose schema and head disagree is refused here.
    m = json.loads((tmp_path / "tiny_head.json").read_text())
    del m["cell_head"]
    (tmp_path / "tiny_head.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="disagree"):
        load_bundle(tmp_path / "tiny_head.tflite", verify=False)

"""The shipped bundles themselves, through the runtime alone (no TensorFlow needed).

Run with the edge install (`pip install -e .[edge,dev]`, `pytest -k runtime`) and inside the
arm64 root file system of `make pi-check`: what a Pi loads is what is tested here.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from runtime_fixtures import PYTHON

from edge_bloodcls.edge_runtime.core.bundle import DEFAULT_MODEL, FAST_MODEL, MODELS_DIR, load_bundle
from edge_bloodcls.edge_runtime.core.classifier import Classifier
from edge_bloodcls.edge_runtime.core.images import list_images

DEMO = Path(__file__).resolve().parents[1] / "demo"
SHIPPED = sorted(p.stem for p in MODELS_DIR.glob("*.tflite"))


def test_runtime_default_bundle_is_shipped_with_its_trust_statistics():
    assert DEFAULT_MODEL in SHIPPED
    b = load_bundle()  # verifies the model and statistics hashes against the manifest
    assert b.name == DEFAULT_MODEL and b.trust is not None
    assert b.quantization == "int8"


def test_runtime_fast_and_default_name_the_two_shipped_int8_bundles():
    assert load_bundle("default").name == DEFAULT_MODEL
    fast = load_bundle("fast")
    assert fast.name == FAST_MODEL and fast.quantization == "int8" and fast.trust is not None
    # The fast model does less work per cell than the default.
    assert fast.manifest["size_bytes"] < load_bundle().manifest["size_bytes"]
    assert fast.spec.size[0] * fast.spec.size[1] < load_bundle().spec.size[0] * load_bundle().spec.size[1]


@pytest.mark.parametrize("name", SHIPPED)
def test_runtime_shipped_bundle_classifies_the_demo_cells(name):
    """One PBC cell per class (demo/cells, from the training distribution): no shipped model
    calls any of them out of distribution by its features, and none gets one wrong without
    flagging it for review. A 98% model may miss one of the eight (the fast int8 calls the band
    neutrophil ig at 0.50 against 0.50, flagged REVIEW); the default gets all eight. The colour
    statistic gives away COLOUR_FALSE_ALARM (0.5%) of PBC val by design; of these eight it flags
    one, the ig cell (one of PBC's cooler-lit images, colour distance about 1.5 times the
    threshold), for review."""
    clf = Classifier(load_bundle(MODELS_DIR / name), threads=1)
    cells = list_images(DEMO / "cells").files
    assert len(cells) == 8
    right = colour_flagged = 0
    for path in cells:
        p = clf.classify(path)
        assert clf.trust is not None and p.ood_score is not None, (name, path)
        assert p.ood_score <= clf.trust.threshold, (name, path, p.ood_score)
        assert p.ood == (p.colour_score is not None and p.colour_score > clf.trust.colour.threshold)
        colour_flagged += p.ood
        if p.label == path.parent.name:
            right += 1
        else:
            assert p.review_reason, ("a confident wrong call", name, path, p.top)
    assert right >= (8 if name.startswith(DEFAULT_MODEL.rsplit("_", 1)[0]) else 7), (name, right)
    assert colour_flagged <= 1, (name, colour_flagged)


def test_runtime_default_bundle_flags_another_labs_fields(tmp_path):
    """The demo fields come from another microscope: the gate must mark the differential
    UNVALIDATED rather than report it as if it could be trusted."""
    db = tmp_path / "capture.db"
    r = subprocess.run(
        [
            PYTHON,
            "-m",
            "edge_bloodcls.cli",
            "capture",
            "--camera",
            str(DEMO / "fields"),
            "--mode",
            "field",
            "--no-preview",
            "--db",
            str(db),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "UNVALIDATED differential" in r.stdout
    assert "Traceback" not in r.stderr and "INFO:" not in r.stderr

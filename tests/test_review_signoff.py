"""Reviewer classes, sign-off rules and signed versions without a browser (issue 27): the store
enforces the rules and numbers the versions; the report, the CSV summary and the FHIR Bundle
count artefacts and duplicates nowhere, smudge cells apart and added white-cell classes in the
differential; the review server signs with its own --reviewer."""

from __future__ import annotations

import csv
import json
import urllib.error

import pytest
from review_client import ReviewClient
from session_fixtures import make_session, run_cli

from edge_bloodcls.edge_runtime.core.spec import (
    ADDED_WBC_LABELS,
    DIFFERENTIAL_LABELS,
    LABELS,
    REMOVED_LABELS,
    REVIEW_CLASSES,
    REVIEW_LABELS,
    WBC_LABELS,
)
from edge_bloodcls.edge_runtime.lab import review
from edge_bloodcls.edge_runtime.lab.report import load, tally
from edge_bloodcls.edge_runtime.lab.report_adapt import from_store
from edge_bloodcls.edge_runtime.lab.report_fhir import CLASS_SYSTEM, LOINC, bundle
from edge_bloodcls.edge_runtime.lab.report_model import differential
from edge_bloodcls.edge_runtime.lab.store import Conflict, Refusal, SessionStore


def test_review_classes_are_defined_once_and_extend_the_models():
    assert REVIEW_LABELS[: len(LABELS)] == LABELS  # keys 1-8 stay the model's classes
    assert set(WBC_LABELS) < set(DIFFERENTIAL_LABELS)
    assert {"band_neutrophil", "reactive_lymphocyte", "blast", "unidentified"} <= set(ADDED_WBC_LABELS)
    assert set(REMOVED_LABELS) == {"artefact", "duplicate"}
    keys = [c.key for c in REVIEW_CLASSES]
    assert len(set(keys)) == len(keys) and not set(keys) & {"c", "u", "j", "k", "v", "f", "g", "S", "?"}


def test_sign_off_rules_are_the_stores(tmp_path):
    db = tmp_path / "s.db"
    sid = make_session(db, unvalidated=True)  # 11 cells, target 11, 10 of them white cells
    with SessionStore(db) as store:
        with pytest.raises(Conflict) as e:
            store.sign_off(sid, "ann")
        assert str(e.value) == (
            "3 flagged cell(s) not reviewed yet; UNVALIDATED session: every cell must be "
            "reviewed (11 not reviewed yet); short count: 10 white cells after review, below "
            "the session's target of 11: acknowledge the short count to sign"
        )
        for cid in (9, 10, 11):
            store.decide(sid, cid, store.cell(sid, cid).label, "ann", 0)
        with pytest.raises(Conflict, match="^UNVALIDATED session: every cell must be reviewed \\(8 not"):
            store.sign_off(sid, "ann", short_count=True)
        for cid in range(1, 9):
            store.decide(sid, cid, store.cell(sid, cid).label, "ann", 0)
        with pytest.raises(Refusal, match="not a review class"):
            store.decide(sid, 1, "<b>", "ann", 1)
        check = store.sign_check(sid)
        assert (check.short, check.wbc, check.unreviewed, check.closed) == (True, 10, 0, False)
        with pytest.raises(Conflict, match="^short count"):
            store.sign_off(sid, "ann")
        s1 = store.sign_off(sid, "ann", short_count=True)
        assert (s1.version, s1.short_count) == (1, True)
        assert store.sign_check(sid).closed
        with pytest.raises(Conflict, match="read-only"):
            store.sign_off(sid, "ann", short_count=True)
        with pytest.raises(Conflict, match="signed off"):
            store.decide(sid, 1, "blast", "ann", 1)
        store.amend(sid, 1, "blast", "bo", 1, "a blast on a second look")
        store.amend(sid, 2, "artefact", "bo", 1, "stain precipitate")
        check = store.sign_check(sid)
        assert (check.pending, check.closed, check.next_version, check.wbc) == (2, False, 2, 9)
        s2 = store.sign_off(sid, "bo", short_count=True)
        assert (s2.version, s2.signed_by) == (2, "bo")
        assert store.sign_check(sid).closed and store.session(sid).signed_by == "bo"
    d = load(db)
    data = from_store(d)
    assert [(v.version, v.by, v.final.get("neutrophil"), v.final.get("blast"), v.reasons) for v in data.versions] == [
        (1, "ann", 5, None, ()),
        (2, "bo", 3, 1, ("a blast on a second look", "stain precipitate")),
    ]
    assert data.versions[0].note == "short count acknowledged: 10 of 11 white cells"
    assert data.status == "amended" and data.pending_amendments == 0


def test_removed_apart_and_added_classes_in_every_output(tmp_path):
    db = tmp_path / "s.db"
    sid = make_session(db)  # 5 neutrophils, 3 lymphocytes, monocyte, eosinophil, platelet
    with SessionStore(db) as store:
        for cid, label in (
            (1, "artefact"),
            (2, "duplicate"),
            (3, "smudge"),
            (4, "band_neutrophil"),
            (6, "blast"),
            (7, "unidentified"),
            (9, "monocyte"),
            (10, "eosinophil"),
            (11, "platelet"),
        ):
            store.decide(sid, cid, label, "ann", 0)
    d = load(db)
    t = tally(d.cells)
    assert (t["wbc_machine"], t["wbc_final"], t["removed"], t["apart"]) == (10, 7, 2, 1)
    data = from_store(d)
    diff = differential(data)
    assert diff.wbc_final == 7 and diff.removed == 2 and diff.apart == 1
    assert diff.row("neutrophil").final == 1 and diff.row("band_neutrophil").per_100_wbc == pytest.approx(100 / 7)
    assert diff.row("smudge").per_100_wbc == pytest.approx(100 / 7) and not diff.row("smudge").in_differential
    assert diff.row("artefact").per_100_wbc is None
    page = tmp_path / "r.html"
    assert run_cli("report", db, "--out", page).exit_code == 0
    html = page.read_text()
    assert "<th id='wbc-final'>7</th>" in html
    assert "band neutrophil (reviewer)" in html and "blast (reviewer)" in html
    assert "reactive lymphocyte" not in html.split("id='differential'")[1].split("</table>")[0]  # unused: no row
    assert "smudge (reported apart, not in the differential)" in html
    assert "artefact (removed from the count)" in html and "duplicate (removed from the count)" in html
    assert "id='listed-unidentified'" in html and "#7" in html.split("id='listed-unidentified'")[1][:300]
    assert "data-rule='UNIDENTIFIED'" in html
    out = tmp_path / "r.csv"
    assert run_cli("report", db, "--format", "csv", "--out", out).exit_code == 0
    row = next(csv.DictReader(out.open()))
    assert (row["wbc_counted"], row["removed_cells"], row["smudge_cells"], row["pct_blast"]) == ("7", "2", "1", "14.3")
    fhir = bundle(data)
    obs = {
        o["resource"]["code"]["coding"][-1]["code"]: o["resource"]
        for o in fhir["entry"]
        if o["resource"]["resourceType"] == "Observation"
    }
    assert obs["blast-percent"]["code"]["coding"][0] == {
        "system": LOINC,
        "code": "26446-5",
        "display": "Blasts/100 leukocytes in Blood",
    }
    band = obs["band_neutrophil-percent"]["code"]["coding"]
    assert [c["system"] for c in band] == [CLASS_SYSTEM]  # no LOINC code we could check: ours only
    assert obs["band_neutrophil-percent"]["valueQuantity"]["value"] == 14.3
    assert not any(k.startswith(("smudge", "artefact", "duplicate", "reactive_lymphocyte")) for k in obs)
    conclusion = fhir["entry"][0]["resource"]["conclusion"]
    assert "Smudge cells: 1" in conclusion and "Removed by the reviewer from the count: 2" in conclusion


def test_the_server_signs_with_its_own_reviewer(tmp_path):
    db = tmp_path / "s.db"
    sid = make_session(db)
    server = review.make_server(db, sid, port=0, reviewer="ann").start()
    try:
        c = ReviewClient(server.url)
        for cid in (9, 10, 11):
            c.post("api/decide", {"cell": cid, "label": "duplicate" if cid == 11 else "blast", "version": 0})
        for body, why in (
            ({"short_count": 1, "reviewer": "mallory"}, "unexpected"),
            ({"short_count": True}, "integer"),
            ({}, "missing field 'short_count'"),
        ):
            with pytest.raises(urllib.error.HTTPError) as e:
                c.post("api/signoff", body)
            assert e.value.code == 400 and why in json.loads(e.value.read())["error"]
        check = c.json("api/check")
        assert (check["wbc"], check["short"], check["flagged_left"]) == (10, True, 0)
        assert check["blockers_unacknowledged"] == [
            "short count: 10 white cells after review, below the session's "
            "target of 11: acknowledge the short count to sign"
        ]
        with pytest.raises(urllib.error.HTTPError) as e:
            c.post("api/signoff", {"short_count": 0})
        assert e.value.code == 409
        r = c.post("api/signoff", {"short_count": 1})
        assert (r["signed_by"], r["version"], r["short_count"]) == ("ann", 1, True)
        state = c.json("api/state?all=1")
        assert state["check"]["closed"] and state["versions"][0]["by"] == "ann"
        assert [k["label"] for k in state["classes"]] == list(REVIEW_LABELS)
        assert state["tally"]["removed"] == 1 and state["tally"]["wbc_final"] == 10
    finally:
        server.stop()

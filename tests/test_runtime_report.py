"""The report and the review server's decisions, without a browser or a model: schema version
and migration of a first-release log, Wilson intervals, the static report, bad files, two review
servers on one log, a review server killed right after a decision (the store's own tests:
test_store.py; the concurrent stress: test_review_concurrency.py)."""

from __future__ import annotations

import csv
import json
import signal
import sqlite3  # only to write a first-release log, as that release did
import subprocess
import sys
import threading
import urllib.error

import pytest
from review_client import ReviewClient
from session_fixtures import CELLS, REPO, make_session, run_cli

from edge_bloodcls.edge_runtime.core.spec import LABELS
from edge_bloodcls.edge_runtime.lab import review
from edge_bloodcls.edge_runtime.lab.report import load, render, tally, wilson
from edge_bloodcls.edge_runtime.lab.store import SCHEMA_V0, SCHEMA_VERSION, Refusal, SessionStore


def test_wilson_interval_known_values():
    lo, hi = wilson(5, 10)
    assert abs(lo - 0.2366) < 1e-3 and abs(hi - 0.7634) < 1e-3
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and abs(hi - 0.2775) < 1e-3
    lo, hi = wilson(100, 100)
    assert abs(lo - 0.9630) < 1e-3 and hi == 1.0
    assert wilson(0, 0) == (0.0, 0.0)


def test_new_log_has_current_schema_with_foreign_keys(tmp_path):
    db = tmp_path / "s.db"
    make_session(db)
    with SessionStore(db) as store:
        assert store.pragma("user_version") == SCHEMA_VERSION
        assert store.pragma("foreign_keys") == 1
        assert store.pragma("journal_mode") == "wal"
        assert store.pragma("synchronous") == 2  # FULL
        s = store.session()
        assert (s.sample, s.operator, s.counting) == ("S-42", "ann", "tracked")
        assert s.versions["bundle"] == "tiny_int8.tflite"
        assert store.crop(s.id, 1)[:2] == b"\xff\xd8" and store.cell(s.id, 1).observations == 3
        with pytest.raises(Refusal, match="no cell 999"):  # a decision on a cell that does not exist
            store.decide(s.id, 999, "ig", "ann", 0)


def test_report_shows_differential_intervals_gallery_and_banner(tmp_path):
    db = tmp_path / "s.db"
    make_session(db, unvalidated=True)
    out, csv_path = tmp_path / "r" / "report.html", tmp_path / "cells.csv"
    r = run_cli("report", db, "--out", out, "--csv", csv_path)
    assert r.exit_code == 0, r.output
    assert f"report: {out}" in r.stdout and "UNVALIDATED" in r.stdout
    page = out.read_text()
    assert "id='trust-warning'" in page and "UNVALIDATED differential" in page
    # 10 white cells (the platelet is not in the differential): neutrophil 5 = 50.0%, Wilson 23.7-76.3%
    assert "<tr data-label='neutrophil'><td>neutrophil</td><td>5</td><td>50.0%</td>" in page
    assert "23.7-76.3%" in page and "<th id='wbc-machine'>10</th>" in page
    # the three flagged cells inline, and one contact sheet of thumbnails per class counted (5)
    assert page.count("<img alt='cell ") == 3 and page.count("data:image/jpeg;base64,") == 3 + 5
    assert "S-42" in page and "ab" * 32 in page and "tiny_int8.tflite" in page
    assert "src='http" not in page  # self-contained
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == len(CELLS) and rows[0]["final_label"] == "neutrophil" and rows[9]["ood"] == "1"
    assert abs(sum(float(rows[0][f"p_{k}"]) for k in LABELS) - 1) < 1e-3


def test_report_of_empty_session_says_empty(tmp_path):
    db = tmp_path / "s.db"
    make_session(db, cells=[])
    r = run_cli("report", db, "--out", tmp_path / "r.html")
    assert r.exit_code == 0, r.output
    page = (tmp_path / "r.html").read_text()
    assert "id='empty'" in page and "Empty session" in page and "No cell was flagged" in page


@pytest.mark.parametrize("content", [b"just some text\n", b"\x89PNG\r\n\x1a\n" + bytes(200), b""])
def test_report_and_review_of_a_file_that_is_not_a_log_is_one_line_exit_2(tmp_path, content):
    bad = tmp_path / "notes.db"
    bad.write_bytes(content)
    for cmd in (["report", bad, "--out", tmp_path / "r.html"], ["review", bad, "--port", "0"]):
        r = run_cli(*cmd)
        assert r.exit_code == 2, r.output
        assert r.stderr.startswith(f"error: {bad}: not a session log") and r.stderr.count("\n") == 1
        assert "Traceback" not in r.output
    assert bad.read_bytes() == content  # left as it was
    r = run_cli("report", tmp_path / "missing.db")
    assert r.exit_code == 2 and r.stderr == f"error: {tmp_path / 'missing.db'}: no such file\n"
    assert not (tmp_path / "missing.db").exists()
    good = tmp_path / "s.db"
    make_session(good)
    r = run_cli("report", good, "--session", "9", "--out", tmp_path / "r.html")
    assert r.exit_code == 2 and "no session 9 (sessions: 1)" in r.stderr


def test_version_0_log_is_migrated_not_rejected(tmp_path):
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.executescript(SCHEMA_V0)  # what the first release wrote: one cells row per cell per frame
    con.execute(
        "INSERT INTO sessions (id, started, ended, source, mode, model, model_sha256, frames, cells, "
        "end_reason) VALUES (1, 1.0, 2.0, 'fields/', 'field', 'm', 'cd', 2, 2, 'end of folder')"
    )
    for f in range(2):
        con.execute("INSERT INTO frames (session_id, frame_index, timestamp, n_cells) VALUES (1, ?, 1.5, 1)", (f,))
        con.execute(
            "INSERT INTO cells (session_id, frame_id, frame_index, timestamp, x0, y0, x1, y1, label, "
            "confidence, review, model_sha256, probs) VALUES (1, ?, ?, 1.5, 0, 0, 9, 9, 'monocyte', 0.5, 1, "
            "'cd', ?)",
            (f + 1, f, json.dumps({k: 0.5 if k == "monocyte" else 0.0 for k in LABELS})),
        )
    con.commit()
    assert con.execute("PRAGMA user_version").fetchone()[0] == 0
    con.close()

    r = run_cli("report", db, "--out", tmp_path / "r.html")
    assert r.exit_code == 0, r.output
    page = (tmp_path / "r.html").read_text()
    assert "id='legacy'" in page and "<tr data-label='monocyte'><td>monocyte</td><td>2</td>" in page
    with SessionStore(db) as store:
        assert store.pragma("user_version") == SCHEMA_VERSION
        assert [(c.observations, c.reviewed_label, c.version) for c in store.cells(1)] == [(1, None, 0)] * 2
        # and it can be reviewed and appended to like a new log
        store.decide(1, 1, "lymphocyte", "bo", version=0)
    assert tally(load(db).cells)["final"]["lymphocyte"] == 1
    make_session(db)
    assert load(db).session_ids == [1, 2]
    # the file as it was is kept beside it, made by SQLite before the migration
    with SessionStore(tmp_path / "old.sqlite.v0.bak") as old:
        assert old.migrated_from == 0 and len(old.cells(1)) == 2


def test_decide_undo_and_sign_off(tmp_path):
    db = tmp_path / "s.db"
    sid = make_session(db)
    store = SessionStore(db)
    flagged = [c.id for c in load(db).cells if c.review]
    assert len(flagged) == 3
    store.decide(sid, flagged[0], "monocyte", "ann", 0)  # confirm
    store.decide(sid, flagged[1], "neutrophil", "ann", 0)  # eosinophil -> neutrophil
    with pytest.raises(Refusal, match="1 flagged cell"):
        store.sign_off(sid, "ann")
    store.decide(sid, flagged[2], "lymphocyte", "bo", 0)
    store.decide(sid, flagged[2], "monocyte", "bo", 1)
    undone = store.undo(sid, "bo")
    assert (undone.cell_id, undone.reviewed_label, undone.reviewer, undone.version) == (
        flagged[2],
        "lymphocyte",
        "bo",
        3,
    )
    t = tally(load(db).cells)
    assert t["final"]["neutrophil"] == 6 and t["final"]["eosinophil"] == 0 and t["final"]["lymphocyte"] == 4
    assert t["wbc_final"] == 11 and t["wbc_machine"] == 10 and t["flagged_reviewed"] == 3
    signed = store.sign_off(sid, "ann")
    assert signed.signed_by == "ann"
    with pytest.raises(Refusal, match="signed off") as e:
        store.decide(sid, flagged[0], "basophil", "ann", 1)
    assert e.value.status == 409
    page = render(load(db))
    assert "Signed off by ann" in page and "<td class='final'>6</td>" in page
    trail = [(a.action, a.reviewer, a.from_label, a.to_label, a.undoes) for a in store.audit(sid)]
    assert trail == [
        ("confirm", "ann", None, "monocyte", None),
        ("reclassify", "ann", None, "neutrophil", None),
        ("reclassify", "bo", None, "lymphocyte", None),
        ("reclassify", "bo", "lymphocyte", "monocyte", None),
        ("undo", "bo", "monocyte", "lymphocyte", 4),
        ("signoff", "ann", None, None, None),
    ]
    assert "id='audit'" in page and page.count("<tr data-audit=") == 6
    store.close()


def test_two_review_servers_on_one_log_do_not_corrupt_it(tmp_path):
    db = tmp_path / "s.db"
    cells = [("neutrophil", 0.5, True, False)] * 40
    sid = make_session(db, cells=cells)
    servers = [review.make_server(db, sid, port=0, reviewer=f"r{k}").start() for k in range(2)]
    clients = [ReviewClient(s.url) for s in servers]
    errors = []

    def work(k):
        try:
            for cell in range(1 + k, 41, 4):  # four writers, each cell decided twice via both servers
                version = 0
                for c in clients:  # the second decision is made on the version the first left
                    version = c.post("api/decide", {"cell": cell, "label": LABELS[cell % 8], "version": version})[
                        "version"
                    ]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in servers:
        s.stop()
    assert errors == []
    with SessionStore(db) as store:
        assert store.integrity_check() == "ok"
        trail = store.audit(sid)
        for cell in range(1, 41):  # each server signs with its own reviewer
            assert [a.reviewer for a in trail if a.cell_id == cell] == ["r0", "r1"]
        assert {c.id: (c.reviewed_label, c.version) for c in store.cells(sid)} == {
            c: (LABELS[c % 8], 2) for c in range(1, 41)
        }


def test_review_server_killed_right_after_a_decision_keeps_it(tmp_path):
    db = tmp_path / "s.db"
    make_session(db)
    env = dict(__import__("os").environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_bloodcls.cli", "review", str(db), "--port", "0", "--reviewer", "ann"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("review http://127.0.0.1:"), line + proc.stderr.read()
        client = ReviewClient(line.split()[1])
        assert b"review.js" in client.page
        saved = client.post("api/decide", {"cell": 10, "label": "basophil", "version": 0})
        assert saved["reviewed_label"] == "basophil"
        proc.send_signal(signal.SIGKILL)  # at once: no clean shutdown, nothing flushed later
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    with SessionStore(db) as store:
        assert store.integrity_check() == "ok"
        c = store.cell(1, 10)
        assert (c.reviewed_label, c.reviewer) == ("basophil", "ann")


def test_review_api_rejects_bad_requests(tmp_path):
    db = tmp_path / "s.db"
    sid = make_session(db)
    server = review.make_server(db, sid, port=0, reviewer="ann").start()
    client = ReviewClient(server.url)
    try:
        for body, code in [
            ({"cell": 1, "label": "banana", "version": 0}, 400),
            ({"cell": 1, "label": "ig", "version": 0, "reviewer": "mallory"}, 400),  # who: the server
            ({"cell": 1, "label": "ig"}, 400),  # no version
            ({"cell": True, "label": "ig", "version": 0}, 400),
            ({"cell": "1", "label": "ig", "version": 0}, 400),
            ({"cell": 1.9, "label": "ig", "version": 0}, 400),
            ({"cell": 1, "label": "ig", "version": 7}, 409),  # stale
            ({"cell": 999, "label": "ig", "version": 0}, 404),
        ]:
            with pytest.raises(urllib.error.HTTPError) as e:
                client.post("api/decide", body)
            assert e.value.code == code, body
            assert json.loads(e.value.read())["error"]
        # a cross-site form post (no JSON content type) is refused
        with pytest.raises(urllib.error.HTTPError) as e:
            client.post("api/decide", b"cell=1&label=ig", {"Content-Type": "text/plain"})
        assert e.value.code == 415
        state = client.json("api/state")
        assert [c["id"] for c in state["cells"]] == [9, 10, 11] and state["tally"]["wbc_machine"] == 10
        state = client.json("api/state?all=1")
        assert len(state["cells"]) == len(CELLS)
        assert client.get("crop/9")[:2] == b"\xff\xd8"
    finally:
        server.stop()

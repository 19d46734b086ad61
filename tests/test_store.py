"""The session store (edge_runtime/lab/store.py): the one owner of the log's SQL; schema versions
(newer refused untouched, older backed up and migrated), optimistic concurrency of decisions, the
append-only audit trail, amendments, typed records."""

from __future__ import annotations

import csv
import re
import sqlite3  # only to play another program on the file, or to write an old or future log
from pathlib import Path

import pytest
from cell_images import cell_folder
from session_fixtures import REPO, make_session, run_cli

from edge_bloodcls.edge_runtime.lab.report import load, render
from edge_bloodcls.edge_runtime.lab.store import (
    MIGRATIONS,
    SCHEMA_V0,
    SCHEMA_VERSION,
    AuditEntry,
    Cell,
    Conflict,
    Refusal,
    Session,
    SessionFileError,
    SessionStore,
    StaleCell,
)

SQL = re.compile(
    r"sqlite3\.connect|\b(SELECT|INSERT\s+INTO|DELETE\s+FROM|CREATE\s+(TABLE|INDEX|TRIGGER)|PRAGMA)\b"
    r"|\bUPDATE\s+\w+\s+SET\b"
)


def test_sql_lives_only_in_the_store():
    """Every statement and every sqlite3.connect of the toolkit is in store.py."""
    found = []
    for top in ("edge_runtime", "train", "convert", "benchmarks", "app", "scripts"):
        for f in sorted((REPO / top).rglob("*")):
            if f.suffix not in (".py", ".html", ".sh") or f.name == "store.py" and f.parent.name == "lab":
                continue
            for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if SQL.search(line):
                    found.append(f"{f.relative_to(REPO)}:{n}: {line.strip()}")
    assert found == []
    assert SQL.search((REPO / "edge_runtime" / "lab" / "store.py").read_text())  # the pattern does find SQL


def test_records_are_typed(tmp_path):
    db = tmp_path / "s.db"
    sid = make_session(db)
    with SessionStore(db) as store:
        d = store.load(sid)
    assert isinstance(d.session, Session) and all(isinstance(c, Cell) for c in d.cells)
    assert d.session.versions["bundle"] == "tiny_int8.tflite" and isinstance(d.cells[0].probs, dict)
    assert d.cells[0].crop[:2] == b"\xff\xd8" and d.cells[0].has_crop and d.cells[0].version == 0


def _future_log(path: Path, version: int = 99) -> None:
    make_session(path)
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {version}")
    con.execute("PRAGMA journal_mode = DELETE")  # one file, so that "untouched" is its bytes
    con.close()


def test_log_from_a_newer_version_is_refused_untouched(tmp_path, bundles):
    db = tmp_path / "future.db"
    _future_log(db)
    cells = cell_folder(tmp_path / "cells", [0, 1])
    before, mtime = db.read_bytes(), db.stat().st_mtime_ns
    line = (
        f"error: {db}: written by a newer edge-bloodcls, version 99: upgrade "
        f"(this one reads versions up to {SCHEMA_VERSION})\n"
    )
    for args in (
        ["report", db, "--out", tmp_path / "r.html"],
        ["review", db, "--port", "0"],
        ["capture", "--camera", cells, "--mode", "cell", "--db", db, "--no-preview", "--model", bundles["float32"]],
    ):
        r = run_cli(*args)
        assert r.exit_code == 2, r.output
        assert r.stderr.splitlines()[-1] + "\n" == line and "Traceback" not in r.output
        assert db.read_bytes() == before and db.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("future")) == ["future.db"]
    with pytest.raises(SessionFileError, match="version 99: upgrade"):
        SessionStore(db)


def test_version_1_log_is_backed_up_and_migrated_with_its_decisions(tmp_path):
    """A log of the previous release (reviews table, undone_at set in place) keeps its decisions:
    they become audit rows, undos included, and the cells' versions count them."""
    db = tmp_path / "v1.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.executescript(SCHEMA_V0 + MIGRATIONS[0])
    con.execute(
        "INSERT INTO sessions (id, started, counting, signed_by, signed_at) VALUES (1, 1.0, 'tracked', 'ann', 9.0)"
    )
    con.execute("INSERT INTO frames (session_id, frame_index, timestamp, n_cells) VALUES (1, 0, 1.5, 1)")
    for cid in (1, 2):
        con.execute(
            "INSERT INTO cells (id, session_id, frame_id, frame_index, timestamp, label, confidence, review, "
            "model_sha256, probs) VALUES (?, 1, 1, 0, 1.5, 'monocyte', 0.5, 1, 'cd', '{}')",
            (cid,),
        )
    con.execute(
        "INSERT INTO reviews (session_id, cell_id, action, label, reviewer, at) "
        "VALUES (1, 1, 'reclassify', 'lymphocyte', 'ann', 2.0)"
    )
    con.execute(
        "INSERT INTO reviews (session_id, cell_id, action, label, reviewer, at, undone_at) "
        "VALUES (1, 2, 'confirm', 'monocyte', 'bo', 3.0, 4.0)"
    )
    con.execute("UPDATE cells SET reviewed_label = 'lymphocyte', reviewer = 'ann', reviewed_at = 2.0 WHERE id = 1")
    con.execute("PRAGMA user_version = 1")
    con.close()
    before = db.read_bytes()

    with SessionStore(db) as store:
        assert store.migrated_from == 1 and store.backup == tmp_path / "v1.db.v1.bak"
        assert store.pragma("user_version") == SCHEMA_VERSION
        trail = [(a.action, a.cell_id, a.to_label, a.reviewer, a.undoes) for a in store.audit(1)]
        assert trail == [
            ("reclassify", 1, "lymphocyte", "ann", None),
            ("confirm", 2, "monocyte", "bo", None),
            ("undo", 2, None, "?", 2),
            ("signoff", None, None, "ann", None),
        ]
        assert [c.version for c in store.cells(1)] == [1, 2]
    # the file as it was: every page the same; of the 100-byte header only the journal mode (WAL
    # now) and the change counters differ
    bak = (tmp_path / "v1.db.v1.bak").read_bytes()
    assert len(bak) == len(before) and bak[100:] == before[100:]
    with SessionStore(db) as store:  # opened again: nothing more to do
        assert store.migrated_from == SCHEMA_VERSION and store.backup is None


def test_a_file_that_is_not_a_log_is_asked_of_sqlite_and_left_as_it_was(tmp_path):
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE notes (t TEXT)")
    con.commit()
    con.close()
    before = other.read_bytes()
    with pytest.raises(SessionFileError, match="without a sessions table"):
        SessionStore(other)
    with pytest.raises(SessionFileError, match="without a sessions table"):
        SessionStore(other, create=True)  # capture will not write into someone else's database
    assert other.read_bytes() == before
    text = tmp_path / "t.db"
    text.write_text("SQLite format 3 is what this line says, it is not one\n" * 3)
    with pytest.raises(SessionFileError, match="not an SQLite database"):
        SessionStore(text)


def test_two_tabs_on_one_cell_the_second_is_refused_with_who(tmp_path):
    db = tmp_path / "s.db"
    sid = make_session(db)
    a, b = SessionStore(db), SessionStore(db)  # two servers, two connections
    seen_by_a = a.cell(sid, 9).version
    seen_by_b = b.cell(sid, 9).version
    a.decide(sid, 9, "monocyte", "ann", seen_by_a)
    with pytest.raises(StaleCell) as e:
        b.decide(sid, 9, "eosinophil", "bo", seen_by_b)
    assert e.value.status == 409 and "ann set it to monocyte" in str(e.value)
    assert e.value.cell.reviewed_label == "monocyte" and e.value.cell.version == 1
    b.decide(sid, 9, "eosinophil", "bo", e.value.cell.version)  # on the cell as it now is: taken
    c = a.cell(sid, 9)
    assert (c.reviewed_label, c.reviewer, c.version) == ("eosinophil", "bo", 2)
    # ann's undo would take back a decision bo has since replaced: refused, nothing changes
    with pytest.raises(StaleCell, match="changed since your decision"):
        a.undo(sid, "ann")
    assert [x.action for x in a.audit(sid)] == ["confirm", "reclassify"]
    with pytest.raises(Conflict, match="nothing of cy's to undo"):
        a.undo(sid, "cy")
    a.close()
    b.close()


def test_audit_trail_is_append_only(tmp_path):
    db = tmp_path / "s.db"
    sid = make_session(db)
    with SessionStore(db) as store:
        store.decide(sid, 9, "monocyte", "ann", 0)
    con = sqlite3.connect(db)  # someone with a sqlite3 shell
    for stmt in ("UPDATE audit SET reviewer = 'mallory'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            con.execute(stmt)
    con.close()
    with SessionStore(db) as store:
        assert [(a.reviewer, a.to_label) for a in store.audit(sid)] == [("ann", "monocyte")]


def test_amendment_of_a_signed_session_needs_a_reason_and_is_in_the_trail(tmp_path):
    db = tmp_path / "s.db"
    sid = make_session(db)
    store = SessionStore(db)
    for cid in (9, 10, 11):
        store.decide(sid, cid, "monocyte", "ann", 0)
    with pytest.raises(Conflict, match="not signed off"):
        store.amend(sid, 9, "lymphocyte", "ann", 1, "typo")
    store.sign_off(sid, "ann")
    with pytest.raises(Refusal, match="needs a reason"):
        store.amend(sid, 9, "lymphocyte", "bo", 1, "  ")
    with pytest.raises(Conflict, match="signed off"):
        store.undo(sid, "ann")
    d = store.amend(sid, 9, "lymphocyte", "bo", 1, "second look at the nucleus")
    assert (d.action, d.reviewed_label, d.version) == ("amend", "lymphocyte", 2)
    store.close()
    last = load(db).audit[-1]
    assert isinstance(last, AuditEntry)
    assert (last.action, last.reviewer, last.from_label, last.to_label, last.reason) == (
        "amend",
        "bo",
        "monocyte",
        "lymphocyte",
        "second look at the nucleus",
    )
    page = render(load(db))
    assert "Amended 1 time(s)" in page and "second look at the nucleus" in page
    out, cells_csv, trail_csv = tmp_path / "r.html", tmp_path / "c.csv", tmp_path / "t.csv"
    r = run_cli("report", db, "--out", out, "--csv", cells_csv, "--trail", trail_csv)
    assert r.exit_code == 0, r.output
    rows = {int(x["cell_id"]): x for x in csv.DictReader(cells_csv.open())}
    assert rows[9]["final_label"] == "lymphocyte" and rows[9]["version"] == "2"
    assert "ann confirm -->monocyte" in rows[9]["trail"]
    assert "bo amend monocyte->lymphocyte (second look at the nucleus)" in rows[9]["trail"]
    trail = list(csv.DictReader(trail_csv.open()))
    assert [t["action"] for t in trail] == ["confirm", "reclassify", "reclassify", "signoff", "amend"]
    assert trail[-1]["reason"] == "second look at the nucleus" and trail[-1]["cell_version"] == "2"

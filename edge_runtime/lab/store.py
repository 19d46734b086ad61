"""The session log's one owner: every SQL statement and every SQLite connection of the toolkit.

Capture (through session.SessionLog), the review server, the report, adapt's reader and the tests
go through SessionStore; nothing else opens the file, by SQLite or otherwise. Why it matters: a
process that open()s and close()s the database file with anything but SQLite drops every POSIX
lock SQLite holds on it in that process (SQLite's "How To Corrupt An SQLite Database File", 2.2),
so whether a file is a session log is asked of SQLite itself.

One store is one connection (WAL, busy timeout, synchronous=FULL), shared by the threads of a
process under a lock; every write is one short explicit transaction (BEGIN IMMEDIATE ... COMMIT).

Schema versions (PRAGMA user_version): 0 is the first release's three tables; 1 adds counted cells
with crops, review columns and sign-off; 2 adds each cell's version (optimistic concurrency of
decisions) and the `audit` table: decisions, undos, sign-offs and amendments as append-only rows
(triggers refuse UPDATE and DELETE). Signed versions need no table of their own: the k-th
'signoff' row of a session is its version k, and the labels each version signed are read back
from the trail (report_adapt.py). An older file is backed up (SQLite's backup API) and migrated
in one transaction; a newer one is refused untouched.

Records cross the store's boundary as dataclasses (records.py: Session, Frame, Cell, AuditEntry, Decision).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..core.spec import DIFFERENTIAL_LABELS, REVIEW_LABELS
from .dbfaults import (
    LOCK_RETRY_BACKOFF,
    SessionFileError,
    _check_writable,
    _locked,
    _p,
    busy_timeout_s,
    db_reason,
    text,
)
from .records import (  # noqa: F401
    AuditEntry,
    Cell,
    CellRecord,
    Conflict,
    Decision,
    Frame,
    NewerLogError,
    NotFound,
    Refusal,
    Session,
    SessionData,
    SignCheck,
    SignOff,
    StaleCell,
    _cell,
    _record,
    _session,
)

SCHEMA_VERSION = 2

SCHEMA_V0 = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    started REAL NOT NULL,
    ended REAL,
    source TEXT, mode TEXT,
    model TEXT, model_sha256 TEXT, interpreter TEXT, device TEXT, threads INTEGER,
    review_threshold REAL,
    frames INTEGER DEFAULT 0, cells INTEGER DEFAULT 0,
    end_reason TEXT,
    summary TEXT
);
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    frame_index INTEGER NOT NULL,
    timestamp REAL NOT NULL,
    name TEXT, width INTEGER, height INTEGER,
    n_cells INTEGER NOT NULL,
    timing TEXT,
    UNIQUE (session_id, frame_index)
);
CREATE TABLE IF NOT EXISTS cells (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    frame_id INTEGER NOT NULL REFERENCES frames(id),
    frame_index INTEGER NOT NULL,
    timestamp REAL NOT NULL,
    x0 INTEGER, y0 INTEGER, x1 INTEGER, y1 INTEGER,
    label TEXT NOT NULL, confidence REAL NOT NULL, review INTEGER NOT NULL,
    model_sha256 TEXT NOT NULL,
    probs TEXT NOT NULL,
    crop_path TEXT
);
CREATE INDEX IF NOT EXISTS cells_session ON cells (session_id, review);
"""

# Index i takes a file from version i to i + 1. Additive only: old rows stay valid.
MIGRATIONS = [
    """
    ALTER TABLE sessions ADD COLUMN sample TEXT;
    ALTER TABLE sessions ADD COLUMN operator TEXT;
    ALTER TABLE sessions ADD COLUMN versions TEXT;          -- JSON: runtime, python, numpy, opencv, bundle
    ALTER TABLE sessions ADD COLUMN count_target INTEGER;   -- --count N (NULL: no target)
    -- 'tracked' (v1 field mode), 'per-frame' (v1 cell mode), NULL: written by a v0 runtime, which
    -- logged a cell once per frame it appeared in
    ALTER TABLE sessions ADD COLUMN counting TEXT;
    ALTER TABLE sessions ADD COLUMN unvalidated INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN trust TEXT;             -- JSON: trust.SessionGate.to_json()
    ALTER TABLE sessions ADD COLUMN signed_by TEXT;
    ALTER TABLE sessions ADD COLUMN signed_at REAL;
    ALTER TABLE cells ADD COLUMN observations INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE cells ADD COLUMN first_frame INTEGER;
    ALTER TABLE cells ADD COLUMN last_frame INTEGER;
    ALTER TABLE cells ADD COLUMN crop BLOB;                 -- JPEG bytes of the best observation
    ALTER TABLE cells ADD COLUMN ood_score REAL;
    ALTER TABLE cells ADD COLUMN ood INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE cells ADD COLUMN review_reason TEXT;
    ALTER TABLE cells ADD COLUMN reviewed_label TEXT;
    ALTER TABLE cells ADD COLUMN reviewer TEXT;
    ALTER TABLE cells ADD COLUMN reviewed_at REAL;
    CREATE TABLE reviews (
        id INTEGER PRIMARY KEY,
        session_id INTEGER NOT NULL REFERENCES sessions(id),
        cell_id INTEGER NOT NULL REFERENCES cells(id),
        action TEXT NOT NULL,
        label TEXT NOT NULL,
        previous_label TEXT, previous_reviewer TEXT, previous_at REAL,
        reviewer TEXT, at REAL NOT NULL,
        undone_at REAL
    );
    CREATE INDEX reviews_session ON reviews (session_id, id);
    """,
    # v2: version 1 kept decisions in `reviews`, whose undone_at was set in place. From v2 on the
    # trail is `audit` (reviews is kept as it was, no longer written): one row per decision,
    # undo, sign-off or amendment, never updated or deleted.
    """
    ALTER TABLE cells ADD COLUMN version INTEGER NOT NULL DEFAULT 0;  -- +1 at each change of its review
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        session_id INTEGER NOT NULL REFERENCES sessions(id),
        cell_id INTEGER REFERENCES cells(id),             -- NULL for a sign-off
        action TEXT NOT NULL CHECK (action IN ('confirm', 'reclassify', 'undo', 'signoff', 'amend')),
        from_label TEXT, to_label TEXT,                   -- the reviewed label before and after
        prev_reviewer TEXT, prev_at REAL,                 -- who had decided before (what undo restores)
        reviewer TEXT NOT NULL, at REAL NOT NULL,
        reason TEXT,                                      -- why (amendments of a signed session)
        cell_version INTEGER,                             -- the cell's version after this row
        undoes INTEGER REFERENCES audit(id)               -- the row an undo takes back
    );
    CREATE INDEX audit_session ON audit (session_id, id);
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
    INSERT INTO audit (session_id, cell_id, action, from_label, to_label, prev_reviewer, prev_at, reviewer, at)
        SELECT session_id, cell_id, action, previous_label, label, previous_reviewer, previous_at,
               COALESCE(reviewer, '?'), at FROM reviews ORDER BY id;
    INSERT INTO audit (session_id, cell_id, action, from_label, to_label, reviewer, at, undoes)
        SELECT r.session_id, r.cell_id, 'undo', r.label, r.previous_label, '?', r.undone_at, a.id
        FROM reviews r JOIN audit a ON a.session_id = r.session_id AND a.cell_id = r.cell_id AND a.at = r.at
        WHERE r.undone_at IS NOT NULL ORDER BY r.undone_at;
    INSERT INTO audit (session_id, action, reviewer, at)
        SELECT id, 'signoff', signed_by, COALESCE(signed_at, 0) FROM sessions WHERE signed_by IS NOT NULL;
    UPDATE cells SET version = (SELECT COUNT(*) FROM audit WHERE audit.cell_id = cells.id);
    """,
]

# What a session log must hold before the store writes anything to it (a file with other tables
# is someone else's database).
_REQUIRED_TABLE = "sessions"


# ---------------------------------------------------------------- the store


class SessionStore:
    """An open, checked, migrated session log. create=False (report, review, adapt): the file must
    exist and be a session log, else SessionFileError. Thread-safe: one connection per store,
    used under a lock (the review server shares one store between its request threads)."""

    def __init__(self, path, create: bool = False):
        self.path = Path(path)
        self._lock = threading.RLock()
        self.con = _open(self.path, create)
        self.backup: Path | None = None
        try:
            self.migrated_from, self.backup = _migrate(self.con, self.path)
        except sqlite3.DatabaseError as e:
            self.con.close()
            raise SessionFileError(f"{_p(self.path)}: {_reason(e)}") from None
        except BaseException:
            self.con.close()
            raise

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            try:
                self.con.close()
            except sqlite3.Error:  # closing a log that failed: nothing more to save
                pass

    # -------------------------------------------------------- plumbing

    @contextmanager
    def _tx(self, retry: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front, so that two writers queue on
        the busy timeout instead of failing half-way with 'database is locked'. A lock still held
        after the busy timeout is asked for again after LOCK_RETRY_BACKOFF; then SessionFileError."""
        with self._lock, self._errors():
            _begin(self.con, retry)
            try:
                yield self.con
            except BaseException:
                try:
                    self.con.execute("ROLLBACK")
                except sqlite3.Error:  # the failed statement may have ended the transaction already
                    pass
                raise
            self.con.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            yield self.con

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise SessionFileError(f"{_p(self.path)}: {_reason(e)}") from None

    # -------------------------------------------------------- capture

    def start_session(
        self,
        *,
        source: str,
        mode: str,
        model: dict,
        review_threshold: float,
        sample: str | None = None,
        operator: str | None = None,
        count_target: int | None = None,
        counting: str = "tracked",
        versions: dict | None = None,
    ) -> int:
        with self._tx() as con:
            cur = con.execute(
                "INSERT INTO sessions (started, source, mode, model, model_sha256, interpreter, device, threads, "
                "review_threshold, sample, operator, count_target, counting, versions) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    time.time(),
                    text(source),
                    mode,
                    text(model.get("model")),
                    model.get("model_sha256", ""),
                    model.get("interpreter"),
                    model.get("device"),
                    model.get("threads"),
                    review_threshold,
                    text(sample),
                    text(operator),
                    count_target,
                    counting,
                    json.dumps(versions or {}),
                ),
            )
        assert cur.lastrowid is not None  # set by every INSERT
        return cur.lastrowid

    def log_frame(
        self,
        sid: int,
        model_sha256: str,
        frame_index: int,
        timestamp: float,
        name: str,
        shape,
        n_detections: int,
        cells: list[CellRecord],
        timing: dict | None = None,
    ) -> list[int]:
        """The frame and the cells counted at it, in one transaction, committed before returning."""
        with self._tx() as con:
            con.execute(
                "INSERT INTO frames (session_id, frame_index, timestamp, name, width, height, n_cells, timing) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sid,
                    frame_index,
                    timestamp,
                    text(name),
                    int(shape[1]),
                    int(shape[0]),
                    n_detections,
                    json.dumps(timing) if timing else None,
                ),
            )
            ids = self._insert_cells(con, sid, model_sha256, cells, frame_index, timestamp)
            con.execute("UPDATE sessions SET frames = frames + 1 WHERE id = ?", (sid,))
        return ids

    def log_cells(self, sid: int, model_sha256: str, cells: list[CellRecord]) -> list[int]:
        """Cells counted with no new frame (the tracks still open when the session ends)."""
        with self._tx() as con:
            return self._insert_cells(con, sid, model_sha256, cells, None, time.time())

    @staticmethod
    def _insert_cells(con, sid, model_sha256, cells: list[CellRecord], frame_index, timestamp) -> list[int]:
        ids = []
        for c in cells:
            fi = c.frame_index if c.frame_index is not None else frame_index
            row = con.execute("SELECT id FROM frames WHERE session_id = ? AND frame_index = ?", (sid, fi)).fetchone()
            cur = con.execute(
                "INSERT INTO cells (session_id, frame_id, frame_index, timestamp, x0, y0, x1, y1, label, confidence, "
                "review, model_sha256, probs, crop_path, crop, observations, first_frame, last_frame, ood_score, "
                "ood, review_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sid,
                    row[0],
                    fi,
                    c.timestamp or timestamp,
                    *map(int, c.box),
                    c.label,
                    float(c.confidence),
                    int(c.review),
                    model_sha256,
                    json.dumps({k: round(float(v), 6) for k, v in c.probs.items()}),
                    text(c.crop_path),
                    c.crop_jpeg,
                    c.observations,
                    c.first_frame if c.first_frame is not None else fi,
                    c.last_frame if c.last_frame is not None else fi,
                    c.ood_score,
                    int(c.ood),
                    text(c.review_reason),
                ),
            )
            assert cur.lastrowid is not None  # set by every INSERT
            ids.append(cur.lastrowid)
        if cells:
            con.execute("UPDATE sessions SET cells = cells + ? WHERE id = ?", (len(cells), sid))
        return ids

    def set_trust(self, sid: int, gate: dict) -> None:
        with self._tx() as con:
            con.execute(
                "UPDATE sessions SET unvalidated = ?, trust = ? WHERE id = ?",
                (int(bool(gate.get("tripped"))), json.dumps(gate), sid),
            )

    def finish(self, sid: int, end_reason: str, summary: dict, retry: bool = True) -> None:
        trust = summary.get("trust") or {}
        with self._tx(retry=retry) as con:
            con.execute(
                "UPDATE sessions SET ended = ?, end_reason = ?, summary = ?, unvalidated = ?, trust = ? WHERE id = ?",
                (
                    time.time(),
                    text(end_reason),
                    json.dumps(summary),
                    int(bool(trust.get("tripped"))),
                    json.dumps(trust) if trust else None,
                    sid,
                ),
            )

    # -------------------------------------------------------- reading

    def session_ids(self) -> list[int]:
        with self._read() as con:
            return [r[0] for r in con.execute("SELECT id FROM sessions ORDER BY id")]

    def session(self, sid: int | None = None) -> Session:
        """The session sid (the last one by default); SessionFileError when there is none."""
        ids = self.session_ids()
        if not ids:
            raise SessionFileError(f"{_p(self.path)}: the log holds no session")
        sid = ids[-1] if sid is None else sid
        with self._read() as con:
            row = con.execute("SELECT * FROM sessions WHERE id = ?", (sid,)).fetchone()
        if row is None:
            raise SessionFileError(f"{_p(self.path)}: no session {sid} (sessions: {_ranges(ids)})")
        return _session(row)

    def cells(self, sid: int, crops: bool = False) -> list[Cell]:
        with self._read() as con:
            return [
                _cell(r)
                for r in con.execute(
                    f"SELECT {_cell_columns(crops)} FROM cells WHERE session_id = ? ORDER BY id", (sid,)
                )
            ]

    def cell(self, sid: int, cell_id: int) -> Cell:
        with self._read() as con:
            return self._cell(con, sid, cell_id)

    @staticmethod
    def _cell(con, sid: int, cell_id: int) -> Cell:
        row = con.execute(
            f"SELECT {_cell_columns(False)} FROM cells WHERE id = ? AND session_id = ?", (cell_id, sid)
        ).fetchone()
        if row is None:
            raise NotFound(f"no cell {cell_id} in session {sid}")
        return _cell(row)

    def frames(self, sid: int) -> list[Frame]:
        with self._read() as con:
            return [
                _record(Frame, r)
                for r in con.execute("SELECT * FROM frames WHERE session_id = ? ORDER BY frame_index", (sid,))
            ]

    def crop(self, sid: int, cell_id: int) -> bytes | None:
        with self._read() as con:
            r = con.execute("SELECT crop FROM cells WHERE id = ? AND session_id = ?", (cell_id, sid)).fetchone()
        return bytes(r[0]) if r and r[0] is not None else None

    def audit(self, sid: int) -> list[AuditEntry]:
        with self._read() as con:
            return [
                _record(AuditEntry, r)
                for r in con.execute("SELECT * FROM audit WHERE session_id = ? ORDER BY id", (sid,))
            ]

    def load(self, sid: int | None = None, crops: bool = True, frames: bool = False) -> SessionData:
        """The session (the last one by default) with its cells (crops unless crops=False) and its
        audit trail, read in one snapshot."""
        with self._lock:  # one read transaction: cells and trail agree with each other
            with self._errors():
                self.con.execute("BEGIN")
            try:
                s = self.session(sid)
                return SessionData(
                    str(self.path),
                    s,
                    self.cells(s.id, crops),
                    self.session_ids(),
                    self.audit(s.id),
                    self.frames(s.id) if frames else [],
                )
            finally:
                with self._errors():
                    self.con.execute("COMMIT")

    def reviewed_crops(self) -> list[tuple[int, str, bytes | None]]:
        """(cell id, reviewed label, crop JPEG) of every reviewed cell of every session (adapt)."""
        with self._read() as con:
            return [
                (r[0], r[1], bytes(r[2]) if r[2] is not None else None)
                for r in con.execute(
                    "SELECT id, reviewed_label, crop FROM cells WHERE reviewed_label IS NOT NULL ORDER BY id"
                )
            ]

    def reviewed_sources(self) -> list[str]:
        """The frame (field image) names and the saved crop files of the reviewed cells: adapt
        leaves these fields and crops out of its unlabelled ones when the log validates it."""
        with self._read() as con:
            return [
                r[0]
                for r in con.execute(
                    "SELECT f.name FROM cells c JOIN frames f ON f.id = c.frame_id "
                    "WHERE c.reviewed_label IS NOT NULL AND f.name IS NOT NULL "
                    "UNION SELECT crop_path FROM cells WHERE reviewed_label IS NOT NULL AND crop_path IS NOT NULL "
                    "ORDER BY 1"
                )
            ]

    def integrity_check(self) -> str:
        with self._read() as con:
            return "; ".join(r[0] for r in con.execute("PRAGMA integrity_check"))

    def pragma(self, name: str) -> Any:
        """journal_mode, user_version, foreign_keys, synchronous (for checks and tests)."""
        if name not in ("journal_mode", "user_version", "foreign_keys", "synchronous", "busy_timeout"):
            raise ValueError(name)
        with self._read() as con:
            return con.execute(f"PRAGMA {name}").fetchone()[0]

    # -------------------------------------------------------- review

    def decide(self, sid: int, cell_id: int, label: str, reviewer: str, version: int) -> Decision:
        """Confirm (label = the analyser's) or reclassify a cell, made on `version` of it: refused
        (StaleCell) when the cell has changed since; a signed session refuses (amend instead)."""
        _check_label(label)
        with self._tx() as con:
            self._open_session(con, sid)
            c = self._fresh_cell(con, sid, cell_id, version)
            return self._change(con, c, "confirm" if label == c.label else "reclassify", label, reviewer, None)

    def amend(self, sid: int, cell_id: int, label: str, reviewer: str, version: int, reason: str) -> Decision:
        """Change a decision of a signed session, with a reason: the signed versions stay as they
        were (the trail holds them), the amendment and its reason join the trail, and sign_off()
        then signs the amended differential as the next version."""
        _check_label(label)
        if not reason.strip():
            raise Refusal("an amendment of a signed session needs a reason")
        with self._tx() as con:
            s = self._session_row(con, sid)
            if not s["signed_by"]:
                raise Conflict("the session is not signed off: decide, do not amend")
            c = self._fresh_cell(con, sid, cell_id, version)
            return self._change(con, c, "amend", label, reviewer, reason.strip())

    def undo(self, sid: int, reviewer: str) -> Decision:
        """Take back this reviewer's last decision not yet taken back, if the cell still shows it
        (else Conflict: someone changed it since). The undo is a row of its own."""
        with self._tx() as con:
            self._open_session(con, sid)
            r = con.execute(
                "SELECT * FROM audit a WHERE session_id = ? AND reviewer = ? AND action IN ('confirm', 'reclassify') "
                "AND NOT EXISTS (SELECT 1 FROM audit u WHERE u.undoes = a.id) ORDER BY id DESC LIMIT 1",
                (sid, reviewer),
            ).fetchone()
            if r is None:
                raise Conflict(f"nothing of {reviewer}'s to undo")
            entry = _record(AuditEntry, r)
            assert entry.cell_id is not None  # decisions are about a cell
            c = self._cell(con, sid, entry.cell_id)
            if (c.reviewed_label, c.reviewer, c.reviewed_at) != (entry.to_label, entry.reviewer, entry.at):
                raise StaleCell(_changed(c, f"cell {c.id} was changed since your decision"), c)
            return self._change(con, c, "undo", entry.from_label, reviewer, None, restore=entry)

    def sign_check(self, sid: int) -> SignCheck:
        """The session against the sign-off rules, as it is now."""
        with self._read() as con:
            return self._sign_check(con, sid)

    @staticmethod
    def _sign_check(con, sid: int) -> SignCheck:
        s = con.execute("SELECT signed_by, unvalidated, count_target FROM sessions WHERE id = ?", (sid,)).fetchone()
        if s is None:
            raise NotFound(f"no session {sid}")
        signs = con.execute(
            "SELECT COUNT(*), MAX(id) FROM audit WHERE session_id = ? AND action = 'signoff'", (sid,)
        ).fetchone()
        pending = (
            con.execute(
                "SELECT COUNT(*) FROM audit WHERE session_id = ? AND action = 'amend' AND id > ?", (sid, signs[1] or 0)
            ).fetchone()[0]
            if signs[0]
            else 0
        )
        marks = ", ".join("?" * len(DIFFERENTIAL_LABELS))
        n = con.execute(
            "SELECT COUNT(*), COALESCE(SUM(review), 0), COALESCE(SUM(review = 1 AND reviewed_label IS NULL), 0), "
            "COALESCE(SUM(reviewed_label IS NULL), 0), "
            f"COALESCE(SUM(COALESCE(reviewed_label, label) IN ({marks})), 0) FROM cells WHERE session_id = ?",
            (*DIFFERENTIAL_LABELS, sid),
        ).fetchone()
        return SignCheck(
            signs[0], s["signed_by"], pending, n[0], n[1], n[2], n[3], bool(s["unvalidated"]), n[4], s["count_target"]
        )

    def sign_off(self, sid: int, reviewer: str, short_count: bool = False) -> SignOff:
        """Sign the session's differential as it now is, as version 1, or a signed session's
        amendments as the next version. Refused (Conflict, every reason at once) unless: every
        flagged cell is reviewed; an UNVALIDATED session has every cell reviewed; a short count
        (white cells after review below the session's target) is acknowledged (short_count)."""
        with self._tx() as con:
            check = self._sign_check(con, sid)
            blockers = check.blockers(short_count)
            if blockers:
                raise Conflict("; ".join(blockers))
            now = time.time()
            ack = f"short count acknowledged: {check.wbc} of {check.count_target} white cells" if check.short else None
            cur = con.execute(
                "INSERT INTO audit (session_id, action, reviewer, at, reason) VALUES (?, 'signoff', ?, ?, ?)",
                (sid, reviewer, now, ack),
            )
            con.execute("UPDATE sessions SET signed_by = ?, signed_at = ? WHERE id = ?", (reviewer, now, sid))
        assert cur.lastrowid is not None
        return SignOff(cur.lastrowid, reviewer, now, check.next_version, check.short)

    def _session_row(self, con, sid: int) -> sqlite3.Row:
        s = con.execute("SELECT signed_by, signed_at FROM sessions WHERE id = ?", (sid,)).fetchone()
        if s is None:
            raise NotFound(f"no session {sid}")
        return s

    def _open_session(self, con, sid: int) -> None:
        s = self._session_row(con, sid)
        if s["signed_by"]:
            # a signed differential is a record: a change is an amendment with a reason
            raise Conflict(f"signed off by {s['signed_by']}: the session is closed (amend with a reason)")

    def _fresh_cell(self, con, sid: int, cell_id: int, version: int) -> Cell:
        c = self._cell(con, sid, cell_id)
        if c.version != version:
            raise StaleCell(_changed(c, f"cell {c.id} was changed while you looked at it"), c)
        return c

    @staticmethod
    def _change(
        con,
        c: Cell,
        action: str,
        label: str | None,
        reviewer: str,
        reason: str | None,
        restore: AuditEntry | None = None,
    ) -> Decision:
        now = time.time()
        version = c.version + 1
        new: tuple[str | None, str | None, float | None]  # the cell's review after the change
        if restore is None:
            new = (label, reviewer, now)
            cur = con.execute(
                "INSERT INTO audit (session_id, cell_id, action, from_label, to_label, prev_reviewer, prev_at, "
                "reviewer, at, reason, cell_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    c.session_id,
                    c.id,
                    action,
                    c.reviewed_label,
                    label,
                    c.reviewer,
                    c.reviewed_at,
                    reviewer,
                    now,
                    reason,
                    version,
                ),
            )
        else:
            new = (restore.from_label, restore.prev_reviewer, restore.prev_at)
            cur = con.execute(
                "INSERT INTO audit (session_id, cell_id, action, from_label, to_label, prev_reviewer, prev_at, "
                "reviewer, at, cell_version, undoes) VALUES (?, ?, 'undo', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    c.session_id,
                    c.id,
                    c.reviewed_label,
                    restore.from_label,
                    c.reviewer,
                    c.reviewed_at,
                    reviewer,
                    now,
                    version,
                    restore.id,
                ),
            )
        con.execute(
            "UPDATE cells SET reviewed_label = ?, reviewer = ?, reviewed_at = ?, version = ? WHERE id = ?",
            (*new, version, c.id),
        )
        assert cur.lastrowid is not None
        return Decision(cur.lastrowid, c.id, c.label, new[0], new[1], now, version, action)


def _check_label(label: str) -> None:
    if label not in REVIEW_LABELS:
        raise Refusal(f"{label[:40]!r} is not a review class ({', '.join(REVIEW_LABELS)})")


def _changed(c: Cell, head: str) -> str:
    if c.reviewed_label is None:
        return f"{head} (now not reviewed, version {c.version}); it is shown again as it is now"
    when = time.strftime("%H:%M:%S", time.localtime(c.reviewed_at)) if c.reviewed_at else "?"
    return (
        f"{head}: {c.reviewer or '?'} set it to {c.reviewed_label} at {when} (version {c.version}); "
        "it is shown again as it is now"
    )


def _ranges(ids) -> str:
    return ", ".join(map(str, ids)) if len(ids) <= 8 else f"{ids[0]}-{ids[-1]}"


def _cell_columns(crops: bool) -> str:
    cols = [f.name for f in fields(Cell) if f.name not in ("crop", "has_crop")]
    return ", ".join(cols + ["crop IS NOT NULL AS has_crop"] + (["crop"] if crops else []))


# ---------------------------------------------------------------- opening and migrating


def _reason(e: sqlite3.Error) -> str:
    reason = db_reason(e)
    return f"not a usable session log ({e})" if reason.startswith("SQLite error") else reason


def _uri(path: Path, mode: str) -> str:
    # a URI, so that mode=rw can say "do not create"; quote() takes the bytes of any file name
    return f"file:{quote(os.fsencode(path))}?mode={mode}"


def _open(path: Path, create: bool) -> sqlite3.Connection:
    """Connect, and check through SQLite (never by reading the file) that it is a session log of
    a version this code knows, before anything is written to it."""
    if create:
        _check_writable(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SessionFileError(f"{_p(path)}: cannot create its folder ({e.strerror})") from None
    elif not path.is_file():
        raise SessionFileError(f"{_p(path)}: no such file" if not path.exists() else f"{_p(path)}: not a file")
    # isolation_level=None: transactions are explicit (SessionStore._tx); timeout: the busy
    # timeout a writer waits for another's lock.
    busy = busy_timeout_s()
    try:
        con = sqlite3.connect(
            _uri(path, "rwc" if create else "rw"), uri=True, timeout=busy, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as e:
        raise SessionFileError(f"{_p(path)}: {db_reason(e)}") from None
    con.row_factory = sqlite3.Row
    # Text another tool wrote that is not UTF-8 is read with backslash escapes, not a crash.
    con.text_factory = lambda b: b.decode("utf-8", "backslashreplace")
    try:
        con.execute(f"PRAGMA busy_timeout={int(busy * 1000)}")
        try:
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as e:
            if not create and ("not a database" in str(e) or "encrypted" in str(e)):
                raise SessionFileError(f"{_p(path)}: not a session log (not an SQLite database)") from None
            raise  # capture: "not a usable session log (file is not a database)", below
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if names and _REQUIRED_TABLE not in names:
            raise SessionFileError(f"{_p(path)}: not a session log (an SQLite file without a sessions table)")
        if not names and not create:
            raise SessionFileError(f"{_p(path)}: not a session log (an SQLite file without a sessions table)")
        if version > SCHEMA_VERSION:
            raise NewerLogError(
                f"{_p(path)}: written by a newer edge-bloodcls, version {version}: upgrade "
                f"(this one reads versions up to {SCHEMA_VERSION})"
            )
        con.execute("PRAGMA foreign_keys=ON")
        con.execute("PRAGMA journal_mode=WAL")
        # FULL syncs the WAL at each commit: a Pi at a microscope gets unplugged, a review decision
        # must survive a kill -9 right after it was shown as saved.
        con.execute("PRAGMA synchronous=FULL")
    except sqlite3.DatabaseError as e:
        con.close()
        raise SessionFileError(f"{_p(path)}: {_reason(e)}") from None
    except BaseException:
        con.close()
        raise
    return con


def _begin(con: sqlite3.Connection, retry: bool = True) -> None:
    delays = list(LOCK_RETRY_BACKOFF) if retry else []
    while True:
        try:
            con.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as e:
            if not _locked(e) or not delays:
                raise
            time.sleep(delays.pop(0) * busy_timeout_s())


def _migrate(con: sqlite3.Connection, path: Path) -> tuple[int, Path | None]:
    """Bring the file to SCHEMA_VERSION in one transaction; returns the version it had and the
    backup made first (None for a new or current file). Safe when two processes open the same old
    file at once: the version is re-read under the write lock."""
    if con.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return SCHEMA_VERSION, None
    _begin(con)
    backup = None
    try:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version < SCHEMA_VERSION:
            has_data = con.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = ?", (_REQUIRED_TABLE,)).fetchone()[
                0
            ]
            if has_data:
                backup = _backup(path, version)
            if version == 0:
                for stmt in _statements(SCHEMA_V0):
                    con.execute(stmt)
            for v in range(version, SCHEMA_VERSION):
                for stmt in _statements(MIGRATIONS[v]):
                    con.execute(stmt)
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise
    con.execute("COMMIT")
    return version, backup


def _backup(path: Path, version: int) -> Path:
    """A copy of the log as it was, beside it, made by SQLite while we hold the write lock: a
    second connection reads the last committed state (WAL lets it read beside our write lock; a
    connection cannot back itself up in the middle of its own write transaction)."""
    dest = path.with_name(f"{path.name}.v{version}.bak")
    k = 1
    while dest.exists():
        dest = path.with_name(f"{path.name}.v{version}.{k}.bak")
        k += 1
    src = sqlite3.connect(_uri(path, "ro"), uri=True, timeout=busy_timeout_s())
    out = sqlite3.connect(str(dest))
    try:
        src.backup(out)
    finally:
        out.close()
        src.close()
    return dest


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT our transaction; split into complete statements instead
    # (sqlite3.complete_statement knows that a trigger's body holds ';').
    out, buf = [], ""
    for line in script.splitlines():
        line = line.split("--")[0].rstrip()
        if not line:
            continue
        buf += line + "\n"
        if sqlite3.complete_statement(buf):
            out.append(buf.strip().rstrip(";"))
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out

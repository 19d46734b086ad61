"""The session log: one SQLite file with tables sessions / frames / cells / reviews.

WAL mode, synchronous=FULL and one transaction per frame: a process killed at any moment (kill -9,
power cut) leaves a database that opens and holds every frame committed before, each with the
cells counted at it; a reader (report, review, `sqlite3`) can query it while capture runs, and
several processes may write (capture, two review pages) without corrupting it.

The schema is versioned with PRAGMA user_version. Version 0 is the first release's three tables
(one cells row per cell per frame); every file, new or old, is brought to SCHEMA_VERSION by the
same additive migrations, so a log written by an older runtime is upgraded in place, never
rejected. Version 1: a cells row is one *counted* cell (tracked across frames, see track.py) with
its crop (JPEG in the row, so the log is one self-contained file), observations, OOD score and
the review columns; sessions get sample, operator, versions, trust gate and sign-off; `reviews`
is the append-only audit trail of a technologist's decisions.
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .dbfaults import (LOCK_RETRY_BACKOFF, SessionFileError, _check_writable, _locked, _p, busy_timeout_s,  # noqa: F401
                       db_reason, lock_wait_s, text)

SCHEMA_VERSION = 1

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

# Index i takes a file from version i to i + 1. ADD COLUMN only: old rows stay valid.
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
        action TEXT NOT NULL,                -- confirm | reclassify
        label TEXT NOT NULL,                 -- the label decided
        previous_label TEXT, previous_reviewer TEXT, previous_at REAL,  -- what undo restores
        reviewer TEXT, at REAL NOT NULL,
        undone_at REAL
    );
    CREATE INDEX reviews_session ON reviews (session_id, id);
    """,
]


@contextmanager
def transaction(con: sqlite3.Connection, retry: bool = True):
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front, so that two writers queue on the
    busy timeout instead of failing half-way with 'database is locked'. A lock still held after
    the busy timeout is asked for again after LOCK_RETRY_BACKOFF; then the error goes up."""
    delays = list(LOCK_RETRY_BACKOFF) if retry else []
    while True:
        try:
            con.execute("BEGIN IMMEDIATE")
            break
        except sqlite3.OperationalError as e:
            if not _locked(e) or not delays:
                raise
            time.sleep(delays.pop(0) * busy_timeout_s())
    try:
        yield con
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except sqlite3.Error:  # the failed statement may have ended the transaction already
            pass
        raise
    con.execute("COMMIT")


def connect(path, create: bool = True) -> sqlite3.Connection:
    """An open, migrated log. create=False: the file must exist and be a session log, else
    SessionFileError (for report and review, which must not create an empty file by mistake)."""
    path = Path(path)
    if not create:
        if not path.is_file():
            raise SessionFileError(f"{path}: no such file")
        with open(path, "rb") as f:
            head = f.read(16)
        if head and head != b"SQLite format 3\x00":
            raise SessionFileError(f"{path}: not a session log (not an SQLite database)")
    else:
        _check_writable(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SessionFileError(f"{_p(path)}: cannot create its folder ({e.strerror})") from None
    # isolation_level=None: transactions are explicit (see transaction()); timeout is the busy
    # timeout a writer waits for another's lock.
    busy = busy_timeout_s()
    try:
        con = sqlite3.connect(str(path), timeout=busy, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as e:
        raise SessionFileError(f"{_p(path)}: {db_reason(e)}") from None
    try:
        con.execute("PRAGMA foreign_keys=ON")
        con.execute(f"PRAGMA busy_timeout={int(busy * 1000)}")
        if not create:
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "sessions" not in names:
                raise SessionFileError(f"{path}: not a session log (an SQLite file without a sessions table)")
        con.execute("PRAGMA journal_mode=WAL")
        # FULL syncs the WAL at each commit: a Pi at a microscope gets unplugged, a review decision
        # must survive a kill -9 right after it was shown as saved.
        con.execute("PRAGMA synchronous=FULL")
        migrate(con)
    except sqlite3.DatabaseError as e:
        con.close()
        reason = db_reason(e)
        if reason.startswith("SQLite error"):
            reason = f"not a usable session log ({e})"
        raise SessionFileError(f"{_p(path)}: {reason}") from None
    except BaseException:
        con.close()
        raise
    return con


def migrate(con: sqlite3.Connection) -> int:
    """Bring the file to SCHEMA_VERSION; returns the version it had. Safe when two processes open
    the same old file at once: the version is re-read under the write lock."""
    version = con.execute("PRAGMA user_version").fetchone()[0]
    if version >= SCHEMA_VERSION:
        return version
    with transaction(con):
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            for stmt in _statements(SCHEMA_V0):
                con.execute(stmt)
        for v in range(version, SCHEMA_VERSION):
            for stmt in _statements(MIGRATIONS[v]):
                con.execute(stmt)
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return version


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT our transaction; split on ';' instead (no ';' inside strings).
    lines = [ln.split("--")[0] for ln in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


@dataclass
class CellRecord:
    """One counted cell: in field mode a track over frames, in cell mode one frame."""
    box: tuple[int, int, int, int]
    label: str
    confidence: float
    review: bool
    probs: dict[str, float]
    crop_path: str | None = None
    crop_jpeg: bytes | None = None
    observations: int = 1
    frame_index: int | None = None  # frame the crop is from; None: the frame being logged
    first_frame: int | None = None
    last_frame: int | None = None
    timestamp: float | None = None
    ood_score: float | None = None
    ood: bool = False
    review_reason: str = ""
    extra: dict = field(default_factory=dict)


class SessionLog:
    """Every write raises SessionFileError (one line) when SQLite fails: capture then ends the
    session with that reason instead of a traceback."""

    def __init__(self, path, source: str, mode: str, model: dict, review_threshold: float, *,
                 sample: str | None = None, operator: str | None = None, count_target: int | None = None,
                 counting: str = "tracked", versions: dict | None = None):
        self.path = Path(path)
        self.con = connect(self.path)
        self.model_sha256 = model.get("model_sha256", "")
        try:
            with self._writing(), transaction(self.con):
                cur = self.con.execute(
                    "INSERT INTO sessions (started, source, mode, model, model_sha256, interpreter, device, threads, "
                    "review_threshold, sample, operator, count_target, counting, versions) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (time.time(), text(source), mode, text(model.get("model")), self.model_sha256,
                     model.get("interpreter"), model.get("device"), model.get("threads"), review_threshold,
                     text(sample), text(operator), count_target, counting, json.dumps(versions or {})))
        except BaseException:
            self.con.close()
            raise
        self.id = cur.lastrowid
        self.frames = 0
        self.cells = 0

    def log_frame(self, frame_index: int, timestamp: float, name: str, shape, n_detections: int,
                  cells: list[CellRecord], timing: dict | None = None) -> list[int]:
        """The frame and the cells counted at it, in one transaction, committed before returning;
        returns the cells' ids."""
        with self._writing(), transaction(self.con):
            self.con.execute(
                "INSERT INTO frames (session_id, frame_index, timestamp, name, width, height, n_cells, timing) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (self.id, frame_index, timestamp, text(name), int(shape[1]), int(shape[0]), n_detections,
                 json.dumps(timing) if timing else None))
            ids = self._insert_cells(cells, frame_index, timestamp)
            self.con.execute("UPDATE sessions SET frames = frames + 1 WHERE id = ?", (self.id,))
        self.frames += 1
        self.cells += len(cells)
        return ids

    def log_cells(self, cells: list[CellRecord]) -> list[int]:
        """Cells counted with no new frame (the tracks still open when the session ends)."""
        if not cells:
            return []
        with self._writing(), transaction(self.con):
            ids = self._insert_cells(cells, None, time.time())
        self.cells += len(cells)
        return ids

    def _insert_cells(self, cells: list[CellRecord], frame_index, timestamp) -> list[int]:
        ids = []
        for c in cells:
            fi = c.frame_index if c.frame_index is not None else frame_index
            row = self.con.execute("SELECT id FROM frames WHERE session_id = ? AND frame_index = ?",
                                   (self.id, fi)).fetchone()
            cur = self.con.execute(
                "INSERT INTO cells (session_id, frame_id, frame_index, timestamp, x0, y0, x1, y1, label, confidence, "
                "review, model_sha256, probs, crop_path, crop, observations, first_frame, last_frame, ood_score, "
                "ood, review_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (self.id, row[0], fi, c.timestamp or timestamp, *map(int, c.box), c.label, float(c.confidence),
                 int(c.review), self.model_sha256, json.dumps({k: round(float(v), 6) for k, v in c.probs.items()}),
                 text(c.crop_path), c.crop_jpeg, c.observations, c.first_frame if c.first_frame is not None else fi,
                 c.last_frame if c.last_frame is not None else fi, c.ood_score, int(c.ood), text(c.review_reason)))
            assert cur.lastrowid is not None  # set by every INSERT
            ids.append(cur.lastrowid)
        if cells:
            self.con.execute("UPDATE sessions SET cells = cells + ? WHERE id = ?", (len(cells), self.id))
        return ids

    def set_trust(self, gate: dict) -> None:
        """The trust gate's state, written when it trips so that a killed session still shows it."""
        with self._writing(), transaction(self.con):
            self.con.execute("UPDATE sessions SET unvalidated = ?, trust = ? WHERE id = ?",
                             (int(bool(gate.get("tripped"))), json.dumps(gate), self.id))

    def finish(self, end_reason: str, summary: dict, retry: bool = True) -> None:
        """retry=False after a failed write: one busy timeout, not the whole retry budget again."""
        trust = summary.get("trust") or {}
        with self._writing(), transaction(self.con, retry=retry):
            self.con.execute("UPDATE sessions SET ended = ?, end_reason = ?, summary = ?, unvalidated = ?, "
                             "trust = ? WHERE id = ?",
                             (time.time(), text(end_reason), json.dumps(summary), int(bool(trust.get("tripped"))),
                              json.dumps(trust) if trust else None, self.id))

    @contextmanager
    def _writing(self):
        try:
            yield
        except sqlite3.Error as e:
            raise SessionFileError(f"{_p(self.path)}: {db_reason(e)}") from None

    def close(self) -> None:
        try:
            self.con.close()
        except sqlite3.Error:  # closing a log that failed: nothing more to save
            pass


def read_session(path, session_id: int | None = None) -> dict:
    """A session with its frames and cells (crops left out), for scripts and tests (the last
    session by default). Read-only: works on a file of any version."""
    con = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        if session_id is None:
            row = con.execute("SELECT * FROM sessions ORDER BY id DESC LIMIT 1").fetchone()
        else:
            row = con.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise LookupError(f"{path}: no such session")
        s = dict(row)
        s["frames_list"] = [dict(r) for r in con.execute(
            "SELECT * FROM frames WHERE session_id = ? ORDER BY frame_index", (s["id"],))]
        s["cells_list"] = [{k: r[k] for k in r.keys() if k != "crop"} for r in con.execute(
            "SELECT * FROM cells WHERE session_id = ? ORDER BY id", (s["id"],))]
        return s
    finally:
        con.close()

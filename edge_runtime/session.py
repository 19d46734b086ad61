"""The capture log: one SQLite file, tables sessions / frames / cells.

WAL mode and one transaction per frame: a process killed at any moment (kill -9, power cut)
leaves a database that opens and holds every frame committed before, each with all its cells;
a reader (a dashboard, `sqlite3`) can query it while capture runs.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    started REAL NOT NULL,
    ended REAL,
    source TEXT, mode TEXT,
    model TEXT, model_sha256 TEXT, interpreter TEXT, device TEXT, threads INTEGER,
    review_threshold REAL,
    frames INTEGER DEFAULT 0, cells INTEGER DEFAULT 0,
    end_reason TEXT,
    summary TEXT            -- JSON: differential, per-frame timing (overhead vs interpreter)
);
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    frame_index INTEGER NOT NULL,
    timestamp REAL NOT NULL,
    name TEXT, width INTEGER, height INTEGER,
    n_cells INTEGER NOT NULL,
    timing TEXT,            -- JSON: milliseconds per stage
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
    probs TEXT NOT NULL,    -- JSON: label -> probability
    crop_path TEXT
);
CREATE INDEX IF NOT EXISTS cells_session ON cells (session_id, review);
"""


@dataclass
class CellRecord:
    box: tuple[int, int, int, int]
    label: str
    confidence: float
    review: bool
    probs: dict[str, float]
    crop_path: str | None = None


def connect(path) -> sqlite3.Connection:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(str(path), timeout=10)
    con.execute("PRAGMA journal_mode=WAL")
    # FULL syncs the WAL at each commit: a Pi at a microscope gets unplugged, and the cost (a few
    # ms on an SD card) is measured as the log stage of the per-frame timing.
    con.execute("PRAGMA synchronous=FULL")
    con.executescript(SCHEMA)
    con.commit()
    return con


class SessionLog:
    def __init__(self, path, source: str, mode: str, model: dict, review_threshold: float):
        self.path = Path(path)
        self.con = connect(self.path)
        self.model_sha256 = model.get("model_sha256", "")
        cur = self.con.execute(
            "INSERT INTO sessions (started, source, mode, model, model_sha256, interpreter, device, threads, "
            "review_threshold) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), source, mode, model.get("model"), self.model_sha256, model.get("interpreter"),
             model.get("device"), model.get("threads"), review_threshold))
        self.id = cur.lastrowid
        self.con.commit()
        self.frames = 0
        self.cells = 0

    def log_frame(self, frame_index: int, timestamp: float, name: str, shape, cells: list[CellRecord],
                  timing: dict | None = None) -> None:
        """The frame and its cells in one transaction, committed before returning."""
        with self.con:
            cur = self.con.execute(
                "INSERT INTO frames (session_id, frame_index, timestamp, name, width, height, n_cells, timing) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (self.id, frame_index, timestamp, name, int(shape[1]), int(shape[0]), len(cells),
                 json.dumps(timing) if timing else None))
            fid = cur.lastrowid
            self.con.executemany(
                "INSERT INTO cells (session_id, frame_id, frame_index, timestamp, x0, y0, x1, y1, label, "
                "confidence, review, model_sha256, probs, crop_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(self.id, fid, frame_index, timestamp, *map(int, c.box), c.label, float(c.confidence),
                  int(c.review), self.model_sha256, json.dumps({k: round(v, 6) for k, v in c.probs.items()}),
                  c.crop_path) for c in cells])
            self.con.execute("UPDATE sessions SET frames = frames + 1, cells = cells + ? WHERE id = ?",
                             (len(cells), self.id))
        self.frames += 1
        self.cells += len(cells)

    def finish(self, end_reason: str, summary: dict) -> None:
        with self.con:
            self.con.execute("UPDATE sessions SET ended = ?, end_reason = ?, summary = ? WHERE id = ?",
                             (time.time(), end_reason, json.dumps(summary), self.id))

    def close(self) -> None:
        self.con.close()


def read_session(path, session_id: int | None = None) -> dict:
    """A session with its frames and cells, for reports and tests (the last session by default)."""
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
        s["cells_list"] = [dict(r) for r in con.execute(
            "SELECT * FROM cells WHERE session_id = ? ORDER BY id", (s["id"],))]
        return s
    finally:
        con.close()

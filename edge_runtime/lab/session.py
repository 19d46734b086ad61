"""Capture's side of the session log: SessionLog writes one session (frames and counted cells) as
capture runs. Every statement lives in store.py (SessionStore); this module keeps the names
capture and track import (SessionLog, CellRecord, SessionFileError) and read_session, a dict view
of one session for scripts.

A process killed at any moment (kill -9, power cut) leaves a log that opens and holds every frame
committed before, each with the cells counted at it (one transaction per frame, WAL,
synchronous=FULL); a reader (report, review) can query it while capture runs.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from .dbfaults import SessionFileError, busy_timeout_s, lock_wait_s  # noqa: F401  (re-exported)
from .store import SCHEMA_VERSION, CellRecord, SessionStore  # noqa: F401  (re-exported)


class SessionLog:
    """Every write raises SessionFileError (one line) when SQLite fails: capture then ends the
    session with that reason instead of a traceback."""

    def __init__(
        self,
        path,
        source: str,
        mode: str,
        model: dict,
        review_threshold: float,
        *,
        sample: str | None = None,
        operator: str | None = None,
        count_target: int | None = None,
        counting: str = "tracked",
        versions: dict | None = None,
    ):
        self.path = Path(path)
        self.store = SessionStore(self.path, create=True)
        self.model_sha256 = model.get("model_sha256", "")
        try:
            self.id = self.store.start_session(
                source=source,
                mode=mode,
                model=model,
                review_threshold=review_threshold,
                sample=sample,
                operator=operator,
                count_target=count_target,
                counting=counting,
                versions=versions,
            )
        except BaseException:
            self.store.close()
            raise
        self.frames = 0
        self.cells = 0

    def log_frame(
        self,
        frame_index: int,
        timestamp: float,
        name: str,
        shape,
        n_detections: int,
        cells: list[CellRecord],
        timing: dict | None = None,
    ) -> list[int]:
        """The frame and the cells counted at it, in one transaction, committed before returning;
        returns the cells' ids."""
        ids = self.store.log_frame(
            self.id, self.model_sha256, frame_index, timestamp, name, shape, n_detections, cells, timing
        )
        self.frames += 1
        self.cells += len(cells)
        return ids

    def log_cells(self, cells: list[CellRecord]) -> list[int]:
        """Cells counted with no new frame (the tracks still open when the session ends)."""
        if not cells:
            return []
        ids = self.store.log_cells(self.id, self.model_sha256, cells)
        self.cells += len(cells)
        return ids

    def set_trust(self, gate: dict) -> None:
        """The trust gate's state, written when it trips so that a killed session still shows it."""
        self.store.set_trust(self.id, gate)

    def finish(self, end_reason: str, summary: dict, retry: bool = True) -> None:
        """retry=False after a failed write: one busy timeout, not the whole retry budget again."""
        self.store.finish(self.id, end_reason, summary, retry=retry)

    def close(self) -> None:
        self.store.close()


def read_session(path, session_id: int | None = None) -> dict:
    """A session with its frames and cells (crops left out) as plain dicts, for scripts and tests
    (the last session by default): the store's records, with the JSON columns as text as they
    are in the file."""
    with SessionStore(path) as store:
        data = store.load(session_id, crops=False, frames=True)
    s = asdict(data.session)
    s.update(
        versions=json.dumps(s["versions"]),
        trust=json.dumps(s["trust"]) if s["trust"] else None,
        unvalidated=int(s["unvalidated"]),
    )
    s["frames_list"] = [asdict(f) for f in data.frames]
    s["cells_list"] = [
        {
            **{k: v for k, v in asdict(c).items() if k not in ("crop", "has_crop")},
            "probs": json.dumps(c.probs),
            "review": int(c.review),
            "ood": int(c.ood),
        }
        for c in data.cells
    ]
    return s

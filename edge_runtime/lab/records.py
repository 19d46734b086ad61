"""The records that cross the session store's boundary (store.py), and its refusals: typed
dataclasses rather than rows or dicts, so that report, review and capture name their fields.
No SQL here: a row becomes a record in _record(), by the dataclass's field names.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field, fields
from typing import Any

# CellRecord: what capture hands to the log, defined on capture's side of the border.
from ..capture.sink import CellRecord, SessionFileError  # noqa: F401  (re-exported)


class NewerLogError(SessionFileError):
    """The log was written by a newer edge-bloodcls: refused, left untouched."""


class Refusal(Exception):
    """A review action the log refuses (HTTP status and one line)."""

    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class NotFound(Refusal):
    status = 404


class Conflict(Refusal):
    status = 409


class StaleCell(Conflict):
    """The decision was made on a version of the cell that someone has since changed."""

    def __init__(self, message: str, cell: Cell):
        super().__init__(message)
        self.cell = cell


@dataclass(frozen=True)
class Session:
    id: int
    started: float
    ended: float | None
    source: str | None
    mode: str | None
    model: str | None
    model_sha256: str | None
    interpreter: str | None
    device: str | None
    threads: int | None
    review_threshold: float | None
    frames: int
    cells: int
    end_reason: str | None
    summary: str | None
    sample: str | None
    operator: str | None
    versions: dict
    count_target: int | None
    counting: str | None
    unvalidated: bool
    trust: dict
    signed_by: str | None
    signed_at: float | None


@dataclass(frozen=True)
class Frame:
    id: int
    session_id: int
    frame_index: int
    timestamp: float
    name: str | None
    width: int | None
    height: int | None
    n_cells: int
    timing: str | None


@dataclass(frozen=True)
class Cell:
    id: int
    session_id: int
    frame_id: int
    frame_index: int
    timestamp: float
    x0: int | None
    y0: int | None
    x1: int | None
    y1: int | None
    label: str
    confidence: float
    review: bool
    model_sha256: str
    probs: dict
    crop_path: str | None
    observations: int
    first_frame: int | None
    last_frame: int | None
    ood_score: float | None
    ood: bool
    review_reason: str | None
    reviewed_label: str | None
    reviewer: str | None
    reviewed_at: float | None
    version: int
    has_crop: bool
    crop: bytes | None = None  # only when asked for (report); the review page fetches crops one by one

    @property
    def final_label(self) -> str:
        return self.reviewed_label or self.label


@dataclass(frozen=True)
class AuditEntry:
    id: int
    session_id: int
    cell_id: int | None
    action: str
    from_label: str | None
    to_label: str | None
    prev_reviewer: str | None
    prev_at: float | None
    reviewer: str
    at: float
    reason: str | None
    cell_version: int | None
    undoes: int | None


@dataclass(frozen=True)
class Decision:
    """What a decision, an amendment or an undo left: the cell's review as it now is."""

    audit_id: int
    cell_id: int
    machine_label: str
    reviewed_label: str | None
    reviewer: str | None
    at: float
    version: int
    action: str


@dataclass(frozen=True)
class SignOff:
    audit_id: int
    signed_by: str
    signed_at: float
    version: int = 1  # 1: the first sign-off; 2, 3, ...: each signed amendment
    short_count: bool = False  # signed with a short count acknowledged


@dataclass(frozen=True)
class SignCheck:
    """Where a session stands against the sign-off rules (store.SessionStore.sign_check): what the
    review page states, and what sign_off() enforces."""

    signed_version: int  # the last signed version (0: never signed)
    signed_by: str | None
    pending: int  # amendments since the last signed version (a new version to sign)
    cells: int
    flagged: int
    flagged_left: int  # flagged cells not reviewed
    unreviewed: int  # cells not reviewed at all
    unvalidated: bool  # the trust gate tripped: every cell must be reviewed
    wbc: int  # white cells after review
    count_target: int | None

    @property
    def closed(self) -> bool:
        """Signed, and nothing amended since: read-only (a change is an amendment with a reason)."""
        return self.signed_version > 0 and self.pending == 0

    @property
    def next_version(self) -> int:
        return self.signed_version + 1

    @property
    def short(self) -> bool:
        return self.count_target is not None and self.wbc < self.count_target

    def blockers(self, short_count: bool = False) -> list[str]:
        """Why a sign-off now is refused (empty: it may be signed)."""
        if self.closed:
            return [
                f"signed off by {self.signed_by} (version {self.signed_version}): the session is read-only; "
                "amend with a reason to make a new version"
            ]
        out = []
        if self.flagged_left:
            out.append(f"{self.flagged_left} flagged cell(s) not reviewed yet")
        if self.unvalidated and self.unreviewed:
            out.append(f"UNVALIDATED session: every cell must be reviewed ({self.unreviewed} not reviewed yet)")
        if self.short and not short_count:
            out.append(
                f"short count: {self.wbc} white cells after review, below the session's target of "
                f"{self.count_target}: acknowledge the short count to sign"
            )
        return out


@dataclass(frozen=True)
class SessionData:
    """One session with its cells and its audit trail (what report and review show)."""

    path: str
    session: Session
    cells: list[Cell]
    session_ids: list[int]
    audit: list[AuditEntry]
    frames: list[Frame] = field(default_factory=list)


def _json(value: Any) -> dict:
    if not value:
        return {}
    try:
        out = json.loads(value)
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def _record(cls, row: sqlite3.Row, **convert):
    keys = row.keys()
    names = [f.name for f in fields(cls)]
    values = {n: (row[n] if n in keys else None) for n in names}
    for name, fn in convert.items():
        values[name] = fn(values[name])
    return cls(**values)


def _session(row: sqlite3.Row) -> Session:
    return _record(
        Session, row, versions=_json, trust=_json, unvalidated=bool, frames=lambda v: v or 0, cells=lambda v: v or 0
    )


def _cell(row: sqlite3.Row) -> Cell:
    return _record(
        Cell,
        row,
        probs=_json,
        review=bool,
        ood=bool,
        has_crop=bool,
        version=lambda v: v or 0,
        observations=lambda v: v or 1,
        crop=lambda v: bytes(v) if v is not None else None,
    )

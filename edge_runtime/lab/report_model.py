"""What a report is made of, as typed records: the session's metadata, its cells, the sign-off and
the audit trail (ReportData), and what is computed from them (Differential).

Every output (HTML, PDF, CSV, FHIR) is rendered from these records only, never from database
rows, so that the report does not depend on how the log is read: report_adapt.py turns
the store's SessionData into a ReportData.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from ..core.spec import APART, LABELS, OTHER, REMOVED, REVIEW_CLASSES, WBC, WBC_LABELS

Z95 = 1.959964


# One Wilson interval for every output (HTML, CSV, FHIR, the review page).
def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n: honest at small n and near 0 or 1, where
    the normal approximation gives intervals below 0 or above 1."""
    if n <= 0:
        return 0.0, 0.0
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


RESEARCH_USE = "Research use only: not a medical device, not for diagnosis."

# Reported outside the differential: erythroblasts as nucleated red cells per 100 white cells
# (the usual way an NRBC count is reported), platelets as a count only.
NON_WBC = tuple(k for k in LABELS if k not in WBC_LABELS)

# Review statuses of a report, as a laboratory system knows them (FHIR DiagnosticReport.status).
PRELIMINARY, FINAL, AMENDED = "preliminary", "final", "amended"


def iso(t: float | None) -> str:
    """ISO 8601 with the local UTC offset (2024-05-01T14:03:07+02:00): a time a reader in another
    time zone (or a laboratory system) reads without guessing; '' when unknown."""
    if t is None:
        return ""
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


@dataclass(frozen=True)
class SessionMeta:
    id: int
    path: str
    sample: str | None
    operator: str | None
    started: float
    ended: float | None
    model: str | None
    model_sha256: str | None
    interpreter: str | None = None
    device: str | None = None
    threads: int | None = None
    review_threshold: float | None = None
    source: str | None = None
    mode: str | None = None
    frames: int | None = None
    end_reason: str | None = None
    count_target: int | None = None
    counting: str | None = None  # 'tracked', 'per-frame', None: an old per-frame log
    versions: dict = field(default_factory=dict)
    unvalidated: bool = False  # the trust gate tripped: the model cannot back this differential
    trust_message: str = ""


@dataclass(frozen=True)
class CellRow:
    id: int
    label: str  # the analyser's call
    confidence: float
    review: bool  # flagged for a person
    review_reason: str = ""
    ood: bool = False
    ood_score: float | None = None
    observations: int = 1
    reviewed_label: str | None = None
    reviewer: str | None = None
    reviewed_at: float | None = None
    crop: bytes | None = None  # JPEG, when loaded

    @property
    def final_label(self) -> str:
        return self.reviewed_label or self.label


@dataclass(frozen=True)
class SignOff:
    by: str
    at: float


@dataclass(frozen=True)
class SignedVersion:
    """One signed version of the session's differential: version 1 is the first sign-off, each
    later one signs the amendments made since the one before (whose reasons it carries)."""

    version: int
    by: str
    at: float
    final: dict[str, int]  # cells per class after review, as this version signed them
    reasons: tuple[str, ...] = ()  # why it was amended (version 2 on)
    note: str = ""  # e.g. the short count its signer acknowledged


@dataclass(frozen=True)
class AuditEntry:
    """One decision of the review's append-only trail."""

    at: float
    reviewer: str
    action: str  # confirm | reclassify | undo | signoff | amend (store.py)
    cell_id: int | None = None
    from_label: str | None = None
    to_label: str | None = None
    reason: str | None = None
    undone: bool = False  # a later undo took it back
    id: int | None = None  # the store's audit row
    undoes: int | None = None  # an undo: the row it takes back


@dataclass(frozen=True)
class ReportData:
    meta: SessionMeta
    cells: list[CellRow]
    signoff: SignOff | None = None
    audit: list[AuditEntry] = field(default_factory=list)
    wbc_count: float | None = None  # the analyser's white-cell count, x10^9/L, if entered
    versions: list[SignedVersion] = field(default_factory=list)  # oldest first; the last one is `signoff`

    @property
    def pending_amendments(self) -> int:
        """Amendments made since the last signed version (not signed yet)."""
        if self.signoff is None:
            return 0
        last = max((a.id or 0 for a in self.audit if a.action == "signoff"), default=0)
        if last:
            return sum(a.action == "amend" and (a.id or 0) > last for a in self.audit)
        return sum(a.action == "amend" and a.at > self.signoff.at for a in self.audit)

    @property
    def status(self) -> str:
        """preliminary until signed; amended when a decision was changed after the sign-off."""
        if self.signoff is None:
            return PRELIMINARY
        if any(a.action == "amend" or (a.at > self.signoff.at and a.action != "signoff") for a in self.audit):
            return AMENDED
        return FINAL


@dataclass(frozen=True)
class ClassRow:
    """One class of the report, counted by the analyser and after review."""

    label: str
    machine: int
    final: int
    in_differential: bool  # a white-cell class (share of the white cells)
    per_100_wbc: float | None  # final / white cells x 100: the % of the differential (or NRBC/100 WBC)
    ci: tuple[float, float] = (0.0, 0.0)  # 95% Wilson interval of per_100_wbc, in %
    absolute: float | None = None  # x10^9/L, when the analyser's WBC count is known
    role: str = WBC  # spec.REVIEW_CLASSES: wbc, other, apart (smudge), removed (artefact, duplicate)
    model: bool = True  # one of the model's classes (else added by a reviewer)


@dataclass(frozen=True)
class Differential:
    rows: list[ClassRow]
    wbc_machine: int
    wbc_final: int
    wbc_count: float | None

    def row(self, label: str) -> ClassRow:
        return next(r for r in self.rows if r.label == label)

    @property
    def removed(self) -> int:
        """Cells the review took out of every count (artefacts, duplicates)."""
        return sum(r.final for r in self.rows if r.role == REMOVED)

    @property
    def apart(self) -> int:
        """Smudge cells: reported apart."""
        return sum(r.final for r in self.rows if r.role == APART)


def differential(data: ReportData) -> Differential:
    return counts_differential(
        Counter(c.label for c in data.cells), Counter(c.final_label for c in data.cells), data.wbc_count
    )


def counts_differential(
    machine: Mapping[str, int], final: Mapping[str, int], wbc_count: float | None = None
) -> Differential:
    """The differential of cells per class (the analyser's and after review): white cells are the
    classes of role wbc (spec.REVIEW_CLASSES), the model's and those a reviewer added; smudge
    cells and erythroblasts are given per 100 white cells, outside the differential; artefacts and
    duplicates are in no count."""

    wbc_m = sum(machine.get(k, 0) for k in WBC_LABELS)
    wbc_f = sum(final.get(c.label, 0) for c in REVIEW_CLASSES if c.role == WBC)
    rows = []
    for rc in REVIEW_CLASSES:
        k, n = rc.label, final.get(rc.label, 0)
        per = wbc_f and rc.role in (WBC, OTHER, APART) and k != "platelet"
        share = 100 * n / wbc_f if per else None
        lo, hi = wilson(n, wbc_f) if wbc_f and rc.role == WBC else (0.0, 0.0)
        absolute = wbc_count * n / wbc_f if wbc_count is not None and wbc_f and rc.role == WBC else None
        rows.append(
            ClassRow(k, machine.get(k, 0), n, rc.role == WBC, share, (100 * lo, 100 * hi), absolute, rc.role, rc.model)
        )
    return Differential(rows, wbc_m, wbc_f, wbc_count)

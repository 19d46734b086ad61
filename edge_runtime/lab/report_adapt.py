"""The one place that knows the shape of what the session store returns (store.SessionData with
records.Session, Cell and AuditEntry) and turns it into the report's records (report_model.py).
Every report output (HTML, PDF, CSV summary, FHIR) is rendered from the latter only."""

from __future__ import annotations

from collections import Counter

from .records import AuditEntry as StoreAudit
from .records import Cell, SessionData
from .report_model import AuditEntry, CellRow, ReportData, SessionMeta, SignedVersion, SignOff


def from_store(d: SessionData, wbc_count: float | None = None) -> ReportData:
    s = d.session
    meta = SessionMeta(
        id=s.id,
        path=d.path,
        sample=s.sample,
        operator=s.operator,
        started=s.started,
        ended=s.ended,
        model=s.model,
        model_sha256=s.model_sha256,
        interpreter=s.interpreter,
        device=s.device,
        threads=s.threads,
        review_threshold=s.review_threshold,
        source=s.source,
        mode=s.mode,
        frames=s.frames,
        end_reason=s.end_reason,
        count_target=s.count_target,
        counting=s.counting,
        versions=s.versions,
        unvalidated=bool(s.unvalidated or s.trust.get("tripped")),
        trust_message=str(s.trust.get("message") or ""),
    )
    cells = [
        CellRow(
            id=c.id,
            label=c.label,
            confidence=c.confidence,
            review=c.review,
            review_reason=c.review_reason or "",
            ood=c.ood,
            ood_score=c.ood_score,
            observations=c.observations or 1,
            reviewed_label=c.reviewed_label,
            reviewer=c.reviewer,
            reviewed_at=c.reviewed_at,
            crop=c.crop,
        )
        for c in d.cells
    ]
    signoff = SignOff(s.signed_by, s.signed_at) if s.signed_by and s.signed_at else None
    undone = {a.undoes for a in d.audit if a.undoes is not None}
    audit = [
        AuditEntry(
            at=a.at,
            reviewer=a.reviewer,
            action=a.action,
            cell_id=a.cell_id,
            from_label=a.from_label,
            to_label=a.to_label,
            reason=a.reason,
            undone=a.id in undone,
            id=a.id,
            undoes=a.undoes,
        )
        for a in d.audit
    ]
    return ReportData(meta, cells, signoff, audit, wbc_count, versions(d.cells, d.audit))


def labels_at(cells: list[Cell], audit: list[StoreAudit], audit_id: int) -> dict[int, str]:
    """Each cell's label after review as it was right after trail row audit_id: the trail is
    append-only and every change of a cell's review is a row of it (from -> to), so the label a
    cell had then is the `from` of its first change after that row, or its label now."""
    out = {c.id: c.final_label for c in cells}
    machine = {c.id: c.label for c in cells}
    seen: set[int] = set()
    for a in audit:
        if a.id > audit_id and a.cell_id is not None and a.cell_id in out and a.cell_id not in seen:
            seen.add(a.cell_id)
            out[a.cell_id] = a.from_label or machine[a.cell_id]
    return out


def versions(cells: list[Cell], audit: list[StoreAudit]) -> list[SignedVersion]:
    """The session's signed versions, oldest first: the k-th sign-off of the trail is version k,
    with the labels it signed and the reasons of the amendments it signed."""
    out: list[SignedVersion] = []
    prev = 0
    for a in audit:
        if a.action != "signoff":
            continue
        reasons = tuple(
            dict.fromkeys(b.reason for b in audit if b.action == "amend" and prev < b.id < a.id and b.reason)
        )
        final = Counter(labels_at(cells, audit, a.id).values())
        out.append(SignedVersion(len(out) + 1, a.reviewer, a.at, dict(final), reasons, a.reason or ""))
        prev = a.id
    return out

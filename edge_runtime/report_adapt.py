"""The one place that knows the shape of what the session store returns (store.SessionData with
records.Session, Cell and AuditEntry) and turns it into the report's records (report_model.py).
Every report output (HTML, PDF, CSV summary, FHIR) is rendered from the latter only."""
from __future__ import annotations

from typing import Optional

from .records import SessionData
from .report_model import AuditEntry, CellRow, ReportData, SessionMeta, SignOff


def from_store(d: SessionData, wbc_count: Optional[float] = None) -> ReportData:
    s = d.session
    meta = SessionMeta(
        id=s.id, path=d.path, sample=s.sample, operator=s.operator, started=s.started, ended=s.ended,
        model=s.model, model_sha256=s.model_sha256, interpreter=s.interpreter, device=s.device, threads=s.threads,
        review_threshold=s.review_threshold, source=s.source, mode=s.mode, frames=s.frames,
        end_reason=s.end_reason, count_target=s.count_target, counting=s.counting, versions=s.versions,
        unvalidated=bool(s.unvalidated or s.trust.get("tripped")),
        trust_message=str(s.trust.get("message") or ""))
    cells = [CellRow(id=c.id, label=c.label, confidence=c.confidence, review=c.review,
                     review_reason=c.review_reason or "", ood=c.ood, ood_score=c.ood_score,
                     observations=c.observations or 1, reviewed_label=c.reviewed_label, reviewer=c.reviewer,
                     reviewed_at=c.reviewed_at, crop=c.crop)
             for c in d.cells]
    signoff = SignOff(s.signed_by, s.signed_at) if s.signed_by and s.signed_at else None
    undone = {a.undoes for a in d.audit if a.undoes is not None}
    audit = [AuditEntry(at=a.at, reviewer=a.reviewer, action=a.action, cell_id=a.cell_id, from_label=a.from_label,
                        to_label=a.to_label, reason=a.reason, undone=a.id in undone, id=a.id, undoes=a.undoes)
             for a in d.audit]
    return ReportData(meta, cells, signoff, audit, wbc_count)

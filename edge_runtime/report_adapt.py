"""The one place that knows the shape of what the log reader returns: today `report.load()`'s dict
(session columns, `cells_list` of row dicts). When the log is read through a store with typed
records, only this module changes."""
from __future__ import annotations

import json
from typing import Optional

from .report_model import AuditEntry, CellRow, ReportData, SessionMeta, SignOff


def _json(value) -> dict:
    if not value:
        return {}
    try:
        out = json.loads(value)
    except ValueError:  # a hand-edited log: show the rest of the report rather than fail
        return {}
    return out if isinstance(out, dict) else {}


def from_load(s: dict, wbc_count: Optional[float] = None) -> ReportData:
    trust = _json(s.get("trust"))
    meta = SessionMeta(
        id=s["id"], path=s.get("path", ""), sample=s.get("sample"), operator=s.get("operator"),
        started=s["started"], ended=s.get("ended"), model=s.get("model"), model_sha256=s.get("model_sha256"),
        interpreter=s.get("interpreter"), device=s.get("device"), threads=s.get("threads"),
        review_threshold=s.get("review_threshold"), source=s.get("source"), mode=s.get("mode"),
        frames=s.get("frames"), end_reason=s.get("end_reason"), count_target=s.get("count_target"),
        counting=s.get("counting"), versions=_json(s.get("versions")),
        unvalidated=bool(s.get("unvalidated") or trust.get("tripped")),
        trust_message=str(trust.get("message") or ""))
    cells = [CellRow(id=c["id"], label=c["label"], confidence=c["confidence"], review=bool(c["review"]),
                     review_reason=c.get("review_reason") or "", ood=bool(c.get("ood")), ood_score=c.get("ood_score"),
                     observations=c.get("observations") or 1, reviewed_label=c.get("reviewed_label"),
                     reviewer=c.get("reviewer"), reviewed_at=c.get("reviewed_at"), crop=c.get("crop"))
             for c in s["cells_list"]]
    signoff = SignOff(s["signed_by"], s["signed_at"]) if s.get("signed_by") and s.get("signed_at") else None
    # load() does not read the `reviews` table yet; a reader that does passes it as "audit" (a
    # list of dicts with these keys), and the report shows it.
    audit = [AuditEntry(at=a["at"], reviewer=a.get("reviewer") or "", action=a["action"], cell_id=a.get("cell_id"),
                        from_label=a.get("from_label"), to_label=a.get("to_label"), reason=a.get("reason"),
                        undone=bool(a.get("undone")))
             for a in s.get("audit") or []]
    if wbc_count is None and s.get("wbc_count") is not None:  # entered in review, once the log stores it
        wbc_count = float(s["wbc_count"])
    return ReportData(meta, cells, signoff, audit, wbc_count, audit_available="audit" in s)

"""CSV for spreadsheets and laboratory systems: the session summary row, and a writer that makes
every cell safe to open in a spreadsheet.

Formula injection: a cell beginning with =, +, -, @ (or a tab or carriage return, which some
spreadsheets strip before reading a formula) is run as a formula by Excel, LibreOffice and
Google Sheets; a sample ID or a name typed into capture or review could be one. Such a cell is
written with a leading apostrophe (OWASP's advice), except a plain number such as -1.5, which
no spreadsheet runs.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from typing import Any

from ..core.spec import ADDED_WBC_LABELS, WBC_LABELS
from .reference import Intervals
from .report_model import RESEARCH_USE, ReportData, differential, iso
from .report_rules import flags

_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> Any:
    if not isinstance(value, str) or not value.startswith(_FORMULA):
        return value
    try:
        if math.isfinite(float(value)):
            return value
    except ValueError:
        pass
    return "'" + value


class SafeWriter:
    """csv.writer whose every string cell goes through neutralise()."""

    def __init__(self, f, **kw):
        self._w = csv.writer(f, **kw)

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._w.writerow([neutralise(v) for v in row])


def summary_columns() -> list[str]:
    return (
        [
            "sample",
            "session_id",
            "log",
            "operator",
            "status",
            "signed_by",
            "signed_at",
            "started",
            "ended",
            "model",
            "model_sha256",
            "trust",
            "cells",
            "wbc_counted",
            "count_target",
            "flagged",
            "flagged_reviewed",
            "wbc_count_1e9_per_l",
        ]
        + [f"pct_{k}" for k in WBC_LABELS]
        + [f"abs_{k}" for k in WBC_LABELS]
        + ["nrbc_per_100_wbc", "platelets_counted"]
        + [f"pct_{k}" for k in ADDED_WBC_LABELS]
        + [f"abs_{k}" for k in ADDED_WBC_LABELS]
        + ["smudge_cells", "removed_cells", "signed_version", "flags", "note"]
    )


def summary_row(data: ReportData, iv: Intervals) -> list[Any]:
    m = data.meta
    d = differential(data)
    pct = {r.label: "" if r.per_100_wbc is None else f"{r.per_100_wbc:.1f}" for r in d.rows}
    ab = {r.label: "" if r.absolute is None else f"{r.absolute:.3f}" for r in d.rows}
    flagged = [c for c in data.cells if c.review]
    return (
        [
            m.sample or "",
            m.id,
            m.path,
            m.operator or "",
            data.status,
            data.signoff.by if data.signoff else "",
            iso(data.signoff.at) if data.signoff else "",
            iso(m.started),
            iso(m.ended),
            m.model or "",
            m.model_sha256 or "",
            "UNVALIDATED" if m.unvalidated else "ok",
            len(data.cells),
            d.wbc_final,
            m.count_target or "",
            len(flagged),
            sum(c.reviewed_label is not None for c in flagged),
            "" if data.wbc_count is None else f"{data.wbc_count:g}",
        ]
        + [pct[k] for k in WBC_LABELS]
        + [ab[k] for k in WBC_LABELS]
        + [pct["erythroblast"], d.row("platelet").final]
        + [pct[k] for k in ADDED_WBC_LABELS]
        + [ab[k] for k in ADDED_WBC_LABELS]
        + [
            d.apart,
            d.removed,
            (len(data.versions) or 1) if data.signoff else "",
            "; ".join(f.rule for f in flags(data, d, iv)),
            RESEARCH_USE,
        ]
    )


def write_summary(data: ReportData, iv: Intervals, path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = SafeWriter(f)
        w.writerow(summary_columns())
        w.writerow(summary_row(data, iv))

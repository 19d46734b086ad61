"""Rule-based flags: each names the rule that raised it, so a reader can see why it is there and a
laboratory can tune its threshold (reference.py, [rules])."""

from __future__ import annotations

from dataclasses import dataclass

from .reference import Intervals
from .report_model import Differential, ReportData


@dataclass(frozen=True)
class Flag:
    rule: str  # stable identifier, e.g. IG_PRESENT
    message: str


def flags(data: ReportData, d: Differential, iv: Intervals) -> list[Flag]:
    r = iv.rules
    out: list[Flag] = []
    if data.meta.unvalidated:
        why = data.meta.trust_message.removeprefix("WARNING: ") or "trust gate tripped"
        out.append(
            Flag("TRUST_GATE", f"Differential not validated: too many cells unlike the model's training data ({why}).")
        )
    target = data.meta.count_target
    need = target if target else int(r["min_wbc"])
    if d.wbc_final < need:
        why = f"the session's target of {target}" if target else f"the minimum of {need} (rule min_wbc)"
        out.append(Flag("SHORT_COUNT", f"Short count: {d.wbc_final} white cells counted, below {why}."))
    ig = d.row("ig")
    if ig.final and ig.per_100_wbc is not None and ig.per_100_wbc > r["ig_percent"]:
        out.append(
            Flag(
                "IG_PRESENT",
                f"Immature granulocytes present: {ig.final} cell(s), {ig.per_100_wbc:.1f}% of the white cells.",
            )
        )
    nrbc = d.row("erythroblast")
    if nrbc.final and nrbc.per_100_wbc is not None and nrbc.per_100_wbc > r["nrbc_per_100"]:
        out.append(
            Flag(
                "NRBC",
                f"Nucleated red cells (erythroblasts): {nrbc.per_100_wbc:.1f} per 100 white cells "
                f"({nrbc.final} counted).",
            )
        )
    eos = d.row("eosinophil")
    if eos.absolute is not None:
        if eos.absolute > r["eosinophil_abs"]:
            out.append(
                Flag(
                    "EOSINOPHILIA",
                    f"Eosinophilia: {eos.absolute:.2f} x10^9/L eosinophils (above {r['eosinophil_abs']:g}).",
                )
            )
    elif eos.per_100_wbc is not None and eos.per_100_wbc > r["eosinophil_pct"]:
        out.append(
            Flag(
                "EOSINOPHILIA",
                f"Eosinophilia: {eos.per_100_wbc:.1f}% eosinophils (above "
                f"{r['eosinophil_pct']:g}%; no WBC count given for an absolute count).",
            )
        )
    unidentified = [c.id for c in data.cells if c.final_label == "unidentified"]
    if unidentified:
        out.append(
            Flag(
                "UNIDENTIFIED",
                f"{len(unidentified)} white cell(s) the reviewer could not identify "
                f"(cells {', '.join(f'#{i}' for i in unidentified[:20])}"
                + (", ..." if len(unidentified) > 20 else "")
                + ").",
            )
        )
    unreviewed = sum(1 for c in data.cells if c.review and c.reviewed_label is None)
    if unreviewed:
        out.append(Flag("UNREVIEWED", f"{unreviewed} flagged cell(s) not reviewed by a person."))
    return out

"""`edge-bloodcls report`: one session of the log as a self-contained HTML page (and a CSV).

The page is what a lab files: differential counts and percentages with 95% Wilson intervals,
the analyser's counts beside the counts after a technologist's review, a gallery of the flagged
cells (crops inline as data URIs, so the file can be mailed or archived alone), any warning
(unvalidated differential, cells out of distribution, an old per-frame log, an unfinished
session), the model with its sha256, the software versions and the times.
"""
from __future__ import annotations

import base64
import csv
import html
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import click

from .store import AuditEntry, Cell, SessionData, SessionFileError, SessionStore
from .spec import LABELS, WBC_LABELS

Z95 = 1.959964


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


def load(path, session_id: int | None = None, crops: bool = True) -> SessionData:
    """The session (the last one by default) with its cells, crops included unless crops=False,
    and its audit trail. Raises SessionFileError for a file that is not a session log or a
    session that is not in it."""
    with SessionStore(path) as store:
        return store.load(session_id, crops=crops)


def final_label(c: Cell) -> str:
    return c.final_label


def tally(cells: list[Cell]) -> dict:
    """Machine and reviewed (final) counts, white-cell totals and review progress."""
    machine = Counter(c.label for c in cells)
    final = Counter(c.final_label for c in cells)
    flagged = [c for c in cells if c.review]
    return {
        "machine": machine, "final": final,
        "wbc_machine": sum(machine[k] for k in WBC_LABELS), "wbc_final": sum(final[k] for k in WBC_LABELS),
        "flagged": len(flagged), "flagged_reviewed": sum(c.reviewed_label is not None for c in flagged),
        "reviewed": sum(c.reviewed_label is not None for c in cells),
        "changed": sum(c.reviewed_label not in (None, c.label) for c in cells),
        "ood": sum(c.ood for c in cells),
    }


def _ts(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _pct(k, n) -> tuple[str, str]:
    if not n:
        return "-", "-"
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f}%", f"{100 * lo:.1f}-{100 * hi:.1f}%"


def banners(d: SessionData, t: dict) -> list[tuple[str, str, str]]:
    """(id, css class, text) of every warning the page must show before the numbers."""
    out = []
    s = d.session
    if s.unvalidated or s.trust.get("tripped"):
        msg = (s.trust.get("message") or "too many cells out of distribution for this model").removeprefix("WARNING: ")
        out.append(("trust-warning", "bad", "UNVALIDATED differential: " + msg))
    elif t["ood"]:
        out.append(("ood-note", "warn", f"{t['ood']} cell(s) out of distribution (unlike the cells the model was "
                                        "trained on): they are flagged below."))
    if not d.cells:
        out.append(("empty", "warn", "Empty session: no cells were counted."))
    if s.counting is None:
        out.append(("legacy", "warn", "Recorded by an older runtime that logged a cell once per frame it appeared "
                                      "in: a cell held in view for several frames is counted several times."))
    if s.ended is None:
        out.append(("unfinished", "warn", "No end recorded: the capture is still running or was killed; these are "
                                          "the cells counted up to its last committed frame."))
    target = s.count_target
    if target and d.cells and t["wbc_machine"] < target:
        out.append(("short", "warn", f"Count target {target} white cells not reached ({t['wbc_machine']} counted)."))
    if s.signed_by:
        amended = sum(a.action == "amend" for a in d.audit)
        out.append(("signed", "ok", f"Signed off by {s.signed_by} at {_ts(s.signed_at)}."
                    + (f" Amended {amended} time(s) since (see the review trail)." if amended else "")))
    else:
        out.append(("unsigned", "warn", f"Not signed off: {t['flagged_reviewed']} of {t['flagged']} flagged cells "
                                        "reviewed (edge-bloodcls review)."))
    return out


CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:22px 0 8px}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left}.meta td{text-align:left}.muted{color:#777}
.banner{padding:8px 12px;margin:6px 0;border-radius:4px}.bad{background:#c62828;color:#fff;font-weight:600}
.warn{background:#fff3cd}.ok{background:#d7f0d9}.changed{font-weight:700;color:#b35c00}
.gallery{display:flex;flex-wrap:wrap;gap:10px}.cell{width:170px;font-size:12px;border:1px solid #ddd;padding:4px}
.cell img{width:160px;height:160px;object-fit:cover;display:block}.ood{border:2px solid #c62828}
"""

def render(d: SessionData) -> str:
    e = html.escape
    s, cells = d.session, d.cells
    t = tally(cells)
    title = f"White-cell differential: sample {s.sample or '(no sample ID)'}"
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{CSS}</style>"
           f"</head><body><h1>{e(title)}</h1>",
           f"<div class='muted'>session {s.id} of {e(d.path)} · operator {e(s.operator or '-')} · "
           f"{_ts(s.started)} to {_ts(s.ended)}</div>"]
    for bid, cls, text in banners(d, t):
        out.append(f"<div id='{bid}' class='banner {cls}'>{e(text)}</div>")
    out.append("<h2>Differential</h2><table id='differential'><tr><th>cell type</th><th>analyser</th><th>%</th>"
               "<th>95% CI</th><th>after review</th><th>%</th><th>95% CI</th></tr>")
    for k in WBC_LABELS:
        m, f = t["machine"][k], t["final"][k]
        mp, mci = _pct(m, t["wbc_machine"])
        fp, fci = _pct(f, t["wbc_final"])
        cls = " class='changed'" if m != f else ""
        out.append(f"<tr data-label='{k}'{cls}><td>{k}</td><td>{m}</td><td>{mp}</td><td class='muted'>{mci}</td>"
                   f"<td class='final'>{f}</td><td>{fp}</td><td class='muted'>{fci}</td></tr>")
    out.append(f"<tr><th>white cells</th><th id='wbc-machine'>{t['wbc_machine']}</th><th></th><th></th>"
               f"<th id='wbc-final'>{t['wbc_final']}</th><th></th><th></th></tr>")
    for k in [x for x in LABELS if x not in WBC_LABELS]:
        out.append(f"<tr data-label='{k}' class='muted'><td>{k} (not in the differential)</td><td>{t['machine'][k]}"
                   f"</td><td></td><td></td><td class='final'>{t['final'][k]}</td><td></td><td></td></tr>")
    out.append("</table>")
    out.append(f"<p>{len(cells)} cells counted ({s.counting or 'per frame, old log'}); {t['flagged']} flagged "
               f"for review, {t['flagged_reviewed']} of them reviewed; {t['reviewed']} reviewed in all, {t['changed']} "
               f"reclassified; {t['ood']} out of distribution. Intervals: 95% Wilson score.</p>")
    flagged = [c for c in cells if c.review]
    out.append(f"<h2>Flagged cells ({len(flagged)})</h2><div id='gallery' class='gallery'>")
    for c in flagged:
        img = (f"<img alt='cell {c.id}' src='data:image/jpeg;base64,{base64.b64encode(c.crop).decode()}'>"
               if c.crop else "<div class='muted'>(no crop stored)</div>")
        rev = c.reviewed_label
        verdict = (f"→ <b>{e(rev)}</b> ({e(c.reviewer or '?')})" if rev and rev != c.label
                   else f"confirmed ({e(c.reviewer or '?')})" if rev else "<i>not reviewed</i>")
        ood = f" · OOD {c.ood_score:.1f}" if c.ood and c.ood_score is not None else ""
        out.append(f"<div class='cell{' ood' if c.ood else ''}' data-cell='{c.id}'>{img}"
                   f"#{c.id} {e(c.label)} {c.confidence:.2f}{ood} {verdict}<br>"
                   f"<span class='muted'>{e(c.review_reason or '')} · {c.observations or 1} frame(s)"
                   "</span></div>")
    if not flagged:
        out.append("<p class='muted'>No cell was flagged.</p>")
    out.append("</div>")
    out += _trail_table(d.audit)
    out.append("<h2>Model and software</h2><table class='meta'>")
    rows = [("model", s.model), ("model sha256", s.model_sha256),
            ("interpreter", f"{s.interpreter} on {s.device}, {s.threads} thread(s)"),
            ("review threshold", s.review_threshold), ("source", f"{s.source} ({s.mode} mode)"),
            ("frames", s.frames), ("end", s.end_reason or "-"),
            ("count target", s.count_target or "-")] + [(k, v) for k, v in s.versions.items()]
    out += [f"<tr><td>{e(str(k))}</td><td>{e(str(v))}</td></tr>" for k, v in rows]
    out.append(f"</table><p class='muted'>Report generated {_ts(time.time())} by edge-bloodcls report.</p>"
               "</body></html>")
    return "\n".join(out)


def _trail_table(audit: list[AuditEntry]) -> list[str]:
    """The review trail as the lab files it: every decision, undo, sign-off and amendment."""
    e = html.escape
    out = [f"<h2>Review trail ({len(audit)})</h2>"]
    if not audit:
        return out + ["<p class='muted'>No decision recorded.</p>"]
    out.append("<table id='trail' class='meta'><tr><th>#</th><th>when</th><th>who</th><th>action</th><th>cell</th>"
               "<th>from → to</th><th>why</th></tr>")
    for a in audit:
        change = "" if a.action == "signoff" else f"{a.from_label or '(not reviewed)'} → {a.to_label or '(not reviewed)'}"
        out.append(f"<tr data-audit='{a.id}'><td>{a.id}</td><td>{_ts(a.at)}</td><td>{e(a.reviewer)}</td>"
                   f"<td>{e(a.action)}{f' of #{a.undoes}' if a.undoes else ''}</td>"
                   f"<td>{'' if a.cell_id is None else a.cell_id}</td><td>{e(change)}</td><td>{e(a.reason or '')}</td></tr>")
    out.append("</table>")
    return out


def trail_entry(a: AuditEntry) -> str:
    """One audit row as one line (the cells CSV's `trail` column)."""
    what = {"undo": f"undo of #{a.undoes}", "amend": "amend"}.get(a.action, a.action)
    line = f"#{a.id} {_ts(a.at)} {a.reviewer} {what} {a.from_label or '-'}->{a.to_label or '-'}"
    return line + (f" ({a.reason})" if a.reason else "")


CELL_COLUMNS = ["cell_id", "session_id", "first_frame", "last_frame", "observations", "x0", "y0", "x1", "y1", "label",
                "confidence", "review", "review_reason", "ood", "ood_score", "reviewed_label", "reviewer",
                "reviewed_at", "final_label", "version", "trail"]
TRAIL_COLUMNS = ["audit_id", "session_id", "cell_id", "action", "from_label", "to_label", "reviewer", "at", "reason",
                 "undoes", "cell_version"]


def write_csv(d: SessionData, path) -> None:
    """One row per counted cell: the analyser's call, the flags, the review, its trail (every
    decision on the cell, oldest first), the probabilities."""
    by_cell: dict[int, list[str]] = {}
    for a in d.audit:
        if a.cell_id is not None:
            by_cell.setdefault(a.cell_id, []).append(trail_entry(a))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CELL_COLUMNS + [f"p_{k}" for k in LABELS])
        for c in d.cells:
            w.writerow([c.id, c.session_id, c.first_frame if c.first_frame is not None else c.frame_index,
                        c.last_frame if c.last_frame is not None else c.frame_index, c.observations or 1, c.x0, c.y0,
                        c.x1, c.y1, c.label, f"{c.confidence:.6f}", int(c.review), c.review_reason or "",
                        int(c.ood), "" if c.ood_score is None else f"{c.ood_score:.4f}",
                        c.reviewed_label or "", c.reviewer or "", _ts(c.reviewed_at) if c.reviewed_at else "",
                        c.final_label, c.version, "; ".join(by_cell.get(c.id, []))]
                       + [f"{float(c.probs.get(k, 0.0)):.6f}" for k in LABELS])


def write_trail_csv(d: SessionData, path) -> None:
    """The audit trail of the session, one row per entry (an export a LIMS can file)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(TRAIL_COLUMNS)
        for a in d.audit:
            w.writerow([a.id, a.session_id, "" if a.cell_id is None else a.cell_id, a.action, a.from_label or "",
                        a.to_label or "", a.reviewer, _ts(a.at), a.reason or "", a.undoes or "",
                        "" if a.cell_version is None else a.cell_version])


@click.command("report")
@click.argument("db", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.html"),
              show_default=True, help="The HTML report (self-contained: crops inline).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write one row per counted cell here (with each cell's review trail).")
@click.option("--trail", "trail_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the review trail (decisions, undos, sign-off, amendments) here as CSV.")
@click.option("--session", "session_id", type=int, default=None, help="Session ID (default: the last one).")
def report_command(db, out, csv_path, trail_path, session_id):
    """Write the differential report of a session log (after `capture`, and `review` if any).

    An older log is backed up beside it and upgraded (columns and tables added, nothing removed).
    """
    try:
        d = load(db, session_id)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(d), encoding="utf-8")
        for dest, write in ((csv_path, write_csv), (trail_path, write_trail_csv)):
            if dest:
                dest.parent.mkdir(parents=True, exist_ok=True)
                write(d, dest)
    except SessionFileError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except OSError as e:
        click.echo(f"error: {e.filename or out}: {e.strerror}", err=True)
        sys.exit(2)
    t = tally(d.cells)
    s = d.session
    click.echo(f"report: {out} (session {s.id}, sample {s.sample or '-'}: {len(d.cells)} cells, "
               f"{t['wbc_final']} white cells after review, {t['flagged_reviewed']}/{t['flagged']} flagged reviewed"
               + (", UNVALIDATED" if s.unvalidated else "") + ")")
    for label, dest in (("csv", csv_path), ("trail", trail_path)):
        if dest:
            click.echo(f"{label}: {dest}")

"""The report as one HTML page that prints well: what a lab files.

Sections in reading order: the research-use statement, the sample block (sample, operator,
reviewer, signing time, model and hash, trust status, count against target, report status), the
warnings, the rule-based flags, the differential (% with 95% Wilson intervals, absolute counts
when the analyser's WBC count is given, reference intervals with H/L), the signature block, the
flagged cells, the gallery of every cell by class (report_gallery.py), the audit trail, the
model and software. Self-contained (styles and pictures inline); full-size crops, if written, lie
in a folder beside it.

Print: @page sets A4 or Letter; the research-use statement and the page number are in the page
margin of every printed page (CSS margin boxes: Chromium 131+, WeasyPrint); sections that must
not be cut keep together; the gallery starts on a page of its own.
"""

from __future__ import annotations

import html
import time

from ..core.spec import APART, CLASS_BY_LABEL, REMOVED, REVIEW_LABELS, WBC_LABELS
from .reference import Intervals
from .report_gallery import THUMB, Gallery, build
from .report_model import (
    RESEARCH_USE,
    Differential,
    ReportData,
    counts_differential,
    differential,
    iso,
    wilson,
)
from .report_rules import Flag, flags

PAPER = {"a4": "A4", "letter": "letter"}

CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:22px 0 8px}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left}.meta td,.meta th{text-align:left}.meta th{white-space:nowrap}
.muted{color:#777}#differential td{white-space:nowrap}
.banner{padding:8px 12px;margin:6px 0;border-radius:4px}.bad{background:#c62828;color:#fff;font-weight:600}
.warn{background:#fff3cd}.ok{background:#d7f0d9}.changed{font-weight:700;color:#b35c00}
.ruo{border:2px solid #222;padding:6px 10px;font-weight:700;margin:8px 0}
.hl{font-weight:700;color:#b00020}.flag code{background:#eee;padding:0 4px;border-radius:3px}
.gallery{display:flex;flex-wrap:wrap;gap:10px}.cell{width:170px;font-size:12px;border:1px solid #ddd;padding:4px}
.cell img{width:160px;height:160px;object-fit:cover;display:block}.ood{border:2px solid #c62828}
.sheet{position:relative;margin:4px 0 10px}.sheet img{display:block}
.hits{position:absolute;inset:0;display:grid}.hits a:hover{outline:2px solid #1565c0}
.signature{border:1px solid #222;padding:10px 14px;margin:14px 0;max-width:640px}
.signature .line{border-bottom:1px solid #222;height:28px;margin:6px 0 2px;width:320px}
@media print{body{margin:0;max-width:none;font-size:11px}.no-print{display:none}
 .gallery-pages{break-before:page}.signature,.cell,tr,.banner,.flag{break-inside:avoid}
 .sheet{zoom:.75}
 .bad,.warn,.ok,.sheet img{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
"""


def _page_css(paper: str) -> str:
    size = PAPER.get(paper, "A4")
    ruo = RESEARCH_USE.replace('"', "'")
    return (
        f"@page{{size:{size};margin:16mm 14mm 20mm 14mm;"
        f"@bottom-left{{content:\"{ruo}\";font:9px system-ui,sans-serif}}"
        "@bottom-right{content:\"page \" counter(page) \" of \" counter(pages);font:9px system-ui,sans-serif}}"
    )


def banners(data: ReportData, d: Differential) -> list[tuple[str, str, str]]:
    """(id, css class, text) of every warning the page must show before the numbers."""
    m = data.meta
    out = []
    ood = sum(c.ood for c in data.cells)
    if m.unvalidated:
        msg = (m.trust_message or "too many cells out of distribution for this model").removeprefix("WARNING: ")
        out.append(("trust-warning", "bad", "UNVALIDATED differential: " + msg))
    elif ood:
        out.append(
            (
                "ood-note",
                "warn",
                f"{ood} cell(s) out of distribution (unlike the cells the model was "
                "trained on): they are flagged below.",
            )
        )
    if not data.cells:
        out.append(("empty", "warn", "Empty session: no cells were counted."))
    if m.counting is None:
        out.append(
            (
                "legacy",
                "warn",
                "Recorded by an older runtime that logged a cell once per frame it appeared "
                "in: a cell held in view for several frames is counted several times.",
            )
        )
    if m.ended is None:
        out.append(
            (
                "unfinished",
                "warn",
                "No end recorded: the capture is still running or was killed; these are "
                "the cells counted up to its last committed frame.",
            )
        )
    if m.count_target and data.cells and d.wbc_machine < m.count_target:
        out.append(
            ("short", "warn", f"Count target {m.count_target} white cells not reached ({d.wbc_machine} counted).")
        )
    flagged = [c for c in data.cells if c.review]
    if data.signoff:
        n = len(data.versions) or 1
        pending = data.pending_amendments
        out.append(
            (
                "signed",
                "ok" if not pending else "warn",
                f"Signed off by {data.signoff.by} at {iso(data.signoff.at)}"
                + (f" (version {n}; the earlier version(s) are kept below)." if n > 1 else ".")
                + (
                    f" Amended {pending} time(s) since, not yet signed as version {n + 1} (see the audit trail)."
                    if pending
                    else ""
                ),
            )
        )
    else:
        done = sum(c.reviewed_label is not None for c in flagged)
        out.append(
            (
                "unsigned",
                "warn",
                f"Not signed off: {done} of {len(flagged)} flagged cells reviewed (edge-bloodcls review).",
            )
        )
    return out


def _pct(k: int, n: int) -> tuple[str, str]:

    if not n:
        return "-", "-"
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f}%", f"{100 * lo:.1f}-{100 * hi:.1f}%"


def _differential(d: Differential, iv: Intervals) -> list[str]:
    absolute = d.wbc_count is not None
    out = [
        "<table id='differential'><tr><th>cell type</th><th>analyser</th><th>%</th><th>95% CI</th>"
        "<th>after review</th><th>%</th><th>95% CI</th><th>reference %</th><th></th>"
        + ("<th>x10<sup>9</sup>/L</th><th>reference</th><th></th>" if absolute else "")
        + "</tr>"
    ]
    for r in d.rows:
        if not r.in_differential or (not r.model and not r.final):  # an added class nobody used: no row
            continue
        mp, mci = _pct(r.machine, d.wbc_machine)
        fp, fci = _pct(r.final, d.wbc_final)
        ref = iv.interval(r.label)
        mark = iv.mark(r.label, r.per_100_wbc)
        cls = " class='changed'" if r.machine != r.final else ""
        added = "" if r.model else " (reviewer)"  # a class the model lacks: only a person put cells in it
        row = (
            f"<tr data-label='{r.label}'{cls}><td>{_name(r.label)}{added}</td><td>{r.machine}</td><td>{mp}</td>"
            f"<td class='muted'>{mci}</td><td class='final'>{r.final}</td><td>{fp}</td><td class='muted'>{fci}</td>"
            f"<td class='muted'>{_range(ref)}</td><td class='hl mark'>{mark}</td>"
        )
        if absolute:
            aref = iv.interval(r.label, absolute=True)
            amark = iv.mark(r.label, r.absolute, absolute=True)
            row += (
                f"<td class='abs'>{r.absolute:.2f}</td><td class='muted'>{_range(aref)}</td>"
                f"<td class='hl mark-abs'>{amark}</td>"
            )
        out.append(row + "</tr>")
    out.append(
        f"<tr><th>white cells</th><th id='wbc-machine'>{d.wbc_machine}</th><th></th><th></th>"
        f"<th id='wbc-final'>{d.wbc_final}</th><th></th><th></th><th></th><th></th>"
        + (f"<th id='wbc-count'>{d.wbc_count:g}</th><th></th><th></th>" if absolute else "")
        + "</tr>"
    )
    for r in d.rows:
        if r.in_differential or (r.role in (APART, REMOVED) and not r.final):
            continue
        extra = (
            f" ({r.per_100_wbc:.1f} per 100 white cells)"
            if r.label in ("erythroblast", "smudge") and r.per_100_wbc
            else ""
        )
        what = {APART: "reported apart, not in the differential", REMOVED: "removed from the count"}.get(
            r.role, "not in the differential"
        )
        out.append(
            f"<tr data-label='{r.label}' class='muted'><td>{_name(r.label)} ({what})</td>"
            f"<td>{r.machine}</td><td></td><td></td><td class='final'>{r.final}</td><td colspan='4'>{extra}</td>"
            + ("<td></td><td></td><td></td>" if absolute else "")
            + "</tr>"
        )
    out.append("</table>")
    return out


def _name(label: str) -> str:
    return label.replace("_", " ")


def _listed(data: ReportData) -> str:
    """The cells of a listed class (unidentified white cells) by number: counted, to be seen again."""
    e = html.escape
    parts = []
    for label, rc in CLASS_BY_LABEL.items():
        ids = [c.id for c in data.cells if c.final_label == label] if rc.listed else []
        if ids:
            parts.append(
                f"<p id='listed-{label}'><b>{e(rc.name)}s</b> ({len(ids)}, counted among the white cells, "
                "to be looked at again): " + ", ".join(f"#{i}" for i in ids) + "</p>"
            )
    return "".join(parts)


def _versions(data: ReportData) -> list[str]:
    """Every signed version, oldest first: an amendment makes a new one, the old ones stay."""
    e = html.escape
    if not data.versions:
        return []
    out = [
        f"<h2>Signed versions ({len(data.versions)})</h2><table id='versions' class='meta'><tr><th>version</th>"
        "<th>signed by</th><th>signed at</th><th>white cells</th><th>differential (% of white cells)</th>"
        "<th>not counted</th><th>why amended</th></tr>"
    ]
    last = len(data.versions)
    for v in data.versions:
        d = counts_differential({}, v.final)
        shares = ", ".join(
            f"{_name(r.label)} {r.per_100_wbc:.1f}%"
            for r in d.rows
            if r.in_differential and r.final and r.per_100_wbc is not None
        )
        other = ", ".join(f"{_name(r.label)} {r.final}" for r in d.rows if r.role in (APART, REMOVED) and r.final)
        state = "" if v.version == last else f" (superseded by version {v.version + 1})"
        out.append(
            f"<tr data-version='{v.version}'><td>{v.version}{state}</td><td>{e(v.by)}</td><td>{iso(v.at)}</td>"
            f"<td class='wbc'>{d.wbc_final}</td><td>{e(shares)}</td><td>{e(other or '-')}</td>"
            f"<td>{e('; '.join(v.reasons) + ('; ' if v.reasons and v.note else '') + v.note)}</td></tr>"
        )
    out.append("</table>")
    return out


def _range(r: tuple[float, float] | None) -> str:
    return f"{r[0]:g}-{r[1]:g}" if r else ""


def render(data: ReportData, iv: Intervals | None = None, paper: str = "a4", crop_href: str | None = None) -> str:
    """The page. crop_href: a format string with {id} for each cell's full crop (None: no links)."""
    iv = iv or Intervals()
    e = html.escape
    m = data.meta
    d = differential(data)
    fl = flags(data, d, iv)
    sample = m.sample or "(no sample ID)"
    title = f"White-cell differential: sample {sample}"
    target = (
        f"{d.wbc_machine} of {m.count_target} white cells"
        if m.count_target
        else f"{d.wbc_machine} white cells (no target)"
    )
    trust = (
        "UNVALIDATED: the model's trust gate tripped (the warning below)"
        if m.unvalidated
        else f"within the model's domain ({sum(c.ood for c in data.cells)} cell(s) out of distribution, flagged)"
    )
    out = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>"
        f"<style>{CSS}{_page_css(paper)}</style></head><body><h1>{e(title)}</h1>",
        f"<div class='ruo' id='ruo'>{e(RESEARCH_USE)}</div>",
        "<table class='meta' id='sample-block'>",
    ]
    rows = [
        ("sample", sample),
        ("operator", m.operator or "-"),
        ("reviewer (signed by)", data.signoff.by if data.signoff else "- (not signed)"),
        ("signed at", iso(data.signoff.at) if data.signoff else "-"),
        ("signed version", str(len(data.versions) or 1) if data.signoff else "-"),
        ("report status", data.status),
        ("model", m.model or "-"),
        ("model sha256", m.model_sha256 or "-"),
        ("trust", trust),
        ("count", target),
        ("WBC count (analyser)", f"{data.wbc_count:g} x10^9/L" if data.wbc_count is not None else "not given"),
        ("session", f"{m.id} of {m.path}"),
        ("capture", f"{iso(m.started)} to {iso(m.ended) or '(no end)'}"),
    ]
    out += [f"<tr><th>{e(k)}</th><td data-field='{e(k)}'>{e(str(v))}</td></tr>" for k, v in rows]
    out.append("</table>")
    for bid, cls, text in banners(data, d):
        out.append(f"<div id='{bid}' class='banner {cls}'>{e(text)}</div>")
    out.append(_flags(fl))
    out.append("<h2>Differential</h2>")
    out += _differential(d, iv)
    n_flag = sum(c.review for c in data.cells)
    out.append(
        f"<p>{len(data.cells)} cells counted ({e(m.counting or 'per frame, old log')}); {n_flag} flagged for "
        f"review, {sum(c.review and c.reviewed_label is not None for c in data.cells)} of them reviewed; "
        f"{sum(c.reviewed_label is not None for c in data.cells)} reviewed in all, "
        f"{sum(c.reviewed_label not in (None, c.label) for c in data.cells)} reclassified; "
        f"{sum(c.ood for c in data.cells)} out of distribution"
        + (f"; {d.removed} removed from the count by the reviewer (artefacts, duplicates)" if d.removed else "")
        + (f"; {d.apart} smudge cell(s), reported apart" if d.apart else "")
        + ". Intervals: 95% Wilson score. Reference "
        f"intervals: {e(iv.source)}."
        + (" Absolute counts: the share after review x the analyser's WBC count." if data.wbc_count is not None else "")
        + "</p>"
    )
    out.append(_listed(data))
    out.append(_signature(data))
    out += _versions(data)
    gallery = build(data.cells)
    out += _flagged(data, gallery, crop_href)
    out += _classes(data, gallery, crop_href)
    out += _audit(data)
    out += _software(data)
    out.append(
        f"<p class='muted'>Report generated {iso(time.time())} by edge-bloodcls report. {e(RESEARCH_USE)}</p>"
        "</body></html>"
    )
    return "\n".join(out)


def _flags(fl: list[Flag]) -> str:
    if not fl:
        return "<div id='flags'><p class='muted'>No rule raised a flag.</p></div>"
    items = "".join(
        f"<li class='flag' data-rule='{f.rule}'><code>{f.rule}</code> {html.escape(f.message)}</li>" for f in fl
    )
    return f"<div id='flags'><h2>Flags</h2><ul>{items}</ul></div>"


def _signature(data: ReportData) -> str:
    e = html.escape
    if data.signoff:
        body = (
            f"<div>Reviewed and signed by: <b id='signed-by'>{e(data.signoff.by)}</b></div>"
            f"<div>Signed at: <b id='signed-at'>{iso(data.signoff.at)}</b>"
            f" (version <b id='signed-version'>{len(data.versions) or 1}</b>)</div>"
            f"<div>Status: {data.status}</div>"
        )
    else:
        body = (
            "<div><b>NOT SIGNED</b>: preliminary; flagged cells must be reviewed and signed "
            "(edge-bloodcls review).</div>"
        )
    return (
        f"<div class='signature' id='signature'><b>Signature</b>{body}"
        f"<div>Operator (capture): {e(data.meta.operator or '-')}</div><div class='line'></div>"
        "<div class='muted'>signature of the reviewing technologist</div></div>"
    )


def _flagged(data: ReportData, gallery: Gallery, crop_href: str | None) -> list[str]:
    e = html.escape
    flagged = [c for c in data.cells if c.review]
    out = [f"<h2>Flagged cells ({len(flagged)})</h2><div id='gallery' class='gallery'>"]
    for c in flagged:
        uri = gallery.flagged.get(c.id)
        img = f"<img alt='cell {c.id}' src='{uri}'>" if uri else "<div class='muted'>(no crop stored)</div>"
        if uri and crop_href:
            img = f"<a href='{e(crop_href.format(id=c.id))}'>{img}</a>"
        rev = c.reviewed_label
        verdict = (
            f"→ <b>{e(rev)}</b> ({e(c.reviewer or '?')})"
            if rev and rev != c.label
            else f"confirmed ({e(c.reviewer or '?')})"
            if rev
            else "<i>not reviewed</i>"
        )
        ood = f" · OOD {c.ood_score:.1f}" if c.ood and c.ood_score is not None else ""
        out.append(
            f"<div class='cell{' ood' if c.ood else ''}' data-cell='{c.id}'>{img}"
            f"#{c.id} {e(c.label)} {c.confidence:.2f}{ood} {verdict}<br>"
            f"<span class='muted'>{e(c.review_reason)} · {c.observations} frame(s)</span></div>"
        )
    if not flagged:
        out.append("<p class='muted'>No cell was flagged.</p>")
    out.append("</div>")
    return out


def _classes(data: ReportData, gallery: Gallery, crop_href: str | None) -> list[str]:
    """Every cell as a thumbnail, by class after review; a click opens the full crop."""
    e = html.escape
    out = [
        "<div class='gallery-pages' id='classes'><h2>All cells by class</h2>"
        "<p class='muted'>Thumbnails by class after review"
        + (", click one for the full crop" if crop_href else "")
        + ". Hover shows the cell's number and the analyser's call.</p>"
    ]
    order = {k: i for i, k in enumerate(REVIEW_LABELS)}
    current = None
    for sh in sorted(gallery.sheets, key=lambda s: order.get(s.label, len(order))):
        if sh.label != current:
            current = sh.label
            n = sum(c.final_label == sh.label for c in data.cells)
            out.append(f"<h3 data-class='{e(sh.label)}'>{e(sh.label)} ({n})</h3>")
        cols = sh.width // THUMB
        hits = "".join(_hit(c, crop_href) for c in sh.cells)
        out.append(
            f"<div class='sheet' style='width:{sh.width}px'><img alt='{e(sh.label)} thumbnails' "
            f"width='{sh.width}' height='{sh.height}' src='{sh.data_uri}'>"
            f"<div class='hits' style='grid-template-columns:repeat({cols},{THUMB}px);grid-auto-rows:{THUMB}px'>"
            f"{hits}</div></div>"
        )
    if not data.cells:
        out.append("<p class='muted'>No cells.</p>")
    out.append("</div>")
    return out


def _hit(c, crop_href: str | None) -> str:
    href = f" href='{html.escape(crop_href.format(id=c.id))}'" if crop_href else ""
    return f"<a{href} title='#{c.id} {html.escape(c.label)} {c.confidence:.2f}'></a>"


def _audit(data: ReportData) -> list[str]:
    """The review trail as the lab files it: every decision, undo, sign-off and amendment, oldest first."""
    e = html.escape
    out = [f"<h2>Audit trail ({len(data.audit)})</h2>"]
    if not data.audit:
        return out + ["<p class='muted' id='audit-none'>No review decision recorded.</p>"]
    out.append(
        "<table id='audit' class='meta'><tr><th>#</th><th>time</th><th>reviewer</th><th>action</th><th>cell</th>"
        "<th>from</th><th>to</th><th>reason</th></tr>"
    )
    for a in data.audit:
        action = e(a.action) + (f" of #{a.undoes}" if a.undoes else "") + (" (undone)" if a.undone else "")
        out.append(
            f"<tr data-audit='{a.id if a.id is not None else ''}'{' class=muted' if a.undone else ''}>"
            f"<td>{'' if a.id is None else a.id}</td><td>{iso(a.at)}</td><td>{e(a.reviewer)}</td>"
            f"<td>{action}</td><td>{a.cell_id if a.cell_id is not None else ''}"
            f"</td><td>{e(a.from_label or '')}</td><td>{e(a.to_label or '')}</td>"
            f"<td>{e(a.reason or '')}</td></tr>"
        )
    out.append("</table>")
    return out


def _software(data: ReportData) -> list[str]:
    e = html.escape
    m = data.meta
    rows = [
        ("model", m.model),
        ("model sha256", m.model_sha256),
        ("interpreter", f"{m.interpreter} on {m.device}, {m.threads} thread(s)"),
        ("review threshold", m.review_threshold),
        ("source", f"{m.source} ({m.mode} mode)"),
        ("frames", m.frames),
        ("end", m.end_reason or "-"),
        ("count target", m.count_target or "-"),
        ("white-cell classes", ", ".join(WBC_LABELS)),
    ] + [(k, v) for k, v in m.versions.items()]
    return (
        ["<h2>Model and software</h2><table class='meta' id='software'>"]
        + [f"<tr><td>{e(str(k))}</td><td>{e(str(v))}</td></tr>" for k, v in rows]
        + ["</table>"]
    )

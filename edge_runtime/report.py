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

from .session import SessionFileError, connect
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


def load(path, session_id: int | None = None, crops: bool = True) -> dict:
    """The session (the last one by default) with its cells, crops included unless crops=False
    (the review page's state: its crops come one by one). Raises SessionFileError for a file
    that is not a session log or a session that is not in it."""
    con = connect(path, create=False)
    con.row_factory = _dict_row
    try:
        ids = [r["id"] for r in con.execute("SELECT id FROM sessions ORDER BY id")]
        if not ids:
            raise SessionFileError(f"{path}: the log holds no session")
        sid = ids[-1] if session_id is None else session_id
        s = con.execute("SELECT * FROM sessions WHERE id = ?", (sid,)).fetchone()
        if s is None:
            raise SessionFileError(f"{path}: no session {sid} (sessions: {_ranges(ids)})")
        cols = "*" if crops else ", ".join(
            [r["name"] for r in con.execute("PRAGMA table_info(cells)") if r["name"] != "crop"]
            + ["crop IS NOT NULL AS has_crop"])
        s["cells_list"] = con.execute(f"SELECT {cols} FROM cells WHERE session_id = ? ORDER BY id", (sid,)).fetchall()
        s["session_ids"] = ids
        s["path"] = str(path)
        return s
    finally:
        con.close()


def _dict_row(cur, row):
    return {d[0]: v for d, v in zip(cur.description, row)}


def _ranges(ids) -> str:
    return ", ".join(map(str, ids)) if len(ids) <= 8 else f"{ids[0]}-{ids[-1]}"


def final_label(c: dict) -> str:
    return c.get("reviewed_label") or c["label"]


def tally(cells: list[dict]) -> dict:
    """Machine and reviewed (final) counts, white-cell totals and review progress."""
    machine = Counter(c["label"] for c in cells)
    final = Counter(final_label(c) for c in cells)
    flagged = [c for c in cells if c["review"]]
    return {
        "machine": machine, "final": final,
        "wbc_machine": sum(machine[k] for k in WBC_LABELS), "wbc_final": sum(final[k] for k in WBC_LABELS),
        "flagged": len(flagged), "flagged_reviewed": sum(c.get("reviewed_label") is not None for c in flagged),
        "reviewed": sum(c.get("reviewed_label") is not None for c in cells),
        "changed": sum(c.get("reviewed_label") not in (None, c["label"]) for c in cells),
        "ood": sum(bool(c.get("ood")) for c in cells),
    }


def _ts(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _pct(k, n) -> tuple[str, str]:
    if not n:
        return "-", "-"
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f}%", f"{100 * lo:.1f}-{100 * hi:.1f}%"


def banners(s: dict, t: dict) -> list[tuple[str, str, str]]:
    """(id, css class, text) of every warning the page must show before the numbers."""
    out = []
    trust = json.loads(s["trust"]) if s.get("trust") else {}
    if s.get("unvalidated") or trust.get("tripped"):
        msg = (trust.get("message") or "too many cells out of distribution for this model").removeprefix("WARNING: ")
        out.append(("trust-warning", "bad", "UNVALIDATED differential: " + msg))
    elif t["ood"]:
        out.append(("ood-note", "warn", f"{t['ood']} cell(s) out of distribution (unlike the cells the model was "
                                        "trained on): they are flagged below."))
    if not s["cells_list"]:
        out.append(("empty", "warn", "Empty session: no cells were counted."))
    if s.get("counting") is None:
        out.append(("legacy", "warn", "Recorded by an older runtime that logged a cell once per frame it appeared "
                                      "in: a cell held in view for several frames is counted several times."))
    if s.get("ended") is None:
        out.append(("unfinished", "warn", "No end recorded: the capture is still running or was killed; these are "
                                          "the cells counted up to its last committed frame."))
    target = s.get("count_target")
    if target and s["cells_list"] and t["wbc_machine"] < target:
        out.append(("short", "warn", f"Count target {target} white cells not reached ({t['wbc_machine']} counted)."))
    if s.get("signed_by"):
        out.append(("signed", "ok", f"Signed off by {s['signed_by']} at {_ts(s['signed_at'])}."))
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


def render(s: dict) -> str:
    e = html.escape
    cells = s["cells_list"]
    t = tally(cells)
    title = f"White-cell differential: sample {s.get('sample') or '(no sample ID)'}"
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{CSS}</style>"
           f"</head><body><h1>{e(title)}</h1>",
           f"<div class='muted'>session {s['id']} of {e(s['path'])} · operator {e(s.get('operator') or '-')} · "
           f"{_ts(s['started'])} to {_ts(s.get('ended'))}</div>"]
    for bid, cls, text in banners(s, t):
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
    out.append(f"<p>{len(cells)} cells counted ({s.get('counting') or 'per frame, old log'}); {t['flagged']} flagged "
               f"for review, {t['flagged_reviewed']} of them reviewed; {t['reviewed']} reviewed in all, {t['changed']} "
               f"reclassified; {t['ood']} out of distribution. Intervals: 95% Wilson score.</p>")
    flagged = [c for c in cells if c["review"]]
    out.append(f"<h2>Flagged cells ({len(flagged)})</h2><div id='gallery' class='gallery'>")
    for c in flagged:
        img = (f"<img alt='cell {c['id']}' src='data:image/jpeg;base64,{base64.b64encode(c['crop']).decode()}'>"
               if c.get("crop") else "<div class='muted'>(no crop stored)</div>")
        rev = c.get("reviewed_label")
        verdict = (f"→ <b>{e(rev)}</b> ({e(c.get('reviewer') or '?')})" if rev and rev != c["label"]
                   else f"confirmed ({e(c.get('reviewer') or '?')})" if rev else "<i>not reviewed</i>")
        ood = f" · OOD {c['ood_score']:.1f}" if c.get("ood") and c.get("ood_score") is not None else ""
        out.append(f"<div class='cell{' ood' if c.get('ood') else ''}' data-cell='{c['id']}'>{img}"
                   f"#{c['id']} {e(c['label'])} {c['confidence']:.2f}{ood} {verdict}<br>"
                   f"<span class='muted'>{e(c.get('review_reason') or '')} · {c.get('observations') or 1} frame(s)"
                   "</span></div>")
    if not flagged:
        out.append("<p class='muted'>No cell was flagged.</p>")
    out.append("</div><h2>Model and software</h2><table class='meta'>")
    versions = json.loads(s["versions"]) if s.get("versions") else {}
    rows = [("model", s.get("model")), ("model sha256", s.get("model_sha256")),
            ("interpreter", f"{s.get('interpreter')} on {s.get('device')}, {s.get('threads')} thread(s)"),
            ("review threshold", s.get("review_threshold")), ("source", f"{s.get('source')} ({s.get('mode')} mode)"),
            ("frames", s.get("frames")), ("end", s.get("end_reason") or "-"),
            ("count target", s.get("count_target") or "-")] + [(k, v) for k, v in versions.items()]
    out += [f"<tr><td>{e(str(k))}</td><td>{e(str(v))}</td></tr>" for k, v in rows]
    out.append(f"</table><p class='muted'>Report generated {_ts(time.time())} by edge-bloodcls report.</p>"
               "</body></html>")
    return "\n".join(out)


def write_csv(s: dict, path) -> None:
    """One row per counted cell: the analyser's call, the flags, the review, the probabilities."""
    cols = ["cell_id", "session_id", "first_frame", "last_frame", "observations", "x0", "y0", "x1", "y1", "label",
            "confidence", "review", "review_reason", "ood", "ood_score", "reviewed_label", "reviewer", "reviewed_at",
            "final_label"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols + [f"p_{k}" for k in LABELS])
        for c in s["cells_list"]:
            probs = json.loads(c["probs"])
            w.writerow([c["id"], c["session_id"], c.get("first_frame", c["frame_index"]),
                        c.get("last_frame", c["frame_index"]), c.get("observations") or 1, c["x0"], c["y0"], c["x1"],
                        c["y1"], c["label"], f"{c['confidence']:.6f}", c["review"], c.get("review_reason") or "",
                        int(bool(c.get("ood"))), "" if c.get("ood_score") is None else f"{c['ood_score']:.4f}",
                        c.get("reviewed_label") or "", c.get("reviewer") or "",
                        _ts(c["reviewed_at"]) if c.get("reviewed_at") else "", final_label(c)]
                       + [f"{probs.get(k, 0.0):.6f}" for k in LABELS])


@click.command("report")
@click.argument("db", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.html"),
              show_default=True, help="The HTML report (self-contained: crops inline).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write one row per counted cell here.")
@click.option("--session", "session_id", type=int, default=None, help="Session ID (default: the last one).")
def report_command(db, out, csv_path, session_id):
    """Write the differential report of a session log (after `capture`, and `review` if any).

    An older log is upgraded in place first (columns added, nothing removed).
    """
    try:
        s = load(db, session_id)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(s), encoding="utf-8")
        if csv_path:
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            write_csv(s, csv_path)
    except SessionFileError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except OSError as e:
        click.echo(f"error: {e.filename or out}: {e.strerror}", err=True)
        sys.exit(2)
    t = tally(s["cells_list"])
    click.echo(f"report: {out} (session {s['id']}, sample {s.get('sample') or '-'}: {len(s['cells_list'])} cells, "
               f"{t['wbc_final']} white cells after review, {t['flagged_reviewed']}/{t['flagged']} flagged reviewed"
               + (", UNVALIDATED" if s.get("unvalidated") else "") + ")")
    if csv_path:
        click.echo(f"csv: {csv_path}")

"""`edge-bloodcls report`: one session of the log as a self-contained HTML page (and a CSV).

The page is what a lab files: differential counts and percentages with 95% Wilson intervals,
the analyser's counts beside the counts after a technologist's review, a gallery of the flagged
cells (crops inline as data URIs, so the file can be mailed or archived alone), any warning
(unvalidated differential, cells out of distribution, an old per-frame log, an unfinished
session), the model with its sha256, the software versions and the times.
"""
from __future__ import annotations

import json
import math
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import click

from . import report_html
from .reference import Intervals, RangesError, load_intervals
from .report_adapt import from_load
from .report_csv import SafeWriter, write_summary
from .report_fhir import bundle
from .report_gallery import write_crops
from .report_pdf import PdfError, html_to_pdf
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
    # Text another tool wrote that is not UTF-8 is shown with backslash escapes, not a crash.
    con.text_factory = lambda b: b.decode("utf-8", "backslashreplace")
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


def render(s: dict, wbc_count: float | None = None, intervals: Intervals | None = None, paper: str = "a4",
           crop_href: str | None = None) -> str:
    """The HTML report of a load() result (report_html.py renders it from typed records)."""
    return report_html.render(from_load(s, wbc_count), intervals, paper, crop_href)


def write_csv(s: dict, path) -> None:
    """One row per counted cell: the analyser's call, the flags, the review, the probabilities."""
    cols = ["cell_id", "session_id", "first_frame", "last_frame", "observations", "x0", "y0", "x1", "y1", "label",
            "confidence", "review", "review_reason", "ood", "ood_score", "reviewed_label", "reviewer", "reviewed_at",
            "final_label"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = SafeWriter(f)  # a sample ID or name beginning with = + - @ is not run as a formula
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


FORMATS = {"html": "html", "pdf": "pdf", "csv": "csv", "fhir": "fhir.json"}


def _wbc(ctx, param, value):
    if value is not None and not 0 < value < 1000:
        raise click.BadParameter(f"{value:g} is not a white-cell count in x10^9/L (0 < count < 1000)")
    return value


@click.command("report")
@click.argument("db", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default="html", show_default=True,
              help="html: the page a lab files (prints on A4/Letter); pdf: that page printed by headless Chromium; "
                   "csv: one summary row of the session; fhir: a FHIR R4 Bundle for a laboratory system.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file (default: report.html, report.pdf, report.csv or report.fhir.json).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write one row per counted cell here (as before --format).")
@click.option("--wbc-count", type=float, default=None, callback=_wbc,
              help="The analyser's white-cell count, x10^9/L: adds absolute counts.")
@click.option("--ranges", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Reference intervals and rule thresholds, JSON or TOML (README, \"Report\"); default: an "
                   "example adult table.")
@click.option("--paper", type=click.Choice(["a4", "letter"]), default="a4", show_default=True,
              help="Printed page size (html and pdf).")
@click.option("--full-crops/--no-full-crops", default=False, show_default=True,
              help="html: also write every cell's full crop to <out>_crops/ beside the page, and link each "
                   "thumbnail to it (the review server's /report links them without this).")
@click.option("--session", "session_id", type=int, default=None, help="Session ID (default: the last one).")
def report_command(db, fmt, out, csv_path, wbc_count, ranges, paper, full_crops, session_id):
    """Write the differential report of a session log (after `capture`, and `review` if any).

    An older log is upgraded in place first (columns added, nothing removed).
    """
    out = out or Path(f"report.{FORMATS[fmt]}")
    t0 = time.perf_counter()
    extra = ""
    try:
        iv = load_intervals(ranges)
        s = load(db, session_id)
        data = from_load(s, wbc_count)
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "html":
            href = None
            if full_crops and s["cells_list"]:
                folder = out.with_name(out.stem + "_crops")
                n = write_crops(data.cells, folder)
                href = quote(folder.name) + "/{id}.jpg"
                extra = f", {n} full crops in {folder}"
            out.write_text(report_html.render(data, iv, paper, href), encoding="utf-8")
        elif fmt == "pdf":
            html_to_pdf(report_html.render(data, iv, paper), out)
        elif fmt == "csv":
            write_summary(data, iv, out)
        else:
            out.write_text(json.dumps(bundle(data, iv), indent=1, ensure_ascii=False), encoding="utf-8")
        if csv_path:
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            write_csv(s, csv_path)
    except (SessionFileError, RangesError, PdfError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except sqlite3.DatabaseError as e:
        click.echo(f"error: {db}: not a readable session log ({e})", err=True)
        sys.exit(2)
    except OSError as e:
        click.echo(f"error: {e.filename or out}: {e.strerror}", err=True)
        sys.exit(2)
    t = tally(s["cells_list"])
    click.echo(f"report: {out} ({fmt}, {time.perf_counter() - t0:.1f} s; session {s['id']}, sample "
               f"{s.get('sample') or '-'}: {len(s['cells_list'])} cells, {t['wbc_final']} white cells after review, "
               f"{t['flagged_reviewed']}/{t['flagged']} flagged reviewed, {data.status}"
               + (", UNVALIDATED" if data.meta.unvalidated else "") + extra + ")")
    if csv_path:
        click.echo(f"csv: {csv_path}")

"""`edge-bloodcls report`: one session of the log as a report a lab files, or an export.

`--format html` (default) is the page: differential counts and percentages with 95% Wilson
intervals, absolute counts, reference intervals and rule flags, the analyser's counts beside the
counts after review, the sign-off block, the audit trail and a gallery (report_html.py); `pdf` is
that page printed by headless Chromium; `csv` one summary row; `fhir` a FHIR R4 Bundle. The
session is read through the store (store.py) and turned into report records once
(report_adapt.py); every output is rendered from those records.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import click

from edge_bloodcls.errors import CliError

from ..core.spec import APART_LABELS, DIFFERENTIAL_LABELS, LABELS, REMOVED_LABELS, WBC_LABELS
from . import report_html
from .reference import Intervals, RangesError, load_intervals
from .report_adapt import from_store
from .report_csv import SafeWriter, write_summary
from .report_fhir import bundle
from .report_gallery import write_crops
from .report_model import Z95, wilson  # noqa: F401  (report.wilson: what tests and scripts name)
from .report_pdf import PdfError, html_to_pdf
from .store import AuditEntry, Cell, SessionData, SessionFileError, SessionStore


def load(path, session_id: int | None = None, crops: bool = True) -> SessionData:
    """The session (the last one by default) with its cells, crops included unless crops=False,
    and its audit trail. Raises SessionFileError for a file that is not a session log or a
    session that is not in it."""
    with SessionStore(path) as store:
        return store.load(session_id, crops=crops)


def final_label(c: Cell) -> str:
    return c.final_label


def tally(cells: list[Cell]) -> dict:
    """Machine and reviewed (final) counts, white-cell totals (after review: the white-cell classes
    of spec.REVIEW_CLASSES), cells removed (artefact, duplicate) or apart (smudge), review progress."""
    machine = Counter(c.label for c in cells)
    final = Counter(c.final_label for c in cells)
    flagged = [c for c in cells if c.review]
    return {
        "machine": machine,
        "final": final,
        "wbc_machine": sum(machine[k] for k in WBC_LABELS),
        "wbc_final": sum(final[k] for k in DIFFERENTIAL_LABELS),
        "removed": sum(final[k] for k in REMOVED_LABELS),
        "apart": sum(final[k] for k in APART_LABELS),
        "flagged": len(flagged),
        "flagged_reviewed": sum(c.reviewed_label is not None for c in flagged),
        "reviewed": sum(c.reviewed_label is not None for c in cells),
        "changed": sum(c.reviewed_label not in (None, c.label) for c in cells),
        "ood": sum(c.ood for c in cells),
    }


def _ts(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def render(
    d: SessionData,
    wbc_count: float | None = None,
    intervals: Intervals | None = None,
    paper: str = "a4",
    crop_href: str | None = None,
) -> str:
    """The HTML report of a stored session (report_html.py renders it from report records)."""
    return report_html.render(from_store(d, wbc_count), intervals, paper, crop_href)


def trail_entry(a: AuditEntry) -> str:
    """One audit row as one line (the cells CSV's `trail` column)."""
    what = {"undo": f"undo of #{a.undoes}", "amend": "amend"}.get(a.action, a.action)
    line = f"#{a.id} {_ts(a.at)} {a.reviewer} {what} {a.from_label or '-'}->{a.to_label or '-'}"
    return line + (f" ({a.reason})" if a.reason else "")


CELL_COLUMNS = [
    "cell_id",
    "session_id",
    "first_frame",
    "last_frame",
    "observations",
    "x0",
    "y0",
    "x1",
    "y1",
    "label",
    "confidence",
    "review",
    "review_reason",
    "ood",
    "ood_score",
    "reviewed_label",
    "reviewer",
    "reviewed_at",
    "final_label",
    "version",
    "trail",
]
TRAIL_COLUMNS = [
    "audit_id",
    "session_id",
    "cell_id",
    "action",
    "from_label",
    "to_label",
    "reviewer",
    "at",
    "reason",
    "undoes",
    "cell_version",
]


def write_csv(d: SessionData, path) -> None:
    """One row per counted cell: the analyser's call, the flags, the review, its trail (every
    decision on the cell, oldest first), the probabilities."""
    by_cell: dict[int, list[str]] = {}
    for a in d.audit:
        if a.cell_id is not None:
            by_cell.setdefault(a.cell_id, []).append(trail_entry(a))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = SafeWriter(f)  # a sample ID or name beginning with = + - @ is not run as a formula
        w.writerow(CELL_COLUMNS + [f"p_{k}" for k in LABELS])
        for c in d.cells:
            w.writerow(
                [
                    c.id,
                    c.session_id,
                    c.first_frame if c.first_frame is not None else c.frame_index,
                    c.last_frame if c.last_frame is not None else c.frame_index,
                    c.observations or 1,
                    c.x0,
                    c.y0,
                    c.x1,
                    c.y1,
                    c.label,
                    f"{c.confidence:.6f}",
                    int(c.review),
                    c.review_reason or "",
                    int(c.ood),
                    "" if c.ood_score is None else f"{c.ood_score:.4f}",
                    c.reviewed_label or "",
                    c.reviewer or "",
                    _ts(c.reviewed_at) if c.reviewed_at else "",
                    c.final_label,
                    c.version,
                    "; ".join(by_cell.get(c.id, [])),
                ]
                + [f"{float(c.probs.get(k, 0.0)):.6f}" for k in LABELS]
            )


def write_trail_csv(d: SessionData, path) -> None:
    """The audit trail of the session, one row per entry (an export a LIMS can file)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = SafeWriter(f)  # a sample ID or name beginning with = + - @ is not run as a formula
        w.writerow(TRAIL_COLUMNS)
        for a in d.audit:
            w.writerow(
                [
                    a.id,
                    a.session_id,
                    "" if a.cell_id is None else a.cell_id,
                    a.action,
                    a.from_label or "",
                    a.to_label or "",
                    a.reviewer,
                    _ts(a.at),
                    a.reason or "",
                    a.undoes or "",
                    "" if a.cell_version is None else a.cell_version,
                ]
            )


FORMATS = {"html": "html", "pdf": "pdf", "csv": "csv", "fhir": "fhir.json"}


def _wbc(ctx, param, value):
    if value is not None and not 0 < value < 1000:
        raise click.BadParameter(f"{value:g} is not a white-cell count in x10^9/L (0 < count < 1000)")
    return value


@click.command("report")
@click.argument("db", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(FORMATS)),
    default="html",
    show_default=True,
    help="html: the page a lab files (prints on A4/Letter); pdf: that page printed by headless Chromium; "
    "csv: one summary row of the session; fhir: a FHIR R4 Bundle for a laboratory system.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Output file (default: report.html, report.pdf, report.csv or report.fhir.json).",
)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write one row per counted cell here (with each cell's review trail).",
)
@click.option(
    "--trail",
    "trail_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the review trail (decisions, undos, sign-off, amendments) here as CSV.",
)
@click.option(
    "--wbc-count",
    type=float,
    default=None,
    callback=_wbc,
    help="The analyser's white-cell count, x10^9/L: adds absolute counts.",
)
@click.option(
    "--ranges",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Reference intervals and rule thresholds, JSON or TOML (README, \"Report\"); default: an example adult table.",
)
@click.option(
    "--paper",
    type=click.Choice(["a4", "letter"]),
    default="a4",
    show_default=True,
    help="Printed page size (html and pdf).",
)
@click.option(
    "--full-crops/--no-full-crops",
    default=False,
    show_default=True,
    help="html: also write every cell's full crop to <out>_crops/ beside the page, and link each "
    "thumbnail to it (the review server's /report links them without this).",
)
@click.option("--session", "session_id", type=int, default=None, help="Session ID (default: the last one).")
def report_command(db, fmt, out, csv_path, trail_path, wbc_count, ranges, paper, full_crops, session_id):
    """Write the differential report of a session log (after `capture`, and `review` if any).

    An older log is backed up beside it and upgraded (columns and tables added, nothing removed).
    """
    out = out or Path(f"report.{FORMATS[fmt]}")
    t0 = time.perf_counter()
    extra = ""
    try:
        iv = load_intervals(ranges)
        d = load(db, session_id)
        data = from_store(d, wbc_count)
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "html":
            href = None
            if full_crops and d.cells:
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
        for dest, write in ((csv_path, write_csv), (trail_path, write_trail_csv)):
            if dest:
                dest.parent.mkdir(parents=True, exist_ok=True)
                write(d, dest)
    except (SessionFileError, RangesError, PdfError) as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"{e.filename or out}: {e.strerror}") from None
    t = tally(d.cells)
    s = d.session
    click.echo(
        f"report: {out} ({fmt}, {time.perf_counter() - t0:.1f} s; session {s.id}, sample {s.sample or '-'}: "
        f"{len(d.cells)} cells, {t['wbc_final']} white cells after review, "
        f"{t['flagged_reviewed']}/{t['flagged']} flagged reviewed, {data.status}"
        + (", UNVALIDATED" if data.meta.unvalidated else "")
        + extra
        + ")"
    )
    for label, dest in (("csv", csv_path), ("trail", trail_path)):
        if dest:
            click.echo(f"{label}: {dest}")

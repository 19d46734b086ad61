"""`edge-bloodcls review`: the page where a technologist reviews a whole session as a lab does
and signs it: every cell in a gallery grouped by class, with filters (flagged, out of
distribution, low confidence, reviewed or not), multi-select, reclassification into the model's
eight classes or the classes a reviewer adds (spec.REVIEW_CLASSES: band neutrophil, blast, smudge
cell, artefact, duplicate, ...) by key, click or touch, the differential recomputed as you go,
and a confirmation screen before signing.

Sign-off rules are the store's (SessionStore.sign_off), not the page's: every flagged cell
reviewed; an UNVALIDATED session (the trust gate tripped) has every cell reviewed; a short count is
acknowledged. A signed session is read-only (decisions are refused with 409); an amendment carries
a reason, and signing it makes the next version (2, 3, ...), the earlier ones kept in the trail
and in the report.

Every decision goes through the session store (store.py): its own SQLite transaction, committed
(synchronous=FULL, WAL) before the page is told it is saved, so a server killed right after loses
nothing. Several servers (or a capture still writing) may share one log: a decision carries the
version of the cell it was made on, and one made on a version someone has since changed is
refused (409) with who changed it; the page then shows the cell as it now is. Decisions, undos,
sign-offs and amendments are rows of the append-only audit trail.

Served by Starlette on uvicorn behind webserve.Guard (token, Host allow-list, Origin on writes,
security headers, request limits). Who decides and who signs is the server's `--reviewer`, never
the page's. The page (web/review.html, review.js, review.css) has no inline script or style and
puts every value in the DOM as text. Cell numbers are the store's cell ids, as in capture's
summary, the report and the CSVs.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

import click

from edge_bloodcls.errors import CliError

from ..capture.webserve import CSP, CSP_REPORT, BadRequest, Field, WebServer, json_for_html, read_json
from ..core.spec import LABELS, REVIEW_CLASSES, REVIEW_LABELS, WBC_LABELS
from .records import SignCheck
from .report import load, render, tally
from .store import Cell, Decision, Refusal, SessionFileError, SessionStore, StaleCell

WEB = Path(__file__).parent / "web"
STATIC = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8"}
MAX_CELL = 2**31 - 1

ReviewError = Refusal  # what a review action the log refuses raises (HTTP status, one line)

DECIDE = {
    "cell": Field(int, 1, MAX_CELL),
    "label": Field(str, choices=REVIEW_LABELS),
    "version": Field(int, 0, MAX_CELL),
}
AMEND = {**DECIDE, "reason": Field(str, max_len=500)}
SIGNOFF = {"short_count": Field(int, 0, 1)}  # 1: the reviewer acknowledges a short count
EMPTY: dict[str, Field] = {}


def state(store: SessionStore, sid: int, all_cells: bool) -> dict:
    d = store.load(sid, crops=False)
    t = tally(d.cells)
    s = d.session
    signs = [a for a in d.audit if a.action == "signoff"]
    return {
        "session": {
            "id": s.id,
            "sample": s.sample,
            "operator": s.operator,
            "model": s.model,
            "started": s.started,
            "ended": s.ended,
            "signed_by": s.signed_by,
            "signed_at": s.signed_at,
            "unvalidated": int(s.unvalidated),
            "count_target": s.count_target,
            "review_threshold": s.review_threshold,
            "trust_message": str(s.trust.get("message") or "").removeprefix("WARNING: "),
        },
        "labels": list(LABELS),
        "wbc_labels": list(WBC_LABELS),
        "all": all_cells,
        "classes": [
            {"label": c.label, "name": c.name, "role": c.role, "key": c.key, "model": c.model} for c in REVIEW_CLASSES
        ],
        "cells": [cell_json(c) for c in d.cells if all_cells or c.review],
        "check": check_json(store.sign_check(sid)),
        "versions": [
            {"version": k, "by": a.reviewer, "at": a.at, "note": a.reason or ""} for k, a in enumerate(signs, 1)
        ],
        "tally": {
            "machine": dict(t["machine"]),
            "final": dict(t["final"]),
            "wbc_machine": t["wbc_machine"],
            "wbc_final": t["wbc_final"],
            "flagged": t["flagged"],
            "flagged_reviewed": t["flagged_reviewed"],
            "removed": t["removed"],
            "apart": t["apart"],
            "cells": len(d.cells),
        },
    }


def check_json(c: SignCheck) -> dict:
    """The sign-off rules as the page states them: each rule, whether it holds, and the reasons a
    sign-off now would be refused."""
    return {
        "signed_version": c.signed_version,
        "signed_by": c.signed_by,
        "pending": c.pending,
        "closed": c.closed,
        "next_version": c.next_version,
        "cells": c.cells,
        "flagged": c.flagged,
        "flagged_left": c.flagged_left,
        "unreviewed": c.unreviewed,
        "unvalidated": c.unvalidated,
        "wbc": c.wbc,
        "count_target": c.count_target,
        "short": c.short,
        "blockers": c.blockers(short_count=True),
        "blockers_unacknowledged": c.blockers(),
    }


def cell_json(c: Cell) -> dict:
    top = sorted(c.probs.items(), key=lambda kv: -float(kv[1]))[:3]
    return {
        "id": c.id,
        "label": c.label,
        "confidence": c.confidence,
        "review": int(c.review),
        "review_reason": c.review_reason,
        "ood": int(c.ood),
        "ood_score": c.ood_score,
        "observations": c.observations,
        "first_frame": c.first_frame,
        "last_frame": c.last_frame,
        "frame": c.frame_index,
        "box": [c.x0, c.y0, c.x1, c.y1],
        "reviewed_label": c.reviewed_label,
        "reviewer": c.reviewer,
        "reviewed_at": c.reviewed_at,
        "version": c.version,
        "top": [[k, round(float(p), 3)] for k, p in top],
        "has_crop": c.has_crop,
    }


def decision_json(d: Decision) -> dict:
    return {
        "cell": d.cell_id,
        "reviewed_label": d.reviewed_label,
        "machine_label": d.machine_label,
        "reviewer": d.reviewer,
        "version": d.version,
        "audit_id": d.audit_id,
        "action": d.action,
    }


def check_labels(store: SessionStore, sid: int) -> None:
    """Every label in the session is one of the label set: anything else was not written by
    capture (whose bundle's labels are checked at load) and is refused before it reaches a page."""
    for c in store.cells(sid):
        for label, allowed in ((c.label, LABELS), (c.reviewed_label, REVIEW_LABELS)):
            if label is not None and label not in allowed:
                raise SessionFileError(
                    f"{store.path}: cell {c.id} has label {label[:40]!r}, not one of the "
                    "label set; refusing to serve it"
                )


def make_app(store: SessionStore, sid: int, all_cells: bool, reviewer: str):
    # Starlette: the [edge] extra, only when the review page is served
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    page = (
        (WEB / "review.html")
        .read_text(encoding="utf-8")
        .replace("{{CONFIG}}", json_for_html({"all": all_cells, "reviewer": reviewer}))
    )

    def answer(fn):
        """One place that turns refusals into 4xx JSON with a reason, and anything the log cannot
        do into 503 with its one line: no traceback reaches the page or the console."""

        async def endpoint(request: Request):
            try:
                return JSONResponse(await fn(request))
            except StaleCell as e:  # the page shows the cell as it now is, and who changed it
                return JSONResponse({"error": str(e), "cell": cell_json(e.cell)}, e.status)
            except (Refusal, BadRequest) as e:
                return JSONResponse({"error": str(e)}, e.status)
            except SessionFileError as e:
                return JSONResponse({"error": str(e)}, 503)

        return endpoint

    async def index(request: Request):
        return Response(page, media_type="text/html; charset=utf-8")

    async def static(request: Request):
        name = request.path_params["name"]
        if name not in STATIC:
            return Response("not found", 404, media_type="text/plain")
        return Response((WEB / name).read_bytes(), media_type=STATIC[name])

    async def get_state(request: Request):
        show_all = request.query_params.get("all", "1" if all_cells else "0") == "1"
        return await run_in_threadpool(state, store, sid, show_all)

    async def crop(request: Request):
        try:
            cid = int(request.path_params["cell"])
            jpeg = await run_in_threadpool(store.crop, sid, cid) if 0 < cid <= MAX_CELL else None
        except SessionFileError as e:
            return Response(str(e), 503, media_type="text/plain")
        return Response(jpeg, media_type="image/jpeg") if jpeg else Response("no crop", 404, media_type="text/plain")

    async def report(request: Request):
        try:
            # the report's thumbnails link to the full crop this server serves
            html = await run_in_threadpool(lambda: render(store.load(sid), crop_href="/crop/{id}"))
        except SessionFileError as e:
            return Response(str(e), 503, media_type="text/plain")
        return Response(html, media_type="text/html; charset=utf-8")

    async def decide(request: Request):
        b = await read_json(request, DECIDE)
        return decision_json(await run_in_threadpool(store.decide, sid, b["cell"], b["label"], reviewer, b["version"]))

    async def amend(request: Request):
        b = await read_json(request, AMEND)
        return decision_json(
            await run_in_threadpool(store.amend, sid, b["cell"], b["label"], reviewer, b["version"], b["reason"])
        )

    async def undo(request: Request):
        await read_json(request, EMPTY)
        return decision_json(await run_in_threadpool(store.undo, sid, reviewer))

    async def signoff(request: Request):
        b = await read_json(request, SIGNOFF)
        # the signer is this server's reviewer: the body carries only the acknowledgement
        r = await run_in_threadpool(store.sign_off, sid, reviewer, bool(b["short_count"]))
        return {
            "signed_by": r.signed_by,
            "signed_at": r.signed_at,
            "audit_id": r.audit_id,
            "version": r.version,
            "short_count": r.short_count,
        }

    async def get_check(request: Request):
        return check_json(await run_in_threadpool(store.sign_check, sid))

    routes = [
        Route("/", index),
        Route("/static/{name}", static),
        Route("/api/state", answer(get_state)),
        Route("/api/check", answer(get_check)),
        Route("/crop/{cell:int}", crop),
        Route("/report", report),
        Route("/api/decide", answer(decide), methods=["POST"]),
        Route("/api/amend", answer(amend), methods=["POST"]),
        Route("/api/undo", answer(undo), methods=["POST"]),
        Route("/api/signoff", answer(signoff), methods=["POST"]),
    ]
    return Starlette(routes=routes)


def make_server(
    path,
    sid: int,
    host: str = "127.0.0.1",
    port: int = 8765,
    all_cells: bool = False,
    reviewer: str = "",
    allow: tuple[str, ...] = (),
) -> WebServer:
    """The review server of session sid, bound (not yet serving: .start() in a thread, .serve()
    here). Raises SessionFileError (one line) for a log it cannot serve, ValueError without a
    reviewer, OSError when it cannot listen."""
    if not reviewer.strip():
        raise ValueError("no reviewer: give --reviewer NAME (decisions are signed with it)")
    store = SessionStore(path)  # one connection for the server's life, shared by its threads
    try:
        check_labels(store, sid)
        app = make_app(store, sid, all_cells, reviewer.strip())
        return WebServer(app, host, port, lambda p: CSP_REPORT if p == "/report" else CSP, allow, store.close)
    except BaseException:
        store.close()
        raise


@click.command("review")
@click.argument("db", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Another machine on the lab network: 0.0.0.0 (README: the URL with "
    "its token is the key; anyone who has it can review).",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0: any free port.")
@click.option("--all", "all_cells", is_flag=True, help="Open the gallery on every cell, not on the flagged ones.")
@click.option("--session", "session_id", type=int, default=None, help="Session ID (default: the last one).")
@click.option("--reviewer", default=None, help="Your name, put on each decision [default: the login name].")
@click.option(
    "--allow-host",
    "allow",
    multiple=True,
    help="Another name the browser may use for this machine (repeatable), e.g. pi.lab.example.",
)
def review_command(db, host, port, all_cells, session_id, reviewer, allow):
    """Review a session's cells in the browser (a gallery by class), reclassify, sign off.

    Keys: 1-8 the model's classes (basophil, eosinophil, erythroblast, ig, lymphocyte, monocyte,
    neutrophil, platelet); n band neutrophil, r reactive lymphocyte, b blast, p plasma cell,
    x unidentified, s smudge, a artefact, d duplicate; Enter or c confirms, u undoes, arrows
    move, Space selects, v the larger view, ? all keys. Each decision is saved at once. Open the
    URL printed at start: it carries this server's token.
    """
    try:
        d = load(db, session_id, crops=False)
        server = make_server(db, d.session.id, host, port, all_cells, reviewer or _login(), tuple(allow))
    except (SessionFileError, ValueError) as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"{host}:{port}: cannot listen ({e.strerror})") from None
    t = tally(d.cells)
    click.echo(
        f"review {server.url} (session {d.session.id}, sample {d.session.sample or '-'}: {len(d.cells)} "
        f"cells, {t['flagged']} flagged, {t['flagged_reviewed']} reviewed); Ctrl-C to stop"
    )
    sys.stdout.flush()
    try:
        server.serve()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers: --reviewer is then required
        return ""

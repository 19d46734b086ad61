"""`edge-bloodcls review`: a web page where a technologist checks the flagged cells of a session,
confirms or reclassifies each (keys 1-8, Enter, u to undo) and signs the differential.

Every decision goes through the session store (store.py): its own SQLite transaction, committed
(synchronous=FULL, WAL) before the page is told it is saved, so a server killed right after loses
nothing. Several servers (or a capture still writing) may share one log: a decision carries the
version of the cell it was made on, and one made on a version someone has since changed is
refused (409) with who changed it; the page then shows the cell as it now is. Decisions, undos,
sign-off and amendments are rows of the append-only audit trail.

Served by Starlette on uvicorn behind webserve.Guard (token, Host allow-list, Origin on writes,
security headers, request limits). Who decides is the server's `--reviewer`, never the page's.
The page (web/review.html, review.js, review.css) has no inline script and puts every value in
the DOM as text.
"""
from __future__ import annotations

import getpass
import sys
from pathlib import Path

import click

from .report import load, render, tally
from .spec import LABELS, WBC_LABELS
from .store import Cell, Decision, Refusal, SessionFileError, SessionStore, StaleCell
from .webserve import CSP, CSP_REPORT, BadRequest, Field, WebServer, json_for_html, read_json

WEB = Path(__file__).parent / "web"
STATIC = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8"}
MAX_CELL = 2 ** 31 - 1

ReviewError = Refusal  # what a review action the log refuses raises (HTTP status, one line)

DECIDE = {"cell": Field(int, 1, MAX_CELL), "label": Field(str, choices=tuple(LABELS)),
          "version": Field(int, 0, MAX_CELL)}
AMEND = {**DECIDE, "reason": Field(str, max_len=500)}
EMPTY: dict[str, Field] = {}


def state(store: SessionStore, sid: int, all_cells: bool) -> dict:
    d = store.load(sid, crops=False)
    t = tally(d.cells)
    s = d.session
    return {
        "session": {"id": s.id, "sample": s.sample, "operator": s.operator, "model": s.model, "started": s.started,
                    "ended": s.ended, "signed_by": s.signed_by, "signed_at": s.signed_at,
                    "unvalidated": int(s.unvalidated), "count_target": s.count_target},
        "labels": list(LABELS), "wbc_labels": list(WBC_LABELS), "all": all_cells,
        "cells": [cell_json(c) for c in d.cells if all_cells or c.review],
        "tally": {"machine": dict(t["machine"]), "final": dict(t["final"]), "wbc_machine": t["wbc_machine"],
                  "wbc_final": t["wbc_final"], "flagged": t["flagged"], "flagged_reviewed": t["flagged_reviewed"],
                  "cells": len(d.cells)},
    }


def cell_json(c: Cell) -> dict:
    return {"id": c.id, "label": c.label, "confidence": c.confidence, "review": int(c.review),
            "review_reason": c.review_reason, "ood": int(c.ood), "ood_score": c.ood_score,
            "observations": c.observations, "first_frame": c.first_frame, "last_frame": c.last_frame,
            "reviewed_label": c.reviewed_label, "reviewer": c.reviewer, "reviewed_at": c.reviewed_at,
            "version": c.version, "probs": c.probs, "has_crop": c.has_crop}


def decision_json(d: Decision) -> dict:
    return {"cell": d.cell_id, "reviewed_label": d.reviewed_label, "machine_label": d.machine_label,
            "reviewer": d.reviewer, "version": d.version, "audit_id": d.audit_id, "action": d.action}


def check_labels(store: SessionStore, sid: int) -> None:
    """Every label in the session is one of the label set: anything else was not written by
    capture (whose bundle's labels are checked at load) and is refused before it reaches a page."""
    for c in store.cells(sid):
        for label in (c.label, c.reviewed_label):
            if label is not None and label not in LABELS:
                raise SessionFileError(f"{store.path}: cell {c.id} has label {label[:40]!r}, not one of the "
                                       "label set; refusing to serve it")


def make_app(store: SessionStore, sid: int, all_cells: bool, reviewer: str):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
    from starlette.concurrency import run_in_threadpool

    page = (WEB / "review.html").read_text(encoding="utf-8").replace(
        "{{CONFIG}}", json_for_html({"all": all_cells, "reviewer": reviewer}))

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
        return decision_json(await run_in_threadpool(store.decide, sid, b["cell"], b["label"], reviewer,
                                                     b["version"]))

    async def amend(request: Request):
        b = await read_json(request, AMEND)
        return decision_json(await run_in_threadpool(store.amend, sid, b["cell"], b["label"], reviewer,
                                                     b["version"], b["reason"]))

    async def undo(request: Request):
        await read_json(request, EMPTY)
        return decision_json(await run_in_threadpool(store.undo, sid, reviewer))

    async def signoff(request: Request):
        await read_json(request, EMPTY)
        r = await run_in_threadpool(store.sign_off, sid, reviewer)
        return {"signed_by": r.signed_by, "signed_at": r.signed_at, "audit_id": r.audit_id}

    routes = [Route("/", index), Route("/static/{name}", static), Route("/api/state", answer(get_state)),
              Route("/crop/{cell:int}", crop), Route("/report", report),
              Route("/api/decide", answer(decide), methods=["POST"]), Route("/api/amend", answer(amend), methods=["POST"]),
              Route("/api/undo", answer(undo), methods=["POST"]), Route("/api/signoff", answer(signoff), methods=["POST"])]
    return Starlette(routes=routes)


def make_server(path, sid: int, host: str = "127.0.0.1", port: int = 8765, all_cells: bool = False,
                reviewer: str = "", allow: tuple[str, ...] = ()) -> WebServer:
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
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Another machine on the lab network: 0.0.0.0 (README: the URL with "
                   "its token is the key; anyone who has it can review).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0: any free port.")
@click.option("--all", "all_cells", is_flag=True, help="Step through every counted cell, not only the flagged.")
@click.option("--session", "session_id", type=int, default=None, help="Session ID (default: the last one).")
@click.option("--reviewer", default=None, help="Your name, put on each decision [default: the login name].")
@click.option("--allow-host", "allow", multiple=True,
              help="Another name the browser may use for this machine (repeatable), e.g. pi.lab.example.")
def review_command(db, host, port, all_cells, session_id, reviewer, allow):
    """Check the flagged cells of a session in the browser, reclassify, sign off.

    Keys: 1-8 reclassify (basophil, eosinophil, erythroblast, ig, lymphocyte, monocyte,
    neutrophil, platelet), Enter or c confirms, u undoes, arrows move. Each decision is saved at once.
    Open the URL printed at start: it carries this server's token.
    """
    try:
        d = load(db, session_id, crops=False)
        server = make_server(db, d.session.id, host, port, all_cells, reviewer or _login(), tuple(allow))
    except SessionFileError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except ValueError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except OSError as e:
        click.echo(f"error: {host}:{port}: cannot listen ({e.strerror})", err=True)
        sys.exit(2)
    t = tally(d.cells)
    click.echo(f"review {server.url} (session {d.session.id}, sample {d.session.sample or '-'}: {len(d.cells)} "
               f"cells, {t['flagged']} flagged, {t['flagged_reviewed']} reviewed); Ctrl-C to stop")
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

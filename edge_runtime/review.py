"""`edge-bloodcls review`: a local web page where a technologist checks the flagged cells of a
session, confirms or reclassifies each (keys 1-8, Enter, u to undo) and signs the differential.

Every decision goes through the session store (store.py): its own SQLite transaction, committed
(synchronous=FULL, WAL) before the page is told it is saved, so a server killed right after loses
nothing. Several servers (or a capture still writing) may share one log: a decision carries the
version of the cell it was made on, and one made on a version someone has since changed is
refused (409) with who changed it; the page then shows the cell as it now is. Decisions, undos,
sign-off and amendments are rows of the append-only audit trail.
"""
from __future__ import annotations

import getpass
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import click

from .report import load, render, tally
from .store import Cell, Decision, Refusal, SessionFileError, SessionStore, StaleCell
from .spec import LABELS, WBC_LABELS

PAGE = Path(__file__).parent / "web" / "review.html"


ReviewError = Refusal  # what a review action the log refuses raises (HTTP status, one line)


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


def _int(body: dict, key: str) -> int:
    v = body.get(key)
    if type(v) is not int:  # bool is an int subclass; "1" and 1.9 are not cells
        raise Refusal(f"'{key}' must be an integer")
    return v


def _str(body: dict, key: str) -> str:
    v = body.get(key)
    if not isinstance(v, str):
        raise Refusal(f"'{key}' must be a string")
    return v


def _reviewer(body: dict, bound: str) -> str:
    who = (bound or str(body.get("reviewer") or "")).strip()
    if not who:
        raise Refusal("enter your name (reviewer) first")
    return who


def _label(body: dict) -> str:
    label = _str(body, "label")
    if label not in LABELS:
        raise Refusal(f"unknown label {label!r}")
    return label


def make_server(path, sid: int, host: str = "127.0.0.1", port: int = 8765, all_cells: bool = False,
                reviewer: str = "") -> ThreadingHTTPServer:
    page = PAGE.read_text(encoding="utf-8")
    store = SessionStore(path)  # one connection for the server's life, shared by its threads

    def decide(body):
        return decision_json(store.decide(sid, _int(body, "cell"), _label(body), _reviewer(body, reviewer),
                                          _int(body, "version")))

    def amend(body):
        return decision_json(store.amend(sid, _int(body, "cell"), _label(body), _reviewer(body, reviewer),
                                         _int(body, "version"), _str(body, "reason")))

    def signoff(body):
        r = store.sign_off(sid, _reviewer(body, reviewer))
        return {"signed_by": r.signed_by, "signed_at": r.signed_at, "audit_id": r.audit_id}

    routes = {"/api/decide": decide, "/api/amend": amend, "/api/signoff": signoff,
              "/api/undo": lambda body: decision_json(store.undo(sid, _reviewer(body, reviewer)))}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            url = urlparse(self.path)
            q = parse_qs(url.query)
            if url.path == "/":
                cfg = json.dumps({"all": all_cells, "reviewer": reviewer})
                return self._send(200, "text/html; charset=utf-8", page.replace("/*CONFIG*/{}", cfg).encode())
            if url.path == "/api/state":
                show_all = q.get("all", ["1" if all_cells else "0"])[0] == "1"
                return self._json(lambda: state(store, sid, show_all))
            if url.path.startswith("/crop/") and url.path[6:].isdigit():
                jpeg = store.crop(sid, int(url.path[6:]))
                return self._send(200, "image/jpeg", jpeg) if jpeg else self._send(404, "text/plain", b"no crop")
            if url.path == "/report":
                return self._send(200, "text/html; charset=utf-8", render(store.load(sid)).encode())
            self._send(404, "text/plain", b"not found")

        def do_POST(self):
            # JSON only: a page on another site cannot send application/json here without a CORS
            # preflight, which this server never grants, so it cannot click through a review.
            if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
                return self._send(415, "text/plain", b"application/json only")
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            except ValueError:
                return self._send(400, "text/plain", b"bad JSON")
            if self.path not in routes:
                return self._send(404, "text/plain", b"not found")
            if not isinstance(body, dict):
                return self._send(400, "application/json", b'{"error": "a JSON object expected"}')
            self._json(lambda: routes[self.path](body))

        def _json(self, fn):
            try:
                code, body = 200, fn()
            except StaleCell as e:  # the page shows the cell as it now is, and says who changed it
                code, body = e.status, {"error": str(e), "cell": cell_json(e.cell)}
            except Refusal as e:
                code, body = e.status, {"error": str(e)}
            except SessionFileError as e:
                code, body = 503, {"error": str(e)}
            self._send(code, "application/json", json.dumps(body).encode())

        def _send(self, code, ctype, data):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def server_close(self):
            super().server_close()
            store.close()

    try:
        server = Server((host, port), Handler)
    except BaseException:
        store.close()
        raise
    server.store = store  # type: ignore[attr-defined]
    return server


@click.command("review")
@click.argument("db", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (another machine on the lab network: 0.0.0.0; no login is asked).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0: any free port.")
@click.option("--all", "all_cells", is_flag=True, help="Step through every counted cell, not only the flagged.")
@click.option("--session", "session_id", type=int, default=None, help="Session ID (default: the last one).")
@click.option("--reviewer", default=None, help="Your name, put on each decision [default: the login name].")
def review_command(db, host, port, all_cells, session_id, reviewer):
    """Check the flagged cells of a session in the browser, reclassify, sign off.

    Keys: 1-8 reclassify (basophil, eosinophil, erythroblast, ig, lymphocyte, monocyte,
    neutrophil, platelet), Enter or c confirms, u undoes, arrows move. Each decision is saved at once.
    """
    try:
        d = load(db, session_id, crops=False)
        server = make_server(db, d.session.id, host, port, all_cells, reviewer or _login())
    except SessionFileError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except OSError as e:
        click.echo(f"error: {host}:{port}: cannot listen ({e.strerror})", err=True)
        sys.exit(2)
    t = tally(d.cells)
    url = f"http://{host}:{server.server_address[1]}/"
    click.echo(f"review {url} (session {d.session.id}, sample {d.session.sample or '-'}: {len(d.cells)} cells, "
               f"{t['flagged']} flagged, {t['flagged_reviewed']} reviewed); Ctrl-C to stop")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers: the page asks for one
        return ""

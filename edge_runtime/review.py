"""`edge-bloodcls review`: a local web page where a technologist checks the flagged cells of a
session, confirms or reclassifies each (keys 1-8, Enter, u to undo) and signs the differential.

Standard library only (http.server): nothing to install on a Pi. Every decision is its own
SQLite transaction, committed (synchronous=FULL, WAL) before the page is told it is saved, so a
server killed right after loses nothing; several servers (or a capture still writing) may share
one log: writers queue on SQLite's lock (BEGIN IMMEDIATE, busy timeout). Decisions go to the
cells' review columns and to the append-only `reviews` table, which undo marks, never deletes.
"""
from __future__ import annotations

import getpass
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import click

from .report import load, render, tally
from .session import SessionFileError, connect, transaction
from .spec import LABELS, WBC_LABELS

PAGE = Path(__file__).parent / "web" / "review.html"


class ReviewError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _con(path):
    con = connect(path, create=False)
    con.row_factory = lambda cur, row: {d[0]: v for d, v in zip(cur.description, row)}
    return con


def state(path, sid: int, all_cells: bool) -> dict:
    s = load(path, sid, crops=False)
    cells = s["cells_list"]
    t = tally(cells)
    shown = [c for c in cells if all_cells or c["review"]]
    keep = ("id", "label", "confidence", "review", "review_reason", "ood", "ood_score", "observations",
            "first_frame", "last_frame", "reviewed_label", "reviewer", "reviewed_at")
    return {
        "session": {k: s.get(k) for k in ("id", "sample", "operator", "model", "started", "ended", "signed_by",
                                           "signed_at", "unvalidated", "count_target")},
        "labels": list(LABELS), "wbc_labels": list(WBC_LABELS), "all": all_cells,
        "cells": [{**{k: c.get(k) for k in keep}, "probs": json.loads(c["probs"]), "has_crop": bool(c["has_crop"])}
                  for c in shown],
        "tally": {"machine": dict(t["machine"]), "final": dict(t["final"]), "wbc_machine": t["wbc_machine"],
                  "wbc_final": t["wbc_final"], "flagged": t["flagged"], "flagged_reviewed": t["flagged_reviewed"],
                  "cells": len(cells)},
    }


def _open_session(con, sid: int) -> dict:
    s = con.execute("SELECT signed_by, signed_at FROM sessions WHERE id = ?", (sid,)).fetchone()
    if s is None:
        raise ReviewError(404, f"no session {sid}")
    if s["signed_by"]:
        # a signed differential is a record: changing it needs a new session, not a silent edit
        raise ReviewError(409, f"signed off by {s['signed_by']}: the session is closed")
    return s


def decide(path, sid: int, cell_id: int, label: str, reviewer: str) -> dict:
    """Confirm (label = the analyser's) or reclassify one cell; committed before returning."""
    if label not in LABELS:
        raise ReviewError(400, f"unknown label {label!r}")
    if not reviewer.strip():
        raise ReviewError(400, "enter your name (reviewer) first")
    con = _con(path)
    try:
        with transaction(con):
            _open_session(con, sid)
            c = con.execute("SELECT label, reviewed_label, reviewer, reviewed_at FROM cells "
                            "WHERE id = ? AND session_id = ?", (cell_id, sid)).fetchone()
            if c is None:
                raise ReviewError(404, f"no cell {cell_id} in session {sid}")
            now = time.time()
            con.execute("INSERT INTO reviews (session_id, cell_id, action, label, previous_label, previous_reviewer, "
                        "previous_at, reviewer, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (sid, cell_id, "confirm" if label == c["label"] else "reclassify", label, c["reviewed_label"],
                         c["reviewer"], c["reviewed_at"], reviewer.strip(), now))
            con.execute("UPDATE cells SET reviewed_label = ?, reviewer = ?, reviewed_at = ? WHERE id = ?",
                        (label, reviewer.strip(), now, cell_id))
        return {"cell": cell_id, "reviewed_label": label, "machine_label": c["label"]}
    finally:
        con.close()


def undo(path, sid: int) -> dict:
    """Take back the session's last decision not yet undone (whoever made it)."""
    con = _con(path)
    try:
        with transaction(con):
            _open_session(con, sid)
            r = con.execute("SELECT * FROM reviews WHERE session_id = ? AND undone_at IS NULL ORDER BY id DESC LIMIT 1",
                            (sid,)).fetchone()
            if r is None:
                raise ReviewError(409, "nothing to undo")
            con.execute("UPDATE cells SET reviewed_label = ?, reviewer = ?, reviewed_at = ? WHERE id = ?",
                        (r["previous_label"], r["previous_reviewer"], r["previous_at"], r["cell_id"]))
            con.execute("UPDATE reviews SET undone_at = ? WHERE id = ?", (time.time(), r["id"]))
        return {"cell": r["cell_id"], "reviewed_label": r["previous_label"]}
    finally:
        con.close()


def sign_off(path, sid: int, reviewer: str) -> dict:
    if not reviewer.strip():
        raise ReviewError(400, "enter your name (reviewer) to sign")
    con = _con(path)
    try:
        with transaction(con):
            _open_session(con, sid)
            left = con.execute("SELECT COUNT(*) AS n FROM cells WHERE session_id = ? AND review = 1 "
                               "AND reviewed_label IS NULL", (sid,)).fetchone()["n"]
            if left:
                raise ReviewError(409, f"{left} flagged cell(s) not reviewed yet")
            now = time.time()
            con.execute("UPDATE sessions SET signed_by = ?, signed_at = ? WHERE id = ?", (reviewer.strip(), now, sid))
        return {"signed_by": reviewer.strip(), "signed_at": now}
    finally:
        con.close()


def crop(path, sid: int, cell_id: int) -> bytes | None:
    con = _con(path)
    try:
        r = con.execute("SELECT crop FROM cells WHERE id = ? AND session_id = ?", (cell_id, sid)).fetchone()
        return r["crop"] if r else None
    finally:
        con.close()


def make_server(path, sid: int, host: str = "127.0.0.1", port: int = 8765, all_cells: bool = False,
                reviewer: str = "") -> ThreadingHTTPServer:
    page = PAGE.read_text(encoding="utf-8")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            url = urlparse(self.path)
            q = parse_qs(url.query)
            if url.path == "/":
                cfg = json.dumps({"all": all_cells, "reviewer": reviewer})
                return self._send(200, "text/html; charset=utf-8", page.replace("/*CONFIG*/{}", cfg).encode())
            if url.path == "/api/state":
                show_all = q.get("all", ["1" if all_cells else "0"])[0] == "1"
                return self._json(lambda: state(path, sid, show_all))
            if url.path.startswith("/crop/") and url.path[6:].isdigit():
                jpeg = crop(path, sid, int(url.path[6:]))
                return self._send(200, "image/jpeg", jpeg) if jpeg else self._send(404, "text/plain", b"no crop")
            if url.path == "/report":
                filed = render(load(path, sid), crop_href="/crop/{id}")  # thumbnails open the full crop here
                return self._send(200, "text/html; charset=utf-8", filed.encode())
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
            who = str(body.get("reviewer") or "")
            routes = {"/api/decide": lambda: decide(path, sid, int(body.get("cell", 0)), str(body.get("label")), who),
                      "/api/undo": lambda: undo(path, sid),
                      "/api/signoff": lambda: sign_off(path, sid, who)}
            if self.path not in routes:
                return self._send(404, "text/plain", b"not found")
            self._json(routes[self.path])

        def _json(self, fn):
            try:
                code, body = 200, fn()
            except ReviewError as e:
                code, body = e.status, {"error": str(e)}
            except SessionFileError as e:
                code, body = 500, {"error": str(e)}
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

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
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
        s = load(db, session_id)
    except SessionFileError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    try:
        server = make_server(db, s["id"], host, port, all_cells, reviewer or _login())
    except OSError as e:
        click.echo(f"error: {host}:{port}: cannot listen ({e.strerror})", err=True)
        sys.exit(2)
    t = tally(s["cells_list"])
    url = f"http://{host}:{server.server_address[1]}/"
    click.echo(f"review {url} (session {s['id']}, sample {s.get('sample') or '-'}: {len(s['cells_list'])} cells, "
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

"""Two review servers on one session log, a capture writing another session of it, four clients
deciding on disjoint and on shared cells for a few seconds (loopback only, bounded): the log
stays sound, every decision acknowledged with 200 is in the log and in `report --csv`, every
refused one got a 4xx with a reason; a review server killed with SIGKILL in the middle loses no
acknowledged decision (issue 23)."""

from __future__ import annotations

import csv
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
from dataclasses import dataclass, field

import pytest
from review_client import ReviewClient
from session_fixtures import REPO, make_session, run_cli

from edge_bloodcls.edge_runtime.core.spec import LABELS
from edge_bloodcls.edge_runtime.lab.store import SessionStore

SECONDS = 3.0  # of decisions, per run
DISJOINT = range(1, 81)  # cell k % 4 is client k's alone
SHARED = range(81, 121)  # every client decides these, in the same order: they collide
CONTESTED = 81  # all four decide it at once on version 0: one is taken, three are refused

# A capture's writer (SessionLog, one transaction per frame) in its own process, logging a frame
# with one cell every few milliseconds until told to stop; prints its session and its frame count.
CAPTURE = """
import os, sys, time
from edge_bloodcls.edge_runtime.lab.session import CellRecord, SessionLog
db, stop = sys.argv[1], sys.argv[2]
log = SessionLog(db, "stress", "cell", {"model": "m", "model_sha256": "ab"}, 0.8, counting="per-frame")
print(log.id, flush=True)
k = 0
while not os.path.exists(stop):
    log.log_frame(k, time.time(), f"f{k}", (10, 10), 1,
                  [CellRecord((0, 0, 5, 5), "neutrophil", 0.9, False, {"neutrophil": 1.0})])
    k += 1
    time.sleep(0.003)
log.finish("stopped", {})
log.close()
print(k, flush=True)
"""


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO))


def start_review(db, sid, reviewer):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_bloodcls.cli",
            "review",
            str(db),
            "--port",
            "0",
            "--session",
            str(sid),
            "--reviewer",
            reviewer,
            "--all",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    line = proc.stdout.readline()
    if not line.startswith("review http://"):
        proc.kill()
        raise AssertionError(line + proc.stderr.read())
    return proc, line.split()[1]


@dataclass
class Client:
    """What one browser tab does: reads the cells, decides on the versions it was shown, and, when
    refused with a newer cell (409), takes that version as the page does."""

    url: str
    name: str
    cells: list[int]
    acked: list[tuple[int, int, str]] = field(default_factory=list)  # (audit id, cell, label)
    refused: list[tuple[int, str]] = field(default_factory=list)  # (status, reason)
    failed: list[str] = field(default_factory=list)  # 5xx or a malformed answer
    cut_off: bool = False  # its server went away
    took_contested: bool = False
    reviewer: str = ""  # bound to its server
    versions: dict[int, int] = field(default_factory=dict)

    http: ReviewClient | None = None

    def load(self):
        self.http = ReviewClient(self.url)
        self.versions = {c["id"]: c["version"] for c in self.http.json("api/state?all=1")["cells"]}

    def decide(self, cell, label):
        assert self.http is not None
        body = {"cell": cell, "label": label, "version": self.versions[cell]}
        try:
            j = self.http.post("api/decide", body)
            assert j["reviewer"] == self.reviewer  # the server's, not the page's
            self.acked.append((j["audit_id"], cell, label))
            self.versions[cell] = j["version"]
        except urllib.error.HTTPError as e:
            j = json.loads(e.read() or b"{}")
            if 400 <= e.code < 500 and j.get("error"):
                self.refused.append((e.code, j["error"]))
                if "cell" in j:
                    self.versions[cell] = j["cell"]["version"]
            else:
                self.failed.append(f"{e.code} {j}")
        except (urllib.error.URLError, http.client.HTTPException, OSError):
            self.cut_off = True  # no answer, or half of one (killed mid-reply): not acknowledged

    def run(self, start: threading.Barrier, deadline: float):
        start.wait()
        self.decide(CONTESTED, LABELS[int(self.name[1:]) % 8])
        self.took_contested = len(self.acked) == 1
        rnd = 0
        while True:  # round after round until the deadline: still busy when a server is killed
            rnd += 1
            for cell in self.cells:
                if self.cut_off or time.monotonic() > deadline:
                    return
                self.decide(cell, LABELS[(cell + rnd + int(self.name[1:])) % 8])


@pytest.mark.parametrize("kill", [False, True], ids=["stress", "kill-9-mid-stress"])
def test_two_review_servers_and_a_capture_lose_no_acknowledged_decision(tmp_path, kill):
    db = tmp_path / "s.db"
    sid = make_session(db, cells=[("neutrophil", 0.5, True, False)] * len(list(DISJOINT) + list(SHARED)))
    stop = tmp_path / "stop"
    cap = subprocess.Popen(
        [sys.executable, "-c", CAPTURE, str(db), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    servers = []
    try:
        cap_sid = int(cap.stdout.readline())
        servers = [start_review(db, sid, "ann"), start_review(db, sid, "bo")]
        clients = [
            Client(
                servers[k // 2][1],
                f"r{k}",
                [c for c in DISJOINT if c % 4 == k] + list(SHARED),
                reviewer=["ann", "bo"][k // 2],
            )
            for k in range(4)
        ]
        for c in clients:
            c.load()
        start = threading.Barrier(len(clients))
        deadline = time.monotonic() + SECONDS
        threads = [threading.Thread(target=c.run, args=(start, deadline)) for c in clients]
        for t in threads:
            t.start()
        if kill:
            time.sleep(SECONDS / 3)
            servers[1][0].send_signal(signal.SIGKILL)  # no clean shutdown: mid-request, maybe mid-transaction
        for t in threads:
            t.join(SECONDS + 60)
        assert not any(t.is_alive() for t in threads)
    finally:
        stop.touch()
        try:
            out, err = cap.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            cap.kill()
            raise
        for proc, _ in servers:
            if proc.poll() is None:
                proc.terminate()
            proc.communicate(timeout=30)
    assert cap.returncode == 0, err
    frames_written = int(out.split()[-1])

    acked = [a for c in clients for a in c.acked]
    refused = [r for c in clients for r in c.refused]
    assert [f for c in clients for f in c.failed] == []
    assert all(400 <= code < 500 and reason for code, reason in refused)
    # the contested cell: exactly one of the four was taken, the others were told who took it
    assert sum(c.took_contested for c in clients) == 1
    assert sum("was changed while you looked at it" in r for _, r in refused) >= 3
    assert len(acked) >= 20  # the run decided something
    if kill:
        assert all(c.cut_off for c in clients[2:])  # B's clients lost their server mid-run

    with SessionStore(db) as store:
        assert store.integrity_check() == "ok"
        trail = {a.id: a for a in store.audit(sid)}
        cells = {c.id: c for c in store.cells(sid)}
        assert len(store.frames(cap_sid)) == frames_written and store.session(cap_sid).ended is not None
    for c in clients:  # every acknowledged decision, as acknowledged, by its server's reviewer
        for audit_id, cell, label in c.acked:
            assert (trail[audit_id].cell_id, trail[audit_id].to_label, trail[audit_id].reviewer) == (
                cell,
                label,
                c.reviewer,
            )
    for cid, c in cells.items():  # each cell shows its last decision, and its version counts them
        mine = [a for a in trail.values() if a.cell_id == cid]
        assert c.version == len(mine)
        if mine:
            assert c.reviewed_label == max(mine, key=lambda a: a.id).to_label
    if not kill:  # no server died between commit and answer: the log holds exactly what was acknowledged
        assert sorted(trail) == sorted(a[0] for a in acked)

    csv_path = tmp_path / "cells.csv"
    r = run_cli("report", db, "--session", sid, "--out", tmp_path / "r.html", "--csv", csv_path)
    assert r.exit_code == 0, r.output
    in_csv = {int(m) for row in csv.DictReader(csv_path.open()) for m in re.findall(r"#(\d+) ", row["trail"])}
    assert {a[0] for a in acked} <= in_csv
    print(
        f"{'kill' if kill else 'stress'}: {len(acked)} acknowledged, {len(refused)} refused "
        f"({sum(c == 409 for c, _ in refused)} stale), {frames_written} capture frames"
    )

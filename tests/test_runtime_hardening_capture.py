"""Hardening of capture (issue 15, the capture/database/video half): no traceback and no silent
wrong answer. Non-UTF-8 file names in the log, database faults as one line (exit 2 at the start,
exit 1 and a closed session mid-run), damaged and truncated videos, a folder of nothing, listing
errors of a replayed folder, and memory that does not grow with the session.

Permission cases run the CLI as `nobody` through setpriv when the tests run as root (root ignores
permissions), as in test_runtime_hardening.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cell_images import cell_png
from cli_fixtures import _setpriv_nobody, cli, errors, no_traceback, run

from edge_bloodcls.edge_runtime.capture.loop import STAGES, CaptureOptions, run_capture
from edge_bloodcls.edge_runtime.capture.opener import open_source
from edge_bloodcls.edge_runtime.capture.sources import FolderSource
from edge_bloodcls.edge_runtime.capture.summary import TimingStats
from edge_bloodcls.edge_runtime.core.classifier import Classifier
from edge_bloodcls.edge_runtime.lab.session import SessionFileError, SessionLog, read_session

FAST_LOCK = {"EDGE_BLOODCLS_DB_BUSY_S": "0.3"}  # busy timeout: ~1.5 s of waiting in all, not ~40


def cells(d: Path, n: int = 3) -> Path:
    for k in range(n):
        cell_png(d / f"{k:04d}.png", k % 8)
    return d


def capture(folder, model_path, db, *extra):
    return run(
        "capture", "--camera", folder, "--mode", "cell", "--model", model_path, "--db", db, "--no-preview", *extra
    )


# --- 1. file names that are not UTF-8 ---------------------------------------------------------


def test_runtime_capture_logs_non_utf8_names(bundles, tmp_path):
    d = tmp_path / "frames"
    cell_png(Path(os.fsdecode(bytes(d) + b"/cell\xff.png")), 4)
    cell_png(d / "ok.png", 6)
    crops = Path(os.fsdecode(bytes(tmp_path) + b"/crops\xfe"))
    db = tmp_path / "log.sqlite"
    r = capture(d, bundles["float32"], db, "--save-crops", crops)
    no_traceback(r)
    assert r.exit_code == 0, r.output
    s = read_session(db)
    assert s["ended"] is not None and s["frames"] == 2 and s["cells"] == 2
    assert [f["name"] for f in s["frames_list"]] == ["cell\\xff.png", "ok.png"]
    assert all("crops\\xfe/" in c["crop_path"] for c in s["cells_list"])
    assert len(list(crops.iterdir())) == 2  # the crops themselves are under the real (byte) name


# --- 2. database faults -------------------------------------------------------------------------


def test_runtime_db_under_a_file_or_not_a_database_is_one_line_exit_2(bundles, tmp_path):
    folder = cells(tmp_path / "cells", 2)
    (tmp_path / "file.txt").write_text("a file, not a folder")
    r = capture(folder, bundles["float32"], tmp_path / "file.txt" / "log.sqlite")
    no_traceback(r)
    assert r.exit_code == 2
    assert errors(r.stderr) == [f"error: {tmp_path}/file.txt/log.sqlite: {tmp_path}/file.txt is a file, not a folder"]

    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(np.random.default_rng(0).bytes(8192))
    r = capture(folder, bundles["float32"], junk)
    no_traceback(r)
    assert r.exit_code == 2 and len(errors(r.stderr)) == 1
    assert errors(r.stderr)[0].startswith(f"error: {junk}: not a usable session log")


def test_runtime_unwritable_crop_folder_is_one_line_exit_2(bundles, tmp_path):
    folder = cells(tmp_path / "cells", 2)
    (tmp_path / "file.txt").write_text("x")
    db = tmp_path / "log.sqlite"
    r = capture(folder, bundles["float32"], db, "--save-crops", tmp_path / "file.txt" / "crops")
    no_traceback(r)
    assert r.exit_code == 2
    assert errors(r.stderr) == [f"error: {tmp_path}/file.txt/crops: cannot save crops here (Not a directory)"]
    assert not db.exists()  # checked before a session was opened


def _locked_db(path: Path) -> sqlite3.Connection:
    SessionLog(path, "x", "cell", {}, 0.5).close()  # a real log first
    con = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    con.execute("BEGIN IMMEDIATE")  # another writer's lock, held
    return con


def test_runtime_lock_held_at_start_is_retried_then_one_line_exit_2(bundles, tmp_path, monkeypatch):
    for k, v in FAST_LOCK.items():
        monkeypatch.setenv(k, v)
    folder = cells(tmp_path / "cells", 2)
    db = tmp_path / "log.sqlite"
    holder = _locked_db(db)
    t0 = time.monotonic()
    r = capture(folder, bundles["float32"], db)
    waited = time.monotonic() - t0
    no_traceback(r)
    assert r.exit_code == 2
    [line] = errors(r.stderr)
    assert line.startswith(f"error: {db}: database is locked: another program held its write lock for more than")
    assert 0.3 * 3 <= waited < 20  # three busy timeouts and the back-off, not SQLite's default

    # released during the back-off: the retry gets it and the session runs
    threading.Timer(0.45, holder.rollback).start()
    r = capture(folder, bundles["float32"], db)
    assert r.exit_code == 0, r.output
    assert read_session(db)["frames"] == 2
    holder.close()


class LockingFolder(FolderSource):
    """Another writer takes the log's lock as frame `at` is handed out and lets go when the source
    is closed (as when capture ends)."""

    def __init__(self, folder, db, at, **kw):
        super().__init__(folder, **kw)
        self.db, self.at, self.con = db, at, None

    def __iter__(self):
        for f in super().__iter__():
            if f.index == self.at:
                self.con = sqlite3.connect(str(self.db), isolation_level=None, check_same_thread=False)
                self.con.execute("BEGIN IMMEDIATE")
            yield f

    def close(self):
        if self.con is not None:
            self.con.rollback()
            self.con.close()


def test_runtime_lock_mid_run_closes_the_session_with_its_reason(bundles, tmp_path, monkeypatch):
    for k, v in FAST_LOCK.items():
        monkeypatch.setenv(k, v)
    db = tmp_path / "log.sqlite"
    src = LockingFolder(cells(tmp_path / "cells", 5), db, at=2, warn=lambda m: None)
    clf = Classifier.load(bundles["float32"])
    log = SessionLog(db, src.name, "cell", clf.describe(), 0.8, counting="per-frame")
    summary = run_capture(src, clf, log, CaptureOptions(mode="cell", echo=lambda m: None))
    log.close()
    assert "database is locked" in summary.log_error and summary.frames == 2
    assert summary.end_reason.startswith("stopped: ") and summary.cells_not_logged == 1
    s = read_session(db)
    assert s["frames"] == 2 and s["ended"] is not None and s["end_reason"] == summary.end_reason


def test_runtime_db_failure_mid_run_is_one_line_exit_1(bundles, tmp_path, monkeypatch):
    original = SessionLog.log_frame

    def disk_full_at_frame_1(self, frame_index, *a, **kw):
        if frame_index == 1:
            raise SessionFileError(f"{self.path}: disk full")
        return original(self, frame_index, *a, **kw)

    monkeypatch.setattr(SessionLog, "log_frame", disk_full_at_frame_1)
    db = tmp_path / "log.sqlite"
    r = capture(cells(tmp_path / "cells", 3), bundles["float32"], db)
    no_traceback(r)
    assert r.exit_code == 1
    assert errors(r.stderr) == [f"error: {db}: disk full"]
    assert "SESSION LOG INCOMPLETE" in r.stdout
    s = read_session(db)
    assert s["frames"] == 1 and s["ended"] is not None and s["end_reason"] == f"stopped: {db}: disk full"


def test_runtime_read_only_db_folder_and_crops_as_a_user(model):
    user = _setpriv_nobody()
    if user is None and os.geteuid() == 0:
        pytest.skip("root ignores permissions")
    top = Path(tempfile.mkdtemp(prefix="edge-bloodcls-db-perm-"))
    try:
        top.chmod(0o755)
        folder = cells(top / "cells", 2)
        open_dir = top / "open"
        open_dir.mkdir(mode=0o777)
        open_dir.chmod(0o777)
        ro_file = open_dir / "ro.sqlite"
        SessionLog(ro_file, "x", "cell", {}, 0.5).close()
        ro_file.chmod(0o444)
        ro_dir = top / "ro"
        ro_dir.mkdir(mode=0o555)
        cases = [
            (["--db", ro_file], f"error: {ro_file}: read-only (no permission to write the session log)"),
            (
                ["--db", ro_dir / "new.sqlite"],
                f"error: {ro_dir}/new.sqlite: cannot create the session log: folder {ro_dir} is read-only",
            ),
            (
                ["--db", open_dir / "ok.sqlite", "--save-crops", ro_dir],
                f"error: {ro_dir}: cannot save crops here (Permission denied)",
            ),
        ]
        for args, expected in cases:
            r = cli("capture", "--camera", folder, "--mode", "cell", "--model", model, "--no-preview", *args, user=user)
            no_traceback(r)
            assert r.returncode == 2, r.stderr
            assert errors(r.stderr) == [expected]
    finally:
        shutil.rmtree(top)


# --- 3. damaged and truncated videos, a folder of nothing ---------------------------------------


def _video(path: Path, n: int = 30) -> tuple[bytes, list[int]]:
    cv2 = pytest.importorskip("cv2")
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    assert w.isOpened()
    for i in range(n):
        f = np.full((48, 64, 3), 8 * i, np.uint8)
        cv2.circle(f, (32, 24), 12, (60, 20, 200), -1)
        w.write(f)
    w.release()
    data = path.read_bytes()
    soi = [i for i in range(len(data) - 1) if data[i : i + 2] == b"\xff\xd8"]  # one JPEG per frame
    assert len(soi) == n
    return data, soi


def _blank(data: bytes, soi: list[int], frames) -> bytes:
    """Zero the JPEG data of these frames (the AVI chunk headers stay: the demuxer still walks)."""
    b = bytearray(data)
    for k in frames:
        end = soi[k + 1] - 8 if k + 1 < len(soi) else len(b)
        b[soi[k] : end] = bytes(end - soi[k])
    return bytes(b)


def test_runtime_video_bad_frame_skipped_truncated_and_damaged_run_exit_1(bundles, tmp_path):
    data, soi = _video(tmp_path / "ok.avi")
    videos = {
        "one_bad.avi": _blank(data, soi, [10]),
        "truncated.avi": data[: len(data) // 2],
        "bad_run.avi": _blank(data, soi, range(8, 20)),
    }
    got = {}
    for name, payload in videos.items():
        (tmp_path / name).write_bytes(payload)
        db = tmp_path / f"{name}.sqlite"
        r = capture(tmp_path / name, bundles["float32"], db)
        no_traceback(r)
        got[name] = (
            r.exit_code,
            read_session(db)["frames"],
            read_session(db)["end_reason"],
            [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")],
        )
    code, frames, reason, warnings = got["one_bad.avi"]
    assert (code, frames, reason) == (0, 29, "end of video (29 frames, 1 undecodable frame(s) skipped)")
    assert warnings == [f"warning: {tmp_path}/one_bad.avi: 1 frame(s) at frame 10 could not be decoded, skipped"]
    code, frames, reason, warnings = got["truncated.avi"]
    assert code == 1 and 0 < frames < 30
    assert reason.startswith(f"{tmp_path}/truncated.avi: video ended after {frames} of the 30 frames it declares")
    assert warnings == [f"warning: {reason}"]
    code, frames, reason, warnings = got["bad_run.avi"]
    assert (code, frames) == (1, 8) and "10 reads in a row failed" in reason


def test_runtime_folder_where_every_image_is_skipped_exits_1(bundles, tmp_path):
    d = tmp_path / "frames"
    d.mkdir()
    for k in range(2):
        (d / f"{k}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    r = capture(d, bundles["float32"], tmp_path / "log.sqlite")
    no_traceback(r)
    assert r.exit_code == 1
    assert "session ended: no image of the folder could be read (2 skipped)" in r.stdout


# --- 4. memory flat over a long session -----------------------------------------------------------


def test_runtime_timing_accumulator_does_not_grow_with_frames():
    rng = np.random.default_rng(0)
    stats = TimingStats(STAGES, capacity=256)
    size0 = stats.nbytes()
    frames = [{k: float(v) for k, v in zip(STAGES, rng.gamma(2.0, 3.0, len(STAGES)))} for _ in range(20_000)]
    for t in frames[:100]:
        stats.add(t)
    small = stats.summary()  # under capacity: exact medians
    assert small["interpreter"]["median"] == round(float(np.median([t["interpreter"] for t in frames[:100]])), 3)
    for t in frames[100:]:
        stats.add(t)
    assert stats.nbytes() == size0 and stats.rows.shape == (256, len(STAGES))
    s = stats.summary()
    assert s["frames"] == 20_000
    exact = np.array([[t[k] for k in STAGES] for t in frames])
    assert s["interpreter"]["mean"] == pytest.approx(exact[:, STAGES.index("interpreter")].mean(), abs=1e-3)
    assert s["frame_total"]["median"] == pytest.approx(np.median(exact.sum(axis=1)), rel=0.1)  # a sample
    again = TimingStats(STAGES, capacity=256)
    for t in frames:
        again.add(t)
    assert again.summary() == s  # seeded: the same session, the same summary


# --- 5. the replayed folder uses the one listing of images --------------------------------------


def test_runtime_folder_source_reports_links_pipes_and_unlistable_folders(tmp_path):
    d = tmp_path / "frames"
    cell_png(d / "a.png")
    (d / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    os.mkfifo(d / "pipe.png")
    warnings = []
    src = open_source(str(d), warn=warnings.append)
    frames = list(src)
    assert [f.name for f in frames] == ["a.png"]
    assert warnings == [
        f"warning: skipped {d}/gone.jpg: broken symbolic link",
        f"warning: skipped {d}/pipe.png: not a regular file (named pipe)",
    ]
    assert src.end_reason == "end of folder (1 images, 2 skipped)"


def test_runtime_capture_of_folder_with_unreadable_subfolder_as_a_user(model):
    user = _setpriv_nobody()
    top = Path(tempfile.mkdtemp(prefix="edge-bloodcls-src-perm-"))
    try:
        top.chmod(0o755)
        d = top / "frames"
        cell_png(d / "a.png")
        cell_png(d / "noexec" / "b.png")
        (d / "noexec").chmod(0o644)  # names listable, files not reachable: Path.is_file raised
        (top / "db").mkdir(mode=0o777)
        (top / "db").chmod(0o777)
        r = cli(
            "capture",
            "--camera",
            d,
            "--mode",
            "cell",
            "--model",
            model,
            "--no-preview",
            "--db",
            top / "db" / "log.sqlite",
            user=user,
        )
        no_traceback(r)
        assert r.returncode == 0, r.stderr
        skipped = [ln for ln in r.stderr.decode().splitlines() if ln.startswith("warning: skipped")]
        assert len(skipped) == 1 and "noexec" in skipped[0] and "permission denied" in skipped[0]
        assert read_session(top / "db" / "log.sqlite")["frames"] == 1
    finally:
        if (top / "frames" / "noexec").exists():
            (top / "frames" / "noexec").chmod(0o755)
        shutil.rmtree(top)


def test_runtime_review_list_is_bounded_but_counts_every_flagged_cell(monkeypatch):
    from types import SimpleNamespace

    from edge_bloodcls.edge_runtime.capture import track
    from edge_bloodcls.edge_runtime.capture.track import CellCounter, Observation, single_track
    from edge_bloodcls.edge_runtime.core.spec import LABELS

    monkeypatch.setattr(track, "REVIEW_KEEP", 5)
    clf = SimpleNamespace(labels=list(LABELS), review_threshold=0.9)
    counter = CellCounter(clf.labels, clf.review_threshold)
    probs = np.full(len(LABELS), 0.5 / (len(LABELS) - 1))
    probs[LABELS.index("neutrophil")] = 0.5  # below the review threshold: every cell is flagged
    for i in range(40):
        pred = SimpleNamespace(review=True, confidence=0.5, ood=False, ood_score=0.1, review_reason="low")
        counter.take([single_track(Observation(i, (0, 0, 8, 8), probs, pred, None, 0.0), clf.labels)])
    assert counter.n_review == 40 and len(counter.review) == 5
    assert [r["frame"] for r in counter.review] == [0, 1, 2, 3, 4]

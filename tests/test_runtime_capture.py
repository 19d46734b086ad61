"""The capture loop and its SQLite log: cell and field mode, a killed process, SIGTERM, a camera
that drops out."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from capture_fixtures import FakeCamera, synthetic_field
from cell_images import cell_folder, synthetic_cell
from click.testing import CliRunner
from PIL import Image
from runtime_fixtures import cli_env

from edge_bloodcls.edge_runtime.capture.loop import STAGES, CaptureOptions, format_summary, run_capture
from edge_bloodcls.edge_runtime.capture.opener import open_source
from edge_bloodcls.edge_runtime.capture.sources import LiveSource
from edge_bloodcls.edge_runtime.core.bundle import load_bundle
from edge_bloodcls.edge_runtime.core.classifier import Classifier
from edge_bloodcls.edge_runtime.core.spec import LABELS, WBC_LABELS
from edge_bloodcls.edge_runtime.lab.session import SessionLog, read_session
from edge_bloodcls.edge_runtime.lab.store import SessionFileError, SessionStore


def run(*args):
    from edge_bloodcls.cli import main

    return CliRunner().invoke(main, list(map(str, args)))


def test_capture_cell_mode_logs_every_frame_and_differential(bundles, tmp_path):
    labels = [6, 6, 6, 4, 4, 5, 7, 0]  # neutrophil x3, lymphocyte x2, monocyte, platelet, basophil
    folder = cell_folder(tmp_path / "cells", labels)
    db, summary_json = tmp_path / "log.sqlite", tmp_path / "summary.json"
    r = run(
        "capture",
        "--camera",
        folder,
        "--mode",
        "cell",
        "--model",
        bundles["float32"],
        "--db",
        db,
        "--no-preview",
        "--summary-json",
        summary_json,
    )
    assert r.exit_code == 0, r.output
    assert "end of folder (8 images, 0 skipped)" in r.stdout and "differential" in r.stdout

    s = read_session(db)
    assert s["frames"] == 8 and s["cells"] == 8 and s["mode"] == "cell"
    assert s["end_reason"] == "end of folder (8 images, 0 skipped)" and s["ended"] is not None
    assert s["model_sha256"] == load_bundle(bundles["float32"]).sha256
    assert [f["frame_index"] for f in s["frames_list"]] == list(range(8))
    assert [f["name"] for f in s["frames_list"]] == [f"{k:04d}.png" for k in range(8)]
    for c in s["cells_list"]:
        assert (c["x0"], c["y0"], c["x1"], c["y1"]) == (0, 0, 64, 64)
        probs = json.loads(c["probs"])
        assert set(probs) == set(LABELS) and abs(sum(probs.values()) - 1) < 1e-3
        assert c["review"] == int(c["confidence"] < 0.8)
        assert c["model_sha256"] == s["model_sha256"]
    got = [c["label"] for c in s["cells_list"]]
    assert sum(g == LABELS[i] for g, i in zip(got, labels)) >= 6

    summ = json.loads(summary_json.read_text())
    assert json.loads(s["summary"])["differential"] == summ["differential"]
    counts = summ["differential"]["counts"]
    assert summ["differential"]["wbc_total"] == sum(counts.get(k, 0) for k in WBC_LABELS)
    assert counts.get("platelet", 0) + summ["differential"]["wbc_total"] + counts.get("erythroblast", 0) == 8
    pct = summ["differential"]["percent"]
    assert abs(sum(pct.values()) - 100) < 0.1
    assert len(summ["review"]) == sum(c["review"] for c in s["cells_list"])
    t = summ["timing_ms"]
    assert t["frames"] == 8 and set(STAGES) <= set(t)
    assert t["interpreter"]["median"] > 0 and t["decode"]["median"] > 0 and t["log"]["median"] > 0
    # each figure is rounded to 0.001 ms on its own: the sum may be off by one rounding step
    assert t["frame_total"]["mean"] >= t["interpreter"]["mean"] + t["overhead"]["mean"] - 2e-3
    assert 0 < t["overhead_share"] < 1
    assert all("interpreter" in json.loads(f["timing"]) for f in s["frames_list"])


def test_capture_field_mode_locates_crops_and_saves(bundles, tmp_path):
    folder = tmp_path / "fields"
    folder.mkdir()
    # two different fields (the second upside down): the same field twice would be counted once
    Image.fromarray(synthetic_field(seed=0)[0]).save(folder / "field0.png")
    Image.fromarray(np.ascontiguousarray(synthetic_field(seed=1)[0][::-1])).save(folder / "field1.png")
    db, crops = tmp_path / "log.sqlite", tmp_path / "crops"
    r = run(
        "capture",
        "--camera",
        folder,
        "--mode",
        "field",
        "--model",
        bundles["int8"],
        "--db",
        db,
        "--no-preview",
        "--save-crops",
        crops,
        "--review-threshold",
        "1.0",
    )
    assert r.exit_code == 0, r.output
    s = read_session(db)
    assert [f["n_cells"] for f in s["frames_list"]] == [4, 4]
    assert len(s["cells_list"]) == 8
    # threshold 1.0: every cell goes to review, and the summary lists them
    assert all(c["review"] == 1 for c in s["cells_list"]) and "flagged for review: 8" in r.stdout
    saved = sorted(crops.glob("*.jpg"))
    assert len(saved) == 8 and {c["crop_path"] for c in s["cells_list"]} == {str(p) for p in saved}
    assert Image.open(saved[0]).size[0] >= 390  # 3.9 red cells of 100 px: PBC's field of view
    timing = json.loads(s["summary"])["timing_ms"]
    assert timing["locate"]["median"] > 0 and timing["crop"]["median"] > 0
    # the crop travels in the log too (at most 360 px), so that review and report need no files
    with SessionStore(db) as store:
        crop = store.crop(1, 1)
    assert max(Image.open(io.BytesIO(crop)).size) == 360
    assert all(c["observations"] == 1 and c["review_reason"] for c in s["cells_list"])


def test_same_field_twice_counts_its_cells_once(bundles, tmp_path):
    folder = tmp_path / "fields"
    folder.mkdir()
    for k in range(3):  # one field photographed three times (camera noise differs)
        Image.fromarray(synthetic_field(seed=k)[0]).save(folder / f"shot{k}.png")
    db = tmp_path / "log.sqlite"
    r = run("capture", "--camera", folder, "--mode", "field", "--model", bundles["int8"], "--db", db, "--no-preview")
    assert r.exit_code == 0, r.output
    s = read_session(db)
    assert [f["n_cells"] for f in s["frames_list"]] == [4, 4, 4]
    assert len(s["cells_list"]) == 4 and [c["observations"] for c in s["cells_list"]] == [3, 3, 3, 3]
    assert "cells 4," in r.stdout and "12 detections in 1 field(s)" in r.stdout


class OODClassifier:
    """The real classifier, with every result out of distribution (a foreign microscope)."""

    def __init__(self, clf):
        self.clf = clf

    def __getattr__(self, name):
        return getattr(self.clf, name)

    def classify_input(self, x, top_k=3):
        from dataclasses import replace

        p = self.clf.classify_input(x, top_k)
        return replace(p, ood=True, ood_score=99.0, review=True, review_reason="out of distribution")


def test_trust_gate_trips_once_marks_session_unvalidated(bundles, tmp_path):
    folder = cell_folder(tmp_path / "cells", [4, 5, 6] * 6)  # 18 white cells
    clf = OODClassifier(Classifier.load(bundles["float32"]))
    src = open_source(str(folder))
    db = tmp_path / "log.sqlite"
    log = SessionLog(db, src.name, "cell", clf.describe(), 0.8, counting="per-frame")
    messages = []
    summary = run_capture(src, clf, log, CaptureOptions(mode="cell", echo=messages.append))
    log.close()
    warnings = [m for m in messages if m.startswith("WARNING:")]
    assert len(warnings) == 1 and "out of distribution" in warnings[0]
    trust = summary.trust
    assert trust["tripped"] and trust["tripped_at_cell"] == 10 and trust["cells"] == 18
    assert summary.ood_cells == 18 and len(summary.review) == 18
    text = format_summary(summary)
    assert "UNVALIDATED differential" in text and "out of distribution: 18 of 18 cells" in text
    s = read_session(db)
    assert s["unvalidated"] == 1 and json.loads(s["trust"])["tripped"]
    assert all(c["ood"] == 1 and c["ood_score"] == 99.0 for c in s["cells_list"])
    r = run("report", db, "--out", tmp_path / "r.html")
    assert r.exit_code == 0 and "id='trust-warning'" in (tmp_path / "r.html").read_text()


def test_db_that_is_not_a_log_is_one_line_exit_2(bundles, tmp_path):
    folder = cell_folder(tmp_path / "cells", [1, 2])
    bad = tmp_path / "notes.txt"
    bad.write_text("shopping list\n" * 50)
    r = run("capture", "--camera", folder, "--mode", "cell", "--model", bundles["float32"], "--db", bad, "--no-preview")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.splitlines()[-1].startswith(f"error: {bad}: not a usable session log")
    assert bad.read_text() == "shopping list\n" * 50


def test_preview_draws_boxes_flags_and_banner_and_serves_live_view():
    import urllib.request

    from edge_bloodcls.edge_runtime.capture.preview import Box, LiveView, annotate

    rgb = np.full((240, 320, 3), 230, np.uint8)
    img = annotate(
        rgb,
        [Box((20, 40, 120, 140), "monocyte", 0.55, review=True), Box((150, 40, 250, 140), "ig", 0.95, ood=True)],
        ["counted WBC 3/100"],
        banner="UNVALIDATED: 9 of 10 white cells out of distribution",
    )
    assert tuple(img[5, 300]) == (40, 40, 220)  # the red banner (BGR) across the top
    assert tuple(img[90, 20]) == (0, 140, 255)  # orange: flagged for review
    assert tuple(img[90, 150]) == (40, 40, 220)  # red: out of distribution
    live = LiveView(port=0, max_fps=100)
    try:
        live.publish(img, "counted WBC 3/100")
        page = urllib.request.urlopen(live.url, timeout=10).read().decode()
        token = f"?token={live.token}"  # no cookies here: the token in each URL
        status = json.loads(urllib.request.urlopen(live.base + "status.json" + token, timeout=10).read())
        jpeg = urllib.request.urlopen(live.base + "frame.jpg" + token, timeout=10).read()
    finally:
        live.close()
    assert "live.js" in page and status == {"seq": 1, "text": "counted WBC 3/100", "state": ""}
    assert Image.open(io.BytesIO(jpeg)).size == (320, 240)


def test_live_view_shows_state_legend_and_already_counted_and_fits_the_pi_screen():
    import urllib.request

    from edge_bloodcls.edge_runtime.capture.preview import BLUE, GREEN, GREY, ORANGE, SCREEN, Box, LiveView, annotate

    rgb = np.full((960, 1280, 3), 230, np.uint8)  # a camera bigger than the 800x480 touch screen
    boxes = [
        Box((200, 300, 400, 500), "neutrophil", 0.95, note="counted"),
        Box((600, 300, 800, 500), "lymphocyte", 0.9, note="already counted"),
        Box((900, 600, 1100, 800), "", 0.0, note="not counted"),
    ]
    img = annotate(rgb, boxes, ["counted WBC 1/100"], state="moving")
    assert img.shape[1] <= SCREEN[0] and img.shape[0] <= SCREEN[1] and img.shape[:2] == (480, 640)
    k = 0.5  # 1280x960 -> 640x480
    assert tuple(img[int(400 * k), int(200 * k)]) == GREEN  # counted
    assert tuple(img[int(400 * k), int(600 * k)]) == BLUE  # already counted: not counted again
    assert tuple(img[int(700 * k), int(900 * k)]) == GREY  # located while moving: not counted
    assert tuple(img[4, 4]) == ORANGE  # the state banner: MOVING
    legend = img[:160, -150:].reshape(-1, 3)
    assert all((legend == c).all(axis=1).any() for c in (GREEN, BLUE, GREY))  # the legend's swatches
    live = LiveView(port=0, max_fps=100)
    try:
        live.publish(img, "counted WBC 1/100", state="moving")
        page = urllib.request.urlopen(live.url, timeout=10).read().decode()
        status = json.loads(urllib.request.urlopen(live.base + "status.json?token=" + live.token, timeout=10).read())
    finally:
        live.close()
    assert status["state"] == "moving" and "already" in page and "not counted" in page


def test_capture_max_frames_and_corrupt_frame_skipped(bundles, tmp_path):
    folder = cell_folder(tmp_path / "cells", [1, 2, 3, 4, 5])
    (folder / "0002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    db = tmp_path / "log.sqlite"
    r = run(
        "capture",
        "--camera",
        folder,
        "--mode",
        "cell",
        "--model",
        bundles["float32"],
        "--db",
        db,
        "--no-preview",
        "--max-frames",
        "3",
    )
    assert r.exit_code == 0, r.output
    assert "0002.png" in r.stderr and "warning: skipped" in r.stderr
    s = read_session(db)
    assert [f["name"] for f in s["frames_list"]] == ["0000.png", "0001.png", "0003.png"]
    assert s["end_reason"] == "reached --max-frames 3"


def test_capture_camera_that_drops_ends_cleanly_with_reason(bundles, tmp_path):
    cams = [FakeCamera(4)]
    sleeps = []
    src = LiveSource(
        "camera 0",
        lambda: cams.pop() if cams else None,
        lambda bgr: np.asarray(synthetic_cell(4, np.random.default_rng(0))),
        backoff=(0.01, 0.02),
        sleep=sleeps.append,
        warn=lambda m: None,
    )
    clf = Classifier.load(bundles["float32"])
    log = SessionLog(tmp_path / "log.sqlite", src.name, "cell", clf.describe(), 0.8, counting="per-frame")
    messages = []
    summary = run_capture(src, clf, log, CaptureOptions(mode="cell", echo=messages.append))
    log.close()
    assert summary.frames == 4 and sleeps == [0.01, 0.02]
    assert "stopped delivering frames" in summary.end_reason
    s = read_session(tmp_path / "log.sqlite")
    assert s["frames"] == 4 and s["end_reason"] == summary.end_reason


def test_capture_missing_source_and_model(bundles, tmp_path):
    r = run("capture", "--camera", tmp_path / "nothing", "--model", bundles["float32"], "--db", tmp_path / "x.db")
    assert r.exit_code == 2 and "no such camera, file or folder" in r.stderr
    r = run("capture", "--camera", tmp_path, "--model", tmp_path / "none.tflite")
    assert r.exit_code == 2 and "no such model bundle" in r.stderr


def _start_capture(bundle, folder, db, fps):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_bloodcls.cli",
            "capture",
            "--camera",
            str(folder),
            "--mode",
            "cell",
            "--model",
            str(bundle),
            "--db",
            str(db),
            "--no-preview",
            "--fps",
            str(fps),
            "--threads",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )


def _frames_logged(db) -> int:
    try:
        with SessionStore(db) as store:
            return store.session().frames
    except SessionFileError:  # not created yet
        return 0


def _wait_for_frames(proc, db, n, limit=60.0):
    t = time.monotonic()
    while time.monotonic() - t < limit:
        if proc.poll() is not None:
            raise AssertionError(f"capture ended early: {proc.communicate()}")
        if _frames_logged(db) >= n:
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("capture did not log frames in time")


def test_killed_capture_leaves_every_committed_frame(bundles, tmp_path):
    folder = cell_folder(tmp_path / "cells", [i % 8 for i in range(400)])
    db = tmp_path / "log.sqlite"
    proc = _start_capture(bundles["float32"], folder, db, fps=40)
    _wait_for_frames(proc, db, 5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL

    with SessionStore(db) as store:
        assert store.integrity_check() == "ok" and store.pragma("journal_mode") == "wal"
    s = read_session(db)
    frames, cells = s["frames_list"], s["cells_list"]
    n = len(frames)
    assert 5 <= n < 400 and s["ended"] is None  # killed: no end was written
    assert [f["frame_index"] for f in frames] == list(range(n))
    assert [f["name"] for f in frames] == [f"{k:04d}.png" for k in range(n)]
    # each frame was committed with its cell, never one without the other
    assert len(cells) == n and [c["frame_index"] for c in cells] == list(range(n))
    assert s["frames"] == n and s["cells"] == n
    for c in cells:
        assert c["label"] in LABELS and abs(sum(json.loads(c["probs"]).values()) - 1) < 1e-3


def test_sigterm_ends_capture_with_summary(bundles, tmp_path):
    folder = cell_folder(tmp_path / "cells", [i % 8 for i in range(200)])
    db = tmp_path / "log.sqlite"
    proc = _start_capture(bundles["float32"], folder, db, fps=20)
    _wait_for_frames(proc, db, 3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "session ended: terminated (SIGTERM)" in out and "differential" in out
    s = read_session(db)
    assert s["end_reason"] == "terminated (SIGTERM)" and s["ended"] is not None
    assert s["frames"] == len(s["frames_list"]) >= 3
    # the summary, the session row and the rows agree, whenever the signal came
    summary = json.loads(s["summary"])
    assert summary["frames"] == s["frames"] and summary["cells"] == s["cells"] == len(s["cells_list"])
    assert f"frames {s['frames']}, cells {s['cells']}," in out


if os.name == "nt":  # signals as used above are POSIX
    del test_killed_capture_leaves_every_committed_frame, test_sigterm_ends_capture_with_summary

"""Count each cell once: field-change detection, tracks, and the acceptance test of issue 11 (a
video of K fields held F frames each counts what the K fields give as single frames; --count N
stops at exactly N white cells), on synthetic fields always and on BCCD fields when present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from capture_fixtures import random_field
from click.testing import CliRunner
from PIL import Image

from edge_bloodcls.edge_runtime.capture.counting import COUNT_VIEWS
from edge_bloodcls.edge_runtime.capture.field_motion import FieldDetector
from edge_bloodcls.edge_runtime.capture.locate import locate
from edge_bloodcls.edge_runtime.core.spec import WBC_LABELS
from edge_bloodcls.edge_runtime.lab.session import read_session

cv2 = pytest.importorskip("cv2")


def write_video(path: Path, fields: list[np.ndarray], hold: int, noisy: bool = False) -> Path:
    h, w = fields[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    assert vw.isOpened()
    for k, f in enumerate(fields):
        for j in range(hold):
            frame = f
            if noisy and j:  # camera noise: no two frames of a held field are the same
                n = np.random.default_rng(100 * k + j).normal(0, 3, f.shape)
                frame = np.clip(f + n, 0, 255).astype(np.uint8)
            vw.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    vw.release()
    return path


def run(*args):
    from edge_bloodcls.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _wbc_in_db(s) -> int:
    return sum(c["label"] in WBC_LABELS for c in s["cells_list"])


# --- field detection and tracks, no model -----------------------------------------------------


def test_field_detector_same_field_shift_and_new_field():
    a = random_field(1)
    fd = FieldDetector()
    assert fd.update(a) == (False, (0.0, 0.0))  # the first frame starts a field
    same, _ = fd.update(random_field(1, noise_seed=5))  # same field, other camera noise
    assert same
    # the stage moves the content 40 px right and 24 px down
    moved = np.full_like(a, 220)
    moved[24:, 40:] = a[:-24, :-40]
    same, (dx, dy) = fd.update(moved)
    assert same and abs(dx - 40) < 3 and abs(dy - 24) < 3
    for k in range(2, 8):  # unrelated fields, including ones whose discs line up by chance
        assert fd.update(random_field(k))[0] is False


# (the counting rules without a model, database or video: tests/test_counting_core.py)


# --- acceptance: capture, with the tiny test model ----------------------------------------------


def test_video_of_held_fields_counts_each_cell_once(bundles, tmp_path):
    fields = [random_field(s) for s in (11, 12, 13, 14)]
    located = [len(locate(f)) for f in fields]
    assert located == [3, 3, 3, 3]
    stills = tmp_path / "stills"
    stills.mkdir()
    for k, f in enumerate(fields):
        Image.fromarray(f).save(stills / f"{k}.png")
    video = write_video(tmp_path / "held.avi", fields, hold=8, noisy=True)
    summaries = {}
    for name, src in (("stills", stills), ("video", video)):
        out = tmp_path / f"{name}.json"
        r = run(
            "capture",
            "--camera",
            src,
            "--mode",
            "field",
            "--model",
            bundles["int8"],
            "--db",
            tmp_path / f"{name}.db",
            "--no-preview",
            "--summary-json",
            out,
        )
        assert r.exit_code == 0, r.output
        summaries[name] = json.loads(out.read_text())
    st, vd = summaries["stills"], summaries["video"]
    assert st["cells"] == sum(located) == vd["cells"] == 12
    assert vd["frames"] == 32 and vd["detections"] == 32 * 3 and vd["fields"] == 4
    assert vd["differential"]["wbc_total"] == st["differential"]["wbc_total"]
    s = read_session(tmp_path / "video.db")
    # each cell counted from its first COUNT_VIEWS sharp, still views; not classified after that
    assert len(s["cells_list"]) == 12 and {c["observations"] for c in s["cells_list"]} == {COUNT_VIEWS}
    assert len(s["frames_list"]) == 32 and sum(f["n_cells"] for f in s["frames_list"]) == 96
    assert s["counting"] == "tracked" and s["count_target"] == 100
    assert "each cell counted once: 12 cells from 96 detections in 4 field(s)" in r.stdout


def test_count_stops_at_exactly_n_white_cells(bundles, tmp_path):
    folder = tmp_path / "fields"
    folder.mkdir()
    for k in range(48):  # 144 cells in distinct fields, more than enough white cells for 100
        Image.fromarray(random_field(100 + k)).save(folder / f"{k:03d}.png")
    for n in (100, 7):
        db = tmp_path / f"c{n}.db"
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
            "--count",
            n,
        )
        assert r.exit_code == 0, r.output
        s = read_session(db)
        assert s["end_reason"] == f"reached --count {n} white cells" and _wbc_in_db(s) == n
        assert json.loads(s["summary"])["differential"]["wbc_total"] == n
        assert f"count target {n} white cells: reached" in r.stdout


BCCD_FIELDS = ("BloodImage_00000.jpg", "BloodImage_00010.jpg", "BloodImage_00020.jpg", "BloodImage_00030.jpg")


def test_bccd_fields_held_in_a_video_count_once(bundles, bccd_dir, tmp_path):
    from edge_bloodcls.edge_runtime.core.preprocess import load_rgb

    paths = [bccd_dir / "JPEGImages" / n for n in BCCD_FIELDS]
    if not all(p.exists() for p in paths):
        pytest.skip("BCCD fields missing")
    video = write_video(tmp_path / "bccd.avi", [load_rgb(p) for p in paths], hold=10)
    # the reference: the same (decoded) frames, each field once, as single frames
    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    singles = tmp_path / "singles"
    singles.mkdir()
    for k in range(len(paths)):
        Image.fromarray(frames[10 * k]).save(singles / f"{k}.png")
    expected = sum(len(locate(frames[10 * k])) for k in range(len(paths)))
    assert expected >= len(paths)
    out = {}
    for name, src in (("video", video), ("singles", singles)):
        r = run(
            "capture",
            "--camera",
            src,
            "--mode",
            "field",
            "--model",
            bundles["int8"],
            "--db",
            tmp_path / f"{name}.db",
            "--no-preview",
        )
        assert r.exit_code == 0, r.output
        out[name] = read_session(tmp_path / f"{name}.db")
    assert len(out["video"]["cells_list"]) == len(out["singles"]["cells_list"]) == expected
    assert _wbc_in_db(out["video"]) == _wbc_in_db(out["singles"])
    assert len(out["video"]["frames_list"]) == 10 * len(paths)

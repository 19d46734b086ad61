"""Soak benchmark of `capture` (not a test): does the process stay flat over hours at the microscope?

Runs the real capture loop (edge_runtime.capture.loop.run_capture with a SessionLog, the bundled
default model unless --model) on a folder of field images replayed in a loop at --fps for
--minutes, and samples the process's resident memory (VmRSS from /proc/self/status: no psutil on
a Pi) and the per-frame time (the capture loop's own work, from handing out a frame to asking for
the next) every --sample-s seconds. Writes benchmarks/results/soak_capture.json and .md.

Acceptance: RSS growth under --max-growth-mb-h (5 MB per hour) after the warm-up, as the slope of
a least-squares line through the samples (one sample is noise; a leak is a slope).

    .venv/bin/python scripts/soak_capture.py --minutes 60 --fps 5
    .venv/bin/python scripts/soak_capture.py --minutes 2 --out-dir /tmp/soak   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "bccd" / "JPEGImages"


def rss_kb(pid: str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def synthetic_fields(folder: Path, n: int = 40) -> Path:
    """A folder of 640x480 smear-like fields (pink background, pale red cells, a few dark purple
    nuclei) when the BCCD images are not there."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        im = Image.new("RGB", (640, 480), (236, 214, 220))
        d = ImageDraw.Draw(im)
        for _ in range(60):
            x, y = rng.integers(0, 640), rng.integers(0, 480)
            d.ellipse((x - 45, y - 45, x + 45, y + 45), fill=(214, 150, 160))
        for _ in range(rng.integers(1, 3)):
            x, y = rng.integers(80, 560), rng.integers(80, 400)
            d.ellipse((x - 60, y - 60, x + 60, y + 60), fill=(200, 170, 200))
            d.ellipse((x - 35, y - 30, x + 35, y + 30), fill=(90, 40, 130))
        im.save(folder / f"field_{i:03d}.jpg", quality=92)
    return folder


def make_source(folder: Path, fps: float, deadline: float, per_frame: list):
    from edge_bloodcls.edge_runtime.capture.sources import FolderSource
    from edge_bloodcls.edge_runtime.core.preprocess import load_rgb

    class LoopingFolder(FolderSource):
        """The folder replayed until the deadline; records how long the loop worked on each frame."""

        kind = "looped folder"

        def _frames(self):
            loops = 0
            while time.monotonic() < deadline:
                for p in self.files:
                    if time.monotonic() >= deadline:
                        break
                    yield load_rgb(p), f"{p.name} (loop {loops})"
                loops += 1
            self.end_reason = f"soak time over ({loops} loops of {len(self.files)} images)"

        def __iter__(self):
            for frame in super().__iter__():
                t0 = time.perf_counter()
                yield frame
                per_frame.append((time.perf_counter() - t0) * 1000)  # emptied at each sample

    return LoopingFolder(folder, fps=fps)


def slope_per_hour(ts, ys) -> float:
    if len(ts) < 2:
        return 0.0
    return float(np.polyfit(np.asarray(ts) / 3600.0, np.asarray(ys), 1)[0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder of field images, replayed in a loop")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--fps", type=float, default=5.0)
    ap.add_argument("--mode", choices=["field", "cell"], default="field")
    ap.add_argument("--model", default=None, help="bundle (default: the bundled default model)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--sample-s", type=float, default=30.0)
    ap.add_argument("--warmup-min", type=float, default=3.0, help="samples before this are not in the slope")
    ap.add_argument("--max-growth-mb-h", type=float, default=5.0)
    ap.add_argument("--db", type=Path, default=None, help="session log (default: a temporary file, removed)")
    ap.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)

    from edge_bloodcls.edge_runtime.capture.loop import STAGES, CaptureOptions, run_capture, runtime_versions
    from edge_bloodcls.edge_runtime.cli import load_classifier
    from edge_bloodcls.edge_runtime.lab.session import SessionLog

    tmp = tempfile.TemporaryDirectory(prefix="soak_capture_")
    source_dir = args.source
    if not source_dir.is_dir():
        source_dir = synthetic_fields(Path(tmp.name) / "fields")
    db = args.db or Path(tmp.name) / "soak.sqlite"
    clf = load_classifier(args.model, args.threads)
    per_frame: list[float] = []
    samples: list[dict] = []
    t_start = time.monotonic()
    deadline = t_start + args.minutes * 60
    source = make_source(source_dir, args.fps, deadline, per_frame)
    log = SessionLog(
        db,
        f"soak {source_dir}",
        args.mode,
        clf.describe(),
        clf.review_threshold,
        counting="tracked" if args.mode == "field" else "per-frame",
        versions=runtime_versions(clf),
    )
    stop = threading.Event()
    frames_seen = [0]

    def sampler():
        last = False
        while not last:
            t = time.monotonic() - t_start
            batch, per_frame[:] = list(per_frame), []
            frames_seen[0] += len(batch)
            s = {"t_s": round(t, 1), "rss_mb": round(rss_kb() / 1024, 2), "frames": frames_seen[0]}
            if batch:
                s.update(
                    frame_ms_median=round(float(np.median(batch)), 2),
                    frame_ms_p95=round(float(np.percentile(batch, 95)), 2),
                    frame_ms_max=round(float(np.max(batch)), 2),
                    fps=round(len(batch) / args.sample_s, 2),
                )
            samples.append(s)
            print(json.dumps(s), flush=True)
            last = stop.wait(args.sample_s)  # once more after the stop: the last sample is the end

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    try:
        summary = run_capture(
            source,
            clf,
            log,
            CaptureOptions(
                mode=args.mode,
                count=None,
                preview=False,
                status_every_s=300.0,
                echo=lambda m: print(m, file=sys.stderr, flush=True),
            ),
        )
    finally:
        log.close()
    stop.set()
    th.join()
    db_mb = round(db.stat().st_size / 1e6, 1) if db.exists() else None

    warm = [s for s in samples if s["t_s"] >= args.warmup_min * 60]
    growth = slope_per_hour([s["t_s"] for s in warm], [s["rss_mb"] for s in warm])
    wall = time.monotonic() - t_start
    result = {
        "benchmark": "soak_capture",
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_end": os.getloadavg()},
        "source": str(source_dir),
        "mode": args.mode,
        "fps_asked": args.fps,
        "minutes": args.minutes,
        "model": clf.describe().get("model"),
        "wall_s": round(wall, 1),
        "frames": summary.frames,
        "fps_achieved": round(summary.frames / wall, 2) if wall else 0.0,
        "cells": summary.cells,
        "end_reason": summary.end_reason,
        "db_mb": db_mb,
        "rss_mb": {
            "first": samples[0]["rss_mb"],
            "after_warmup": warm[0]["rss_mb"] if warm else None,
            "last": samples[-1]["rss_mb"],
            "max": max(s["rss_mb"] for s in samples),
        },
        "rss_growth_mb_per_h": round(growth, 3),
        "warmup_min": args.warmup_min,
        "max_growth_mb_per_h": args.max_growth_mb_h,
        "pass": bool(len(warm) >= 2 and growth < args.max_growth_mb_h),
        "timing_ms": {k: summary.timing_ms.get(k) for k in (*STAGES, "frame_total", "overhead")}
        if summary.timing_ms
        else {},
        "samples": samples,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "soak_capture.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out_dir / "soak_capture.md").write_text(markdown(result))
    tmp.cleanup()
    print(
        f"RSS growth {growth:.2f} MB/h after {args.warmup_min:g} min warm-up over {wall / 60:.1f} min, "
        f"{summary.frames} frames: {'PASS' if result['pass'] else 'FAIL'} (< {args.max_growth_mb_h:g} MB/h)"
    )
    return 0 if result["pass"] else 1


def markdown(r: dict) -> str:
    rss = r["rss_mb"]
    lines = [
        "# Capture soak",
        "",
        f"{r['when']}: `capture` ({r['mode']} mode, {r['model']}) on `{r['source']}` replayed in a loop, "
        f"asked for {r['fps_asked']:g} fps for {r['minutes']:g} min ({r['machine']['cpus']} CPUs, "
        f"load at the end {r['machine']['loadavg_end'][0]:.1f}).",
        "",
        f"- frames {r['frames']} ({r['fps_achieved']} fps achieved), cells counted {r['cells']}, "
        f"session log {r['db_mb']} MB; ended: {r['end_reason']}",
        f"- RSS: first sample {rss['first']} MB, after {r['warmup_min']:g} min warm-up {rss['after_warmup']} MB, "
        f"last {rss['last']} MB, max {rss['max']} MB",
        f"- **RSS growth after warm-up: {r['rss_growth_mb_per_h']} MB/h** (least-squares slope; acceptance "
        f"< {r['max_growth_mb_per_h']:g} MB/h): **{'PASS' if r['pass'] else 'FAIL'}**",
        "",
        "| t (min) | RSS MB | frames | frame ms median | p95 | max | fps |",
        "|---|---|---|---|---|---|---|",
    ]
    step = max(1, len(r["samples"]) // 30)
    for s in r["samples"][::step]:
        lines.append(
            f"| {s['t_s'] / 60:.1f} | {s['rss_mb']} | {s['frames']} | {s.get('frame_ms_median', '-')} | "
            f"{s.get('frame_ms_p95', '-')} | {s.get('frame_ms_max', '-')} | {s.get('fps', '-')} |"
        )
    tm = r.get("timing_ms") or {}
    if tm.get("frame_total"):
        lines += [
            "",
            f"Per frame over the session (capture's own summary): total median "
            f"{tm['frame_total']['median']} ms, interpreter median {tm['interpreter']['median']} ms.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

"""The capture loop: source -> (whole frame | locate -> crops) -> classifier -> track -> count once
-> log -> preview, with a running white-cell differential and, at the end, a summary.

Field mode counts each cell once (track.py): a cell is counted when its track ends, with the
label of its mean probabilities; --count N stops at exactly N white cells. Cell mode counts every
frame (each frame is one centred cell; there is nothing to follow from frame to frame).

Each frame's time is split into the stages outside the interpreter (decode, locate, crop,
preprocess, tensor I/O, log, preview) and the interpreter's invoke: on a Pi the stages around the
model can cost as much as the model, and this shows which.
"""
from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .capture_stats import TimingStats
from .classifier import Classifier
from .images import printable
from .locate import LocateParams, background, crop, default_rbc_px, locate
from .preprocess import prepare
from .session import SessionFileError, SessionLog
from .sources import Source, has_display
from .spec import WBC_LABELS
from .track import Differential  # noqa: F401  (was defined here; importers keep working)
from .track import MIN_OBSERVATIONS, CellCounter, Observation, Track, Tracker, single_track

if TYPE_CHECKING:
    from .preview import LiveView

STAGES = ("decode", "locate", "crop", "preprocess", "tensor_io", "interpreter", "log", "preview", "other")
DEFAULT_COUNT = 100  # white cells: the usual manual differential (200 for a closer look)


class Stop(Exception):
    """Raised in the loop by SIGTERM, so that it ends like Ctrl-C."""


@dataclass
class CaptureOptions:
    mode: str = "cell"  # cell: the frame is one cell; field: locate white cells in it
    rbc_px: float | None = None
    locate_params: LocateParams = LocateParams()
    max_frames: int | None = None
    count: int | None = None  # stop after this many counted white cells
    min_observations: int = MIN_OBSERVATIONS
    save_crops: Path | None = None
    preview: bool = False
    live: LiveView | None = None
    top_k: int = 3
    echo: Callable[[str], None] = print
    status_every_s: float = 1.0


class _Signals:
    """SIGTERM and Ctrl-C end the loop at once, except inside a critical section (a frame being
    logged and counted), where they are held until the section ends: the summary and the log then
    always agree on what was done (a signal between the commit and the frame counter once gave a
    summary of 3 frames for a log of 4)."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: type | None = None
        self.closing = False
        self.old: dict = {}

    def install(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.old[sig] = signal.signal(sig, self._handle)

    def restore(self):
        for sig, old in self.old.items():
            signal.signal(sig, old)

    def _handle(self, signum, frame):
        exc = Stop if signum == signal.SIGTERM else KeyboardInterrupt
        if self.depth or self.closing:
            self.pending = self.pending or exc
            return
        raise exc()

    @contextmanager
    def critical(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.pending and not self.closing:
            exc, self.pending = self.pending, None
            raise exc()


def run_capture(source: Source, clf: Classifier, log: SessionLog | None, opts: CaptureOptions) -> dict:
    """Run until the source ends, max_frames, --count white cells, q in the preview, Ctrl-C or
    SIGTERM; return the summary."""
    from .preview import Box, Window, annotate

    echo = opts.echo
    counter = CellCounter(clf, opts, log)
    tracker = Tracker(clf.labels, min_observations=opts.min_observations) if opts.mode == "field" else None
    timings = TimingStats(STAGES)  # constant memory: a session may run for a whole shift
    unrecorded = None  # a logged frame whose timing is not yet in `timings`
    window = Window(echo) if opts.preview and has_display() else None
    if opts.save_crops:
        Path(opts.save_crops).mkdir(parents=True, exist_ok=True)
    sig = _Signals()
    sig.install()
    end_reason = ""
    log_error = ""  # the log (or the crop folder) could not be written: the session ends with it
    not_logged = 0  # cells counted at the frame whose write failed
    n_frames = detections = 0
    last_index = -1
    last_status = 0.0
    started = time.perf_counter()
    try:
        for frame in source:
            t_frame = time.perf_counter()
            t = {k: 0.0 for k in STAGES}
            t["decode"] = frame.decode_ms
            rgb = frame.rgb
            if opts.mode == "field":
                rbc_px = opts.rbc_px or default_rbc_px(rgb.shape)
                t0 = time.perf_counter()
                dets = locate(rgb, rbc_px, opts.locate_params)
                t["locate"] = _ms(t0)
                t0 = time.perf_counter()
                fill = background(rgb) if dets else None
                regions = [(d.box, crop(rgb, d, rbc_px, fill)) for d in dets]
                t["crop"] = _ms(t0)
            else:
                regions = [((0, 0, rgb.shape[1], rgb.shape[0]), rgb)]
            obs = []
            for (x0, y0, x1, y1), patch in regions:
                t0 = time.perf_counter()
                x = prepare(patch, clf.spec)
                t["preprocess"] += _ms(t0)
                t0 = time.perf_counter()
                pred = clf.classify_input(x, opts.top_k)
                t["interpreter"] += pred.latency_ms
                t["tensor_io"] += _ms(t0) - pred.latency_ms
                probs = np.array([pred.probs[k] for k in clf.labels], np.float64)
                obs.append(Observation(frame.index, (x0, y0, x1, y1), probs, pred, patch, frame.timestamp))
            with sig.critical():
                t0 = time.perf_counter()
                ended = tracker.update(frame.index, rgb, obs) if tracker else [single_track(o, clf.labels) for o in obs]
                records = []
                try:
                    records = counter.take(ended)
                    if log is not None:
                        counter.note_ids(records, log.log_frame(frame.index, frame.timestamp, frame.name, rgb.shape,
                                                                len(obs), records,
                                                                {k: round(v, 3) for k, v in t.items() if v}))
                except (SessionFileError, OSError) as e:
                    # a full disk, a lock never released, a log made read-only: stop counting what
                    # cannot be recorded, and end the session with the reason (the frame rolled back)
                    log_error, not_logged = _one_line(e, opts), len(records)
                    end_reason = f"stopped: {log_error}"
                    break
                t["log"] += _ms(t0)
                n_frames += 1
                detections += len(obs)
                last_index = frame.index
                unrecorded = t  # recorded after the preview time below, or at the end if a signal cuts in
                if counter.full:
                    end_reason = f"reached --count {opts.count} white cells"
            if window is not None or (opts.live is not None and opts.live.due()):
                t0 = time.perf_counter()
                status = _status(counter, tracker, opts)
                if tracker:
                    boxes = [Box(tr.box, *_mean_label(tr, clf), note="pending")
                             for tr in tracker.active if tr.missed == 0]
                else:
                    boxes = [Box(r.box, r.label, r.confidence, r.review, r.ood) for r in records]
                g = counter.gate
                banner = (f"UNVALIDATED: {g.n_ood} of {g.n_cells} white cells out of distribution"
                          if g.tripped else "")
                img = annotate(rgb, boxes, status, banner)
                action = window.show(img) if window is not None else None
                if opts.live is not None:
                    opts.live.publish(img, " | ".join(status))
                t["preview"] = _ms(t0)
                if action == "quit":
                    end_reason = end_reason or "stopped from the preview window"
                elif action == "field" and tracker:
                    tracker.force_new_field = True
            now = time.perf_counter()
            if now - last_status >= opts.status_every_s:
                echo(f"frame {frame.index}: {len(obs)} located | " + " | ".join(_status(counter, tracker, opts)))
                last_status = now
            t["other"] = max(0.0, _ms(t_frame) - sum(t[k] for k in STAGES if k not in ("decode", "other")))
            timings.add(t)
            unrecorded = None
            if end_reason:
                break
            if opts.max_frames and n_frames >= opts.max_frames:
                end_reason = f"reached --max-frames {opts.max_frames}"
                break
        else:
            end_reason = source.end_reason or "source ended"
    except KeyboardInterrupt:
        end_reason = "interrupted (Ctrl-C)"
    except Stop:
        end_reason = "terminated (SIGTERM)"
    except BaseException:  # a bug or a full disk: still free the camera and the signal handlers
        sig.restore()
        source.close()
        if window is not None:
            window.close()
        raise
    sig.closing = True  # from here a signal only waits: the counts and the log must be finished
    if unrecorded is not None:  # the summary's frame count and timing frames agree
        timings.add(unrecorded)
    try:
        source.close()
        if window is not None:
            window.close()
        if tracker and not counter.full and not log_error:
            try:
                records = counter.take(tracker.flush(last_index))
                if log is not None:
                    counter.note_ids(records, log.log_cells(records))
            except (SessionFileError, OSError) as e:
                log_error, not_logged = _one_line(e, opts), len(records)
                end_reason = f"{end_reason}; then {log_error}"
        summary = {
            "end_reason": end_reason, "frames": n_frames, "cells": sum(counter.diff.counts.values()),
            "detections": detections, "wall_s": round(time.perf_counter() - started, 3),
            "counting": "tracked" if tracker else "per-frame", "count_target": opts.count,
            "fields": tracker.fields if tracker else None, "tracks_dropped": tracker.dropped if tracker else 0,
            "differential": counter.diff.to_json(), "review": counter.review, "review_total": counter.n_review,
            "ood_cells": counter.ood,
            "trust": counter.gate.to_json(), "timing_ms": timings.summary(), "model": clf.describe(),
            "mode": opts.mode, "source_failed": bool(getattr(source, "failed", False)),
        }
        if log_error:
            summary.update(log_error=log_error, cells_not_logged=not_logged)
        if log is not None:
            try:
                # after a failed write: one attempt, not the retry budget again; an end time is
                # what a report needs to tell a stopped session from one still running
                log.finish(end_reason, summary, retry=not log_error)
            except SessionFileError as e:
                summary["log_error"] = log_error or str(e)
                summary["log_unfinished"] = str(e)
    finally:
        sig.restore()
    return summary


def crop_folder_problem(folder) -> str | None:
    """Why crops cannot be saved in `folder` (created if missing), or None. Checked before the
    session starts: finding out at the first counted cell would end the session there."""
    import tempfile

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        return "is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".edge-bloodcls-write-test-"):
            pass
    except OSError as e:
        return f"cannot save crops here ({e.strerror or e})"
    return None


def _one_line(e: Exception, opts: CaptureOptions) -> str:
    if isinstance(e, SessionFileError):
        return str(e)
    where = getattr(e, "filename", None) or opts.save_crops
    return f"{printable(where)}: cannot save a crop ({getattr(e, 'strerror', None) or e})"


def _mean_label(tr: Track, clf: Classifier) -> tuple[str, float, bool, bool]:
    v = tr.verdict(clf.labels, clf.review_threshold)
    return v["label"], v["confidence"], v["review"], v["ood"]


def _status(counter: CellCounter, tracker: Tracker | None, opts: CaptureOptions) -> list[str]:
    target = f"/{opts.count}" if opts.count else ""
    head = f"counted WBC {counter.diff.wbc}{target}, flagged {counter.n_review}"
    if tracker:
        head += f", in this field {sum(t.missed == 0 for t in tracker.active)} (counted when the field changes)"
    return [head, counter.diff.line()]


def format_summary(s: dict) -> str:
    d = s["differential"]
    lines = [f"session ended: {s['end_reason']}"]
    if s.get("log_error"):
        lines.append(f"SESSION LOG INCOMPLETE: {s['log_error']}; frames after the failure are not in the log"
                     + (f", nor {s['cells_not_logged']} cell(s) counted at the frame that failed (in the totals "
                        "below)" if s.get("cells_not_logged") else ""))
    if s.get("log_unfinished"):
        lines.append(f"the session could not be closed in the log (no end time): {s['log_unfinished']}")
    lines.append(f"frames {s['frames']}, cells {s['cells']}, white cells {d['wbc_total']} in {s['wall_s']:.1f} s")
    if s.get("counting") == "tracked":
        lines.append(f"each cell counted once: {s['cells']} cells from {s['detections']} detections in "
                     f"{s['fields']} field(s); {s['tracks_dropped']} seen in a single frame of a held field "
                     "not counted")
    if s.get("count_target"):
        done = "reached" if d["wbc_total"] >= s["count_target"] else "NOT reached"
        lines.append(f"count target {s['count_target']} white cells: {done}")
    trust = s.get("trust") or {}
    if trust.get("tripped"):
        lines.append(f"UNVALIDATED differential: {trust['ood_cells']} of {trust['cells']} white cells out of "
                     f"distribution (the trust gate tripped at white cell {trust['tripped_at_cell']})")
        lines.append("  " + trust.get("message", "").removeprefix("WARNING: "))
    lines.append(f"out of distribution: {s.get('ood_cells', 0)} of {s['cells']} cells")
    lines.append("differential (% of white cells):")
    for k in WBC_LABELS:
        lines.append(f"  {k:<12}{d['counts'].get(k, 0):>6}{d['percent'][k]:>7.1f}%")
    for k in sorted(set(d["counts"]) - set(WBC_LABELS)):
        lines.append(f"  {k:<12}{d['counts'][k]:>6}   (not in the differential)")
    tm = s["timing_ms"]
    if tm:
        stages = ", ".join(f"{k} {tm[k]['median']:.2f}" for k in STAGES if tm[k]["mean"] > 0)
        lines.append(f"per frame, median ms: {stages}")
        lines.append(f"  interpreter {tm['interpreter']['median']:.2f} ms vs everything else "
                     f"{tm['overhead']['median']:.2f} ms ({100 * tm['overhead_share']:.0f}% of frame time "
                     "outside the interpreter)")
    rv = s["review"]
    n_flagged = s.get("review_total", len(rv))
    lines.append(f"flagged for review: {n_flagged}")
    for r in rv[:10]:
        lines.append(f"  cell {r.get('cell_id', '-')} (frame {r['frame']}): {r['label']} {r['confidence']:.2f}"
                     + (f" - {r['reason']}" if r.get("reason") else "")
                     + (f" {printable(r['crop'])}" if r["crop"] else ""))
    if n_flagged > 10:
        lines.append(f"  … and {n_flagged - 10} more")
    if s.get("db"):
        lines.append(f"check and sign: edge-bloodcls review {s['db']}; report: edge-bloodcls report {s['db']} "
                     "--out report.html")
    return "\n".join(lines)


def runtime_versions(clf: Classifier) -> dict:
    """What a signed report must name: the software and the exact model that produced it."""
    import platform

    from edge_bloodcls import __version__

    v = {"edge_bloodcls": __version__, "python": platform.python_version(), "numpy": np.__version__,
         "bundle": str(clf.bundle.tflite), "quantization": clf.bundle.quantization}
    try:
        import cv2

        v["opencv"] = cv2.__version__
    except ImportError:
        pass
    return v


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000

"""The capture loop: source -> count -> store -> display, with a running white-cell
differential and, at the end, a CaptureSummary.

  count    field mode: locate white cells, and let the counting core (counting.py; motion, focus
           and position on the slide in slide.py) decide which are classified and when each is
           counted, once; cell mode: the frame is one centred cell, counted at once.
  store    the session log (a SessionSink, sink.py: the lab's SessionLog): one call per frame
           with the cells counted at it, one at the end for the cells still open, one when the
           trust gate trips, one to close.
  display  the OpenCV window and/or the web live view (preview.py).

Each frame's time is split into the stages outside the interpreter (decode, locate, motion =
registration, focus and slide position, crop, preprocess, tensor I/O, log, preview) and the
interpreter's invoke: on a Pi the stages around the model can cost as much as the model, and
this shows which.
"""

from __future__ import annotations

import platform
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edge_bloodcls import __version__

from ..core.classifier import Classifier
from ..core.images import printable
from ..core.preprocess import prepare
from ..core.spec import WBC_LABELS
from .counting import CountingCore, ShownCell
from .locate import Detection, LocateParams, background, crop, default_rbc_px, locate
from .preview import Box, LiveView, Window, annotate
from .sink import SessionFileError, SessionSink
from .slide import COUNTING, LOST
from .sources import Frame, Source, has_display
from .summary import CaptureSummary, TimingStats
from .track import (
    MIN_OBSERVATIONS,
    CellCounter,
    Differential,  # noqa: F401  (was defined here; importers keep working)
    Observation,
    Track,
    save_jpeg,
    single_track,
)

STAGES = ("decode", "locate", "motion", "crop", "preprocess", "tensor_io", "interpreter", "log", "preview", "other")
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


def run_capture(source: Source, clf: Classifier, log: SessionSink | None, opts: CaptureOptions) -> CaptureSummary:
    """Run until the source ends, max_frames, --count white cells, q in the preview, Ctrl-C or
    SIGTERM; return the summary."""
    return _Capture(source, clf, log, opts).run()


class _Capture:
    def __init__(self, source: Source, clf: Classifier, log: SessionSink | None, opts: CaptureOptions):
        self.source, self.clf, self.log, self.opts = source, clf, log, opts
        self.counter = CellCounter(clf.labels, clf.review_threshold, opts.count)
        self.core = (
            CountingCore(clf.labels, clf.review_threshold, opts.rbc_px, opts.min_observations)
            if opts.mode == "field"
            else None
        )
        self.timings = TimingStats(STAGES)  # constant memory: a session may run for a whole shift
        self.window = None
        if opts.preview and has_display():
            self.window = Window(opts.echo)
        self.sig = _Signals()
        self.end_reason = ""
        self.log_error = ""  # the log (or the crop folder) could not be written: the session ends with it
        self.not_logged = 0  # cells counted at the frame whose write failed
        self.n_frames = self.detections = 0
        self.state = ""
        self.last_located = 0
        self.last_status = 0.0

    # --- the loop ---

    def run(self) -> CaptureSummary:
        opts = self.opts
        if opts.save_crops:
            Path(opts.save_crops).mkdir(parents=True, exist_ok=True)
        self.sig.install()
        unrecorded = None  # a logged frame whose timing is not yet in `timings`
        started = time.perf_counter()
        try:
            try:
                for frame in self.source:
                    t_frame = time.perf_counter()
                    t = {k: 0.0 for k in STAGES}
                    t["decode"] = frame.decode_ms
                    with self.sig.critical():
                        records, shown, n_located = self.count(frame, t)
                        if not self.store(frame, records, n_located, t):
                            break
                        unrecorded = t  # recorded after the preview, or at the end if a signal cuts in
                    self.display(frame, records, shown, t)
                    t["other"] = max(0.0, _ms(t_frame) - sum(t[k] for k in STAGES if k not in ("decode", "other")))
                    self.timings.add(t)
                    unrecorded = None
                    if self.end_reason:
                        break
                    if opts.max_frames and self.n_frames >= opts.max_frames:
                        self.end_reason = f"reached --max-frames {opts.max_frames}"
                        break
                else:
                    self.end_reason = self.source.end_reason or "source ended"
            except KeyboardInterrupt:
                self.end_reason = "interrupted (Ctrl-C)"
            except Stop:
                self.end_reason = "terminated (SIGTERM)"
            except BaseException:  # a bug or a full disk: still free the camera and the signal handlers
                self.sig.restore()
                self._close_devices()
                raise
            self.sig.closing = True  # from here a signal only waits: the counts and the log must be finished
            if unrecorded is not None:  # the summary's frame count and timing frames agree
                self.timings.add(unrecorded)
            self._close_devices()
            return self.finish(time.perf_counter() - started)
        finally:
            self.sig.restore()

    # --- count: frame -> counted cells (and what to show) ---

    def count(self, frame: Frame, t: dict) -> tuple[list, list[ShownCell], int]:
        rgb, opts, clf = frame.rgb, self.opts, self.clf
        if self.core is None:
            obs = self._classify(frame, [((0, 0, rgb.shape[1], rgb.shape[0]), rgb)], t)
            ended = [single_track(o, clf.labels) for o in obs]
            n_located, shown = len(obs), []
        else:
            rbc_px = opts.rbc_px or default_rbc_px(rgb.shape)
            t0 = time.perf_counter()
            dets = locate(rgb, rbc_px, opts.locate_params)
            t["locate"] = _ms(t0)
            fill = None

            def classify(todo: Sequence[Detection]) -> list[Observation]:
                nonlocal fill
                t0 = time.perf_counter()
                fill = background(rgb) if fill is None else fill
                regions = [(d.box, crop(rgb, d, rbc_px, fill)) for d in todo]
                t["crop"] += _ms(t0)
                return self._classify(frame, regions, t)

            t0 = time.perf_counter()
            step = self.core.step(frame.index, frame.timestamp, rgb, dets, classify)
            # the core's own time (registration, focus, matching) less the classifier's stages
            t["motion"] = max(0.0, _ms(t0) - sum(t[k] for k in ("crop", "preprocess", "interpreter", "tensor_io")))
            ended, n_located, shown = step.counted, len(dets), step.shown
            self.state = step.frame.state
        records = self.counter.take(ended, self._save_crop if opts.save_crops else None)
        if self.counter.tripped_now:
            opts.echo(self.counter.gate.message())
        return records, shown, n_located

    def _classify(self, frame: Frame, regions, t: dict) -> list[Observation]:
        obs = []
        for (x0, y0, x1, y1), patch in regions:
            t0 = time.perf_counter()
            x = prepare(patch, self.clf.spec)
            t["preprocess"] += _ms(t0)
            t0 = time.perf_counter()
            pred = self.clf.classify_input(x, self.opts.top_k)
            t["interpreter"] += pred.latency_ms
            t["tensor_io"] += _ms(t0) - pred.latency_ms
            probs = np.array([pred.probs[k] for k in self.clf.labels], np.float64)
            obs.append(Observation(frame.index, (x0, y0, x1, y1), probs, pred, patch, frame.timestamp))
        return obs

    def _save_crop(self, track: Track, label: str) -> str | None:
        best = track.best
        if best is None or best.crop is None or not self.opts.save_crops:
            return None
        path = str(
            Path(self.opts.save_crops) / f"s{self.log.id if self.log else 0}_"
            f"f{best.frame_index:06d}_t{track.id}_{label}.jpg"
        )
        save_jpeg(best.crop, path)
        return path

    # --- store: the session log (the only calls into the SessionSink) ---

    def store(self, frame: Frame, records: list, n_located: int, t: dict) -> bool:
        """Log the frame and the cells counted at it; False when the log failed (session ends)."""
        t0 = time.perf_counter()
        try:
            if self.log is not None:
                if self.counter.tripped_now:
                    self.log.set_trust(self.counter.gate.to_json())
                ids = self.log.log_frame(
                    frame.index,
                    frame.timestamp,
                    frame.name,
                    frame.rgb.shape,
                    n_located,
                    records,
                    {k: round(v, 3) for k, v in t.items() if v},
                )
                self.counter.note_ids(records, ids)
        except (SessionFileError, OSError) as e:
            # a full disk, a lock never released, a log made read-only: stop counting what cannot be
            # recorded, and end the session with the reason (the frame rolled back)
            self.log_error, self.not_logged = _one_line(e, self.opts), len(records)
            self.end_reason = f"stopped: {self.log_error}"
            return False
        t["log"] += _ms(t0)
        self.n_frames += 1
        self.detections += n_located
        self.last_located = n_located
        if self.counter.full:
            self.end_reason = f"reached --count {self.opts.count} white cells"
        return True

    # --- display ---

    def display(self, frame: Frame, records: list, shown: list[ShownCell], t: dict) -> None:
        opts = self.opts
        if self.window is not None or (opts.live is not None and opts.live.due()):
            t0 = time.perf_counter()
            status = self._status()
            if self.core is not None:
                boxes = [Box(c.box, c.label, c.confidence, c.review, c.ood, note=c.note) for c in shown]
            else:
                boxes = [Box(r.box, r.label, r.confidence, r.review, r.ood, note="counted") for r in records]
            g = self.counter.gate
            banner = f"UNVALIDATED: {g.n_ood} of {g.n_cells} white cells out of distribution" if g.tripped else ""
            img = annotate(frame.rgb, boxes, status, banner, state=self.state if self.core is not None else "")
            action = self.window.show(img) if self.window is not None else None
            if opts.live is not None:
                opts.live.publish(img, " | ".join(status), state=self.state)
            t["preview"] = _ms(t0)
            if action == "quit":
                self.end_reason = self.end_reason or "stopped from the preview window"
            elif action == "field" and self.core is not None:
                self.core.new_field()
        now = time.perf_counter()
        if now - self.last_status >= opts.status_every_s:
            opts.echo(f"frame {frame.index}: {self.last_located} located | " + " | ".join(self._status()))
            self.last_status = now

    def _status(self) -> list[str]:
        c, opts = self.counter, self.opts
        target = f"/{opts.count}" if opts.count else ""
        head = f"counted WBC {c.diff.wbc}{target}, flagged {c.n_review}"
        if self.core is not None:
            head = f"{_STATE_TEXT.get(self.state, self.state)} | " + head
        return [head, c.diff.line()]

    # --- end ---

    def _close_devices(self) -> None:
        self.source.close()
        if self.window is not None:
            self.window.close()

    def finish(self, wall_s: float) -> CaptureSummary:
        counter, core, log = self.counter, self.core, self.log
        if core is not None and not counter.full and not self.log_error:
            records = []
            try:
                records = counter.take(core.flush(), self._save_crop if self.opts.save_crops else None)
                if log is not None:
                    if counter.tripped_now:
                        log.set_trust(counter.gate.to_json())
                    counter.note_ids(records, log.log_cells(records))
            except (SessionFileError, OSError) as e:
                self.log_error, self.not_logged = _one_line(e, self.opts), len(records)
                self.end_reason = f"{self.end_reason}; then {self.log_error}"
        summary = CaptureSummary(
            end_reason=self.end_reason,
            frames=self.n_frames,
            cells=sum(counter.diff.counts.values()),
            detections=self.detections,
            wall_s=round(wall_s, 3),
            counting="tracked" if core else "per-frame",
            count_target=self.opts.count,
            fields=core.segments if core else None,
            tracks_dropped=core.stats.dropped if core else 0,
            differential=counter.diff.to_json(),
            review=counter.review,
            review_total=counter.n_review,
            ood_cells=counter.ood,
            trust=counter.gate.to_json(),
            timing_ms=self.timings.summary(),
            model=self.clf.describe(),
            mode=self.opts.mode,
            source_failed=bool(getattr(self.source, "failed", False)),
            frame_states=dict(core.stats.states) if core else {},
            seen_again=core.stats.seen_again if core else 0,
            classified=core.stats.classified if core else self.n_frames,
            log_error=self.log_error,
            cells_not_logged=self.not_logged if self.log_error else 0,
        )
        if log is not None:
            try:
                # after a failed write: one attempt, not the retry budget again; an end time is
                # what a report needs to tell a stopped session from one still running
                log.finish(self.end_reason, summary.to_json(), retry=not self.log_error)
            except SessionFileError as e:
                summary.log_error = self.log_error or str(e)
                summary.log_unfinished = str(e)
        return summary


_STATE_TEXT = {
    COUNTING: "COUNTING",
    "moving": "MOVING: not counting",
    "out of focus": "OUT OF FOCUS: not counting",
    LOST: "LOST: not counting (jump, dark or blurred frame)",
}


def crop_folder_problem(folder) -> str | None:
    """Why crops cannot be saved in `folder` (created if missing), or None. Checked before the
    session starts: finding out at the first counted cell would end the session there."""
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


def format_summary(summary: CaptureSummary | dict) -> str:
    s = summary.to_json() if isinstance(summary, CaptureSummary) else summary
    d = s["differential"]
    lines = [f"session ended: {s['end_reason']}"]
    if s.get("log_error"):
        lines.append(
            f"SESSION LOG INCOMPLETE: {s['log_error']}; frames after the failure are not in the log"
            + (
                f", nor {s['cells_not_logged']} cell(s) counted at the frame that failed (in the totals below)"
                if s.get("cells_not_logged")
                else ""
            )
        )
    if s.get("log_unfinished"):
        lines.append(f"the session could not be closed in the log (no end time): {s['log_unfinished']}")
    lines.append(f"frames {s['frames']}, cells {s['cells']}, white cells {d['wbc_total']} in {s['wall_s']:.1f} s")
    if s.get("counting") == "tracked":
        lines.append(
            f"each cell counted once: {s['cells']} cells from {s['detections']} detections in "
            f"{s['fields']} field(s) (segments of the slide); {s['tracks_dropped']} located but not "
            "counted (seen in too few of the frames that showed them)"
        )
        states = s.get("frame_states") or {}
        if states:
            lines.append(
                "frames by state: "
                + ", ".join(f"{k} {states[k]}" for k in _STATE_TEXT if k in states)
                + f"; counted cells seen again {s.get('seen_again', 0)} time(s), not counted again"
            )
    if s.get("count_target"):
        done = "reached" if d["wbc_total"] >= s["count_target"] else "NOT reached"
        lines.append(f"count target {s['count_target']} white cells: {done}")
    trust = s.get("trust") or {}
    if trust.get("tripped"):
        lines.append(
            f"UNVALIDATED differential: {trust['ood_cells']} of {trust['cells']} white cells out of "
            f"distribution (the trust gate tripped at white cell {trust['tripped_at_cell']})"
        )
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
        lines.append(
            f"  interpreter {tm['interpreter']['median']:.2f} ms vs everything else "
            f"{tm['overhead']['median']:.2f} ms ({100 * tm['overhead_share']:.0f}% of frame time "
            "outside the interpreter)"
        )
    rv = s["review"]
    n_flagged = s.get("review_total", len(rv))
    lines.append(f"flagged for review: {n_flagged}")
    for r in rv[:10]:
        lines.append(
            f"  cell {r.get('cell_id', '-')} (frame {r['frame']}): {r['label']} {r['confidence']:.2f}"
            + (f" - {r['reason']}" if r.get("reason") else "")
            + (f" {printable(r['crop'])}" if r["crop"] else "")
        )
    if n_flagged > 10:
        lines.append(f"  … and {n_flagged - 10} more")
    if s.get("db"):
        lines.append(
            f"check and sign: edge-bloodcls review {s['db']}; report: edge-bloodcls report {s['db']} --out report.html"
        )
    return "\n".join(lines)


def runtime_versions(clf: Classifier) -> dict:
    """What a signed report must name: the software and the exact model that produced it."""
    v = {
        "edge_bloodcls": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "bundle": str(clf.bundle.tflite),
        "quantization": clf.bundle.quantization,
    }
    try:
        import cv2  # OpenCV is optional (the [edge] extra): named when installed

        v["opencv"] = cv2.__version__
    except ImportError:
        pass
    return v


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000

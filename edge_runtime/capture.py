"""The capture loop: source -> (whole frame | locate -> crops) -> classifier -> log -> preview,
with a running white-cell differential and, at the end, a summary.

Each frame's time is split into the stages outside the interpreter (decode, locate, crop,
preprocess, tensor I/O, log, preview) and the interpreter's invoke: on a Pi the stages around the
model can cost as much as the model, and this shows which.
"""
from __future__ import annotations

import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .classifier import Classifier
from .locate import LocateParams, background, crop, default_rbc_px, locate
from .preprocess import prepare
from .session import CellRecord, SessionLog
from .sources import Source, has_display
from .spec import WBC_LABELS

STAGES = ("decode", "locate", "crop", "preprocess", "tensor_io", "interpreter", "log", "preview", "other")


class Stop(Exception):
    """Raised in the loop by SIGTERM, so that it ends like Ctrl-C."""


@dataclass
class Differential:
    counts: Counter = field(default_factory=Counter)

    def add(self, label: str) -> None:
        self.counts[label] += 1

    @property
    def wbc(self) -> int:
        return sum(self.counts[k] for k in WBC_LABELS)

    def percentages(self) -> dict[str, float]:
        n = self.wbc
        return {k: 100.0 * self.counts[k] / n if n else 0.0 for k in WBC_LABELS}

    def line(self) -> str:
        pct = self.percentages()
        parts = [f"{k[:4]} {pct[k]:4.1f}%({self.counts[k]})" for k in WBC_LABELS]
        extra = [f"{k} {self.counts[k]}" for k in sorted(self.counts) if k not in WBC_LABELS]
        return f"WBC {self.wbc}: " + " ".join(parts) + (" | " + " ".join(extra) if extra else "")

    def to_json(self) -> dict:
        return {"counts": dict(self.counts), "wbc_total": self.wbc,
                "percent": {k: round(v, 2) for k, v in self.percentages().items()}}


@dataclass
class CaptureOptions:
    mode: str = "cell"  # cell: the frame is one cell; field: locate white cells in it
    rbc_px: float | None = None
    locate_params: LocateParams = LocateParams()
    max_frames: int | None = None
    save_crops: Path | None = None
    preview: bool = False
    top_k: int = 3
    echo: Callable[[str], None] = print
    status_every_s: float = 1.0


class _Preview:
    """cv2 window; turns itself off (with one message) where OpenCV has no GUI, e.g. -headless."""

    def __init__(self, echo):
        self.echo = echo
        self.on = True

    def show(self, rgb, cells: list[CellRecord], diff: Differential) -> bool:
        """Draw; False when the user asked to quit (q or Esc)."""
        if not self.on:
            return True
        import cv2

        img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        for c in cells:
            colour = (0, 165, 255) if c.review else (0, 200, 0)
            x0, y0, x1, y1 = c.box
            cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), colour, 2)
            cv2.putText(img, f"{c.label} {c.confidence:.2f}", (x0 + 3, max(14, y0 + 16)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
        cv2.putText(img, diff.line()[:110], (5, img.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (20, 20, 20), 1, cv2.LINE_AA)
        try:
            cv2.imshow("edge-bloodcls", img)
            key = cv2.waitKey(1) & 0xFF
        except cv2.error as e:
            self.on = False
            self.echo(f"preview off: OpenCV cannot open a window ({str(e).strip().splitlines()[-1][:100]})")
            return True
        return key not in (ord("q"), 27)

    def close(self):
        if self.on:
            try:
                import cv2

                cv2.destroyAllWindows()
            except Exception:
                pass


def _sigterm(signum, frame):
    raise Stop()


def run_capture(source: Source, clf: Classifier, log: SessionLog | None, opts: CaptureOptions) -> dict:
    """Run until the source ends, max_frames, q in the preview, Ctrl-C or SIGTERM; return the summary."""
    echo = opts.echo
    diff = Differential()
    timings: list[dict] = []
    review: list[dict] = []
    preview = _Preview(echo) if opts.preview and has_display() else None
    if opts.save_crops:
        Path(opts.save_crops).mkdir(parents=True, exist_ok=True)
    old = signal.signal(signal.SIGTERM, _sigterm) if _main_thread() else None
    end_reason = ""
    n_frames = 0
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
            cells = []
            for k, (box, patch) in enumerate(regions):
                t0 = time.perf_counter()
                x = prepare(patch, clf.spec)
                t["preprocess"] += _ms(t0)
                t0 = time.perf_counter()
                pred = clf.classify_input(x, opts.top_k)
                t["interpreter"] += pred.latency_ms
                t["tensor_io"] += _ms(t0) - pred.latency_ms
                crop_path = None
                if opts.save_crops:
                    t0 = time.perf_counter()
                    session = log.id if log else 0
                    crop_path = str(Path(opts.save_crops) / f"s{session}_f{frame.index:06d}_c{k}_{pred.label}.jpg")
                    _save_jpeg(patch, crop_path)
                    t["log"] += _ms(t0)
                cells.append(CellRecord(box, pred.label, pred.confidence, pred.review, pred.probs, crop_path))
                diff.add(pred.label)
                if pred.review:
                    review.append({"frame": frame.index, "name": frame.name, "box": list(box),
                                   "label": pred.label, "confidence": round(pred.confidence, 4),
                                   "crop": crop_path})
            t0 = time.perf_counter()
            if log is not None:
                log.log_frame(frame.index, frame.timestamp, frame.name, rgb.shape, cells,
                              {k: round(v, 3) for k, v in t.items() if v})
            t["log"] += _ms(t0)
            n_frames += 1
            if preview is not None:
                t0 = time.perf_counter()
                keep = preview.show(rgb, cells, diff)
                t["preview"] = _ms(t0)
                if not keep:
                    end_reason = "stopped from the preview window"
            now = time.perf_counter()
            if now - last_status >= opts.status_every_s:
                echo(f"frame {frame.index}: {len(cells)} cell(s) | {diff.line()}")
                last_status = now
            t["other"] = max(0.0, _ms(t_frame) - sum(t[k] for k in STAGES if k not in ("decode", "other")))
            timings.append(t)
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
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
        source.close()
        if preview is not None:
            preview.close()
    summary = {
        "end_reason": end_reason, "frames": n_frames, "cells": sum(diff.counts.values()),
        "wall_s": round(time.perf_counter() - started, 3),
        "differential": diff.to_json(), "review": review,
        "timing_ms": timing_summary(timings), "model": clf.describe(), "mode": opts.mode,
    }
    if log is not None:
        log.finish(end_reason, summary)
    return summary


def timing_summary(timings: list[dict]) -> dict:
    """Median and mean per stage over frames, and the share of a frame outside the interpreter."""
    if not timings:
        return {}
    out = {}
    for k in STAGES:
        v = np.array([t[k] for t in timings])
        out[k] = {"median": round(float(np.median(v)), 3), "mean": round(float(v.mean()), 3)}
    total = np.array([sum(t.values()) for t in timings])
    interp = np.array([t["interpreter"] for t in timings])
    out["frame_total"] = {"median": round(float(np.median(total)), 3), "mean": round(float(total.mean()), 3)}
    out["overhead"] = {"median": round(float(np.median(total - interp)), 3),
                       "mean": round(float((total - interp).mean()), 3)}
    out["overhead_share"] = round(float((total - interp).sum() / total.sum()), 4) if total.sum() else 0.0
    out["frames"] = len(timings)
    return out


def format_summary(s: dict) -> str:
    d = s["differential"]
    lines = [f"session ended: {s['end_reason']}",
             f"frames {s['frames']}, cells {s['cells']}, white cells {d['wbc_total']} in {s['wall_s']:.1f} s",
             "differential (% of white cells):"]
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
    lines.append(f"flagged for review: {len(rv)}")
    for r in rv[:20]:
        lines.append(f"  frame {r['frame']} {r['name']} box {r['box']}: {r['label']} {r['confidence']:.2f}"
                     + (f" {r['crop']}" if r["crop"] else ""))
    if len(rv) > 20:
        lines.append(f"  … and {len(rv) - 20} more (cells table, review = 1)")
    return "\n".join(lines)


def _save_jpeg(rgb: np.ndarray, path: str) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(path, quality=92)


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


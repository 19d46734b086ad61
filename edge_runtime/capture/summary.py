"""Per-frame timing of a capture session in constant memory, and the session's summary.

A session at a microscope can run for a whole shift (8 h at 5 fps is 144 000 frames); keeping one
dict per frame for the end-of-session medians once cost ~100 MB on a Pi with 1-4 GB. Means come
from running sums (exact); medians from a fixed-size reservoir sample of frames (exact while a
session has at most RESERVOIR frames, an unbiased sample of all frames after that). The reservoir
draws from a seeded generator, so the same session gives the same summary.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

RESERVOIR = 4096  # frames kept for the medians: 4096 x 9 stages x 8 bytes = 300 kB, whatever the length


class TimingStats:
    """add(t) once per frame with a {stage: ms} dict; summary() at the end. Memory does not grow
    with the number of frames."""

    def __init__(self, stages, capacity: int = RESERVOIR, seed: int = 0):
        self.stages = tuple(stages)
        self.capacity = capacity
        self.rows = np.zeros((capacity, len(self.stages)), np.float64)
        self.sums = np.zeros(len(self.stages), np.float64)
        self.total_sum = 0.0
        self.overhead_sum = 0.0
        self.n = 0
        self.rng = random.Random(seed)
        self.i_interp = self.stages.index("interpreter") if "interpreter" in self.stages else None

    def add(self, t: dict) -> None:
        row = np.fromiter((t.get(k, 0.0) for k in self.stages), np.float64, len(self.stages))
        self.sums += row
        total = float(row.sum())
        self.total_sum += total
        self.overhead_sum += total - (row[self.i_interp] if self.i_interp is not None else 0.0)
        if self.n < self.capacity:
            self.rows[self.n] = row
        else:
            # reservoir sampling (algorithm R): every frame so far is kept with equal probability
            j = self.rng.randrange(self.n + 1)
            if j < self.capacity:
                self.rows[j] = row
        self.n += 1

    def nbytes(self) -> int:
        """Bytes held for the statistics (for the memory test): fixed at construction."""
        return self.rows.nbytes + self.sums.nbytes

    def summary(self) -> dict:
        """Median and mean per stage over frames, and the share of a frame outside the interpreter."""
        if not self.n:
            return {}
        kept = self.rows[: min(self.n, self.capacity)]
        out: dict[str, Any] = {}
        for i, k in enumerate(self.stages):
            out[k] = {"median": round(float(np.median(kept[:, i])), 3), "mean": round(float(self.sums[i] / self.n), 3)}
        total = kept.sum(axis=1)
        interp = kept[:, self.i_interp] if self.i_interp is not None else np.zeros(len(kept))
        out["frame_total"] = {"median": round(float(np.median(total)), 3), "mean": round(self.total_sum / self.n, 3)}
        out["overhead"] = {
            "median": round(float(np.median(total - interp)), 3),
            "mean": round(self.overhead_sum / self.n, 3),
        }
        out["overhead_share"] = round(self.overhead_sum / self.total_sum, 4) if self.total_sum else 0.0
        out["frames"] = self.n
        if self.n > self.capacity:
            out["medians_from"] = f"a sample of {self.capacity} frames"
        return out


@dataclass
class CaptureSummary:
    """What a capture session did: printed by format_summary, stored as JSON in the log's
    sessions row and written by --summary-json (to_json keeps the keys those have always had)."""

    end_reason: str
    frames: int
    cells: int
    detections: int
    wall_s: float
    counting: str  # "tracked" (field mode) or "per-frame" (cell mode)
    count_target: int | None
    fields: int | None  # segments of the slide (field mode): see slide.py
    tracks_dropped: int  # located cells not counted (flickers, see counting.py)
    differential: dict
    review: list[dict]
    review_total: int
    ood_cells: int
    trust: dict
    timing_ms: dict
    model: dict
    mode: str
    source_failed: bool
    frame_states: dict[str, int] = field(default_factory=dict)  # counting / moving / out of focus / lost
    seen_again: int = 0  # sightings of counted cells after the stage came back (not counted again)
    classified: int = 0  # crops sent to the model
    log_error: str = ""
    cells_not_logged: int = 0
    log_unfinished: str = ""
    # set by the command line once the session is closed
    session_id: int | None = None
    db: str | None = None
    sample: str | None = None
    operator: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("log_error", "cells_not_logged", "log_unfinished", "session_id", "db", "sample", "operator"):
            if not d[k] and k not in ("sample", "operator", "session_id", "db"):
                del d[k]
        for k in ("session_id", "db", "sample", "operator"):
            if self.session_id is None:
                del d[k]
        return d

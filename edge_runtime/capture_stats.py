"""Per-frame timing of a capture session in constant memory.

A session at a microscope can run for a whole shift (8 h at 5 fps is 144 000 frames); keeping one
dict per frame for the end-of-session medians once cost ~100 MB on a Pi with 1-4 GB. Means come
from running sums (exact); medians from a fixed-size reservoir sample of frames (exact while a
session has at most RESERVOIR frames, an unbiased sample of all frames after that). The reservoir
draws from a seeded generator, so the same session gives the same summary.
"""
from __future__ import annotations

import random
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
        kept = self.rows[:min(self.n, self.capacity)]
        out: dict[str, Any] = {}
        for i, k in enumerate(self.stages):
            out[k] = {"median": round(float(np.median(kept[:, i])), 3), "mean": round(float(self.sums[i] / self.n), 3)}
        total = kept.sum(axis=1)
        interp = kept[:, self.i_interp] if self.i_interp is not None else np.zeros(len(kept))
        out["frame_total"] = {"median": round(float(np.median(total)), 3), "mean": round(self.total_sum / self.n, 3)}
        out["overhead"] = {"median": round(float(np.median(total - interp)), 3),
                           "mean": round(self.overhead_sum / self.n, 3)}
        out["overhead_share"] = round(self.overhead_sum / self.total_sum, 4) if self.total_sum else 0.0
        out["frames"] = self.n
        if self.n > self.capacity:
            out["medians_from"] = f"a sample of {self.capacity} frames"
        return out

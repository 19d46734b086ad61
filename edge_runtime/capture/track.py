"""A counted cell's views and verdict, the differential, and counted cells -> log records.

Which cells are counted, and when, is counting.py's (frames in, counted cells out); this module
holds what a cell carries while it is looked at (Track: the sum of its views' calibrated
probabilities, flags, the best crop) and what happens once it is counted (CellCounter: the
differential, the trust gate, the review list and the CellRecord a store writes).
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image

from ..core.spec import WBC_LABELS
from ..core.trust import SessionGate
from .sink import CellRecord

if TYPE_CHECKING:
    from ..core.classifier import Prediction

MIN_IOU = 0.30
MAX_CENTRE_SHIFT = 0.5  # of the box side
MIN_OBSERVATIONS = 2  # views a cell needs in a field held for that many counting frames (counting.py)
# Flagged cells listed in the summary: the log holds them all (`edge-bloodcls review`); a shift at
# the microscope must not grow the process by one dict per flagged cell.
REVIEW_KEEP = 1000
CROP_STORE_PX = 360  # crops in the log at most PBC's own image size: enough to judge a cell


@dataclass
class Observation:
    """One located cell in one frame, classified."""

    frame_index: int
    box: tuple[int, int, int, int]
    probs: np.ndarray  # in label order
    pred: Prediction
    crop: np.ndarray | None = None  # RGB crop (kept only for the track's best observation)
    timestamp: float = 0.0


@dataclass
class Track:
    id: int
    field_no: int  # which field of the session (a new field ends every open track)
    first_frame: int
    box: tuple[float, float, float, float]  # last box, moved with the stage
    prob_sum: np.ndarray
    observations: int = 1
    last_frame: int = 0
    missed: int = 0
    best: Observation | None = None
    n_review: int = 0
    n_ood: int = 0
    # running sum, not a list: a field held for hours adds one score per frame
    ood_score_sum: float = 0.0
    n_ood_scores: int = 0
    reasons: list = field(default_factory=list)
    labels_seen: set = field(default_factory=set)
    end_frame: int | None = None  # last frame of the session in which the track was open

    @property
    def mean_probs(self) -> np.ndarray:
        return self.prob_sum / self.observations

    def add(self, obs: Observation, label: str) -> None:
        self.prob_sum = self.prob_sum + obs.probs
        self.observations += 1
        self._note(obs, label)

    def _note(self, obs: Observation, label: str) -> None:
        self.box = _float_box(obs.box)
        self.last_frame = obs.frame_index
        self.missed = 0
        p = obs.pred
        self.n_review += bool(p.review)
        self.n_ood += bool(getattr(p, "ood", False))
        ood_score = getattr(p, "ood_score", None)
        if ood_score is not None:
            self.ood_score_sum += float(ood_score)
            self.n_ood_scores += 1
        reason = getattr(p, "review_reason", "")
        if reason and reason not in self.reasons:
            self.reasons.append(reason)
        self.labels_seen.add(label)
        if self.best is None or p.confidence > self.best.pred.confidence:
            self.best = obs
        else:
            obs.crop = None  # only the best crop is kept: memory stays flat on a long session

    def countable(self, min_obs: int = MIN_OBSERVATIONS) -> bool:
        could_see = (self.end_frame if self.end_frame is not None else self.last_frame) - self.first_frame + 1
        return self.observations >= min(min_obs, max(1, could_see))

    def verdict(self, labels, review_threshold: float) -> dict:
        """Label, confidence and flags of the counted cell, from all its frames."""
        mean = self.mean_probs
        i = int(np.argmax(mean))
        conf = float(mean[i])
        ood = self.n_ood * 2 > self.observations  # out of distribution in most of its frames
        reasons = []
        if self.observations == 1 and self.best is not None:
            # one frame: exactly the classifier's own decision
            review = bool(self.best.pred.review)
            reasons = list(self.reasons)
        else:
            review = conf < review_threshold or ood or self.n_review * 2 > self.observations
            if conf < review_threshold:
                reasons.append(
                    f"low confidence {conf:.2f} < {review_threshold:.2f} (mean of {self.observations} frames)"
                )
            if ood:
                reasons.append(f"out of distribution in {self.n_ood} of {self.observations} frames")
            if self.n_review * 2 > self.observations and not reasons:
                reasons.append("flagged in most frames: " + "; ".join(self.reasons[:2]))
        if len(self.labels_seen) > 1:
            # frames disagree: worth a look even when the mean is confident
            review = True
            reasons.append("frames disagree: " + ", ".join(sorted(self.labels_seen)))
        return {
            "label": labels[i],
            "confidence": conf,
            "probs": dict(zip(labels, map(float, mean))),
            "review": review,
            "review_reason": "; ".join(reasons),
            "ood": ood,
            "ood_score": self.ood_score_sum / self.n_ood_scores if self.n_ood_scores else None,
        }


def centre_close(a, b) -> float:
    """0..1 closeness of centres relative to the box side; 0 when farther than MAX_CENTRE_SHIFT."""
    side = max(a[2] - a[0], a[3] - a[1], b[2] - b[0], b[3] - b[1], 1)
    d = np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2) / side
    return max(0.0, 1 - d / MAX_CENTRE_SHIFT) if d <= MAX_CENTRE_SHIFT else 0.0


# --- counting: ended tracks -> differential, trust gate, review list, log records -------------


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
        return {
            "counts": dict(self.counts),
            "wbc_total": self.wbc,
            "percent": {k: round(v, 2) for k, v in self.percentages().items()},
        }


class CellCounter:
    """Counted cells -> differential, trust gate, review list, log records; full at --count.
    No I/O: a crop file is written by the caller's save_crop, the trust gate's state is the
    caller's to store (tripped_now says when)."""

    def __init__(self, labels, review_threshold: float, count: int | None = None) -> None:
        self.labels = list(labels)
        self.review_threshold = review_threshold
        self.count = count
        self.diff = Differential()
        self.gate = SessionGate()
        self.review: list[dict] = []  # the first REVIEW_KEEP flagged cells
        self.n_review = 0
        self.ood = 0
        self.full = False
        self.tripped_now = False  # the gate tripped during the last take()

    def take(
        self, tracks: list[Track], save_crop: Callable[[Track, str], str | None] | None = None
    ) -> list[CellRecord]:
        """Records of the counted cells, in order, until --count is reached; save_crop(track,
        label) may write the best crop and return its path."""
        out = []
        self.tripped_now = False
        for t in tracks:
            if self.full:
                break
            v = t.verdict(self.labels, self.review_threshold)
            best = t.best
            assert best is not None  # set by the track's first observation (Track._note)
            crop_path = save_crop(t, v["label"]) if save_crop is not None and best.crop is not None else None
            x0, y0, x1, y1 = (int(round(x)) for x in best.box)
            rec = CellRecord(
                (x0, y0, x1, y1),
                v["label"],
                v["confidence"],
                v["review"],
                v["probs"],
                crop_path,
                _jpeg_bytes(best.crop),
                t.observations,
                best.frame_index,
                t.first_frame,
                t.last_frame,
                best.timestamp,
                v["ood_score"],
                v["ood"],
                v["review_reason"],
            )
            out.append(rec)
            self.diff.add(v["label"])
            self.ood += bool(v["ood"])
            if v["label"] in WBC_LABELS and self.gate.add(v["ood"]):
                self.tripped_now = True
            if v["review"]:
                rec.extra["review"] = {
                    "frame": best.frame_index,
                    "box": list(rec.box),
                    "label": v["label"],
                    "confidence": round(v["confidence"], 4),
                    "reason": v["review_reason"],
                    "observations": t.observations,
                    "crop": crop_path,
                }
                self.n_review += 1
                if len(self.review) < REVIEW_KEEP:
                    self.review.append(rec.extra["review"])
            if self.count and self.diff.wbc >= self.count:
                self.full = True
        return out

    @staticmethod
    def note_ids(records: list[CellRecord], ids: list[int]) -> None:
        # the review list names the log's cell ids, which `edge-bloodcls review` shows
        for rec, i in zip(records, ids):
            if "review" in rec.extra:
                rec.extra["review"]["cell_id"] = i


def single_track(obs: Observation, labels) -> Track:
    """Cell mode: the frame is the cell, counted at once."""
    t = Track(
        obs.frame_index,
        0,
        obs.frame_index,
        _float_box(obs.box),
        np.asarray(obs.probs, np.float64),
        last_frame=obs.frame_index,
        end_frame=obs.frame_index,
    )
    t._note(obs, labels[int(np.argmax(obs.probs))])
    return t


def _float_box(box: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    return float(x0), float(y0), float(x1), float(y1)


def save_jpeg(rgb: np.ndarray, path: str) -> None:
    Image.fromarray(rgb).save(path, quality=92)


def _jpeg_bytes(rgb: np.ndarray | None) -> bytes | None:
    if rgb is None:
        return None
    im = Image.fromarray(rgb)
    if max(im.size) > CROP_STORE_PX:
        # Image.BILINEAR, not Image.Resampling (Pillow >= 9.1 only): Pillow sets the module
        # constant at run time, where its annotations cannot see it
        im.thumbnail((CROP_STORE_PX, CROP_STORE_PX), Image.BILINEAR)  # type: ignore[attr-defined]
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()

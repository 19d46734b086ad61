"""Trust: calibrated confidence, an out-of-distribution (OOD) score per cell, and a session gate.

The statistics are fitted at convert time (convert/trust_fit.py) on training-split cells, through
this runtime, on the exported model's own pooled-feature output, and travel in the bundle
(NAME.trust.npz, its sha256 in the manifest). Nothing here imports TensorFlow.

Per cell:
    z     = (features - mean) @ W          # PCA to <= 256 dims and whitening by the shared
                                           # within-class covariance (shrunk), folded into W
    score = min_c || z - centre_c ||       # class-conditional Mahalanobis distance, tied covariance
    ood   = score > threshold              # threshold set on validation for a stated false-alarm rate
Optionally (trust format 2) a colour statistic on the crop's own pixels, whatever the model:
    c      = colour_features(uint8 crop at model size)      # 12 optical-density numbers
    colour = min_m || (c - mean_m) @ W_m ||                 # one Gaussian per domain (PBC, a site)
    ood    = score > threshold or colour > colour_threshold
It catches another stain or camera that the features alone miss: confident wrong calls on
another lab's cells whose features still sit near a PBC class (docs/trust.md).
Per session: SessionGate keeps the share of OOD cells among the last N white cells.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

# The session gate: past this share of OOD cells among the last WINDOW white cells (and once at
# least MIN_CELLS have been seen) the differential is marked unvalidated for the session.
GATE_WINDOW = 50
GATE_SHARE = 1 / 3
GATE_MIN_CELLS = 10

GATE_ADVICE = (
    "these cells do not look like the cells the model was trained on (another microscope, "
    "camera, stain or magnification?): the differential is UNVALIDATED. Review every cell, "
    "or adapt the model to this microscope (`edge-bloodcls adapt`, README: Using it on your "
    "microscope)"
)


class SessionGate:
    """Rolling share of OOD cells; trips (and stays tripped for the session) past a threshold."""

    def __init__(self, window: int = GATE_WINDOW, share: float = GATE_SHARE, min_cells: int = GATE_MIN_CELLS):
        self.window, self.share_limit, self.min_cells = window, share, min_cells
        self.recent: deque[bool] = deque(maxlen=window)
        self.n_cells = 0
        self.n_ood = 0
        self.tripped = False
        self.tripped_at: int | None = None  # cell count when it tripped

    def add(self, ood: bool) -> bool:
        """Record one white cell; True exactly when this cell trips the gate."""
        self.recent.append(bool(ood))
        self.n_cells += 1
        self.n_ood += bool(ood)
        if not self.tripped and len(self.recent) >= self.min_cells and self.share > self.share_limit:
            self.tripped, self.tripped_at = True, self.n_cells
            return True
        return False

    @property
    def share(self) -> float:
        return sum(self.recent) / len(self.recent) if self.recent else 0.0

    def message(self) -> str:
        return (
            f"WARNING: {self.n_ood} of {self.n_cells} white cells are out of distribution "
            f"({100 * self.share:.0f}% of the last {len(self.recent)}); {GATE_ADVICE}"
        )

    def to_json(self) -> dict:
        return {
            "tripped": self.tripped,
            "tripped_at_cell": self.tripped_at,
            "cells": self.n_cells,
            "ood_cells": self.n_ood,
            "recent_share": round(self.share, 4),
            "window": self.window,
            "share_limit": round(self.share_limit, 4),
            "message": self.message() if self.tripped else "",
        }


# --- per-cell statistics, as stored in a bundle -------------------------------------------------

# 1: the feature statistics; 2: and, optionally, the colour statistic (colour_* arrays and
# colour_ood_threshold). A bundle of a format this runtime does not know is refused, not half-read.
TRUST_FORMAT = 2
TRUST_FORMATS = (1, 2)
DEFAULT_REVIEW_TARGET = 0.995  # accepted (not flagged) cells should be at least this accurate
DEFAULT_FALSE_ALARM = 0.02  # share of in-distribution validation cells the OOD gate may flag
_EPS = 1e-6


class TrustError(ValueError):
    """Trust statistics that must not be used; str() names the bundle and the field."""


@dataclass
class TrustStats:
    """What the runtime needs to judge a cell; arrays from NAME.trust.npz, scalars from the manifest."""

    mean: np.ndarray  # (D,) feature mean of the training cells
    proj: np.ndarray  # (D, K) PCA + whitening: z = (f - mean) @ proj
    centres: np.ndarray  # (C, K) class means in z space
    threshold: float  # score above this: out of distribution
    temperature: float = 1.0  # calibrated p = softmax(log p / T)
    review_threshold: float | None = None  # calibrated confidence below this: review
    colour: ColourStats | None = None  # None: no colour statistic (format 1 bundles)

    @property
    def feature_dim(self) -> int:
        return int(self.mean.shape[0])

    def score(self, features: np.ndarray) -> float:
        """Mahalanobis distance (tied covariance) to the nearest class centre."""
        z = (features.astype(np.float32) - self.mean) @ self.proj
        return float(np.sqrt(np.min(np.sum((self.centres - z) ** 2, axis=1))))

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Batch version of score(): (N, D) -> (N,)."""
        z = (features.astype(np.float32) - self.mean) @ self.proj
        d2 = (z * z).sum(1)[:, None] - 2 * z @ self.centres.T + (self.centres**2).sum(1)[None, :]
        return np.sqrt(np.maximum(d2.min(1), 0.0))

    def flags(self, scores: np.ndarray, colour_scores: np.ndarray | None) -> np.ndarray:
        """The OOD rule, for one cell or many: either statistic over its threshold."""
        ood = np.asarray(scores) > self.threshold
        if self.colour is not None and colour_scores is not None:
            ood = ood | (np.asarray(colour_scores) > self.colour.threshold)
        return ood

    def calibrate(self, probs: np.ndarray) -> np.ndarray:
        return apply_temperature(probs, self.temperature)

    def arrays(self) -> dict:
        # float16 projection: half the size (a 2048-d ResNet50 stays under 1 MB); the error it
        # adds to a distance is ~1e-3 relative, far below the gap between PBC and foreign cells.
        return {
            "format": np.array(TRUST_FORMAT),
            "mean": self.mean.astype(np.float32),
            "proj": self.proj.astype(np.float16),
            "centres": self.centres.astype(np.float32),
            **(self.colour.arrays() if self.colour is not None else {}),
        }

    @classmethod
    def from_arrays(cls, arrays, trust: dict, where: str, n_classes: int) -> TrustStats:
        """Check every field against the others and the model; TrustError names the field."""
        try:
            mean = np.asarray(arrays["mean"], np.float32)
            proj = np.asarray(arrays["proj"], np.float32)
            centres = np.asarray(arrays["centres"], np.float32)
        except KeyError as e:
            raise TrustError(f"{where}: trust statistics lack {e.args[0]!r}") from None
        if mean.ndim != 1 or proj.ndim != 2 or proj.shape[0] != mean.shape[0]:
            raise TrustError(
                f"{where}: trust field 'proj' has shape {list(proj.shape)}, not (feature size {mean.shape[0]}, K)"
            )
        if centres.shape != (n_classes, proj.shape[1]):
            raise TrustError(
                f"{where}: trust field 'centres' has shape {list(centres.shape)}, "
                f"not ({n_classes} labels, {proj.shape[1]})"
            )
        if not all(np.isfinite(a).all() for a in (mean, proj, centres)):
            raise TrustError(f"{where}: trust statistics hold NaN or infinite values")
        threshold = _number(trust, "ood_threshold", where, lo=0.0)
        temperature = _number(trust, "temperature", where, lo=0.0, default=1.0, open_lo=True)
        review = trust.get("review_threshold")
        if review is not None:
            review = _number(trust, "review_threshold", where, lo=0.0, hi=1.0)
        fmt = trust.get("format", 1)
        if fmt not in TRUST_FORMATS or isinstance(fmt, bool):
            raise TrustError(
                f"{where}: trust field 'format' is {fmt!r}; this toolkit reads formats "
                f"{', '.join(map(str, TRUST_FORMATS))} (a newer export? update the toolkit)"
            )
        colour = ColourStats.from_arrays(arrays, trust, where)
        return cls(mean, proj, centres, threshold, temperature, review, colour)


# --- the colour statistic -----------------------------------------------------------------------

# Darkest / brightest share of a crop's pixels by luminance: the nucleus and the background.
COLOUR_TAIL = 0.2
COLOUR_DIM = 12
COLOUR_REASON = "colours unlike the training cells' (another stain or camera?)"
# The colour statistic's own false-alarm target, below DEFAULT_FALSE_ALARM: another lab's cells sit
# far beyond the PBC val quantile (every BCCD cell is flagged at this target too; docs/trust.md),
# so a lower target costs nothing on foreign cells, while the features' 2% for it too added about 1.7
# points of PBC cells to review on top of the features' own.
COLOUR_FALSE_ALARM = 0.005
# Rec. 601 luma in integers (weights sum to 256, so white stays 255): only to rank pixels from
# dark to bright. Integers, so that convert and the Pi put every pixel on the same level.
_LUMA = (77, 150, 29)
# Optical density of each 8-bit level, -log(max(v, 1) / 255): a lookup instead of a log per
# pixel; 0 is read as 1 so that black is finite.
_OD = -np.log(np.maximum(np.arange(256), 1) / 255.0)
_OD2 = _OD * _OD


def luminance(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) -> integer luminance 0..255 (uint16), the level colour_features ranks by."""
    # uint16 holds the weighted sum (at most 256 * 255 + 128) and keeps the arrays small
    a = np.asarray(rgb)
    r, g, b = (a[..., i].astype(np.uint16) for i in range(3))
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b + 128) >> 8


def _tail_mean(count: np.ndarray, od_sum: np.ndarray, k: int) -> np.ndarray:
    """Mean OD (per channel) of the k pixels on the low-level side of a luminance histogram:
    levels below the one where k is reached count fully, and the pixels tied at that level each
    count (k - below) / count[level], so that exactly k pixels count and tied pixels are treated
    alike, whatever their order in the crop."""
    cum = np.cumsum(count)
    level = int(np.searchsorted(cum, k))  # first level where the running count reaches k
    below = cum[level] - count[level]
    return (od_sum[:, :level].sum(1) + (k - below) / count[level] * od_sum[:, level]) / k


def _colour_one(px: np.ndarray, k: int) -> np.ndarray:
    """(P, 3) uint8 pixels -> the 12 features, from histograms: O(P), no sort and no log per pixel."""
    # uint8 channel views and a uint16 luminance: at 160 px, int64 copies of them doubled the time
    r, g, b = px[:, 0], px[:, 1], px[:, 2]
    y = luminance(px)
    count = np.bincount(y, minlength=256)
    # OD summed per luminance level, per channel: the tails read off it
    od_sum = np.stack([np.bincount(y, weights=_OD[c], minlength=256) for c in (r, g, b)])
    hist = np.stack([np.bincount(c, minlength=256) for c in (r, g, b)])  # per-channel level counts
    n = len(y)
    mean = hist @ _OD / n
    std = np.sqrt(np.maximum(hist @ _OD2 / n - mean * mean, 0.0))
    dark = _tail_mean(count, od_sum, k)
    bright = _tail_mean(count[::-1], od_sum[:, ::-1], k)
    return np.concatenate([mean, std, dark, bright])


def colour_features(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB crop(s) at model size, (H, W, 3) or (N, H, W, 3) -> (12,) or (N, 12).

    Optical density OD = -log(max(rgb, 1) / 255) (Beer-Lambert: OD is proportional to the amount
    of stain, so a stain or a lamp shows as a shift, whatever the cell): its mean and std per
    channel, and the mean OD of the darkest 20% of pixels by luminance (mostly the nucleus) and of
    the brightest 20% (mostly the background), per channel. Pixels tied at the 20% level share its
    weight equally (see _tail_mean), so the result does not depend on pixel order."""
    a = np.asarray(rgb)
    if a.dtype != np.uint8 or a.ndim not in (3, 4) or a.shape[-1] != 3:
        raise ValueError(f"colour_features wants uint8 RGB crops (H, W, 3) or (N, H, W, 3), not {a.dtype} {a.shape}")
    one = a.ndim == 3
    px = a.reshape(1 if one else a.shape[0], -1, 3)
    k = max(1, int(round(COLOUR_TAIL * px.shape[1])))
    # One crop at a time, as on the Pi: a batch (convert's training cells) needs no (N, P) buffers.
    out = np.array([_colour_one(p, k) for p in px], np.float32).reshape(len(px), COLOUR_DIM)
    return out[0] if one else out


@dataclass
class ColourStats:
    """One Gaussian per domain (PBC; a site's cells after adapt) over colour_features."""

    means: np.ndarray  # (M, 12)
    whiten: np.ndarray  # (M, 12, 12): z = (c - means[m]) @ whiten[m] has identity covariance
    threshold: float  # min over m of ||z|| above this: out of distribution

    def scores(self, colour: np.ndarray) -> np.ndarray:
        """(N, 12) colour features -> (N,) Mahalanobis distance to the nearest component."""
        c = np.asarray(colour, np.float32).reshape(-1, self.means.shape[1])
        z = np.einsum("nmd,mde->nme", c[:, None, :] - self.means[None], self.whiten)
        return np.sqrt((z * z).sum(-1)).min(1)

    def score(self, colour: np.ndarray) -> float:
        return float(self.scores(colour)[0])

    def arrays(self) -> dict:
        return {"colour_mean": self.means.astype(np.float32), "colour_whiten": self.whiten.astype(np.float32)}

    @classmethod
    def from_arrays(cls, arrays, trust: dict, where: str) -> ColourStats | None:
        has_arrays = "colour_mean" in arrays or "colour_whiten" in arrays
        if not has_arrays and "colour_ood_threshold" not in trust:
            return None  # a bundle without the colour statistic: as before
        try:
            means = np.asarray(arrays["colour_mean"], np.float32)
            whiten = np.asarray(arrays["colour_whiten"], np.float32)
        except KeyError as e:
            raise TrustError(f"{where}: trust statistics lack {e.args[0]!r}") from None
        if means.ndim != 2 or means.shape[0] < 1 or means.shape[1] != COLOUR_DIM:
            raise TrustError(
                f"{where}: trust field 'colour_mean' has shape {list(means.shape)}, not (components, {COLOUR_DIM})"
            )
        if whiten.shape != (means.shape[0], COLOUR_DIM, COLOUR_DIM):
            raise TrustError(
                f"{where}: trust field 'colour_whiten' has shape {list(whiten.shape)}, "
                f"not ({means.shape[0]}, {COLOUR_DIM}, {COLOUR_DIM})"
            )
        for name, a in (("colour_mean", means), ("colour_whiten", whiten)):
            if not np.isfinite(a).all():
                raise TrustError(f"{where}: trust field {name!r} holds NaN or infinite values")
        return cls(means, whiten, _number(trust, "colour_ood_threshold", where, lo=0.0))


def _number(d: dict, key: str, where: str, lo=None, hi=None, default=None, open_lo=False) -> float:
    v = d.get(key, default)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
    if ok and lo is not None:
        ok = v > lo if open_lo else v >= lo
    if ok and hi is not None:
        ok = v <= hi
    if not ok:
        rng = f"{'(' if open_lo else '['}{lo}, {hi if hi is not None else 'inf'}{']' if hi is not None else ')'}"
        raise TrustError(f"{where}: trust field {key!r} is {v!r}, not a number in {rng}")
    return float(v)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the model's probabilities rescaled by a temperature fitted on validation.
    An int8 output rounds small probabilities to 0, hence the floor before the log."""
    if temperature == 1.0:
        return probs
    logits = np.log(np.maximum(probs, _EPS)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


# --- calibration metrics, shared by convert, evaluate and the bench -------------------------------


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: |accuracy - confidence| over equal-width confidence bins."""
    conf = probs.max(1)
    correct = probs.argmax(1) == np.asarray(y)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    p = probs[np.arange(len(y)), np.asarray(y)]
    return float(-np.mean(np.log(np.maximum(p, _EPS))))


def review_flags(conf: np.ndarray, ood: np.ndarray, review_threshold: float) -> np.ndarray:
    return (conf < review_threshold) | ood


def review_reason(
    conf: float,
    review_threshold: float,
    score: float | None = None,
    threshold: float | None = None,
    colour_score: float | None = None,
    colour_threshold: float | None = None,
) -> str:
    """Why a human should look, "" when nothing says so: each statistic over its threshold named."""
    reasons = []
    if conf < review_threshold:
        reasons.append(f"low confidence {conf:.3f} < {review_threshold:.3f}")
    if score is not None and threshold is not None and score > threshold:
        reasons.append(f"out of distribution (score {score:.1f} > {threshold:.1f}): unlike the training cells")
    if colour_score is not None and colour_threshold is not None and colour_score > colour_threshold:
        reasons.append(f"out of distribution (colour {colour_score:.1f} > {colour_threshold:.1f}): {COLOUR_REASON}")
    return "; ".join(reasons)


def trust_summary(
    probs: np.ndarray, y: np.ndarray, ood: np.ndarray, review: np.ndarray, has_trust: bool, review_threshold: float
) -> dict:
    """What `evaluate` reports on a labelled folder: calibration, OOD share, review coverage."""
    correct = probs.argmax(1) == y
    accepted = ~review
    out: dict[str, Any] = {
        "ece": ece(probs, y),
        "nll": nll(probs, y),
        "has_trust_statistics": has_trust,
        "ood": int(ood.sum()),
        "review": int(review.sum()),
        "review_threshold": review_threshold,
        "coverage": float(accepted.mean()),
        "accepted_accuracy": float(correct[accepted].mean()) if accepted.any() else None,
        "errors_flagged": int((~correct & review).sum()),
        "errors": int((~correct).sum()),
    }
    acc = "-" if out["accepted_accuracy"] is None else f"{100 * out['accepted_accuracy']:.2f}%"
    ood_part = f"out of distribution {out['ood']} of {len(y)}" if has_trust else "no OOD check (older bundle)"
    out["line"] = (
        f"calibration: ECE {100 * out['ece']:.2f}% (15 bins), NLL {out['nll']:.4f}; {ood_part}; "
        f"flagged for review {out['review']} (threshold {review_threshold:.3f}), accepted "
        f"{100 * out['coverage']:.1f}% at {acc} accuracy; {out['errors_flagged']} of "
        f"{out['errors']} errors flagged"
    )
    if has_trust and len(y) and out["ood"] > len(y) / 3:
        out["line"] += f"\nwarning: {GATE_ADVICE}"
    return out

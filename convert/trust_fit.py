"""Fit a bundle's trust statistics on the exported model's own outputs (edge_runtime.core.trust).

Run at convert time, after the accuracy gate, through the runtime's Classifier on the exported
TFLite file, so the statistics describe the features the Pi will compute (int8 included):
  - OOD: PCA of the pooled features of training cells to <= 256 dims (trust_fit.MAX_DIMS), whitened by the shared
    within-class covariance (Ledoit-Wolf shrinkage); score = distance to the nearest class mean.
    Threshold: the (1 - false-alarm) quantile of validation scores.
  - Temperature: the one that minimises validation NLL, kept only where it lowers validation ECE.
  - Review threshold: the lowest confidence at which the accepted validation cells (confident and
    in distribution) are at least the target accuracy; coverage recorded with it.
  - Colour (when the cells' pixels are given): edge_runtime.core.trust.colour_features of each
    training cell, one Gaussian (Ledoit-Wolf) per domain (PBC; a site's cells after adapt);
    score = Mahalanobis distance to the nearest component. Threshold: the (1 - colour false-alarm)
    quantile of validation scores, at its own, lower target (COLOUR_FALSE_ALARM: why there). A
    cell is OOD when either score is over.
"""

from __future__ import annotations

import io

import numpy as np

from edge_bloodcls.edge_runtime.core.trust import (
    COLOUR_FALSE_ALARM,
    DEFAULT_FALSE_ALARM,
    DEFAULT_REVIEW_TARGET,
    TRUST_FORMAT,
    ColourStats,
    TrustStats,
    apply_temperature,
    colour_features,
    ece,
    nll,
)

# 256 PCA dimensions: on held-out BCCD fields the OOD AUROC rose with the dimensions (32 < 64 < 128
# < 256) for both shipped models, and relative Mahalanobis did worse (scripts/ood_experiments.py,
# benchmarks/results/ood_experiments.json). The float16 projection must stay under 1 MB.
MAX_DIMS = 256
MAX_PROJ_BYTES = 900_000
METHOD = "class-conditional Mahalanobis distance, tied covariance (Ledoit-Wolf), after PCA"
COLOUR_METHOD = (
    "optical density of the crop at model size (mean and std per channel, mean of the darkest and "
    "brightest 20% by luminance); Mahalanobis distance (Ledoit-Wolf) to the nearest of one Gaussian per domain"
)


def fit_ood(features: np.ndarray, y: np.ndarray, n_classes: int, dims: int = MAX_DIMS):
    """(mean, proj, centres) such that distances in proj space are Mahalanobis distances."""
    # scikit-learn: the [edge]/[train] extras, only for this step
    from sklearn.covariance import ledoit_wolf

    f = features.astype(np.float64)
    mean = f.mean(0)
    centred = f - mean
    k = int(min(dims, f.shape[1], max(1, f.shape[0] - n_classes), MAX_PROJ_BYTES // (2 * f.shape[1])))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    v = vt[:k].T  # (D, k)
    z = centred @ v
    centres = np.stack([z[y == c].mean(0) if np.any(y == c) else np.full(k, np.inf) for c in range(n_classes)])
    present = np.isfinite(centres[:, 0])
    resid = z - np.nan_to_num(centres[y], posinf=0.0)
    cov, _ = ledoit_wolf(resid, assume_centered=True)
    # Whitening: cov = L L^T, so z @ inv(L)^T has identity covariance within a class.
    white = np.linalg.inv(np.linalg.cholesky(cov)).T
    # Rounded as the bundle stores it (float16), so the threshold fits the runtime's arithmetic.
    proj = (v @ white).astype(np.float16).astype(np.float64)
    centres_w = centres @ white
    # A class the fit never saw gets a centre no cell is near (it cannot make a cell look familiar).
    centres_w[~present] = 1e6
    return mean.astype(np.float32), proj.astype(np.float32), centres_w.astype(np.float32)


def fit_colour(colour: np.ndarray, domain: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(means (M, 12), whiten (M, 12, 12)): one Gaussian per domain id (0..M-1; None: one)."""
    # scikit-learn: the [edge]/[train] extras, only for this step
    from sklearn.covariance import ledoit_wolf

    c = np.asarray(colour, np.float64)
    d = np.zeros(len(c), np.int64) if domain is None else np.asarray(domain, np.int64)
    means, whiten = [], []
    for m in np.unique(d):
        x = c[d == m]
        if len(x) < 2:
            raise ValueError(f"colour statistic: domain {m} has {len(x)} cell(s), at least 2 are needed")
        mu = x.mean(0)
        cov, _ = ledoit_wolf(x - mu, assume_centered=True)
        # A ridge far below any real stain's spread: identical crops must not make it singular.
        cov += np.eye(len(mu)) * (1e-6 * np.trace(cov) / len(mu) + 1e-12)
        means.append(mu)
        # cov = L L^T, so (c - mu) @ inv(L)^T has identity covariance
        whiten.append(np.linalg.inv(np.linalg.cholesky(cov)).T)
    return np.stack(means).astype(np.float32), np.stack(whiten).astype(np.float32)


def colour_stats(
    train_pixels: np.ndarray,
    val_pixels: np.ndarray,
    false_alarm: float = COLOUR_FALSE_ALARM,
    train_domain: np.ndarray | None = None,
) -> tuple[ColourStats, dict]:
    """-> (the colour statistic, its fields of the manifest's trust section: colour_ood_threshold,
    colour_false_alarm_target and the colour section). Pixels: uint8 RGB crops at model size, as
    the runtime sees them."""
    means, whiten = fit_colour(colour_features(train_pixels), train_domain)
    stats = ColourStats(means, whiten, threshold=0.0)
    val_scores = stats.scores(colour_features(val_pixels))
    stats.threshold = float(np.quantile(val_scores, 1.0 - false_alarm))
    domains = np.zeros(len(train_pixels), np.int64) if train_domain is None else np.asarray(train_domain)
    fields = {
        "colour_ood_threshold": round(stats.threshold, 6),
        "colour_false_alarm_target": false_alarm,
        "colour": {
            "method": COLOUR_METHOD,
            "components": int(means.shape[0]),
            "fit": {"split": "train", "n": [int((domains == m).sum()) for m in np.unique(domains)]},
            "val_flagged": float((val_scores > stats.threshold).mean()),
        },
    }
    return stats, fields


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    grid = np.exp(np.linspace(np.log(0.25), np.log(4.0), 97))
    losses = [nll(apply_temperature(probs, t), y) for t in grid]
    return float(grid[int(np.argmin(losses))])


def wilson_lower(k: int, n: int, z: float) -> float:
    """Lower Wilson score bound of a proportion k/n."""
    if n == 0:
        return 0.0
    p = k / n
    centre = p + z * z / (2 * n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float((centre - half) / (1 + z * z / n))


# One-sided 90%: the threshold is set so that the accepted cells' accuracy is at least the target
# with 90% confidence on validation, not just on average, so that it holds on cells it never saw.
REVIEW_Z = 1.2816


def review_operating_point(
    probs: np.ndarray, y: np.ndarray, ood: np.ndarray, target: float = DEFAULT_REVIEW_TARGET, z: float = REVIEW_Z
) -> dict:
    """The lowest confidence threshold whose accepted cells reach `target` accuracy (lower bound)."""
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    best = None
    for t in np.unique(np.concatenate([conf, [0.0, 1.0]])):
        acc_mask = (conf >= t) & ~ood
        n, k = int(acc_mask.sum()), int(correct[acc_mask].sum())
        if n and wilson_lower(k, n, z) >= target:
            best = (float(t), n, k / n, wilson_lower(k, n, z))
            break
    if best is None:  # only an empty accepted set reaches it: every cell goes to review
        best = (1.0, 0, 1.0, 0.0)
    t, n, acc, lower = best
    return {
        "review_threshold": round(t, 6),
        "coverage": n / len(y),
        "accepted_accuracy": acc,
        "accepted_accuracy_lower": lower,
        "target_accuracy": target,
        "confidence_z": z,
    }


def coverage_curve(probs: np.ndarray, y: np.ndarray, ood: np.ndarray, points: int = 41) -> list[dict]:
    """Accepted accuracy against coverage as the confidence threshold rises (OOD cells never accepted)."""
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    out = []
    for t in np.linspace(0.0, 1.0, points):
        m = (conf >= t) & ~ood
        out.append(
            {
                "threshold": round(float(t), 4),
                "coverage": float(m.mean()),
                "accepted_accuracy": float(correct[m].mean()) if m.any() else None,
            }
        )
    return out


def evaluate(
    stats: TrustStats, raw: np.ndarray, features: np.ndarray, y: np.ndarray, pixels: np.ndarray | None = None
) -> dict:
    """The trust figures of one labelled set: ECE/NLL before and after, OOD false alarms, review.
    `pixels` (uint8 crops at model size) give the colour statistic's share, where the bundle has one."""
    probs = stats.calibrate(raw)
    scores = stats.scores(features)
    colour = stats.colour.scores(colour_features(pixels)) if stats.colour is not None and pixels is not None else None
    ood = stats.flags(scores, colour)
    conf = probs.max(1)
    accepted = (conf >= (stats.review_threshold or 0.0)) & ~ood
    correct = probs.argmax(1) == y
    return {
        "n": int(len(y)),
        "ece": {"raw": ece(raw, y), "calibrated": ece(probs, y)},
        "nll": {"raw": nll(raw, y), "calibrated": nll(probs, y)},
        "ood_flagged": float(ood.mean()),
        **(
            {
                "feature_ood_flagged": float((scores > stats.threshold).mean()),
                "colour_ood_flagged": float((colour > stats.colour.threshold).mean()),
            }
            if colour is not None and stats.colour is not None
            else {}
        ),
        "coverage": float(accepted.mean()),
        "accepted_accuracy": float(correct[accepted].mean()) if accepted.any() else None,
        "accuracy": float(correct.mean()),
    }


def fit(
    train_features,
    train_y,
    val_raw,
    val_features,
    val_y,
    n_classes: int,
    false_alarm: float = DEFAULT_FALSE_ALARM,
    review_target: float = DEFAULT_REVIEW_TARGET,
    dims: int = MAX_DIMS,
    train_pixels: np.ndarray | None = None,
    val_pixels: np.ndarray | None = None,
    train_domain: np.ndarray | None = None,
    colour_false_alarm: float = COLOUR_FALSE_ALARM,
) -> tuple[TrustStats, dict]:
    """-> (statistics, the manifest's trust section without file/sha256). With the cells' pixels
    (uint8 at model size) the colour statistic too, one component per `train_domain` id, its
    threshold at `colour_false_alarm` of val."""
    mean, proj, centres = fit_ood(train_features, train_y, n_classes, dims)
    stats = TrustStats(mean, proj, centres, threshold=0.0)
    val_scores = stats.scores(val_features)
    stats.threshold = float(np.quantile(val_scores, 1.0 - false_alarm))
    colour_fields = None
    val_colour = None
    if train_pixels is not None and val_pixels is not None:
        stats.colour, colour_fields = colour_stats(train_pixels, val_pixels, colour_false_alarm, train_domain)
        val_colour = stats.colour.scores(colour_features(val_pixels))
    t = fit_temperature(val_raw, val_y)
    ece_raw, ece_t = ece(val_raw, val_y), ece(apply_temperature(val_raw, t), val_y)
    stats.temperature = t if ece_t < ece_raw else 1.0
    ood = stats.flags(val_scores, val_colour)
    op = review_operating_point(stats.calibrate(val_raw), val_y, ood, review_target)
    stats.review_threshold = op["review_threshold"]
    section = {
        "method": METHOD,
        "format": TRUST_FORMAT,
        "feature_dim": int(mean.shape[0]),
        "dims": int(proj.shape[1]),
        "fit": {"split": "train", "n": int(len(train_y))},
        "ood_threshold": round(stats.threshold, 6),
        "false_alarm_target": false_alarm,
        "temperature": round(stats.temperature, 6),
        "temperature_fitted": round(t, 6),
        "review_threshold": stats.review_threshold,
        "review_target_accuracy": review_target,
        "review_rule": "lowest threshold whose accepted val cells reach the target at the lower one-sided 90% "
        "Wilson bound",
        "val_operating_point": op,
        "val": {**evaluate(stats, val_raw, val_features, val_y, val_pixels), "ece_with_fitted_temperature": ece_t},
    }
    if colour_fields is not None:
        section.update(colour_fields)
    return stats, section


def to_bytes(stats: TrustStats) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **stats.arrays())
    return buf.getvalue()

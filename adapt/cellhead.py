"""Fitting the cell-feature head (edge_runtime/core/cellhead.py) of an adapted bundle.

Two logistic regressions on the 66 cell features, standardised on the site's labelled cells:
the site's classes from its labelled cells (C = 1, chosen by repeated 5-fold cross-validation
within the 41 `bccd_site` cells, docs/adapt.md "Fifth round"), and the router, the site's cells
(labelled and unlabelled crops) against home's (PBC training cells), classes weighted equally.
"""

from __future__ import annotations

import numpy as np

from edge_bloodcls.edge_runtime.core.cellhead import FEATURES, N_FEATURES, cell_features

HEAD_C = 1.0  # inverse L2 strength of the class regression (standardised features)
ROUTE_C = 1.0  # the same for the router


def features(px) -> np.ndarray:
    """uint8 crops at model size (N, H, W, 3) -> (N, 66)."""
    return np.stack([cell_features(p) for p in px]) if len(px) else np.zeros((0, N_FEATURES), np.float32)


def fit(
    local_features: np.ndarray,
    y: np.ndarray,
    labels: list[str],
    home_features: np.ndarray,
    site_features: np.ndarray,
    seed: int = 0,
) -> dict | None:
    """The manifest's `cell_head` section, or None when the labelled cells hold fewer than two
    classes (nothing to tell apart). `site_features`: the site's cells for the router (labelled
    and unlabelled crops); `home_features`: PBC training cells."""
    from sklearn.linear_model import LogisticRegression  # scikit-learn: the [train] extra, for this fit only

    classes = np.unique(y)
    if len(classes) < 2:
        return None
    x = np.asarray(local_features, np.float64)
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-6, scale, 1.0)  # a constant feature (e.g. no lobes anywhere) stays 0
    clf = LogisticRegression(C=HEAD_C, max_iter=5000, random_state=seed).fit((x - mean) / scale, y)
    # The router in its own standardisation (home and site together), folded into the head's.
    r = np.concatenate([home_features, site_features]).astype(np.float64)
    ry = np.r_[np.zeros(len(home_features)), np.ones(len(site_features))]
    mu, sd = r.mean(0), r.std(0)
    sd = np.where(sd > 1e-6, sd, 1.0)
    router = LogisticRegression(C=ROUTE_C, class_weight="balanced", max_iter=5000, random_state=seed)
    router.fit((r - mu) / sd, ry)
    w = router.coef_[0] / sd  # on raw features
    route_b = float(router.intercept_[0] - (w * mu).sum() + (w * mean).sum())
    coef = clf.coef_ if len(classes) > 2 else np.vstack([-clf.coef_[0] / 2, clf.coef_[0] / 2])
    intercept = clf.intercept_ if len(classes) > 2 else np.r_[-clf.intercept_[0] / 2, clf.intercept_[0] / 2]
    return {
        "features": FEATURES,
        "classes": [labels[c] for c in classes],
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "coef": coef.tolist(),
        "intercept": np.asarray(intercept).tolist(),
        "route_coef": (w * scale).tolist(),
        "route_intercept": route_b,
        "fitted_on": {
            "labelled": {labels[c]: int((y == c).sum()) for c in classes},
            "router_home_cells": int(len(home_features)),
            "router_site_cells": int(len(site_features)),
        },
    }

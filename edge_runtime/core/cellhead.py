"""The cell-feature head: what a hematologist looks at, measured on the crop, beside the network.

An adapted bundle may carry one (manifest section `cell_head`, fitted by `adapt` on the site's
labelled cells). On 41 labelled BCCD cells a logistic regression on these 66 numbers called as
many withheld cells right as the fine-tuned network, and not the same ones: fused, they did
better than either (docs/adapt.md, "Fifth round"). The network learnt its looks on PBC; these
numbers are the textbook's (granule colour, nucleus lobes and shape, cytoplasm texture) and are
learnt from the site's own cells alone.

Per cell (uint8 RGB at model size, the pixels the network sees):
    f = cell_features(px)                       # 66 numbers (FEATURES, below)
    z = (f - mean) / scale
    g = sigmoid(z . route_w + route_b)          # "a cell of the site", not of home (PBC)
    q = softmax(z @ W.T + b)                    # the site's classes, from the numbers alone
    log p' = log p + g * (log q - mean(log q))  # on the head's classes; renormalised
A home cell (g ~ 0) keeps the network's answer; a site cell gets the product of the two experts.
The centring keeps classes the head does not know (not labelled at the site) where the network
put them relative to an average class of the head.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

try:  # OpenCV: the [edge] extra (capture needs it too); the base install may lack it
    import cv2
except ImportError:  # pragma: no cover - exercised only on an install without the extra
    cv2 = None  # type: ignore[assignment]

FEATURES = "cellfeat-1"  # the feature definition below; a bundle names the one it was fitted with
N_FEATURES = 66
_EPS = 1e-6


class CellHeadError(ValueError):
    """A cell_head section that must not be used; str() names the field and the reason."""


def cell_features(px: np.ndarray) -> np.ndarray:
    """uint8 RGB crop (H, W, 3), the cell in its middle -> float32 (66,):

    nucleus (blue-purple and dark, within 0.35 of the crop's height of the middle): its share of
    the crop, its pieces over 20 px and the largest one's share; L, a, b, hue, saturation of the
    nucleus and of the rest of the cell (within 0.3, not background) as mean and spread; the
    nucleus's solidity; a 6x6 histogram of the rest's a-b colours (granules: eosinophils' orange,
    neutrophils' lilac); the texture (mean |Laplacian|) of the rest and of the nucleus; the share
    of red granules; the nucleus's circularity, minor/major axis ratio and lobes (pieces after a
    5x5 erosion). Thresholds in OpenCV's 8-bit CIELAB (L 0-255, a and b offset by 128)."""
    if cv2 is None:
        raise CellHeadError("the cell-feature head needs OpenCV: pip install 'edge-bloodcls[edge]'")
    px = np.ascontiguousarray(px, np.uint8)
    lab = cv2.cvtColor(px, cv2.COLOR_RGB2LAB).astype(np.float32)
    hsv = cv2.cvtColor(px, cv2.COLOR_RGB2HSV).astype(np.float32)
    L, a, b = lab[..., 0], lab[..., 1] - 128, lab[..., 2] - 128
    h, w = L.shape
    r = _radius(h, w)
    nuc_all = (b < -25) & (L < 150)
    nuc = nuc_all & (r < 0.35)
    n, _, stats, _ = cv2.connectedComponentsWithStats(nuc.astype(np.uint8))
    areas = stats[1:, cv2.CC_STAT_AREA] if n > 1 else np.array([0])
    big = areas[areas > 20]
    disc = r < 0.3
    rest = disc & ~nuc_all & (L < 235)
    f: list[float] = [nuc.sum() / (h * w), len(big), (big.max() / max(big.sum(), 1)) if len(big) else 0]
    for arr in (L, a, b, hsv[..., 0], hsv[..., 1]):
        for m in (nuc, rest):
            v = arr[m] if m.sum() > 10 else np.zeros(1)
            f += [v.mean(), v.std()]
    contour = None
    if nuc.sum() > 20:
        cnts, _ = cv2.findContours(nuc.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        contour = max(cnts, key=cv2.contourArea)
        f.append(cv2.contourArea(contour) / max(cv2.contourArea(cv2.convexHull(contour)), 1))
    else:
        f.append(0)
    hist, _, _ = np.histogram2d(a[rest], b[rest], bins=6, range=[[-10, 40], [-40, 30]])
    f += list(hist.ravel() / max(hist.sum(), 1))
    lap = cv2.Laplacian(cv2.GaussianBlur(L, (3, 3), 0), cv2.CV_32F)
    f += [np.abs(lap[m]).mean() if m.sum() > 10 else 0 for m in (rest, nuc)]
    f.append((rest & (a > 15) & (L < 200)).sum() / max(disc.sum(), 1))
    if contour is not None:
        area, perimeter = cv2.contourArea(contour), cv2.arcLength(contour, True)
        circularity = 4 * np.pi * area / max(perimeter**2, 1)
        if len(contour) >= 5:
            _, (ma, mi), _ = cv2.fitEllipse(contour)
            ratio = min(ma, mi) / max(ma, mi, 1)
        else:
            ratio = 1
        lobes = cv2.connectedComponents(cv2.erode(nuc.astype(np.uint8), np.ones((5, 5), np.uint8)))[0] - 1
        f += [circularity, ratio, lobes]
    else:
        f += [0, 1, 0]
    return np.asarray(f, np.float32)


@lru_cache(maxsize=4)
def _radius(h: int, w: int) -> np.ndarray:
    """Each pixel's distance from the crop's middle in crop heights (one size per bundle: cached)."""
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2, xx - w / 2) / h
    r.flags.writeable = False
    return r


def _matrix(d: dict, key: str, shape: tuple, where: str) -> np.ndarray:
    try:
        v = np.asarray(d[key], np.float64)
    except KeyError:
        raise CellHeadError(f"{where}: cell_head lacks {key!r}") from None
    except (TypeError, ValueError):
        raise CellHeadError(f"{where}: cell_head field {key!r} is not numbers") from None
    if v.shape != shape or not np.isfinite(v).all():
        raise CellHeadError(f"{where}: cell_head field {key!r} must be finite numbers of shape {list(shape)}")
    return v


@dataclass
class CellHead:
    classes: list[int]  # indices into the bundle's labels, one per row of W
    mean: np.ndarray
    scale: np.ndarray
    W: np.ndarray
    b: np.ndarray
    route_w: np.ndarray
    route_b: float

    @classmethod
    def from_json(cls, d, labels: list[str], where: str) -> CellHead:
        if not isinstance(d, dict):
            raise CellHeadError(f"{where}: cell_head must be an object")
        if cv2 is None:
            raise CellHeadError(
                f"{where}: this bundle's cell-feature head needs OpenCV: pip install 'edge-bloodcls[edge]'"
            )
        if d.get("features") != FEATURES:
            raise CellHeadError(
                f"{where}: cell_head features {d.get('features')!r} are not this runtime's ({FEATURES}): "
                "adapt again with this version"
            )
        names = d.get("classes")
        if not isinstance(names, list) or len(names) < 2 or any(c not in labels for c in names):
            raise CellHeadError(f"{where}: cell_head field 'classes' must name two or more of the bundle's labels")
        if len(set(names)) != len(names):
            raise CellHeadError(f"{where}: cell_head field 'classes' repeats a label")
        k, f = len(names), N_FEATURES
        scale = _matrix(d, "scale", (f,), where)
        if (scale <= 0).any():
            raise CellHeadError(f"{where}: cell_head field 'scale' must be positive")
        return cls(
            classes=[labels.index(c) for c in names],
            mean=_matrix(d, "mean", (f,), where),
            scale=scale,
            W=_matrix(d, "coef", (k, f), where),
            b=_matrix(d, "intercept", (k,), where),
            route_w=_matrix(d, "route_coef", (f,), where),
            route_b=float(_matrix(d, "route_intercept", (), where)),
        )

    def parts(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features (N, 66) -> (g (N,), log q (N, K) centred over the head's classes)."""
        z = (np.asarray(features, np.float64) - self.mean) / self.scale
        g = 1 / (1 + np.exp(-np.clip(z @ self.route_w + self.route_b, -60, 60)))
        s = z @ self.W.T + self.b
        logq = s - np.logaddexp.reduce(s, axis=1, keepdims=True)
        return g, logq - logq.mean(1, keepdims=True)

    def fuse(self, probs: np.ndarray, features: np.ndarray, weight: float = 1.0) -> np.ndarray:
        """The network's probabilities (N, C) and the crops' features (N, 66) -> fused (N, C).
        `weight` scales the head's term; bundles use 1 (scripts/adapt_cellhead.py scans others)."""
        probs = np.atleast_2d(np.asarray(probs, np.float64))
        g, logq = self.parts(np.atleast_2d(features))
        logp = np.log(np.clip(probs, _EPS, 1))
        logp[:, self.classes] += weight * g[:, None] * logq
        out = np.exp(logp - logp.max(1, keepdims=True))
        return (out / out.sum(1, keepdims=True)).astype(np.float32)

"""Frame-to-frame registration and sharpness: the measurements behind "where on the slide" and
"still and in focus" (slide.py), on one small grey copy of each frame.

Registration: phase correlation (cv2.phaseCorrelate on grey copies CORRELATE_WIDTH px wide) gives
the shift and a peak height; the shift is then checked by the normalised correlation (NCC) of the
two frames' overlap after it, high-passed so that uneven illumination does not count as content.
The check is needed: a camera's dust specks stay put while the stage moves and give unrelated
fields a peak at shift 0. Measured on the 363 consecutive BCCD pairs: unrelated fields reach a
peak of 0.55 and an NCC of 0.68 (median 0.08 / 0.36); the same field panned by a fifth of the
frame 0.60 / 0.98, blurred 0.86 / 0.99, re-photographed (BCCD 37/38) 0.86 / 0.92.

Sharpness: the variance of the Laplacian of the same grey copy. At 160 px wide camera noise
(sigma 3 at 640 px) is averaged away to ~8 % of a BCCD field's value, while a Gaussian blur of
sigma 3 px (640-px frame) takes it to ~0.33, a 40-px motion smear to ~0.2 and a 50 % cross-fade
of two fields to ~0.7 (medians over 61 BCCD fields; `python -m benchmarks.counting --probe`).
The value depends on what is in the field (x2 between BCCD fields), so slide.py compares it with
the best value seen at the same place and with the session's, never with a constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_RESPONSE = 0.30
MIN_NCC = 0.80
CORRELATE_WIDTH = 160


def grey_small(rgb: np.ndarray) -> np.ndarray:
    """The frame as float32 grey, CORRELATE_WIDTH px wide (the one copy both measures use)."""
    # OpenCV: the [edge] extra; classify, review and report run without it
    import cv2

    h, w = rgb.shape[:2]
    size = (CORRELATE_WIDTH, max(8, round(h * CORRELATE_WIDTH / w)))
    g = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    return cv2.resize(g, size, interpolation=cv2.INTER_AREA).astype(np.float32)


_grey_small = grey_small  # the old private name


def sharpness(grey: np.ndarray) -> float:
    """Variance of the Laplacian: high-frequency energy, which blur and fades take away."""
    # OpenCV: the [edge] extra; classify, review and report run without it
    import cv2

    _, sd = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_32F))
    return float(sd[0, 0]) ** 2


@dataclass(frozen=True)
class Registration:
    ok: bool  # the shift is verified: the two frames show the same place
    dx: float  # where the first frame's content moved to in the second, in small-grey pixels
    dy: float
    response: float
    ncc: float


class Correlator:
    """Phase correlation with a cached Hanning window (one per grey size)."""

    def __init__(self, min_response: float = MIN_RESPONSE, min_ncc: float = MIN_NCC):
        self.min_response = min_response
        self.min_ncc = min_ncc
        self.window: np.ndarray | None = None

    def register(self, a: np.ndarray, b: np.ndarray) -> Registration:
        # OpenCV: the [edge] extra; classify, review and report run without it
        import cv2

        if a.shape != b.shape:
            return Registration(False, 0.0, 0.0, 0.0, -1.0)
        if self.window is None or self.window.shape != b.shape:
            self.window = cv2.createHanningWindow(b.shape[::-1], cv2.CV_32F)
        # copies: OpenCV 5's phaseCorrelate applies the window to its inputs in place
        (dx, dy), response = cv2.phaseCorrelate(a.copy(), b.copy(), self.window)
        ncc = _overlap_ncc(a, b, dx, dy)
        ok = response >= self.min_response and ncc >= self.min_ncc
        return Registration(bool(ok), float(dx), float(dy), float(response), ncc)


class FieldDetector:
    """Same field as the previous frame (and the stage shift in frame pixels), or a new one."""

    def __init__(self, min_response: float = MIN_RESPONSE, min_ncc: float = MIN_NCC):
        self.correlator = Correlator(min_response, min_ncc)
        self.prev: np.ndarray | None = None
        self.last_response = 0.0
        self.last_ncc = 0.0

    def update(self, rgb: np.ndarray) -> tuple[bool, tuple[float, float]]:
        cur = grey_small(rgb)
        prev, self.prev = self.prev, cur
        if prev is None or prev.shape != cur.shape:
            self.last_response = 0.0
            return False, (0.0, 0.0)
        r = self.correlator.register(prev, cur)
        self.last_response, self.last_ncc = r.response, r.ncc
        scale = rgb.shape[1] / cur.shape[1]
        return r.ok, (r.dx * scale, r.dy * scale)


def _overlap_ncc(prev: np.ndarray, cur: np.ndarray, dx: float, dy: float) -> float:
    """NCC of cur and prev moved by (dx, dy), over their overlap, after a high-pass; -1 when
    the overlap is under half of each side (too little to judge: a new field)."""
    # OpenCV: the [edge] extra; classify, review and report run without it
    import cv2

    h, w = cur.shape
    ix, iy = int(round(dx)), int(round(dy))
    x0, x1, y0, y1 = max(0, ix), min(w, w + ix), max(0, iy), min(h, h + iy)
    if x1 - x0 < w / 2 or y1 - y0 < h / 2:
        return -1.0
    a = prev[y0 - iy : y1 - iy, x0 - ix : x1 - ix]
    b = cur[y0:y1, x0:x1]
    a = a - cv2.GaussianBlur(a, (0, 0), 6)
    b = b - cv2.GaussianBlur(b, (0, 0), 6)
    return float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-6))

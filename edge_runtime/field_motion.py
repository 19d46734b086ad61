"""Same field or a new one: the stage shift between consecutive camera frames.

Phase correlation (cv2.phaseCorrelate on grey copies CORRELATE_WIDTH px wide) gives the shift
and a peak height; the shift is then checked by the normalised correlation (NCC) of the two
frames' overlap after it, high-passed so that uneven illumination does not count as content.
The check is needed: a camera's dust specks stay put while the stage moves and give unrelated
fields a peak at shift 0. The thresholds and what they were measured on: track.py's docstring.
"""
from __future__ import annotations

import numpy as np

MIN_RESPONSE = 0.30
MIN_NCC = 0.80
CORRELATE_WIDTH = 160


def _grey_small(rgb: np.ndarray) -> np.ndarray:
    import cv2

    h, w = rgb.shape[:2]
    size = (CORRELATE_WIDTH, max(8, round(h * CORRELATE_WIDTH / w)))
    g = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    return cv2.resize(g, size, interpolation=cv2.INTER_AREA).astype(np.float32)


class FieldDetector:
    """Same field as the previous frame (and the stage shift in frame pixels), or a new one."""

    def __init__(self, min_response: float = MIN_RESPONSE, min_ncc: float = MIN_NCC):
        self.min_response = min_response
        self.min_ncc = min_ncc
        self.prev: np.ndarray | None = None
        self.window: np.ndarray | None = None
        self.last_response = 0.0
        self.last_ncc = 0.0

    def update(self, rgb: np.ndarray) -> tuple[bool, tuple[float, float]]:
        import cv2

        cur = _grey_small(rgb)
        prev, self.prev = self.prev, cur
        if prev is None or prev.shape != cur.shape:
            self.last_response = 0.0
            return False, (0.0, 0.0)
        if self.window is None or self.window.shape != cur.shape:
            self.window = cv2.createHanningWindow(cur.shape[::-1], cv2.CV_32F)
        # copies: OpenCV 5's phaseCorrelate applies the window to its inputs in place
        (dx, dy), response = cv2.phaseCorrelate(prev.copy(), cur.copy(), self.window)
        self.last_response = float(response)
        self.last_ncc = _overlap_ncc(prev, cur, dx, dy)
        scale = rgb.shape[1] / cur.shape[1]
        # dx, dy: where prev's content moved to in cur
        same = response >= self.min_response and self.last_ncc >= self.min_ncc
        return bool(same), (dx * scale, dy * scale)


def _overlap_ncc(prev: np.ndarray, cur: np.ndarray, dx: float, dy: float) -> float:
    """NCC of cur and prev moved by (dx, dy), over their overlap, after a high-pass; -1 when
    the overlap is under half of each side (too little to judge: a new field)."""
    import cv2

    h, w = cur.shape
    ix, iy = int(round(dx)), int(round(dy))
    x0, x1, y0, y1 = max(0, ix), min(w, w + ix), max(0, iy), min(h, h + iy)
    if x1 - x0 < w / 2 or y1 - y0 < h / 2:
        return -1.0
    a = prev[y0 - iy:y1 - iy, x0 - ix:x1 - ix]
    b = cur[y0:y1, x0:x1]
    a = a - cv2.GaussianBlur(a, (0, 0), 6)
    b = b - cv2.GaussianBlur(b, (0, 0), 6)
    return float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-6))

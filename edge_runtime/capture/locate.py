"""Field mode: white cells in a field of view -> boxes -> crops at the scale the model learnt.

Classic colour segmentation, no learned detector. Under Romanowsky stains (Giemsa, Wright,
May Grünwald-Giemsa) the nuclei of white cells take up the blue-violet dye and are the only large
objects in the field that are distinctly blue; red cells are pink-orange and the slide background
is neutral. In CIELAB the b* axis (yellow +, blue -) separates them best: on BCCD the 1st
percentile of b* outside white-cell boxes is above the median inside them. So:

    b* well below the field's median -> nuclear stain -> open/close -> lobes of one nucleus
    grouped by a dilation -> connected components -> drop specks and platelets by area -> box.

Everything is measured in units of `rbc_px`, the diameter of a red cell in pixels of the frame:
a red cell is 7-8 um everywhere, so it is the one ruler that travels from one microscope,
objective and camera to another. Work is done on a copy scaled so that a red cell is
WORK_RBC_PX pixels wide, which bounds the cost per frame on a Pi whatever the camera resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# BCCD (100x objective, 640x480) shows red cells about 0.21 of the frame's short side across.
# Without a measured scale this is the assumption; `--rbc-px` overrides it for another set-up.
DEFAULT_RBC_FRACTION = 0.21
WORK_RBC_PX = 40.0

# Crop size. PBC images are taken at one fixed magnification: 360 px originals, about 3.9
# red-cell diameters wide, in which a neutrophil fills ~40 % and the largest cells (monocytes)
# ~70 % of the width. Cell size is part of what the model learnt (a lymphocyte is small in its
# crop, a monocyte large), so the crop is a fixed physical size, 3.9 red cells, rather than a
# multiple of each detected cell, which would blow every cell up to the same size. Only when the
# detected cell box would fill more than 1/1.4 (~70 %) of that crop, more than PBC ever shows
# (an unusual cell, or --rbc-px set too small), does the crop grow with the cell so that the
# whole cell stays in view.
CROP_PER_RBC = 3.9
CROP_PER_CELL = 1.4


@dataclass(frozen=True)
class LocateParams:
    # How much bluer (lower b*, 8-bit OpenCV scale where 128 is neutral) than the field's median
    # a pixel must be to count as nuclear stain. Tuned on the BCCD train split.
    b_drop: float = 16.0
    # Gap, in red-cell diameters, across which stained pieces are one nucleus (segmented
    # neutrophils' lobes are joined by thin, often invisible, chromatin strands).
    group_gap: float = 0.30
    # Widest single nucleus, in red-cell diameters, and the area below which a piece is a lobe
    # that may always join its neighbour (see _merge_lobes).
    max_nucleus: float = 2.5
    lobe_area: float = 0.5
    # Smallest nucleus area in red-cell areas (diameter^2); platelets and their clumps are
    # about 0.05-0.3, the smallest lymphocyte nucleus about 0.5.
    min_area: float = 0.35
    # Whole-cell box from the nucleus box: the cytoplasm extends beyond the nucleus.
    cell_expand: float = 1.25
    # A white cell is never smaller than about one red cell.
    min_cell: float = 1.0


@dataclass(frozen=True)
class Detection:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), frame pixels
    nucleus_box: tuple[int, int, int, int]
    nucleus_area: float  # in red-cell areas
    stain: float  # mean b* drop of the nucleus below the field median; larger is surer

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2

    def to_json(self) -> dict:
        return {
            "box": list(self.box),
            "nucleus_box": list(self.nucleus_box),
            "nucleus_area": round(self.nucleus_area, 3),
            "stain": round(self.stain, 2),
        }


def default_rbc_px(shape) -> float:
    return DEFAULT_RBC_FRACTION * min(shape[:2])


def locate(rgb: np.ndarray, rbc_px: float | None = None, params: LocateParams = LocateParams()) -> list[Detection]:
    """White cells in an RGB uint8 frame, largest nucleus first."""
    # OpenCV: the [edge] extra; classify, review and report run without it
    import cv2

    h, w = rgb.shape[:2]
    rbc_px = float(rbc_px or default_rbc_px(rgb.shape))
    s = min(1.0, WORK_RBC_PX / rbc_px)
    small = rgb
    if s < 1:
        small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    r = rbc_px * s  # red-cell diameter in working pixels

    b: np.ndarray = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2LAB)[..., 2].astype(np.float32)
    b = cv2.GaussianBlur(b, (0, 0), max(0.5, r / 40))
    # The median is background and red cells in any field that is not packed with white cells,
    # so the threshold follows stain batches and white balance instead of being absolute.
    drop = float(np.median(b)) - b
    mask: np.ndarray = (drop > params.b_drop).astype(np.uint8)

    k = _disc(max(1, round(r * 0.06)))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, k)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, k)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    rbc_area = r * r
    # (x0, y0, x1, y1, area in red-cell areas, component ids); specks of noise never join.
    clusters = [
        [st[0], st[1], st[0] + st[2], st[1] + st[3], st[4] / rbc_area, [i]]
        for i, st in enumerate(stats)
        if i and st[4] / rbc_area >= 0.01
    ]
    _merge_lobes(clusters, params.group_gap * r, params.max_nucleus * r, params.lobe_area)
    clusters = [piece for c in clusters for piece in _split_touching(c, labels, r, params)]

    out = []
    for nx0, ny0, nx1, ny1, area, ids in clusters:
        if area < params.min_area:
            continue
        sel = np.isin(labels[ny0:ny1, nx0:nx1], ids) if ids else mask[ny0:ny1, nx0:nx1] > 0
        side = max(max(nx1 - nx0, ny1 - ny0) * params.cell_expand, params.min_cell * r)
        cx, cy = (nx0 + nx1) / 2, (ny0 + ny1) / 2
        # Back to frame pixels; the cell box is clipped to the frame as annotators do.
        box = _clip((cx - side / 2) / s, (cy - side / 2) / s, (cx + side / 2) / s, (cy + side / 2) / s, w, h)
        nbox = _clip(nx0 / s, ny0 / s, nx1 / s, ny1 / s, w, h)
        out.append(Detection(box, nbox, float(area), float(drop[ny0:ny1, nx0:nx1][sel].mean())))
    out.sort(key=lambda d: -d.nucleus_area)
    return out


def _merge_lobes(clusters: list, gap: float, max_extent: float, lobe_area: float) -> None:
    """Agglomerate stained pieces, nearest first, into nuclei (in place).

    Two pieces join when their boxes are within `gap`, unless the result would be wider than any
    one nucleus and both are nucleus-sized themselves: that is two white cells side by side, not
    the lobes of one. Closest pairs go first so each cell's lobes gather before cells meet.
    """
    while len(clusters) > 1:
        best = None
        for i in range(len(clusters)):
            a = clusters[i]
            for j in range(i + 1, len(clusters)):
                b = clusters[j]
                d = max(0, max(a[0], b[0]) - min(a[2], b[2]), max(a[1], b[1]) - min(a[3], b[3]))
                if d > gap or (best is not None and d >= best[0]):
                    continue
                extent = max(max(a[2], b[2]) - min(a[0], b[0]), max(a[3], b[3]) - min(a[1], b[1]))
                if extent > max_extent and min(a[4], b[4]) >= lobe_area:
                    continue
                best = (d, i, j)
        if best is None:
            return
        _, i, j = best
        a, b = clusters[i], clusters.pop(j)
        clusters[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]), a[4] + b[4], a[5] + b[5]]


def _split_touching(cluster: list, labels: np.ndarray, r: float, params: LocateParams) -> list:
    """A stained region wider than one nucleus is usually two cells whose stain touches (a thin
    bridge of cytoplasm or overlap). Erode it until it falls apart into nucleus-sized cores, then
    grow each core back by the erosion radius. Pieces carry no component ids: their pixels are
    the mask inside their box."""
    # OpenCV: the [edge] extra; classify, review and report run without it
    import cv2

    x0, y0, x1, y1, area, ids = cluster
    if max(x1 - x0, y1 - y0) <= params.max_nucleus * r:
        return [cluster]
    region = np.isin(labels[y0:y1, x0:x1], ids).astype(np.uint8)
    for step in range(1, 9):
        rad = max(1, round(r * 0.05 * step))
        core = cv2.erode(region, _disc(rad))
        n, _, stats, _ = cv2.connectedComponentsWithStats(core, connectivity=8)
        big = [st for st in stats[1:] if st[4] / (r * r) >= params.lobe_area / 4]
        if len(big) < 2:
            continue
        pieces = []
        for bx, by, bw, bh, _ in big:
            px0, py0 = max(0, bx - rad), max(0, by - rad)
            px1, py1 = min(x1 - x0, bx + bw + rad), min(y1 - y0, by + bh + rad)
            a = float(region[py0:py1, px0:px1].sum()) / (r * r)
            pieces.append([x0 + px0, y0 + py0, x0 + px1, y0 + py1, a, []])
        _merge_lobes(pieces, params.group_gap * r, params.max_nucleus * r, params.lobe_area)
        if len(pieces) >= 2:
            return pieces
    return [cluster]


def crop_side(det: Detection, rbc_px: float) -> int:
    x0, y0, x1, y1 = det.box
    return int(round(max(CROP_PER_RBC * rbc_px, CROP_PER_CELL * max(x1 - x0, y1 - y0))))


def background(rgb: np.ndarray) -> np.ndarray:
    """The field's median colour (from a subsample: a frame's worth of medians costs ~1 ms)."""
    return np.median(rgb[::4, ::4].reshape(-1, 3), axis=0).astype(np.uint8)


def crop(rgb: np.ndarray, det: Detection, rbc_px: float | None = None, fill=None) -> np.ndarray:
    """A square crop centred on the cell, at PBC's field of view; outside the frame is filled
    with the field's median colour (`fill`, see background) so the border does not look like a
    cell edge."""
    rbc_px = float(rbc_px or default_rbc_px(rgb.shape))
    side = crop_side(det, rbc_px)
    cx, cy = det.center
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    h, w = rgb.shape[:2]
    fill = background(rgb) if fill is None else fill
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + side), min(h, y0 + side)
    if sx1 <= sx0 or sy1 <= sy0:
        out = np.empty((side, side, 3), np.uint8)
        out[:] = fill
        return out
    # OpenCV: the [edge] extra; classify, review and report run without it
    import cv2

    return cv2.copyMakeBorder(
        np.ascontiguousarray(rgb[sy0:sy1, sx0:sx1]),
        sy0 - y0,
        y0 + side - sy1,
        sx0 - x0,
        x0 + side - sx1,
        cv2.BORDER_CONSTANT,
        value=[int(v) for v in fill],
    )


def _disc(radius: int):
    # OpenCV: the [edge] extra; classify, review and report run without it
    import cv2

    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _clip(x0, y0, x1, y1, w, h) -> tuple[int, int, int, int]:
    return (int(max(0, round(x0))), int(max(0, round(y0))), int(min(w, round(x1))), int(min(h, round(y1))))


def iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0

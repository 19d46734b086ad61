"""The report's pictures: every counted cell as a small thumbnail, grouped by class, and the flagged
cells larger; full-size crops on demand from a folder beside the report.

Why contact sheets: a 10,000-cell session with every crop inline made a 200 MB page. Thumbnails
alone do not fix it well: each small JPEG carries ~600 bytes of headers and one encode call, so
10,000 of them are ~17 MB of base64 and 10,000 image decodes in the browser. Instead the
thumbnails of a class are pasted into a few contact sheets (one JPEG per SHEET_CELLS cells), each
shown once with a grid of links over it; a sheet costs a fraction of a byte per pixel, so a
10,000-cell report stays a few MB and renders fast (README, "Report"). Crops are decoded with
JPEG draft mode (the decoder scales by 1/2..1/8 itself), the cheap part of the work.

Full crops on demand: the log keeps every crop, so the page does not repeat them. Served by
`edge-bloodcls review` (its /report), each thumbnail links to the server's /crop/<id>; a static
page gets links only with `report --full-crops`, which copies the stored JPEGs as they are into a
folder beside it (write_crops). Not the default: 10,000 crops are 80-150 MB, written again at
every report, on a Pi's SD card, for a page mostly filed as paper or PDF.
"""

from __future__ import annotations

import base64
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image

from .report_model import CellRow

# px: enough to tell a lobed nucleus from a round one, small enough for 10,000; 360 / 8, so that a
# crop stored at the log's 360 px decodes straight to it (JPEG's 1/8 scale: the cheapest decode)
THUMB = 45
COLS = 16  # thumbnails per sheet row (720 px: fits A4 and Letter at print scale)
SHEET_CELLS = 512  # cells per sheet: a browser decodes sheets as they scroll into view
SHEET_QUALITY = 75
FLAGGED_PX = 180  # flagged cells are shown larger, at most this (360 / 2: a 360 px crop decodes straight to it)


@dataclass(frozen=True)
class Sheet:
    label: str
    cells: list[CellRow]  # in sheet order, row by row
    data_uri: str
    width: int
    height: int


def _open(jpeg: bytes, px: int) -> Image.Image | None:
    try:
        src = Image.open(io.BytesIO(jpeg))
        src.draft("RGB", (px, px))
        im = src.convert("RGB")
        im.thumbnail((px, px))
        return im
    except (OSError, ValueError, Image.DecompressionBombError):  # a damaged crop: a grey tile, not a failure
        return None


def _uri(im: Image.Image, quality: int) -> str:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


@dataclass(frozen=True)
class Gallery:
    sheets: list[Sheet]
    flagged: dict[int, str]  # cell id -> data URI of a flagged cell's crop


def _flagged_uri(c: CellRow) -> str | None:
    """A flagged cell's crop for the page, at most FLAGGED_PX (smaller crops are kept as they are)."""
    if not c.crop:
        return None
    try:
        with Image.open(io.BytesIO(c.crop)) as probe:
            small = max(probe.size) <= FLAGGED_PX
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    if small:
        return "data:image/jpeg;base64," + base64.b64encode(c.crop).decode()
    im = _open(c.crop, FLAGGED_PX)
    return _uri(im, 85) if im is not None else None


def _thumb(c: CellRow) -> Image.Image | None:
    return _open(c.crop, THUMB) if c.crop else None


def _slices(items: list, n: int) -> list[list]:
    return [items[i::n] for i in range(n)]


def _each(fn: Callable) -> Callable[[list], list]:
    return lambda items: [fn(x) for x in items]


def _flat(parts) -> list:
    """Undo _slices: element j of slice i is item i + j * n."""
    parts = list(parts)
    out: list = [None] * sum(len(p) for p in parts)
    for i, p in enumerate(parts):
        out[i :: len(parts)] = p
    return out


def build(cells: list[CellRow], label_of: Callable[[CellRow], str] = lambda c: c.final_label) -> Gallery:
    """Contact sheets per class (the reviewed label where there is one, cells in id order) and the
    flagged cells' pictures."""
    flagged = [c for c in cells if c.review]
    # Pillow releases the GIL while it decodes, resizes and encodes: threads use every core (a Pi
    # has 4). One task per worker and slice, not per cell: 10,000 futures cost more than the work.
    workers = os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        thumbs = dict(zip((c.id for c in cells), _flat(pool.map(_each(_thumb), _slices(cells, workers)))))
        big = dict(zip((c.id for c in flagged), _flat(pool.map(_each(_flagged_uri), _slices(flagged, workers)))))
    by: dict[str, list[CellRow]] = {}
    for c in cells:
        by.setdefault(label_of(c), []).append(c)
    out = []
    for label in sorted(by):
        group = by[label]
        for start in range(0, len(group), SHEET_CELLS):
            chunk = group[start : start + SHEET_CELLS]
            cols = min(COLS, len(chunk))
            rows = -(-len(chunk) // cols)
            w, h = cols * THUMB, rows * THUMB
            sheet = Image.new("RGB", (w, h), (238, 238, 238))
            for i, c in enumerate(chunk):
                im = thumbs[c.id]
                if im is not None:
                    x, y = (i % cols) * THUMB, (i // cols) * THUMB
                    sheet.paste(im, (x + (THUMB - im.width) // 2, y + (THUMB - im.height) // 2))
            out.append(Sheet(label, chunk, _uri(sheet, SHEET_QUALITY), w, h))
    return Gallery(out, {k: v for k, v in big.items() if v})


def write_crops(cells: list[CellRow], folder: Path) -> int:
    """Each stored crop as <folder>/<cell id>.jpg, bytes as logged; returns how many."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for c in cells:
        if c.crop:
            (folder / f"{c.id}.jpg").write_bytes(c.crop)
            n += 1
    return n

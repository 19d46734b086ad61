"""A large synthetic session for the report's size and time (tests/test_runtime_report_export.py,
scripts/report_scale.py): crops like the log's, class shares like a normal differential."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from edge_bloodcls.edge_runtime.core.spec import LABELS
from edge_bloodcls.edge_runtime.lab.session import CellRecord, SessionLog


def _crop_pool(n: int = 64, size: int = 360) -> list[bytes]:
    """Crops like the log's: up to 360 px JPEG, a stained cell on a smooth background (~10 KB each)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        a = np.full((size, size, 3), (232, 214, 210), np.float32) + rng.normal(0, 3, (size, size, 3))
        im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(im)
        r = rng.uniform(60, 110)
        c = size / 2 + rng.uniform(-20, 20)
        d.ellipse([c - r, c - r, c + r, c + r], fill=tuple(int(v) for v in rng.integers(60, 200, 3)))
        buf = io.BytesIO()
        im.filter(ImageFilter.GaussianBlur(1.5)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def make_big_session(path: Path, n: int = 10_000, per_frame: int = 250, flagged_every: int = 20) -> None:
    model = {
        "model": "tiny_int8",
        "model_sha256": "cd" * 32,
        "interpreter": "ai_edge_litert",
        "device": "cpu",
        "threads": 1,
    }
    log = SessionLog(path, "fields/", "field", model, 0.8, sample="BIG-1", operator="ann", count_target=n)
    pool = _crop_pool()
    weights = np.array([0.01, 0.03, 0.01, 0.01, 0.3, 0.06, 0.57, 0.01])
    labels = np.random.default_rng(1).choice(len(LABELS), n, p=weights / weights.sum())
    for f in range(0, n, per_frame):
        recs = []
        for k in range(f, min(n, f + per_frame)):
            lab = LABELS[labels[k]]
            probs = {x: (0.9 if x == lab else 0.1 / 7) for x in LABELS}
            recs.append(
                CellRecord(
                    (0, 0, 90, 90),
                    lab,
                    0.9,
                    k % flagged_every == 0,
                    probs,
                    crop_jpeg=pool[k % len(pool)],
                    observations=2,
                    review_reason="low confidence" if k % flagged_every == 0 else "",
                )
            )
        log.log_frame(f // per_frame, time.time(), f"f{f}.png", (1000, 1000), len(recs), recs)
    log.finish("end of folder", {})
    log.close()

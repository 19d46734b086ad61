"""A finished session log as capture writes it (for the report, review and store tests), and the
CLI run in-process."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from cell_images import synthetic_cell
from click.testing import CliRunner

from edge_bloodcls.edge_runtime.core.spec import LABELS
from edge_bloodcls.edge_runtime.lab.session import CellRecord, SessionLog

REPO = Path(__file__).resolve().parents[1]
# (label, confidence, flagged, out of distribution)
CELLS = (
    [("neutrophil", 0.95, False, False)] * 5
    + [("lymphocyte", 0.92, False, False)] * 3
    + [("monocyte", 0.55, True, False), ("eosinophil", 0.61, True, True), ("platelet", 0.70, True, False)]
)


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    synthetic_cell(i % 8, np.random.default_rng(i), size=96).save(buf, "JPEG")
    return buf.getvalue()


def make_session(path, cells=CELLS, unvalidated=False, sample="S-42") -> int:
    """A finished session as capture writes it: one frame per cell, crops in the rows."""
    model = {
        "model": "tiny_int8",
        "model_sha256": "ab" * 32,
        "interpreter": "ai_edge_litert",
        "device": "cpu",
        "threads": 1,
    }
    log = SessionLog(
        path,
        "fields/",
        "field",
        model,
        0.8,
        sample=sample,
        operator="ann",
        count_target=len(cells),
        versions={"edge_bloodcls": "0.1.0", "bundle": "tiny_int8.tflite"},
    )
    for k, (label, conf, flagged, ood) in enumerate(cells):
        probs = {lab: (conf if lab == label else (1 - conf) / 7) for lab in LABELS}
        rec = CellRecord(
            (10, 10, 90, 90),
            label,
            conf,
            flagged,
            probs,
            crop_jpeg=_jpeg(k),
            observations=3,
            ood=ood,
            ood_score=40.0 if ood else 5.0,
            review_reason=("out of distribution" if ood else "low confidence") if flagged else "",
        )
        log.log_frame(k, time.time(), f"f{k}.png", (100, 100), 1, [rec])
    gate = {
        "tripped": unvalidated,
        "message": "WARNING: 9 of 10 white cells are out of distribution" if unvalidated else "",
        "cells": len(cells),
    }
    if unvalidated:
        log.set_trust(gate)
    log.finish("end of folder", {"trust": gate})
    log.close()
    return log.id


def run_cli(*args):
    from edge_bloodcls.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])

"""`pi_compare.py inputs`: the check's inputs, a fixed selection copied out of the data set.

Both sides (native and emulated) run on these same files, so the selection has to be
deterministic; each copy is recorded with its source and sha256 in inputs.json. Without the data
set, synthetic PNGs (pi_compare_synthetic.py) take the place of the missing part.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

from pi_compare_synthetic import synthetic_cell, synthetic_field


def _labels() -> tuple:
    """The runtime's labels, from their one list (edge_runtime/core/spec.py). pi_check.sh runs this
    with the machine's own python3, where edge_bloodcls is not installed: then spec.py (standard
    library only) is loaded from this checkout by path."""
    try:
        from edge_bloodcls.edge_runtime.core.spec import LABELS as labels
    except ImportError:
        import importlib.util

        spec_py = Path(__file__).resolve().parents[1] / "edge_runtime" / "core" / "spec.py"
        spec = importlib.util.spec_from_file_location("_bloodcls_spec", spec_py)
        sys.modules[spec.name] = module = importlib.util.module_from_spec(spec)  # dataclasses looks it up
        spec.loader.exec_module(module)
        labels = module.LABELS
    return tuple(labels)


LABELS = _labels()
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# Per class: images to classify, images for the class-folder evaluation; BCCD fields to capture.
N_CLASSIFY, N_EVALUATE, N_FIELDS = 2, 5, 8


def _spread(items: list, n: int) -> list:
    """n items evenly spread over a sorted list (deterministic, not just the first n)."""
    if len(items) <= n:
        return list(items)
    return [items[(2 * j + 1) * len(items) // (2 * n)] for j in range(n)]


def _images(d: Path) -> list[Path]:
    return sorted(
        p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def make_inputs(out: Path, data: Path) -> dict:
    """Fill OUT with cells/<label>/ (classify), evalset/<label>/ (evaluate), fields/ (capture)
    and inputs.json, the record of what was picked; returns that record."""
    if out.exists():
        shutil.rmtree(out)
    pbc, bccd = data / "pbc256", data / "bccd" / "JPEGImages"
    record = {"data": str(data), "classify": [], "evaluate": [], "fields": []}

    def put(src: Path, dst: Path, key: str):
        # Copies, never links: the folder is copied into each root file system, where a link to
        # the host's data set would point nowhere.
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        record[key].append(
            {
                "file": str(dst.relative_to(out)),
                "source": str(src),
                "sha256": hashlib.sha256(dst.read_bytes()).hexdigest(),
            }
        )

    classes = [lab for lab in LABELS if (pbc / lab).is_dir() and _images(pbc / lab)]
    if classes:
        record["pbc"] = "real"
        for lab in classes:
            files = _images(pbc / lab)
            picked = _spread(files, N_CLASSIFY)
            rest = [f for f in files if f not in picked]
            for f in picked:
                put(f, out / "cells" / lab / f.name, "classify")
            for f in _spread(rest, N_EVALUATE):
                put(f, out / "evalset" / lab / f.name, "evaluate")
    else:
        record["pbc"] = f"synthetic (no PBC images at {pbc})"
        for k, lab in enumerate(LABELS):
            for i in range(N_CLASSIFY + N_EVALUATE):
                dst = out / ("cells" if i < N_CLASSIFY else "evalset") / lab / f"{lab}_{i}.png"
                dst.parent.mkdir(parents=True, exist_ok=True)
                synthetic_cell(dst, k, seed=100 * k + i)
                record["classify" if i < N_CLASSIFY else "evaluate"].append(
                    {"file": str(dst.relative_to(out)), "source": "synthetic"}
                )
    fields = _images(bccd) if bccd.is_dir() else []
    if fields:
        record["bccd"] = "real"
        for f in _spread(fields, N_FIELDS):
            put(f, out / "fields" / f.name, "fields")
    else:
        record["bccd"] = f"synthetic (no BCCD fields at {bccd})"
        for i in range(N_FIELDS):
            dst = out / "fields" / f"field_{i}.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            synthetic_field(dst, seed=i)
            record["fields"].append({"file": str(dst.relative_to(out)), "source": "synthetic"})
    (out / "inputs.json").write_text(json.dumps(record, indent=1) + "\n")
    return record

"""Add the colour statistic (edge_runtime.core.trust.colour_features) to existing bundles, without
touching their .tflite files: it depends on the pixels only, not on the model.

    .venv/bin/python scripts/add_colour_stats.py [--models NAME ...] [--split runs/split.csv]
        [--data-root ../shared/data/pbc256] [--cache-dir DIR]
        [--colour-false-alarm F]

For each bundle (default: the shipped ones in edge_runtime/core/models/): the split's train rows,
loaded as training loads them (train.pipeline.cached_pixels) at the bundle's input size, fit one
Gaussian (convert/trust_fit.colour_stats); the threshold is the (1 - false-alarm) quantile of the
val rows' distances, at the colour statistic's own false-alarm target (COLOUR_FALSE_ALARM, lower
than the features': why in edge_runtime/core/trust.py; --colour-false-alarm overrides it). The val
and test trust figures in the manifest are recomputed through the runtime with the colour statistic
(the either-statistic OOD rule); temperature, review threshold and the feature statistics stay as
exported. NAME.trust.npz and NAME.json are rewritten through bundle.write_bundle (hashes
consistent); the .tflite bytes are written back unchanged. Rerunning replaces the colour statistic
with the same one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from edge_bloodcls.convert import calibrate, trust_fit
from edge_bloodcls.edge_runtime.core.bundle import MODELS_DIR, load_bundle, write_bundle
from edge_bloodcls.edge_runtime.core.classifier import Classifier
from edge_bloodcls.edge_runtime.core.preprocess import normalise
from edge_bloodcls.edge_runtime.core.trust import COLOUR_FALSE_ALARM, TRUST_FORMAT
from edge_bloodcls.train.pipeline import cached_pixels

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in MODELS_DIR.glob("*.tflite"))


def pixels(images: calibrate.ImageSet, size, cache_dir) -> np.ndarray:
    # The same cache key as training and convert (split hash, size, file list).
    return np.asarray(cached_pixels(images.paths, size, cache_dir, (images.split_sha256 or "dir")[:12]))


def add_colour(name: str, split: Path, data_root: Path, cache_dir, false_alarm: float = COLOUR_FALSE_ALARM) -> dict:
    b = load_bundle(name)
    if b.trust is None:
        raise SystemExit(f"{name}: the bundle has no trust statistics to add the colour statistic to")
    t = dict(b.manifest["trust"])
    size = b.spec.size
    sets = {s: calibrate.from_split(split, s, data_root) for s in ("train", "val", "test")}
    if b.manifest.get("split_sha256") and sets["train"].split_sha256 != b.manifest["split_sha256"]:
        raise SystemExit(f"{split}: not the split {name} was trained on (sha256 differs from its manifest's)")
    px = {s: pixels(images, size, cache_dir) for s, images in sets.items()}
    colour, fields = trust_fit.colour_stats(px["train"], px["val"], false_alarm)
    stats = b.trust
    stats.colour = colour
    clf = Classifier(b, threads=1)
    figures = {}
    for s in ("val", "test"):
        out = clf.predict_many(normalise(p, b.spec) for p in px[s])
        figures[s] = trust_fit.evaluate(stats, out["raw"], out["features"], sets[s].labels, px[s])
    manifest = dict(b.manifest)
    manifest["trust"] = {
        **t,
        "format": TRUST_FORMAT,
        **fields,
        "colour": {
            **fields["colour"],
            "added_by": "scripts/add_colour_stats.py: fitted after export on the split's train rows at the "
            "bundle's input size; the model, the feature statistics, temperature and review threshold are "
            "as exported",
        },
        "val": {**t["val"], **figures["val"]},
        "test": figures["test"],
    }
    write_bundle(b.tflite.read_bytes(), manifest, b.tflite.parent, b.name, trust_fit.to_bytes(stats))
    again = load_bundle(name)  # the rewritten bundle must load, hashes and all
    assert again.trust is not None and again.trust.colour is not None
    return {"model": name, "colour_ood_threshold": round(colour.threshold, 4), **figures}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=SHIPPED)
    ap.add_argument("--split", type=Path, default=REPO / "runs" / "split.csv")
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data" / "pbc256")
    ap.add_argument("--cache-dir", help="memoise the decoded pixels here (as training's --cache-dir)")
    ap.add_argument(
        "--colour-false-alarm",
        type=float,
        default=COLOUR_FALSE_ALARM,
        help="share of PBC val cells the colour statistic may flag (default: %(default)s)",
    )
    args = ap.parse_args()
    for name in args.models:
        t0 = time.time()
        r = add_colour(name, args.split, args.data_root, args.cache_dir, args.colour_false_alarm)
        v, te = r["val"], r["test"]
        print(
            f"{name}: colour threshold {r['colour_ood_threshold']}; val OOD {v['ood_flagged']:.2%} (features "
            f"{v['feature_ood_flagged']:.2%}, colour {v['colour_ood_flagged']:.2%}); test OOD "
            f"{te['ood_flagged']:.2%} (features {te['feature_ood_flagged']:.2%}, colour "
            f"{te['colour_ood_flagged']:.2%}), coverage {te['coverage']:.2%} ({time.time() - t0:.0f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

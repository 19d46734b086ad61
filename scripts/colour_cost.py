"""Time the colour statistic per crop: colour_features now (histograms, a lookup table) against
the first implementation (a log per pixel and a stable sort of all pixels by luminance, kept here
for the comparison only), and the classifier's whole colour step (pixels_of, features, score).

    .venv/bin/python scripts/colour_cost.py [--runs 300] [--out benchmarks/results/colour_cost.json]

Crops: the eight demo cells (demo/cells) at each shipped int8 bundle's input size (112 and 160
px), as the classifier prepares them. Median ms per crop over all runs, one crop at a time as on
the Pi, timed interleaved so that machine load hits each variant alike. Also reports the largest
difference between the two implementations (they differ only in luminance weights, ties and
float precision).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from edge_bloodcls.edge_runtime.core.bundle import DEFAULT_MODEL, FAST_MODEL, load_bundle
from edge_bloodcls.edge_runtime.core.classifier import Classifier
from edge_bloodcls.edge_runtime.core.images import list_images
from edge_bloodcls.edge_runtime.core.preprocess import pixels_of, prepare
from edge_bloodcls.edge_runtime.core.trust import COLOUR_TAIL, colour_features

REPO = Path(__file__).resolve().parents[1]
_LUMA_FLOAT = np.array([0.299, 0.587, 0.114], np.float32)


def colour_features_sorted(rgb: np.ndarray) -> np.ndarray:
    """The first implementation (commit 07ad36f), one crop: the cost before."""
    px = rgb.reshape(1, -1, 3)
    od = -np.log(np.clip(px.astype(np.float32) / 255.0, 1.0 / 255.0, 1.0))
    order = np.argsort(px.astype(np.float32) @ _LUMA_FLOAT, axis=1, kind="stable")
    k = max(1, int(round(COLOUR_TAIL * px.shape[1])))
    dark = np.take_along_axis(od, order[:, :k, None], axis=1).mean(1)
    bright = np.take_along_axis(od, order[:, -k:, None], axis=1).mean(1)
    return np.concatenate([od.mean(1), od.std(1), dark, bright], axis=1).astype(np.float32)[0]


def time_model(name: str, runs: int) -> dict:
    clf = Classifier(load_bundle(name), threads=1)
    xs = [prepare(p, clf.spec) for p in list_images(REPO / "demo" / "cells").files]
    crops = [pixels_of(x, clf.spec) for x in xs]
    steps = {
        "before_sorted_ms": lambda i: colour_features_sorted(crops[i]),
        "colour_features_ms": lambda i: colour_features(crops[i]),
        "classifier_colour_score_ms": lambda i: clf.colour_score(xs[i]),  # pixels_of + features + score
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(runs):
        i = r % len(crops)
        for key, f in steps.items():
            t = time.perf_counter()
            f(i)
            times[key].append((time.perf_counter() - t) * 1000)
    diff = max(float(np.abs(colour_features(c) - colour_features_sorted(c)).max()) for c in crops)
    out = {"model": name, "size": list(clf.spec.size), **{k: round(float(np.median(v)), 4) for k, v in times.items()}}
    out["speed_up"] = round(out["before_sorted_ms"] / out["colour_features_ms"], 1)
    out["max_abs_difference"] = round(diff, 5)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "colour_cost.json")
    args = ap.parse_args()
    rows = [time_model(name, args.runs) for name in (FAST_MODEL, DEFAULT_MODEL)]
    for r in rows:
        print(
            f"{r['model']} ({r['size'][0]} px): colour_features {r['colour_features_ms']:.3f} ms per crop "
            f"(before: {r['before_sorted_ms']:.3f} ms, {r['speed_up']}x); the classifier's whole colour "
            f"step {r['classifier_colour_score_ms']:.3f} ms; largest difference {r['max_abs_difference']}"
        )
    report = {
        "command": "scripts/colour_cost.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "machine": f"{platform.machine()}, {platform.processor() or platform.system()}",
        "numpy": np.__version__,
        "runs": args.runs,
        "models": rows,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Issue 29, item 5: how many of the shipped int8 models' wrong calls on another lab's cells are
flagged (low confidence, feature OOD, colour OOD), and what it costs the home site.

    .venv/bin/python scripts/fast_flag_tradeoff.py [--out benchmarks/results/fast_flag_tradeoff.json]

For each model (default: the fast, then the default int8 bundle):
  - PBC test (runs/split.csv): the share flagged OOD by the features, by the colour statistic, by either;
  - bccd_site (41) and bccd_session (60) cells, framed two ways: the labelled tight crop as a file
    (`classify` on it), and the crop capture makes of the cell in its own BCCD field
    (adapt/evaluate.capture_view: a cell capture does not locate is counted apart); of the wrong
    calls, how many each flag catches, and any of them ("before": low confidence or feature OOD,
    what the bundles flagged before the colour statistic);
  - for the fast model, the trade-off of moving only the feature threshold (quantiles of the PBC
    test scores), with and without the colour statistic.
Runtime only (no TensorFlow), as benchmarks/trust.py runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edge_bloodcls.adapt.evaluate import capture_views
from edge_bloodcls.benchmarks.trust import pbc_test, run_bundle, site_cells
from edge_bloodcls.edge_runtime.core.bundle import DEFAULT_MODEL, FAST_MODEL, load_bundle
from edge_bloodcls.edge_runtime.core.classifier import Classifier
from edge_bloodcls.edge_runtime.core.preprocess import load_rgb

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SETS = ("bccd_site", "bccd_session")


def flags(clf: Classifier, out: dict) -> dict[str, np.ndarray]:
    t = clf.trust
    assert t is not None
    low = out["probs"].max(1) < clf.review_threshold
    feature = out["ood_score"] > t.threshold
    colour = out["colour_score"] > t.colour.threshold if t.colour is not None else np.zeros(len(low), bool)
    return {
        "low_confidence": low,
        "feature_ood": feature,
        "colour_ood": colour,
        "before": low | feature,
        "any": low | out["ood"],
    }


def wrong_flagged(clf: Classifier, out: dict, y: np.ndarray, missed: int = 0) -> dict:
    wrong = out["probs"].argmax(1) != y
    f = flags(clf, out)
    res = {"n": int(len(y)), "not_located": missed, "wrong": int(wrong.sum())}
    res.update({k: int((wrong & v).sum()) for k, v in f.items()})
    res["ood_all_cells"] = float(out["ood"].mean()) if len(y) else None
    res["colour_ood_all_cells"] = float(f["colour_ood"].mean()) if len(y) else None
    return res


def site_figures(clf: Classifier, folder: Path) -> dict:
    paths, y = site_cells(folder, clf.labels)
    out = {"tight_crop": wrong_flagged(clf, run_bundle(clf, paths), y)}
    views = capture_views([load_rgb(p) for p in paths], paths, DATA / "bccd" / "JPEGImages")
    keep = [i for i, v in enumerate(views) if v.crop is not None]
    crops = [views[i].crop for i in keep]
    out["capture_view"] = wrong_flagged(clf, run_bundle(clf, crops), y[keep], len(paths) - len(keep))
    return out


def tradeoff(clf: Classifier, pbc: dict, site: dict, y: np.ndarray) -> list[dict]:
    """Only the feature threshold moves (no refit); flags with and without the colour statistic."""
    t = clf.trust
    assert t is not None
    f = flags(clf, site)
    wrong = site["probs"].argmax(1) != y
    rows = []
    for share in [None, 0.025, 0.05, 0.075, 0.10, 0.15]:
        thr = t.threshold if share is None else float(np.quantile(pbc["ood_score"], 1 - share))
        feature = site["ood_score"] > thr
        rows.append(
            {
                "pbc_test_feature_ood_flagged": float((pbc["ood_score"] > thr).mean()),
                "pbc_test_ood_flagged_with_colour": float(
                    ((pbc["ood_score"] > thr) | flags(clf, pbc)["colour_ood"]).mean()
                ),
                "ood_threshold": round(thr, 3),
                "shipped": share is None,
                "wrong": int(wrong.sum()),
                "wrong_flagged_without_colour": int((wrong & (f["low_confidence"] | feature)).sum()),
                "wrong_flagged": int((wrong & (f["low_confidence"] | feature | f["colour_ood"])).sum()),
            }
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=[FAST_MODEL, DEFAULT_MODEL])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fast_flag_tradeoff.json"))
    args = ap.parse_args()
    paths, py, _ = pbc_test(REPO / "runs" / "split.csv", DATA / "pbc256")
    res: dict = {"command": ".venv/bin/python scripts/fast_flag_tradeoff.py", "pbc_test_n": len(paths), "models": []}
    for name in args.models:
        clf = Classifier(load_bundle(name), threads=1)
        t = clf.trust
        if t is None:
            print(f"error: {name} carries no trust statistics", file=sys.stderr)
            return 2
        p = run_bundle(clf, paths)
        pf = flags(clf, p)
        r: dict = {
            "model": name,
            "review_threshold": clf.review_threshold,
            "ood_threshold": t.threshold,
            "colour_ood_threshold": t.colour.threshold if t.colour is not None else None,
            "pbc_test": {
                "feature_ood": float(pf["feature_ood"].mean()),
                "colour_ood": float(pf["colour_ood"].mean()),
                "either_ood": float(p["ood"].mean()),
                "accuracy": float((p["probs"].argmax(1) == py).mean()),
            },
        }
        print(
            f"{name}: PBC test OOD features {r['pbc_test']['feature_ood']:.2%}, colour "
            f"{r['pbc_test']['colour_ood']:.2%}, either {r['pbc_test']['either_ood']:.2%}"
        )
        for s in SETS:
            if not (DATA / s).is_dir():
                continue
            r[s] = site_figures(clf, DATA / s)
            for framing, v in r[s].items():
                missed = f", {v['not_located']} not located" if v["not_located"] else ""
                print(
                    f"  {s} ({framing}, {v['n']} cells{missed}): "
                    f"wrong {v['wrong']}; flagged: low confidence {v['low_confidence']}, feature OOD "
                    f"{v['feature_ood']}, colour OOD {v['colour_ood']}; before {v['before']}/{v['wrong']}, "
                    f"now {v['any']}/{v['wrong']}"
                )
        if name == FAST_MODEL and (DATA / "bccd_site").is_dir():
            sp, sy = site_cells(DATA / "bccd_site", clf.labels)
            r["tradeoff_bccd_site_tight"] = tradeoff(clf, p, run_bundle(clf, sp), sy)
        res["models"].append(r)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

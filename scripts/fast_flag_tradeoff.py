"""Issue 29, item 5: how many of the fast model's wrong calls on bccd_site are flagged (review
threshold or OOD), and what flagging more would cost the home site, if only the bundle's OOD
threshold moved (no retraining, no refit of the statistics).

    .venv/bin/python scripts/fast_flag_tradeoff.py [--out benchmarks/results/fast_flag_tradeoff.json]

For each share of PBC test cells flagged out of distribution (the shipped threshold, then
quantiles of the PBC test scores): the OOD threshold, and of the wrong calls on the 41
bccd_site crops, how many are flagged. Runtime only (no TensorFlow), as benchmarks/trust.py runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edge_bloodcls.benchmarks.trust import pbc_test, run_bundle, site_cells
from edge_bloodcls.edge_runtime.core.bundle import FAST_MODEL, load_bundle
from edge_bloodcls.edge_runtime.core.classifier import Classifier

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=FAST_MODEL)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fast_flag_tradeoff.json"))
    args = ap.parse_args()
    clf = Classifier(load_bundle(args.model))
    if clf.trust is None:
        print(f"error: {args.model} carries no trust statistics", file=sys.stderr)
        return 2
    sp, sy = site_cells(DATA / "bccd_site", clf.labels)
    s = run_bundle(clf, sp)
    paths, _, _ = pbc_test(REPO / "runs" / "split.csv", DATA / "pbc256")
    p = run_bundle(clf, paths)
    conf, wrong = s["probs"].max(1), s["probs"].argmax(1) != sy
    low = conf < clf.review_threshold
    rows = []
    for share in [None, 0.025, 0.05, 0.075, 0.10, 0.15]:
        thr = clf.trust.threshold if share is None else float(np.quantile(p["ood_score"], 1 - share))
        flagged = wrong & (low | (s["ood_score"] > thr))
        rows.append(
            {
                "pbc_test_ood_flagged": float((p["ood_score"] > thr).mean()),
                "ood_threshold": round(thr, 3),
                "shipped": share is None,
                "wrong": int(wrong.sum()),
                "wrong_flagged": int(flagged.sum()),
                "wrong_flagged_share": float(flagged.sum() / max(1, wrong.sum())),
            }
        )
        print(
            f"PBC test OOD-flagged {rows[-1]['pbc_test_ood_flagged']:.1%} (threshold {thr:.2f}"
            f"{', shipped' if share is None else ''}): bccd_site wrong calls flagged "
            f"{rows[-1]['wrong_flagged']}/{rows[-1]['wrong']}"
        )
    res = {
        "model": args.model,
        "review_threshold": clf.review_threshold,
        "site_n": int(len(sy)),
        "pbc_test_n": int(len(paths)),
        "rows": rows,
        "command": ".venv/bin/python scripts/fast_flag_tradeoff.py",
    }
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

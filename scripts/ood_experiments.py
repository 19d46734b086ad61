"""Which OOD score to ship: variants of the feature statistics, chosen on data the report does
not use to judge them.

    .venv/bin/python scripts/ood_experiments.py [BUNDLE ...] > benchmarks/results/ood_experiments.json

Features come from each bundle's own feature output, through the runtime. Selection data: PBC val
(in distribution) against white cells of the BCCD *train* fields (ImageSets/Main/train.txt); the
BCCD *test* fields and PBC test are only reported. Variants: PCA dimensions, number of training
cells, and the relative Mahalanobis distance (Ren et al. 2021: minus the distance under one
background Gaussian of all training cells).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_bloodcls.benchmarks.trust import auroc  # noqa: E402
from edge_bloodcls.convert import calibrate  # noqa: E402
from edge_bloodcls.convert.trust_fit import fit_ood  # noqa: E402
from edge_bloodcls.edge_runtime.capture.locate import Detection, crop, default_rbc_px  # noqa: E402
from edge_bloodcls.edge_runtime.capture.locate_eval import read_voc  # noqa: E402
from edge_bloodcls.edge_runtime.core.bundle import load_bundle  # noqa: E402
from edge_bloodcls.edge_runtime.core.classifier import Classifier  # noqa: E402
from edge_bloodcls.edge_runtime.core.preprocess import load_rgb, prepare  # noqa: E402
from edge_bloodcls.edge_runtime.core.trust import TrustStats  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def bccd_cells(ids):
    out = []
    for i in sorted(ids):
        rgb = load_rgb(DATA / "bccd" / "JPEGImages" / f"{i}.jpg")
        for box in read_voc(DATA / "bccd" / "Annotations" / f"{i}.xml"):
            out.append(crop(rgb, Detection(box, box, 0.0, 0.0), default_rbc_px(rgb.shape)))
    return out


def feats(clf, items):
    return clf.predict_many(prepare(x, clf.spec) for x in items)["features"]


def scores(mean, proj, centres, f):
    return TrustStats(mean, proj, centres, 0.0).scores(f)


def main(argv):
    split = REPO / "runs" / "split.csv"
    root = DATA / "pbc256"
    ids = {
        s: {ln.strip() for ln in (DATA / "bccd/ImageSets/Main" / f"{s}.txt").read_text().split() if ln.strip()}
        for s in ("train", "test")
    }
    sel_b, rep_b = bccd_cells(ids["train"]), bccd_cells(ids["test"])
    train_all = calibrate.from_split(split, "train", root)
    val = calibrate.from_split(split, "val", root)
    test = calibrate.from_split(split, "test", root)
    out = {
        "command": "scripts/ood_experiments.py " + " ".join(argv),
        "bccd_select_cells": len(sel_b),
        "bccd_report_cells": len(rep_b),
        "bundles": {},
    }
    # the bundles of that experiment (see its JSON)
    for name in argv or ["mobilenetv2_160_int8", "mobilenetv2_96_int8"]:
        clf = Classifier(load_bundle(name), threads=2)
        ftr = feats(clf, [str(p) for p in train_all.paths])
        fv, ft = feats(clf, [str(p) for p in val.paths]), feats(clf, [str(p) for p in test.paths])
        fbs, fbr = feats(clf, sel_b), feats(clf, rep_b)
        rows = []
        for n in (4000, None):
            idx = calibrate.stratified(train_all.labels, n, 0)
            for dims in (32, 64, 128, 256):
                m, p, c = fit_ood(ftr[idx], train_all.labels[idx], 8, dims)
                for relative in (False, True):
                    # Background Gaussian: one centre (the mean, 0 after centring) in a space
                    # whitened by the total covariance of the same projection.
                    bg = fit_ood(ftr[idx], np.zeros(len(idx), int), 1, dims) if relative else None

                    def s(f, m=m, p=p, c=c, bg=bg):
                        d = scores(m, p, c, f)
                        return d if bg is None else d - scores(*bg, f)

                    sv, st, sbs, sbr = s(fv), s(ft), s(fbs), s(fbr)
                    thr = float(np.quantile(sv, 0.98))
                    rows.append(
                        {
                            "train_cells": len(idx),
                            "dims": p.shape[1],
                            "relative": relative,
                            "select_auroc": auroc(sv, sbs),
                            "select_flagged": float((sbs > thr).mean()),
                            "report_auroc_test": auroc(st, sbr),
                            "report_pbc_test_flagged": float((st > thr).mean()),
                            "report_bccd_test_flagged": float((sbr > thr).mean()),
                        }
                    )
                    print(name, rows[-1], file=sys.stderr)
        out["bundles"][name] = rows
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])

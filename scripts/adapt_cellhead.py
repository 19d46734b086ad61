"""What the cell-feature head (adapt/cellhead.py, edge_runtime/core/cellhead.py) adds, measured
on the two protocols of issue 29 with the code adapt ships:

    .venv/bin/python scripts/adapt_cellhead.py [--runs FILE]    # writes benchmarks/results/adapt_cellhead.json
    .venv/bin/python scripts/adapt_cellhead.py --table

- the 41-cell protocol (scripts/adapt_experiments.py): the head fitted on the 41 `bccd_site` cells
  (framed as capture crops them), its router on PBC training cells against those cells and the
  unlabelled crops of the first half of the non-validation fields; scored on the 60 `bccd_session`
  cells (parts A and B) alone and fused with the network's per-cell probabilities of the runs in
  --runs (adapt_experiments.py's JSON with `proba_none`); the PBC test split fused with the base
  network's probabilities (what the routed bundle answers home cells with);
- the cross-validation over both samples (scripts/adapt_cv.py, the same folds): each fold's head
  fitted on that fold's training cells, fused with the network's out-of-fold probabilities in
  benchmarks/results/adapt_cv.json.

No network is trained here: the networks' probabilities come from those runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import adapt_cv as cvx  # noqa: E402
import adapt_experiments as ax  # noqa: E402  (configures TensorFlow's environment first)
import numpy as np  # noqa: E402

from edge_bloodcls.adapt import cellhead as ch  # noqa: E402
from edge_bloodcls.adapt import evaluate as ev  # noqa: E402
from edge_bloodcls.adapt import finetune as ft  # noqa: E402
from edge_bloodcls.edge_runtime.core.cellhead import CellHead, cell_features  # noqa: E402
from edge_bloodcls.edge_runtime.core.spec import LABELS, InputSpec  # noqa: E402

OUT = ax.REPO / "benchmarks" / "results" / "adapt_cellhead.json"
RUNS = ax.REPO / "benchmarks" / "results" / "adapt_validation.json"


def parts(y, pred, part) -> dict:
    return {
        k: ev.estimate(y[m], pred[m], LABELS, min_cells=2 if k != "all" else 5).to_json()
        for k, m in (("A", part == 0), ("B", part == 1), ("all", np.ones(len(y), bool)))
    }


def base_pbc_test(spec, pbc) -> np.ndarray:
    """The base network's float probabilities on the PBC test split (cached beside the inputs)."""

    def make():
        import tf_keras

        model = tf_keras.models.load_model(ax.MODEL, compile=False)
        return {"p": ft.predict(model, spec, pbc["test"])}

    return ax.cached("base_pbc_test", make)["p"]


def protocol_41(site, ses, unl, pbc, f_home, spec, runs: dict) -> dict:
    half = len(unl["x"]) // 2
    f_site = ch.features(site["x"])
    f_ses = ch.features(ses["x"])
    section = ch.fit(f_site, site["y"], LABELS, f_home, np.concatenate([f_site, ch.features(unl["x"][:half])]))
    head = CellHead.from_json(section, LABELS, "cell_head")
    y, part = ses["y"], ses["part"]
    g_ses, logq = head.parts(f_ses)
    q = np.full((len(y), len(LABELS)), -np.inf)
    q[:, head.classes] = logq
    f_test = ch.features(pbc["test"])
    g_test, _ = head.parts(f_test)
    g_unl, _ = head.parts(ch.features(unl["x"][half:]))
    pb = base_pbc_test(spec, pbc)
    out = {
        "head_alone": parts(y, q.argmax(1), part),
        "router": {
            "bccd_session_routed_site": float((g_ses >= 0.5).mean()),
            "unlabelled_held_out_routed_site": float((g_unl >= 0.5).mean()),
            "pbc_test_routed_home": float((g_test < 0.5).mean()),
            "pbc_test_g_max": float(g_test.max()),
        },
        "pbc_test": {
            "base": float((pb.argmax(1) == pbc["test_y"]).mean()),
            "base_fused": float((head.fuse(pb, f_test).argmax(1) == pbc["test_y"]).mean()),
            "n": int(len(pbc["test_y"])),
        },
        "runs": {},
    }
    for name, r in runs.items():
        if name.startswith("_"):
            continue
        for c, v in r["checkpoints"].items():
            if "proba_none" not in v:
                continue
            p = np.asarray(v["proba_none"])
            out["runs"][f"{name} @{c}"] = {
                "network": parts(y, p.argmax(1), part),
                "fused": parts(y, head.fuse(p, f_ses).argmax(1), part),
                "pbc_test_network": v["pbc_test_accuracy"],
                "weight_scan": {
                    str(w): {k: int((fused_at(head, p, f_ses, w) == y)[part == i].sum()) for i, k in enumerate("AB")}
                    for w in WEIGHTS
                },
            }
    return out


# The head's weight in the product, scanned after the fact (the shipped fusion is weight 1):
# log p += weight x g x (log q - mean log q). Does the near-certain 41-cell network drown the head?
WEIGHTS = (0.5, 1.0, 2.0, 3.0, 5.0)


def fused_at(head, p, f, weight: float) -> np.ndarray:
    """The fused answer with the head's term times `weight` (weight 1: what bundles answer)."""
    return head.fuse(p, f, weight).argmax(1)


def choose_c(site, grid=(0.1, 0.3, 1.0, 3.0), repeats: int = 10) -> dict:
    """HEAD_C as it was chosen: repeated stratified 5-fold CV within the 41 `bccd_site` cells alone
    (classes with >= 5 cells; the one basophil cannot be split), the mean accuracy per C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = site["y"]
    keep = np.isin(y, [c for c in np.unique(y) if (y == c).sum() >= 5])
    x, y = ch.features(site["x"])[keep], y[keep]

    def cv(xx, c):
        acc = []
        for rep in range(repeats):
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
            p = cross_val_predict(clf, xx, y, cv=StratifiedKFold(5, shuffle=True, random_state=rep))
            acc.append(float((p == y).mean()))
        return round(float(np.mean(acc)), 4)

    return {
        "cells": int(len(y)),
        "repeats": repeats,
        "mean_accuracy_by_C": {str(c): cv(x, c) for c in grid},
        # The first set tried: the first 60 numbers (before texture, red granules and nucleus shape).
        "first_60_features_by_C": {str(c): cv(x[:, :60], c) for c in grid},
    }


def protocol_cv(site, ses, unl, f_home, cv_results: dict) -> dict:
    x = np.concatenate([site["x"], ses["x"]])
    y = np.concatenate([site["y"], ses["y"]])
    session = np.r_[np.zeros(len(site["y"]), bool), np.ones(len(ses["y"]), bool)]
    fold = cvx.folds(y, cv_results["_about"]["folds"])
    weights = cvx.natural_weights(ses["y"])
    f = ch.features(x)
    f_unl = ch.features(unl["x"][: len(unl["x"]) // 2])
    logq = np.full((len(y), len(LABELS)), -np.inf)
    fuse_parts = {}
    for k in np.unique(fold):
        tr, te = fold != k, fold == k
        head = CellHead.from_json(
            ch.fit(f[tr], y[tr], LABELS, f_home, np.concatenate([f[tr], f_unl])), LABELS, "cell_head"
        )
        g, lq = head.parts(f[te])
        logq[np.ix_(te, head.classes)] = lq
        fuse_parts[int(k)] = (head, te)
    out = {"head_alone": cvx.summarise(y, logq.argmax(1), session, weights), "settings": {}}
    for name, r in cv_results.items():
        if name.startswith("_"):
            continue
        p = np.asarray(r["probs"]["none"])
        fused = np.zeros_like(p)
        for head, te in fuse_parts.values():
            fused[te] = head.fuse(p[te], f[te])
        scan = {}
        for w in WEIGHTS:
            pred = p.argmax(1)
            for head, te in fuse_parts.values():
                pred[te] = fused_at(head, p[te], f[te], w)
            scan[str(w)] = int((pred == y).sum())
        out["settings"][name] = {
            "network": cvx.summarise(y, p.argmax(1), session, weights),
            "fused": cvx.summarise(y, fused.argmax(1), session, weights),
            "weight_scan": scan,
        }
    return out


def _cells(e: dict) -> str:
    return f"{round(e['accuracy'] * e['n'])}/{e['n']}"


def table(res: dict) -> str:
    p = res["protocol_41"]
    cc = res["choose_c"]
    rows = [
        f"C of the head (repeated 5-fold CV within {cc['cells']} bccd_site cells, {cc['repeats']} repeats): "
        + ", ".join(f"C={c}: {a:.1%}" for c, a in cc["mean_accuracy_by_C"].items())
        + "; the first 60 numbers alone: "
        + ", ".join(f"C={c}: {a:.1%}" for c, a in cc["first_60_features_by_C"].items()),
        "",
        "41-cell protocol (trained on bccd_site, scored on bccd_session):",
        "",
        "| run @ steps | answer | A (choose): acc / balanced | B (report): acc / balanced | all 60: acc / balanced |",
        "|---|---|---|---|---|",
        f"| - | head alone | {ax._cell(p['head_alone']['A'])} | {ax._cell(p['head_alone']['B'])} | "
        f"{ax._cell(p['head_alone']['all'])} |",
    ]
    for name, r in p["runs"].items():
        for what in ("network", "fused"):
            e = r[what]
            rows.append(f"| `{name}` | {what} | {ax._cell(e['A'])} | {ax._cell(e['B'])} | {ax._cell(e['all'])} |")
    t = p["pbc_test"]
    rows += [
        "",
        f"PBC test ({t['n']} cells): base network {t['base']:.2%}, fused with the head {t['base_fused']:.2%}; "
        f"router: {p['router']['pbc_test_routed_home']:.1%} of PBC test routed home (largest g "
        f"{p['router']['pbc_test_g_max']:.3f}), {p['router']['bccd_session_routed_site']:.1%} of bccd_session "
        f"and {p['router']['unlabelled_held_out_routed_site']:.1%} of the held-out unlabelled crops to the site.",
        "",
        "Cross-validation over both samples (101 cells, 5 folds, out-of-fold):",
        "",
        "| setting | answer | bccd_session (60) | all 101, natural-weighted | balanced | right of 101 |",
        "|---|---|---|---|---|---:|",
    ]

    def cv_row(name, what, s):
        return (
            f"| {name} | {what} | {s['session']['accuracy']:.1%} [{s['session']['ci'][0]:.0%}, "
            f"{s['session']['ci'][1]:.0%}] | {s['natural']['accuracy']:.1%} [{s['natural']['ci'][0]:.0%}, "
            f"{s['natural']['ci'][1]:.0%}] | {s['balanced']['accuracy']:.1%} [{s['balanced']['ci'][0]:.0%}, "
            f"{s['balanced']['ci'][1]:.0%}] | {s['all']['right']} |"
        )

    c = res["protocol_cv"]
    rows.append(cv_row("-", "head alone", c["head_alone"]))
    for name, r in c["settings"].items():
        rows += [cv_row(f"`{name}`", "network", r["network"]), cv_row(f"`{name}`", "fused", r["fused"])]
    rows += [
        "",
        "The head's weight in the product (right answers; weight 1 is what adapt ships):",
        "",
        "| run or setting | cells | " + " | ".join(f"weight {w:g}" for w in WEIGHTS) + " |",
        "|---|---|" + "---:|" * len(WEIGHTS),
    ]
    for name, r in p["runs"].items():
        for k in "AB":
            rows.append(
                f"| `{name}` | part {k} (30) | " + " | ".join(str(r["weight_scan"][str(w)][k]) for w in WEIGHTS) + " |"
            )
    for name, r in c["settings"].items():
        rows.append(f"| CV `{name}` | 101 | " + " | ".join(str(r["weight_scan"][str(w)]) for w in WEIGHTS) + " |")
    return "\n".join(rows)


def time_features(out: Path, repeats: int = 5) -> int:
    """Milliseconds per crop of cell_features on the 60 `bccd_session` crops at 160 px, OpenCV on
    one thread (as on one Pi core): the median over crops of the best of `repeats`."""
    import cv2  # OpenCV: the [edge] extra

    cv2.setNumThreads(1)
    ses = np.load(ax.CACHE / "session.npz")["x"]
    best = []
    for px in ses:
        t = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            cell_features(px)
            t.append(time.perf_counter() - t0)
        best.append(min(t))
    res = json.loads(out.read_text())
    res["feature_ms_per_crop"] = {
        "median": round(1000 * float(np.median(best)), 2),
        "p90": round(1000 * float(np.percentile(best, 90)), 2),
        "crops": int(len(best)),
        "command": ".venv/bin/python scripts/adapt_cellhead.py --time",
    }
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(res["feature_ms_per_crop"])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default=str(RUNS), help="adapt_experiments.py's JSON with per-cell probabilities")
    ap.add_argument("--cv", default=str(cvx.ax.REPO / "benchmarks" / "results" / "adapt_cv.json"))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--time", action="store_true", help="time the 66 numbers per crop (idle machine) into --out")
    args = ap.parse_args()
    if args.time:
        return time_features(Path(args.out))
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return 0
    spec = InputSpec.named(160)
    _, site, ses, unl, pbc = ax.inputs(spec)
    f_home = ch.features(pbc["train"])  # the routers' home cells, in both protocols
    res = {
        "_about": __doc__.split("\n\n", 2)[1].strip(),
        "command": ".venv/bin/python scripts/adapt_cellhead.py"
        + (f" --runs {args.runs}" if args.runs != str(RUNS) else ""),
        "choose_c": choose_c(site),
        "protocol_41": protocol_41(site, ses, unl, pbc, f_home, spec, json.loads(Path(args.runs).read_text())),
        "protocol_cv": protocol_cv(site, ses, unl, f_home, json.loads(Path(args.cv).read_text())),
    }
    out = Path(args.out)
    if out.exists() and "feature_ms_per_crop" in (kept := json.loads(out.read_text())):
        res["feature_ms_per_crop"] = kept["feature_ms_per_crop"]  # --time's figure, measured apart
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

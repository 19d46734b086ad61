"""Cross-validated estimate of `adapt` over both labelled BCCD samples (101 cells), issue 29.

    .venv/bin/python scripts/adapt_cv.py [--settings NAME ...] [--folds 5] \
        [--seed S] [--out benchmarks/results/adapt_cv.json]  # trains; merged by setting into --out
    .venv/bin/python scripts/adapt_cv.py --table        # docs/adapt.md's table from --out

Why: the 60 natural-proportion cells split 30/30 (scripts/adapt_experiments.py) cannot tell two
settings apart by less than about two cells a half, and the shipped procedure trains on all 101
cells, so no cell is left to validate it. Here every cell of bccd_site + bccd_session is held
out once (stratified K-fold, seed 0, the same folds for every setting: paired comparisons), each
fold trained as `adapt` trains (every layer, PBC 1:1, framed as capture crops them) on the other
cells, and scored through the float model as capture sees it (own field, locate, crop):

- `session`: accuracy over the 60 bccd_session cells only (BCCD's natural proportions), Wilson 95%;
- `natural`: per-class recall over all 101 out-of-fold cells, weighted by BCCD's proportions
  (those of bccd_session: neutrophil 34, eosinophil 20, lymphocyte 5, monocyte 1), with a
  stratified-bootstrap 95% interval;
- `balanced`: mean recall over the classes with >= 5 cells, bootstrap 95%.

Variants of each trained fold, at no training cost: `none`, `em` (the output moved to the site's
class proportions estimated by EM on the unlabelled crops, Saerens et al. 2002) and `tta` (the 8
flips and quarter turns averaged). Home (PBC) is not scored here: `adapt --home route` answers
home cells with the base network (docs/adapt.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import adapt_experiments as ax  # noqa: E402  (configures TensorFlow's environment first)
import numpy as np  # noqa: E402

from edge_bloodcls.adapt import evaluate as ev  # noqa: E402
from edge_bloodcls.adapt import finetune as ft  # noqa: E402
from edge_bloodcls.edge_runtime.core.spec import LABELS, InputSpec  # noqa: E402
from edge_bloodcls.train.teacher import d4_views  # noqa: E402

# adapt's defaults before the seventh round (batches of 32; `batch16` is adapt's default since).
DEFAULT = replace(ax.PLAIN, colour_mode="hed", steps=600)
SETTINGS = {
    "default": DEFAULT,
    "stain": replace(DEFAULT, colour_mode="stain"),  # the first round's colour jitter
    "site75": replace(DEFAULT, local_share=0.75),  # more of each batch from the site (home is routed)
    # The stem (layers finer than 1/8 of the input) kept as the base trained it: a step 2.3x faster
    # here (finetune.set_bn); does it cost accuracy? (docs/adapt.md, sixth round)
    "freeze8": replace(DEFAULT, freeze=8),
    # Batches of 16 instead of 32: a step 2.1x faster here; does it cost accuracy? (seventh round)
    "batch16": replace(DEFAULT, batch=16),
    # Batches of 8 against batch16 (adapt's default since the seventh round; eighth round)
    "batch8": replace(DEFAULT, batch=8),
}
VARIANTS = ("none", "em", "tta")
FOLD_CACHE = ax.CACHE.parent / "adapt_cv_folds"  # finished folds, outside the tree


def folds(y: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Fold index per cell, each class dealt round-robin after a shuffle (stratified)."""
    rng = np.random.default_rng(seed)
    f = np.empty(len(y), np.int64)
    offset = 0
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        f[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)
    return f


def tta(model, spec, x):
    return np.mean([ft.predict(model, spec, np.ascontiguousarray(v)) for v in d4_views(x)], 0)


def run_setting(name, cfg, x, y, fold, unl, pbc, spec) -> dict:
    import tf_keras

    oof = {v: np.zeros((len(y), len(LABELS)), np.float32) for v in VARIANTS}
    t0 = time.time()
    # Each fold's out-of-fold rows are kept outside the tree as they finish: a run stopped part-way
    # (a session ends) takes up again at the next fold. Keyed by the setting's config and the folds.
    # Keyed by what the fold's training and scoring read: the setting, the folds, the cells, the
    # unlabelled crops, the PBC cells and the base model.
    h = hashlib.sha256(json.dumps([cfg.to_json(), fold.tolist()], sort_keys=True).encode())
    for a in (x, y, unl["x"], pbc["train"], pbc["train_y"]):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(Path(ax.MODEL).read_bytes())
    key = h.hexdigest()[:12]
    for k in np.unique(fold):
        tr, te = fold != k, fold == k
        done = FOLD_CACHE / f"{name}_{key}_fold{k}.npz"
        if done.exists():
            z = np.load(done)
            for v in VARIANTS:
                oof[v][te] = z[v]
            print(
                f"{name}: fold {k}: {(z['none'].argmax(1) == y[te]).sum()}/{te.sum()} right (kept from {done})",
                flush=True,
            )
            continue
        tf_keras.utils.set_random_seed(cfg.seed + int(k))
        model = tf_keras.models.load_model(ax.MODEL, compile=False)
        ft.train(model, spec, x[tr], y[tr], pbc["train"], pbc["train_y"], replace(cfg, seed=cfg.seed + int(k)))
        p = ft.predict(model, spec, x[te])
        prior_train = ft.training_prior(y[tr], pbc["train_y"], len(LABELS), cfg)
        site_prior = ev.em_priors(ft.predict(model, spec, unl["x"]), prior_train)
        oof["none"][te] = p
        oof["em"][te] = ev.adjust(p, prior_train, site_prior)
        oof["tta"][te] = tta(model, spec, x[te])
        FOLD_CACHE.mkdir(parents=True, exist_ok=True)
        part = done.with_suffix(".part.npz")  # renamed when whole: a run killed mid-write leaves no fold
        np.savez(part, **{v: oof[v][te] for v in VARIANTS})
        os.replace(part, done)
        right = (p.argmax(1) == y[te]).sum()
        print(f"{name}: fold {k}: {right}/{te.sum()} right ({time.time() - t0:.0f}s)", flush=True)
        tf_keras.backend.clear_session()
    return {"probs": {v: oof[v].round(5).tolist() for v in VARIANTS}, "seconds": round(time.time() - t0, 1)}


def natural_weights(y_session: np.ndarray) -> np.ndarray:
    w = np.bincount(y_session, minlength=len(LABELS)).astype(float)
    return w / w.sum()


def summarise(y, pred, session, weights, seed: int = 0, n_boot: int = 2000) -> dict:
    """session accuracy (Wilson), natural-proportion accuracy and balanced accuracy (bootstrap)."""
    classes = [c for c in np.unique(y) if (y == c).sum() >= 5]

    def recalls(yy, pp):
        return {c: float((pp[yy == c] == c).mean()) for c in classes}

    def natural(r):
        w = np.array([weights[c] for c in classes])
        return float(sum(weights[c] * r[c] for c in classes) / w.sum())

    r = recalls(y, pred)
    rng = np.random.default_rng(seed)
    nat, bal = [], []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(np.flatnonzero(y == c), (y == c).sum()) for c in np.unique(y)])
        rb = recalls(y[idx], pred[idx])
        nat.append(natural(rb))
        bal.append(float(np.mean(list(rb.values()))))
    s_right = int((pred[session] == y[session]).sum())
    s_n = int(session.sum())
    return {
        "session": {"right": s_right, "n": s_n, "accuracy": s_right / s_n, "ci": list(ev.wilson(s_right, s_n))},
        "natural": {"accuracy": natural(r), "ci": [float(np.percentile(nat, 2.5)), float(np.percentile(nat, 97.5))]},
        "balanced": {
            "accuracy": float(np.mean(list(r.values()))),
            "ci": [float(np.percentile(bal, 2.5)), float(np.percentile(bal, 97.5))],
        },
        "recall": {
            LABELS[c]: {"right": int((pred[y == c] == c).sum()), "n": int((y == c).sum())} for c in np.unique(y)
        },
        "all": {"right": int((pred == y).sum()), "n": int(len(y))},
    }


def table(results: dict) -> str:
    rows = [
        "| setting | variant | bccd_session (60, natural) | all 101, natural-weighted | balanced | eosinophil | "
        "neutrophil | lymphocyte | monocyte |",
        "|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        if name.startswith("_"):
            continue
        for v, s in r["summary"].items():
            rec = s["recall"]
            rows.append(
                f"| `{name}` | {v} | {s['session']['accuracy']:.1%} [{s['session']['ci'][0]:.0%}, "
                f"{s['session']['ci'][1]:.0%}] | {s['natural']['accuracy']:.1%} [{s['natural']['ci'][0]:.0%}, "
                f"{s['natural']['ci'][1]:.0%}] | {s['balanced']['accuracy']:.1%} [{s['balanced']['ci'][0]:.0%}, "
                f"{s['balanced']['ci'][1]:.0%}] | "
                + " | ".join(
                    f"{rec[c]['right']}/{rec[c]['n']}" for c in ("eosinophil", "neutrophil", "lymphocyte", "monocyte")
                )
                + " |"
            )
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--settings", nargs="*", default=["default"], choices=list(SETTINGS))
    ap.add_argument("--folds", type=int, default=5)
    # Another training seed over the same folds (the folds stay seed 0, so settings and seeds are
    # paired cell by cell): stored as NAME_seedS. Fold k trains with seed 1000 x S + k.
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ax.REPO / "benchmarks" / "results" / "adapt_cv.json"))
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    if args.table:
        print(table(results))
        return 0
    spec = InputSpec.named(160)
    _, site, ses, unl, pbc = ax.inputs(spec)
    x = np.concatenate([site["x"], ses["x"]])
    y = np.concatenate([site["y"], ses["y"]])
    session = np.r_[np.zeros(len(site["y"]), bool), np.ones(len(ses["y"]), bool)]
    fold = folds(y, args.folds)
    weights = natural_weights(ses["y"])
    results["_about"] = {
        "what": __doc__.split("\n\n", 2)[2].strip(),
        "cells": {LABELS[c]: int((y == c).sum()) for c in np.unique(y)},
        "folds": args.folds,
        "natural_weights": {LABELS[c]: round(float(w), 4) for c, w in enumerate(weights) if w},
    }
    for setting in args.settings:
        cfg = replace(SETTINGS[setting], seed=1000 * args.seed) if args.seed else SETTINGS[setting]
        name = f"{setting}_seed{args.seed}" if args.seed else setting
        r = run_setting(name, cfg, x, y, fold, unl, pbc, spec)
        r["config"] = cfg.to_json()
        r["summary"] = {v: summarise(y, np.asarray(r["probs"][v]).argmax(1), session, weights) for v in VARIANTS}
        r["command"] = f".venv/bin/python scripts/adapt_cv.py --settings {setting} --folds {args.folds}" + (
            f" --seed {args.seed}" if args.seed else ""
        )
        results[name] = r
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
        print(table({name: r}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

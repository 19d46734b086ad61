"""What each ingredient of `edge-bloodcls adapt` adds, measured by k-fold on bccd_site.

    .venv/bin/python scripts/adapt_experiments.py [--only NAME ...] [--out benchmarks/results/adapt_experiments.json]

Every experiment adapts runs/mobilenetv2_160_ft/model.keras to the 41 labelled bccd_site crops
(5 white-cell classes) with train/adapt_core.py, seed 0, and reports 5-fold accuracy on the
held-out cells. Held-out cells are scored as capture would crop them: each bccd_site crop is
found in its own BCCD field (template matching; the file name names the field) and cut with
edge_runtime.locate.crop, so the test crops carry the real neighbourhood (red cells, background),
not padding. Training crops are the tight bccd_site files, padded to capture's framing unless the
experiment says otherwise (that is what `adapt --framing tight` does). Unlabelled local crops
(for AdaBN) are the white cells `locate` finds in the 364 BCCD fields. PBC mix: a stratified
sample of PBC training cells; PBC test accuracy on a stratified 400 of the test split.
Results are merged by name into the JSON, with the command line and the time each took.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from edge_bloodcls.tfenv import configure  # noqa: E402

configure()

import numpy as np  # noqa: E402

from edge_bloodcls.convert import calibrate  # noqa: E402
from edge_bloodcls.edge_runtime.locate import Detection, crop, default_rbc_px  # noqa: E402
from edge_bloodcls.edge_runtime.preprocess import load_rgb  # noqa: E402
from edge_bloodcls.edge_runtime.spec import LABELS, InputSpec  # noqa: E402
from edge_bloodcls.train import adapt_core as core  # noqa: E402
from edge_bloodcls.train.adapt_data import load_labelled, load_unlabelled, paste, reframe_tight  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CACHE = Path(os.path.expanduser("~/.cache/edge-bloodcls/adapt"))
MODEL = REPO / "runs" / "mobilenetv2_160_ft" / "model.keras"
WHITE = [LABELS.index(c) for c in ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")]
# The first configuration measured (padded tight crops, AdaBN on local crops, no self-training);
# each experiment below changes it. The shipped defaults (core.AdaptConfig()) are "pasted_self_train".
BASE = replace(core.AdaptConfig(), paste=False, pseudo=0.0, bn_pbc=0.0)

# name -> (config, training framing). Each changes one thing from "default" unless it says.
EXPERIMENTS = {
    "default": (BASE, "padded"),
    "with_colour_jitter": (replace(BASE, colour=1.0), "padded"),
    "with_colour_jitter_no_adabn": (replace(BASE, colour=1.0, adabn=False), "padded"),
    "no_adabn": (replace(BASE, adabn=False), "padded"),
    "no_scale_blur": (replace(BASE, scale=0.0, blur=0.0), "padded"),
    "no_pbc_mix": (replace(BASE, local_share=1.0), "padded"),
    "no_class_balance": (replace(BASE, balance=False), "padded"),
    "framing_tight": (BASE, "tight"),
    "framing_context": (BASE, "context"),
    "cut_block_5": (replace(BASE, cut="block_5_add"), "padded"),
    "head_only": (replace(BASE, cut="out_relu"), "padded"),
    "steps_300": (replace(BASE, steps=300), "padded"),
    "bn_mix_50": (replace(BASE, bn_pbc=0.5), "padded"),
    "pasted": (replace(BASE, paste=True), "padded"),
    "pasted_self_train": (replace(BASE, paste=True, pseudo=0.9), "padded"),
    "pasted_bn_mix_50": (replace(BASE, paste=True, bn_pbc=0.5), "padded"),
    "pasted_self_train_bn_mix_25": (replace(BASE, paste=True, pseudo=0.9, bn_pbc=0.25), "padded"),
    "pasted_self_train_bn_mix_50": (replace(BASE, paste=True, pseudo=0.9, bn_pbc=0.5), "padded"),
    "pasted_self_train_150": (replace(BASE, paste=True, pseudo=0.9, pseudo_steps=150), "padded"),
    # Same as pasted_self_train with another seed (folds, augmentation, PBC sample): the noise.
    "pasted_self_train_seed1": (replace(BASE, paste=True, pseudo=0.9, seed=1), "padded"),
}


def context_crops(cells) -> list[np.ndarray]:
    """Each labelled crop cut again from its own field as capture would cut it."""
    import cv2

    out = []
    for name, img in zip(cells.names, cells.images):
        field = load_rgb(DATA / "bccd" / "JPEGImages" / (Path(name).stem.rsplit("_", 1)[0] + ".jpg"))
        score = cv2.matchTemplate(field, img, cv2.TM_CCOEFF_NORMED)
        _, best, _, (x, y) = cv2.minMaxLoc(score)
        assert best > 0.95, (name, best)
        box = (x, y, x + img.shape[1], y + img.shape[0])
        out.append(crop(field, Detection(box, box, 0.0, 0.0), default_rbc_px(field.shape)))
    return out


def cached(name, make):
    f = CACHE / f"{name}.npz"
    if f.exists():
        z = np.load(f)
        return {k: z[k] for k in z.files}
    d = make()
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(f, **d)
    return d


def inputs(spec):
    size = spec.size
    cells = load_labelled(DATA / "bccd_site", list(LABELS), log=lambda m: None)
    rbc = default_rbc_px((480, 640))

    def local():
        return {"tight": core.to_model_size(cells.images, size),
                "padded": core.to_model_size([reframe_tight(i, rbc) for i in cells.images], size),
                "context": core.to_model_size(context_crops(cells), size), "y": cells.labels}

    def unlabelled():
        u = load_unlabelled(DATA / "bccd" / "JPEGImages", log=lambda m: None)
        return {"x": core.to_model_size(u.crops, size), "bg": np.stack([b for b, _ in u.backgrounds]),
                "bg_side": np.array([s for _, s in u.backgrounds])}

    def pbc():
        tr = calibrate.sample(calibrate.from_split(REPO / "runs" / "split.csv", "train", DATA / "pbc256"), 1200, 0)
        te = calibrate.sample(calibrate.from_split(REPO / "runs" / "split.csv", "test", DATA / "pbc256"), 400, 0)
        return {"train": core.to_model_size([load_rgb(p) for p in tr.paths], size), "train_y": tr.labels,
                "test": core.to_model_size([load_rgb(p) for p in te.paths], size), "test_y": te.labels}

    loc = cached("local", local)
    loc["tight_full"], loc["rbc"] = cells.images, rbc
    return loc, cached("unlabelled_bg", unlabelled), cached("pbc", pbc)


def run(name, cfg, framing, loc, unl, pbc, spec, k=5):
    import tf_keras

    t0 = time.time()
    tf_keras.utils.set_random_seed(cfg.seed)
    model = tf_keras.models.load_model(MODEL, compile=False)
    trunk, top = core.split(model, cfg.cut)
    rng = np.random.default_rng(cfg.seed)
    if cfg.adabn:
        core.adabn(trunk, core.bn_set(unl["x"], pbc["train"], cfg.bn_pbc, rng), spec)
    y = loc["y"]
    if cfg.paste:
        bgs = list(zip(unl["bg"], unl["bg_side"]))
        var = np.stack([core.to_model_size([paste(im, loc["rbc"], bgs, rng) for _ in range(cfg.copies)], spec.size)
                        for im in loc["tight_full"]])
        train_px = core.augment_variants(var, rng, cfg)
    else:
        train_px = core.augmented(loc[framing], cfg.copies, rng, cfg)
    group = np.repeat(np.arange(len(y)), cfg.copies)
    fx = core.trunk_outputs(trunk, train_px, spec)
    ex = core.trunk_outputs(trunk, loc["context"], spec)
    n_pbc = cfg.pbc_cells if cfg.local_share < 1 else 0
    sel = calibrate.stratified(pbc["train_y"], n_pbc, cfg.seed) if n_pbc else np.zeros(0, int)
    pbc_px = core.augmented(pbc["train"][sel], 1, rng, cfg) if n_pbc else pbc["train"][:0]
    px = core.trunk_outputs(trunk, pbc_px, spec)
    py = pbc["train_y"][sel]
    ux = core.trunk_outputs(trunk, unl["x"], spec) if cfg.pseudo else fx[:0]
    t_feat = time.time() - t0
    joined = []
    init = top.get_weights()
    fold = core.folds(y, k, cfg.seed)
    pred = np.empty(len(y), np.int64)
    t1 = time.time()
    for f in range(k):
        top.set_weights(init)
        keep = np.isin(group, np.flatnonzero(fold != f))
        core.train_top(top, fx[keep], np.repeat(y, cfg.copies)[keep], px, py, cfg)
        joined.append(int((core.self_train(top, fx[keep], np.repeat(y, cfg.copies)[keep], ux, px, py, cfg) >= 0).sum()))
        pred[fold == f] = core.predict_top(top, ex[fold == f]).argmax(1)
    t_kfold = time.time() - t1
    top.set_weights(init)
    core.train_top(top, fx, np.repeat(y, cfg.copies), px, py, cfg)
    joined.append(int((core.self_train(top, fx, np.repeat(y, cfg.copies), ux, px, py, cfg) >= 0).sum()))
    test_p = core.predict_top(top, core.trunk_outputs(trunk, pbc["test"], spec)).argmax(1)
    per_class = {LABELS[c]: f"{int((pred[y == c] == c).sum())}/{int((y == c).sum())}" for c in WHITE}
    confusion = {LABELS[c]: {LABELS[p]: int(((y == c) & (pred == p)).sum()) for p in np.unique(pred[y == c])}
                 for c in WHITE}
    res = {"config": cfg.to_json(), "train_framing": framing, "kfold": k,
           "kfold_accuracy": float((pred == y).mean()), "per_class": per_class, "confusion": confusion,
           "pbc_test_accuracy_400": float((test_p == pbc["test_y"]).mean()),
           **({"pseudo_labelled_per_fold_and_final": joined} if cfg.pseudo else {}),
           "seconds": {"features": round(t_feat, 1), "kfold": round(t_kfold, 1), "total": round(time.time() - t0, 1)}}
    print(f"{name:<20} k-fold {res['kfold_accuracy']:.3f}  PBC test {res['pbc_test_accuracy_400']:.3f}  "
          f"{per_class}  {res['seconds']}", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "adapt_experiments.json"))
    args = ap.parse_args()
    spec = InputSpec.named(160)
    loc, unl, pbc = inputs(spec)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results.setdefault("_about", {
        "what": "5-fold (stratified) accuracy of adapt on bccd_site (41 cells, 5 white-cell classes), held-out cells "
                "cropped from their fields as capture crops them; PBC test accuracy on a stratified 400 of runs/split.csv "
                "test; base runs/mobilenetv2_160_ft/model.keras; seed 0; one change from 'default' per experiment",
        "zero_shot": {}, "unlabelled_crops": int(len(unl["x"]))})
    for name, (cfg, framing) in EXPERIMENTS.items():
        if args.only and name not in args.only:
            continue
        r = run(name, cfg, framing, loc, unl, pbc, spec)
        r["command"] = " ".join([".venv/bin/python", "scripts/adapt_experiments.py", "--only", name])
        results[name] = r
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

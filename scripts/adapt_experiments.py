"""What each ingredient of `edge-bloodcls adapt` adds, on natural-proportion validation cells.

    .venv/bin/python scripts/adapt_experiments.py --only NAME [NAME ...] \
        [--out benchmarks/results/adapt_validation.json]

Protocol (issue 29), so that no figure is tuned on the cells it reports:
- Training: the 41 labelled bccd_site cells (class-balanced sample) only, as capture frames them
  (each crop found in its own BCCD field and cut by capture's locate + crop, adapt/evaluate.py),
  mixed 1:1 with PBC training cells, base runs/mobilenetv2_160_ft/model.keras.
- Validation: the 60 bccd_session cells (BCCD's natural proportions), also as capture sees them in
  their own fields. They are split once, stratified by class (seed 0), into part A (30, where
  settings are chosen) and part B (30, reported, never used to choose); the full 60 are listed too.
- Unlabelled site crops (self-training, the EM estimate of the site's class proportions): the white
  cells capture's locate finds in the BCCD fields, without the fields of the validation cells.
- Home: float accuracy on the whole PBC test split of runs/split.csv (1538 cells).
- Intervals: Wilson 95% for accuracy, stratified bootstrap 95% for balanced accuracy (mean recall
  over the classes with >= 5 cells: eosinophil, lymphocyte, neutrophil on the full 60).
Each experiment is one training run (seed 0 unless named); every checkpoint is scored with and
without the EM class-prior correction. Results are merged by name into the JSON as each finishes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from edge_bloodcls.tfenv import configure  # noqa: E402

configure()

import numpy as np  # noqa: E402

from edge_bloodcls.adapt import evaluate as ev  # noqa: E402
from edge_bloodcls.adapt import finetune as ft  # noqa: E402
from edge_bloodcls.adapt.core import lab_stats, to_model_size  # noqa: E402
from edge_bloodcls.adapt.data import load_labelled, load_unlabelled, paste  # noqa: E402
from edge_bloodcls.convert import calibrate  # noqa: E402
from edge_bloodcls.edge_runtime.core.preprocess import load_rgb  # noqa: E402
from edge_bloodcls.edge_runtime.core.spec import LABELS, InputSpec  # noqa: E402
from edge_bloodcls.train.teacher import d4_views  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
FIELDS = DATA / "bccd" / "JPEGImages"
CACHE = Path(os.path.expanduser("~/.cache/edge-bloodcls/adapt_v2"))
MODEL = REPO / "runs" / "mobilenetv2_160_ft" / "model.keras"
PLAIN = ft.FinetuneConfig()  # full fine-tune, Adam 1e-4, 1:1 PBC, flips/rotation/zoom/blur/colour
WISE = (0.3, 0.5, 0.7, 0.8)  # weight-space mixes (1 - a) * base + a * fine-tuned scored beside a = 1

# name -> (config, training framing, checkpoints). One change from "plain" each, unless it says.
EXPERIMENTS = {
    "plain": (PLAIN, "capture", (200, 400, 600)),
    "no_colour": (replace(PLAIN, colour=0.0), "capture", (400,)),
    "distill": (replace(PLAIN, distill=1.0), "capture", (400,)),
    "bn_frozen": (replace(PLAIN, bn="frozen"), "capture", (400,)),
    "self_train": (replace(PLAIN, pseudo=0.9, pseudo_steps=200), "capture", (400,)),
    "pasted": (PLAIN, "pasted", (400,)),
    "plain_seed1": (replace(PLAIN, seed=1), "capture", (400,)),
    # Second round (after the first one's eosinophil failure): WiSE-FT mixes at the marked
    # checkpoints, longer schedules, colour augmentation that keeps the hue, balanced self-training.
    "long": (PLAIN, "capture", (600, 900, 1200), {600: WISE, 1200: WISE}),
    "colour_light": (replace(PLAIN, colour_mode="light"), "capture", (600,), {600: WISE}),
    "colour_hed": (replace(PLAIN, colour_mode="hed"), "capture", (600,), {600: WISE}),
    "self_train_bal": (
        replace(PLAIN, pseudo=0.9, pseudo_per_class=30, pseudo_steps=200),
        "capture",
        (600,),
        {600: WISE},
    ),
    # Keeping home: HED stain augmentation (kept PBC best in the second round) with distillation,
    # and with an L2-SP pull towards the base weights too.
    "hed_distill": (replace(PLAIN, colour_mode="hed", distill=1.0), "capture", (600,)),
    "hed_distill_anchor": (replace(PLAIN, colour_mode="hed", distill=1.0, anchor=0.1), "capture", (600,)),
    # The anchor kept the kernels 4x closer to the base and PBC no better: more PBC rehearsal instead
    # (a quarter of each batch from the site).
    "hed_pbc75": (replace(PLAIN, colour_mode="hed", local_share=0.25), "capture", (600,)),
    # A second seed of the chosen setting and of plain at 600 steps: how far one run is from another.
    "hed_seed1": (replace(PLAIN, colour_mode="hed", seed=1), "capture", (600,)),
    "plain_600_seed1": (replace(PLAIN, seed=1), "capture", (600,)),
    # Third round, once home is routed (the base network answers PBC cells): three quarters of each
    # batch from the site, the lead of the cross-validation (scripts/adapt_cv.py, `site75`), on the
    # 41-cell protocol; two seeds.
    "hed_site75": (replace(PLAIN, colour_mode="hed", local_share=0.75), "capture", (600,)),
    "hed_site75_seed1": (replace(PLAIN, colour_mode="hed", local_share=0.75, seed=1), "capture", (600,)),
    # Half the PBC cells of each batch given a site crop's look (colour transfer in CIELAB,
    # Reinhard et al. 2001), so that PBC's thousands of labelled eosinophils and neutrophils are
    # seen as the site's microscope shows them.
    "hed_transfer": (replace(PLAIN, colour_mode="hed", transfer=0.5), "capture", (600,)),
    # Fourth round: the weights averaged along the last part of the run (SWA, Izmailov et al. 2018;
    # SWAD, Cha et al. 2021, for domain generalisation) against the same run's last step, so the
    # comparison is paired: checkpoint "600" is the last step, "600 avg 1/2" and "600 avg 1/3" the
    # means of the snapshots (every 10 steps) of the last 300 and 200 steps. Two seeds.
    "hed_avg": (replace(PLAIN, colour_mode="hed", average=0.5), "capture", (600,)),
    "hed_avg_seed1": (replace(PLAIN, colour_mode="hed", average=0.5, seed=1), "capture", (600,)),
    # Sixth round: the stem (backbone layers finer than 1/8 of the input) kept as the base trained
    # it, so no gradient runs through the high-resolution layers (2.3x faster a step here), against
    # the default (hed_avg's checkpoint "600", the same seeds).
    "hed_freeze8": (replace(PLAIN, colour_mode="hed", freeze=8), "capture", (600,)),
    "hed_freeze8_seed1": (replace(PLAIN, colour_mode="hed", freeze=8, seed=1), "capture", (600,)),
    # Seventh round: batches of 16 instead of 32 (the same shares, steps and learning rate), 2.1x
    # faster a step here, against the default (hed_avg's checkpoint "600", the same seeds).
    "hed_batch16": (replace(PLAIN, colour_mode="hed", batch=16), "capture", (600,)),
    "hed_batch16_seed1": (replace(PLAIN, colour_mode="hed", batch=16, seed=1), "capture", (600,)),
    # Eighth round: batches of 8 (the same shares, steps and learning rate), against the default
    # since the seventh round (hed_batch16 and hed_batch16_seed1, the same seeds).
    "hed_batch8": (replace(PLAIN, colour_mode="hed", batch=8), "capture", (600,)),
    "hed_batch8_seed1": (replace(PLAIN, colour_mode="hed", batch=8, seed=1), "capture", (600,)),
}


class _TwoAverages:
    """The snapshots of cfg.average = 1/2 of the steps into one mean, the last 2/3 of them (the
    run's last third) into a second: two averaging windows from one run."""

    def __init__(self, snapshots: int) -> None:
        self.half, self.third, self.seen, self.skip = ft.WeightAverage(), ft.WeightAverage(), 0, snapshots // 3

    def add(self, weights) -> None:
        self.seen += 1
        self.half.add(weights)
        if self.seen > self.skip:
            self.third.add(weights)


def cached(name, make):
    f = CACHE / f"{name}.npz"
    if f.exists():
        z = np.load(f)
        return {k: z[k] for k in z.files}
    d = make()
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(f, **d)
    return d


def split_parts(y: np.ndarray, seed: int = 0) -> np.ndarray:
    """0 (A: choose) or 1 (B: report) per cell, each class dealt alternately after a shuffle."""
    rng = np.random.default_rng(seed)
    part = np.empty(len(y), np.int64)
    offset = 0
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        part[idx] = (np.arange(len(idx)) + offset) % 2
        offset += len(idx)
    return part


def inputs(spec):
    size = spec.size
    labels = list(LABELS)

    def views(folder):
        cells = load_labelled(folder, labels, log=lambda m: None)
        v = ev.capture_views(cells.images, cells.names, FIELDS)
        assert all(x.crop is not None for x in v), [x.why for x in v if x.crop is None]
        return cells, {
            "x": to_model_size([x.crop for x in v], size),
            "y": cells.labels,
            "fields": np.array([x.field for x in v]),
        }

    site_cells, _ = views(DATA / "bccd_site")

    def site():
        return views(DATA / "bccd_site")[1]

    def session():
        d = views(DATA / "bccd_session")[1]
        d["part"] = split_parts(d["y"])
        return d

    ses = cached("session", session)

    def unlabelled():
        # The BCCD fields without the validation cells' fields: self-training and the prior
        # estimate never see the cells they are scored on.
        keep = set(ses["fields"].tolist())
        with tempfile.TemporaryDirectory() as tmp:
            for p in sorted(FIELDS.glob("*.jpg")):
                if p.stem not in keep:
                    os.symlink(p, Path(tmp) / p.name)
            u = load_unlabelled(tmp, log=lambda m: None)
        return {
            "x": to_model_size(u.crops, size),
            "bg": np.stack([b for b, _ in u.backgrounds]),
            "bg_side": np.array([s for _, s in u.backgrounds]),
            "rbc": np.array(u.rbc_px),
        }

    def pbc():
        tr = calibrate.sample(calibrate.from_split(REPO / "runs" / "split.csv", "train", DATA / "pbc256"), 1600, 0)
        te = calibrate.from_split(REPO / "runs" / "split.csv", "test", DATA / "pbc256")
        return {
            "train": to_model_size([load_rgb(p) for p in tr.paths], size),
            "train_y": tr.labels,
            "test": to_model_size([load_rgb(p) for p in te.paths], size),
            "test_y": te.labels,
        }

    return site_cells, cached("site", site), ses, cached("unlabelled", unlabelled), cached("pbc", pbc)


def score(model, spec, ses, unl, pbc, prior_train, em: bool = True) -> dict:
    """em=False (the WiSE mixes): no EM prior variant, so no pass over the unlabelled crops."""
    p = ft.predict(model, spec, ses["x"])
    y = ses["y"]
    pt = ft.predict(model, spec, pbc["test"])
    out = {"pbc_test_accuracy": float((pt.argmax(1) == pbc["test_y"]).mean()), "pbc_test_n": int(len(pbc["test_y"]))}
    variants = [("none", p)]
    # Per-cell probabilities, in the order of the validation cells: what a combination of this
    # network with the cell-feature head (scripts/adapt_cellhead.py) is scored from.
    out["proba_none"] = np.round(p, 4).tolist()
    if em:  # test-time augmentation, the 8 flips and quarter turns averaged: 8x the runtime per cell
        views = d4_views(ses["x"])
        variants.append(("tta", np.mean([ft.predict(model, spec, np.ascontiguousarray(v)) for v in views], 0)))
        site_prior = ev.em_priors(ft.predict(model, spec, unl["x"]), prior_train)
        out["pbc_test_accuracy_em"] = float((ev.adjust(pt, prior_train, site_prior).argmax(1) == pbc["test_y"]).mean())
        out["em_site_prior"] = {LABELS[c]: round(float(v), 4) for c, v in enumerate(site_prior)}
        variants.insert(1, ("em", ev.adjust(p, prior_train, site_prior)))
    for variant, q in variants:
        pred = q.argmax(1)
        out[f"confusion_{variant}"] = {
            LABELS[c]: {LABELS[k]: int(((y == c) & (pred == k)).sum()) for k in np.unique(pred[y == c])}
            for c in np.unique(y)
        }
        out[variant] = {
            part: ev.estimate(y[m], pred[m], LABELS, min_cells=2 if part != "all" else 5).to_json()
            for part, m in (("A", ses["part"] == 0), ("B", ses["part"] == 1), ("all", np.ones(len(y), bool)))
        }
    return out


def run(name, cfg, framing, checkpoints, site_cells, site, ses, unl, pbc, spec, wise_at=None) -> dict:
    import tf_keras

    t0 = time.time()
    tf_keras.utils.set_random_seed(cfg.seed)
    model = tf_keras.models.load_model(MODEL, compile=False)
    base_weights = model.get_weights()
    wise_at = wise_at or {}
    rng = np.random.default_rng(cfg.seed)
    if framing == "pasted":  # tight crops pasted into other cells' neighbourhoods (no own field)
        bgs = list(zip(unl["bg"], unl["bg_side"]))
        local = to_model_size([paste(i, float(unl["rbc"]), bgs, rng) for i in site_cells.images], spec.size)
    else:
        local = site["x"]
    y = site["y"]
    soft = ft.predict(model, spec, pbc["train"]) if cfg.distill else None
    # The site's looks: its labelled crops and the unlabelled ones (never the validation fields).
    looks = lab_stats(np.concatenate([local, unl["x"]])) if cfg.transfer else None
    prior_train = ft.training_prior(y, pbc["train_y"], len(LABELS), cfg)
    res = {"config": cfg.to_json(), "framing": framing, "checkpoints": {}}
    done = 0
    last = [time.time()]

    def progress(s, total, loss):
        if s % 50 == 0:
            print(f"  {name}: step {s}/{total} loss {loss:.3f} ({time.time() - last[0]:.0f}s)", flush=True)
            last[0] = time.time()

    for c in checkpoints:
        wise_alphas = wise_at.get(c, ())
        averages = _TwoAverages(int(round(cfg.average * (c - done))) // cfg.average_every) if cfg.average else None
        ft.train(
            model,
            spec,
            local,
            y,
            pbc["train"],
            pbc["train_y"],
            cfg,
            soft,
            progress,
            steps=c - done,
            seed_offset=done,
            base_weights=base_weights,
            site_looks=looks,
            averager=averages,  # a _TwoAverages: train() only calls its add()
        )
        done = c
        if cfg.pseudo:
            lab = ft.self_train(
                model, spec, local, y, unl["x"], pbc["train"], pbc["train_y"], cfg, soft, progress, base_weights
            )
            res["pseudo_labelled"] = {LABELS[k]: int((lab == k).sum()) for k in np.unique(lab[lab >= 0])}
            c = f"{c}+{cfg.pseudo_steps}"
        res["checkpoints"][str(c)] = r = score(model, spec, ses, unl, pbc, prior_train)
        r["seconds"] = round(time.time() - t0, 1)
        # How far the weights moved from the base (sum of squares over the kernels, L2-SP's measure).
        r["kernel_drift"] = float(
            sum(((w.numpy() - base_weights[i]) ** 2).sum() for i, w in enumerate(model.weights) if "kernel" in w.name)
        )
        _print(name, c, r)
        for a in wise_alphas:
            tuned = ft.wise(model, base_weights, a)
            res["checkpoints"][f"{c} wise {a:g}"] = r = score(model, spec, ses, unl, pbc, prior_train, em=False)
            model.set_weights(tuned)
            r["seconds"] = round(time.time() - t0, 1)
            _print(name, f"{c} wise {a:g}", r)
        if averages is not None:
            end_weights = model.get_weights()
            for label, avg in (("1/2", averages.half), ("1/3", averages.third)):
                model.set_weights(avg.weights(end_weights))
                res["checkpoints"][f"{c} avg {label}"] = r = score(model, spec, ses, unl, pbc, prior_train)
                r["snapshots"] = avg.n
                r["seconds"] = round(time.time() - t0, 1)
                _print(name, f"{c} avg {label}", r)
            model.set_weights(end_weights)
    res["seconds"] = round(time.time() - t0, 1)
    return res


def _print(name, c, r) -> None:
    for v in ("none", "em", "tta"):
        if v in r:
            print(f"{name} @{c} [{v}] A: {ev.Estimate(**_est(r[v]['A'])).line()}", flush=True)
            print(f"{name} @{c} [{v}] B: {ev.Estimate(**_est(r[v]['B'])).line()}", flush=True)
    em = f" (em {r['pbc_test_accuracy_em']:.4f}); site prior (EM) {r['em_site_prior']}" if "em" in r else ""
    print(f"{name} @{c}: PBC test {r['pbc_test_accuracy']:.4f}{em} [{r['seconds']:.0f}s]", flush=True)


def _est(d: dict) -> dict:
    return {**d, "accuracy_ci": tuple(d["accuracy_ci"]), "balanced_ci": tuple(d["balanced_ci"])}


def _cell(e: dict) -> str:
    a, b = e["accuracy_ci"], e["balanced_ci"]
    return f"{e['accuracy']:.1%} [{a[0]:.0%}, {a[1]:.0%}] / {e['balanced_accuracy']:.1%} [{b[0]:.0%}, {b[1]:.0%}]"


def table(results: dict, variants=("none", "em", "tta"), only=None) -> str:
    """The markdown table of docs/adapt.md, from the JSON: every experiment (or those in `only`) and
    checkpoint, as trained (none), with the EM prior (em) and with test-time augmentation (tta), on
    part A (choose), part B (report) and all 60."""
    rows = [
        "| experiment @ steps | variant | A (choose): acc / balanced | B (report): acc / balanced | "
        "all 60: acc / balanced | PBC test |",
        "|---|---|---|---|---|---:|",
    ]
    for name, r in results.items():
        if name.startswith("_") or (only and name not in only):
            continue
        for c, v in r["checkpoints"].items():
            for variant in variants:
                if variant not in v:  # WiSE mixes are scored without the EM prior or TTA
                    continue
                pbc = {"none": v["pbc_test_accuracy"], "em": v.get("pbc_test_accuracy_em")}.get(variant)
                rows.append(
                    f"| `{name}` @{c} | {variant} | {_cell(v[variant]['A'])} | {_cell(v[variant]['B'])} | "
                    f"{_cell(v[variant]['all'])} | {'-' if pbc is None else f'{pbc:.1%}'} |"
                )
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "adapt_validation.json"))
    ap.add_argument("--table", action="store_true", help="print docs/adapt.md's table from --out and stop")
    ap.add_argument("--variants", nargs="*", default=["none", "em", "tta"], help="with --table: which rows")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(Path(args.out).read_text()), args.variants, args.only))
        return 0
    spec = InputSpec.named(160)
    site_cells, site, ses, unl, pbc = inputs(spec)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results["_about"] = {
        "what": __doc__.split("\n\n", 2)[2].strip(),
        "validation": {
            "A": int((ses["part"] == 0).sum()),
            "B": int((ses["part"] == 1).sum()),
            "counts": {LABELS[c]: int((ses["y"] == c).sum()) for c in np.unique(ses["y"])},
        },
        "unlabelled_crops": int(len(unl["x"])),
        "training_cells": int(len(site["y"])),
    }
    for name, (cfg, framing, cps, *wise_at) in EXPERIMENTS.items():
        if args.only and name not in args.only:
            continue
        r = run(name, cfg, framing, cps, site_cells, site, ses, unl, pbc, spec, *wise_at)
        r["command"] = " ".join([".venv/bin/python", "scripts/adapt_experiments.py", "--only", name])
        results[name] = r
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

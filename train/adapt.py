"""`edge-bloodcls adapt`: the shipped model, fine-tuned to a new microscope from a few labelled
local cells (and unlabelled local fields), exported as one int8 bundle with a `site` section.

    labelled cells ─frame─▶ augmented copies ─frozen trunk (AdaBN on local crops)─▶ cached tensors
        ─▶ k-fold (the honest estimate) ─▶ final top trained on all ─▶ model.keras (scratch)
        ─▶ convert (int8 per-tensor, calibration + trust statistics on PBC + local cells, gate)
        ─▶ checks through the runtime ─▶ OUTDIR/NAME.tflite + NAME.trust.npz + NAME.json

Nothing lands in OUTDIR until the bundle is complete: convert writes into a hidden staging folder
inside OUTDIR, and the final files are moved in with the manifest last (bundle.write_bundle), so
a killed adapt leaves at most a `.adapt-*` folder, which the next run removes.
"""
from __future__ import annotations

import csv
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import click
import numpy as np

from edge_bloodcls.edge_runtime.bundle import BundleError, load_bundle, sha256_file, write_bundle
from edge_bloodcls.edge_runtime.images import printable
from .adapt_data import (DEFAULT_BASE, AdaptInputError, framing_of, load_labelled, load_unlabelled, paste, pbc_split,
                         reframe_tight, resolve_base)

STAGING_PREFIX = ".adapt-"


@dataclass
class AdaptOptions:
    labelled: str
    out: str
    unlabelled: str | None = None
    model: str | None = None
    name: str | None = None
    split: str | None = None  # PBC split CSV (default: the base model's, runs/split.csv)
    data_root: str | None = None
    framing: str = "auto"  # auto | capture | tight
    rbc_px: float | None = None
    folds: int = 5
    val_cells: int = 400  # PBC val cells for convert's gate, temperature and OOD threshold
    test_cells: int = 400  # PBC test cells for "what the home site loses" (0: the whole test split)
    trust_copies: int = 4  # copies of each local cell among the trust/calibration training cells
    # Accepted-cell accuracy the site's review threshold aims at. Not the shipped 99.5%: certifying
    # that at the 90% Wilson bound takes >= ~330 accepted validation cells all right, which ~440
    # validation cells of an ~85%-accurate site model never give (every cell would go to review).
    # On BCCD 95% is out of reach too: PBC val cells the adapted model is >= 99.5% sure of are
    # 95.6% right (159 cells; basophils called eosinophils), so the bound stays under 95%.
    review_target: float = 0.90
    core: dict = field(default_factory=dict)  # AdaptConfig overrides (steps, cut, ...)


def adapt(opts: AdaptOptions, log=print) -> dict:
    from edge_bloodcls.tfenv import configure

    configure()  # before TensorFlow is first imported (adapt may run without the CLI)
    from edge_bloodcls.convert import calibrate, export
    from . import adapt_core as core

    t0 = time.time()
    out = Path(opts.out)
    base = resolve_base(opts.model)
    try:
        src = export.load_source(base)
        core.backbone(src.model)
    except (export.ExportError, ValueError, OSError) as e:
        raise AdaptInputError(str(e)) from None
    cfg = replace(core.AdaptConfig(), **opts.core)
    spec, labels = src.spec, list(src.labels)
    log(f"base {base} ({src.arch}, input {list(spec.size)}, sha256 {src.sha256[:12]})")

    cells = load_labelled(opts.labelled, labels, log)
    framing = framing_of(opts.framing, opts.labelled, cells)
    unl = load_unlabelled(opts.unlabelled, opts.rbc_px, log=log) if opts.unlabelled else None
    counts = {labels[c]: int((cells.labels == c).sum()) for c in np.unique(cells.labels)}
    log(f"labelled: {len(cells.images)} cells ({', '.join(f'{k} {v}' for k, v in counts.items())}) from "
        f"{printable(cells.source)}; {len(cells.skipped)} skipped; framing {framing}")
    if unl:
        log(f"unlabelled: {len(unl.crops)} crops ({unl.fields} fields located, {unl.crop_files} crop files); "
            f"{len(unl.skipped)} skipped")
    rng = np.random.default_rng(cfg.seed)
    variants = None  # (cells, copies, H, W, 3) when tight crops are pasted into local neighbourhoods
    if framing == "tight":
        rbc = opts.rbc_px or (unl.rbc_px if unl else None)
        if not rbc:
            raise AdaptInputError("tight crops need a scale to be framed as capture frames them: pass --rbc-px "
                                  "(red-cell diameter in pixels) or --unlabelled fields from the same camera")
        if cfg.paste and unl and unl.backgrounds:
            variants = np.stack([core.to_model_size([paste(i, rbc, unl.backgrounds, rng) for _ in range(cfg.copies)],
                                                    spec.size) for i in cells.images])
            log(f"framing: tight crops pasted into {len(unl.backgrounds)} local neighbourhoods")
        images = [reframe_tight(i, rbc) for i in cells.images]
    else:
        images = cells.images
    local = variants[:, 0] if variants is not None else core.to_model_size(images, spec.size)
    y = cells.labels

    split_csv = pbc_split(opts.split, src)
    try:
        pbc_all = calibrate.from_split(split_csv, "train", opts.data_root)
        pbc_val = calibrate.sample(calibrate.from_split(split_csv, "val", opts.data_root), opts.val_cells, cfg.seed)
        pbc_test = calibrate.sample(calibrate.from_split(split_csv, "test", opts.data_root),
                                    opts.test_cells or None, cfg.seed)
    except (OSError, ValueError) as e:
        raise AdaptInputError(str(e)) from None
    pbc = calibrate.sample(pbc_all, cfg.pbc_cells, cfg.seed) if cfg.local_share < 1 else None
    from edge_bloodcls.edge_runtime.preprocess import ImageError, load_rgb
    try:
        pbc_px = core.to_model_size([load_rgb(p) for p in pbc.paths], spec.size) if pbc else local[:0]
    except ImageError as e:
        raise AdaptInputError(f"PBC mix: {e}") from None
    pbc_y = pbc.labels if pbc else np.zeros(0, np.int64)

    import tf_keras
    tf_keras.utils.set_random_seed(cfg.seed)
    model = src.model
    trunk, top = core.split(model, cfg.cut)
    unl_px = core.to_model_size(unl.crops if unl else [], spec.size)
    if cfg.adabn and len(unl_px):
        bn = core.bn_set(unl_px, pbc_px, cfg.bn_pbc, rng)
        n = core.adabn(trunk, bn, spec)
        log(f"AdaBN: {n} BatchNorm layers of the frozen trunk re-estimated on {len(unl.crops)} local crops"
            + (f" and {len(bn) - len(unl.crops)} PBC cells" if len(bn) > len(unl.crops) else ""))
    copies = core.augment_variants(variants, rng, cfg) if variants is not None else core.augmented(
        local, cfg.copies, rng, cfg)
    group = np.repeat(np.arange(len(y)), cfg.copies)
    fx = core.trunk_outputs(trunk, copies, spec)
    ex = core.trunk_outputs(trunk, local, spec)
    px = core.trunk_outputs(trunk, core.augmented(pbc_px, 1, rng, cfg), spec)
    log(f"trunk outputs: {len(copies)} local copies, {len(pbc_y)} PBC cells ({time.time() - t0:.0f}s)")

    init = top.get_weights()
    # Self-training reads the unlabelled crops' trunk outputs (capture's own crops of the site).
    ux = core.trunk_outputs(trunk, unl_px, spec) if cfg.pseudo else ex[:0]
    estimate, oof = _kfold(top, init, fx, y, group, ex, px, pbc_y, cfg, opts.folds, labels, log, ux)
    top.set_weights(init)
    core.train_top(top, fx, np.repeat(y, cfg.copies), px, pbc_y, cfg, _progress("final", cfg.steps, log))
    pseudo = core.self_train(top, fx, np.repeat(y, cfg.copies), ux, px, pbc_y, cfg)
    if len(ux):
        log(f"self-training: {int((pseudo >= 0).sum())} of {len(ux)} unlabelled crops pseudo-labelled at "
            f"confidence >= {cfg.pseudo}")
    test_px = core.to_model_size([load_rgb(p) for p in pbc_test.paths], spec.size)
    test_acc = float((core.predict_top(top, core.trunk_outputs(trunk, test_px, spec)).argmax(1)
                      == pbc_test.labels).mean())
    log(f"PBC test accuracy of the adapted model (float): {test_acc:.4f} on {len(pbc_test.labels)} cells "
        f"({time.time() - t0:.0f}s)")

    site = {"adapted_on": {"source": printable(cells.source), "framing": framing, "counts": counts,
                           "files": [{"name": printable(n), "label": labels[c], "sha256": h}
                                     for n, c, h in zip(cells.names, y, cells.sha256)],
                           "skipped": len(cells.skipped),
                           "unlabelled": ({"source": printable(opts.unlabelled), "crops": len(unl.crops),
                                           "fields": unl.fields} if unl else None)},
            "kfold": estimate, "pbc_test": {"accuracy_float": test_acc, "n": int(len(pbc_test.labels)),
                                            "split_sha256": pbc_test.split_sha256},
            "base_model": {"path": str(base), "sha256": src.sha256},
            "options": {**cfg.to_json(), "folds": opts.folds, "rbc_px": opts.rbc_px,
                        "trust_copies": opts.trust_copies, "val_cells": opts.val_cells,
                        "review_target": opts.review_target},
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    bundle = _export(opts, src, model, out, local, y, cfg, rng, pbc, pbc_val, site, unl_px, labels, log, variants, oof,
                     pseudo)
    site["seconds"] = round(time.time() - t0, 1)
    log(f"adapt took {site['seconds']:.0f}s")
    return {"bundle": str(bundle), "site": site, "skipped": len(cells.skipped) + (len(unl.skipped) if unl else 0)}


def _progress(what, total, log):
    every = max(1, total // 4)
    return lambda s, loss: log(f"  {what}: step {s}/{total}, loss {loss:.3f}") if s % every == 0 else None


def _kfold(top, init, fx, y, group, ex, px, pbc_y, cfg, k, labels, log, ux):
    """Leave-out estimate: each fold's cells (all their augmented copies) are held out, the top is
    retrained from the base weights on the rest, and the held-out originals are classified."""
    from . import adapt_core as core

    k = min(k, len(y))
    if k < 2:
        log("k-fold estimate skipped (--folds < 2 or fewer than 2 cells)")
        return None, None
    fold = core.folds(y, k, cfg.seed)
    oof = np.full((len(y), len(labels)), 1.0 / len(labels), np.float32)  # held-out probabilities
    for f in range(k):
        top.set_weights(init)
        keep = np.isin(group, np.flatnonzero(fold != f))
        if not keep.any():
            continue
        core.train_top(top, fx[keep], np.repeat(y, cfg.copies)[keep], px, pbc_y, cfg)
        core.self_train(top, fx[keep], np.repeat(y, cfg.copies)[keep], ux, px, pbc_y, cfg)  # its own pseudo-labels
        oof[fold == f] = core.predict_top(top, ex[fold == f])
        pred = oof.argmax(1)
        done = fold <= f
        log(f"  fold {f + 1}/{k}: {int((pred[done] == y[done]).sum())}/{int(done.sum())} right so far")
    pred = oof.argmax(1)
    acc = float((pred == y).mean())
    per_class = {labels[c]: {"right": int((pred[y == c] == c).sum()), "n": int((y == c).sum())} for c in np.unique(y)}
    log(f"{k}-fold estimate: {acc:.1%} of {len(y)} labelled cells right ("
        + ", ".join(f"{c} {v['right']}/{v['n']}" for c, v in per_class.items()) + ")")
    return {"k": k, "accuracy": acc, "n": int(len(y)), "per_class": per_class,
            "method": "stratified k-fold over cells; each fold's top retrained from the base with the same "
                      "steps; held-out cells unaugmented"}, oof


def _export(opts, src, model, out: Path, local, y, cfg, rng, pbc, pbc_val, site, unl_px, labels, log,
            variants=None, oof=None, pseudo=None) -> Path:
    """Convert in a staging folder inside OUTDIR, check the bundle through the runtime, then write
    it to OUTDIR with the site section (manifest last)."""
    from PIL import Image

    from edge_bloodcls.convert import export
    from edge_bloodcls.edge_runtime.classifier import Classifier
    from edge_bloodcls.edge_runtime.preprocess import normalise
    from . import adapt_core as core

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{STAGING_PREFIX}*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        cells_dir = stage / "cells"
        rows = []
        tc = max(1, opts.trust_copies)
        copies = (core.augment_variants(variants[:, :tc], rng, cfg) if variants is not None and variants.shape[1] >= tc
                  else core.augmented(local, tc, rng, cfg))
        for i, img in enumerate(copies):
            lab = labels[y[i // max(1, opts.trust_copies)]]
            f = cells_dir / lab / f"local_{i:05d}.png"
            f.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(f)
            # Local cells calibrate int8 and fit the trust statistics (train) and set the OOD
            # threshold and temperature with PBC validation cells (val): they are meant to be
            # in distribution from now on.
            rows.append({"path": str(f.resolve()), "label": lab, "split": "train", "sha256": ""})
            if i % max(1, opts.trust_copies) == 0:
                rows.append({"path": str(f.resolve()), "label": lab, "split": "val", "sha256": ""})
        # Pseudo-labelled unlabelled crops of the first half of the fields also fit the OOD
        # statistics: capture's own crops of the site, so that its cells read as in distribution;
        # the second half is kept out to check that on cells the fit never saw.
        half = len(unl_px) // 2
        for i in np.flatnonzero(pseudo[:half] >= 0) if pseudo is not None else []:
            f = cells_dir / labels[pseudo[i]] / f"unlabelled_{i:05d}.png"
            f.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(unl_px[i]).save(f)
            rows.append({"path": str(f.resolve()), "label": labels[pseudo[i]], "split": "train", "sha256": ""})
        for s, images in (("train", pbc), ("val", pbc_val)):
            for p, c in zip(images.paths if images else [], images.labels if images else []):
                rows.append({"path": str(Path(p).resolve()), "label": labels[c], "split": s, "sha256": ""})
        csv_path = stage / "site_split.csv"
        with open(csv_path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["path", "label", "split", "sha256"], lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        csv_path.with_suffix(".json").write_text(json.dumps({"root": "/"}) + "\n")
        run_dir = stage / "run"
        run_dir.mkdir()
        model.save(run_dir / "model.keras")
        cfg_json = {**src.config, "arch": src.arch, "input": src.spec.to_json(), "labels": labels,
                    "split": {"csv": str(csv_path), "sha256": sha256_file(csv_path), "root": "/"}}
        (run_dir / "config.json").write_text(json.dumps(cfg_json, indent=1, default=str) + "\n")
        name = opts.name or f"{src.arch}_{src.spec.size[0]}_site_int8"
        eo = export.ExportOptions(model=str(run_dir / "model.keras"), quantize="int8", per_tensor=True,
                                  out=str(stage / "bundle"), split=str(csv_path), calibration=str(csv_path),
                                  trust_samples=None, name=name, seed=cfg.seed, data_root="/")
        try:
            res = export.run(eo, log=lambda m: log(f"  convert: {m}"))
        except export.GateFailed as e:
            # Per-tensor int8 (the shipped format, 0.4 MB smaller) can lose more than the gate
            # allows once the trunk's statistics are the site's; per-channel int8 keeps a scale for
            # each channel and runs on the same runtime. The gate still decides.
            log(f"per-tensor int8 failed the gate ({e}); exporting per-channel int8")
            res = export.run(replace(eo, per_tensor=False), log=lambda m: log(f"  convert: {m}"))
        staged = load_bundle(res["bundle"])
        clf = Classifier(staged)
        checks = {"val_accuracy_int8": res["metrics"]["exported"]["accuracy"],
                  "val": "PBC val sample + the local cells (in-sample)"}
        thr = staged.trust.threshold
        seen = {}
        for what, px in (("local_labelled_in_sample", local),
                         ("local_unlabelled", unl_px),
                         ("local_unlabelled_held_out", unl_px[len(unl_px) // 2:] if pseudo is not None and
                          (pseudo >= 0).any() else None),
                         ("foreign_synthetic", core.foreign_images(48, src.spec.size, cfg.seed))):
            if px is not None and len(px):
                seen[what] = o = clf.predict_many([normalise(p, src.spec) for p in px])
                checks[f"ood_{what}"] = float((o["ood_score"] > thr).mean())
        manifest = dict(staged.manifest)
        if oof is not None:
            from edge_bloodcls.edge_runtime.preprocess import load_rgb

            v = clf.predict_many([normalise(p, src.spec) for p in core.to_model_size(
                [load_rgb(p) for p in pbc_val.paths], src.spec.size)])
            sp = core.site_operating_point(v["raw"], pbc_val.labels, v["ood_score"] > thr, oof, y,
                                           seen["local_labelled_in_sample"]["ood_score"] > thr,
                                           opts.review_target)
            manifest["trust"] = {**manifest["trust"], "temperature": sp["temperature"],
                                 "review_threshold": sp["review_threshold"],
                                 "review_target_accuracy": opts.review_target,
                                 "site_fit": {**sp, "convert_fit": {k: manifest["trust"][k] for k in
                                                                    ("temperature", "review_threshold",
                                                                     "review_target_accuracy")},
                                              "note": "temperature and review threshold refitted on PBC val "
                                                      "(int8) + the local cells' out-of-fold k-fold "
                                                      "probabilities; 'val' above is convert's fit"}}
            b = sp["by_set"]
            log(f"site review threshold {sp['review_threshold']:.3f} for {opts.review_target:.1%} accepted accuracy "
                f"(temperature {sp['temperature']:.2f}; "
                f"convert's {manifest['trust']['site_fit']['convert_fit']['review_threshold']:.3f}): accepts "
                f"{b['pbc_val']['coverage']:.0%} of PBC val, {b['local_out_of_fold']['coverage']:.0%} of the local "
                "cells (out of fold)")
        log("runtime check (int8 bundle): OOD flagged " + ", ".join(
            f"{k[4:]} {v:.1%}" for k, v in checks.items() if k.startswith("ood_"))
            + f"; PBC val OOD {staged.manifest['trust']['val']['ood_flagged']:.1%}")
        manifest["site"] = {**site, "checks": checks}
        trust = staged.trust_path.read_bytes() if staged.trust_path else None
        final = write_bundle(staged.tflite.read_bytes(), manifest, out, name, trust)
    except export.GateFailed as e:
        raise AdaptFailed(f"the int8 export failed its checks: {e}") from None
    except export.ExportError as e:
        raise AdaptInputError(str(e)) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return final.tflite


class AdaptFailed(RuntimeError):
    """Adapt ran but produced no bundle (exit 1)."""


@click.command("adapt")
@click.option("--labelled", required=True, type=click.Path(exists=True),
              help="Class folders named as the model's labels, or a SESSION.db with reviewed cells.")
@click.option("--unlabelled", type=click.Path(exists=True, file_okay=False),
              help="Local fields (white cells are located) or crops: BatchNorm re-estimation, checks.")
@click.option("--model", "model", help="Base: a .keras model or a bundle exported from one "
                                       f"(default {DEFAULT_BASE}).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the new bundle.")
@click.option("--name", help="Bundle name (default ARCH_SIZE_site_int8).")
@click.option("--framing", type=click.Choice(["auto", "capture", "tight"]), default="auto", show_default=True,
              help="tight: boxes around cells, pasted into local neighbourhoods (or padded) to capture's "
                   "framing; capture: as capture crops; auto: capture for a session log or square crops, else tight.")
@click.option("--rbc-px", type=click.FloatRange(1), help="Red-cell diameter in pixels (tight framing).")
@click.option("--steps", type=click.IntRange(1), default=150, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=3e-4, show_default=True, help="Adam learning rate.")
@click.option("--folds", type=click.IntRange(0), default=5, show_default=True, help="k-fold estimate (0: none).")
@click.option("--copies", type=click.IntRange(1), default=16, show_default=True,
              help="Augmented copies of each labelled cell.")
@click.option("--cut", default="block_12_add", show_default=True,
              help="Last frozen layer of the backbone ('none': train every layer; slow on a CPU).")
@click.option("--bn-pbc", type=click.FloatRange(0, 0.9), default=0.0, show_default=True,
              help="Share of PBC cells in the BatchNorm re-estimation: more keeps PBC, less fits the site.")
@click.option("--pseudo", type=click.FloatRange(0, 1), default=0.9, show_default=True,
              help="Self-training: unlabelled local crops at least this sure join training (0: off).")
@click.option("--review-target", type=click.FloatRange(0.5, 1, max_open=True), default=0.90, show_default=True,
              help="Accuracy the accepted (not reviewed) cells should reach; sets the review threshold.")
@click.option("--split", type=click.Path(exists=True, dir_okay=False), help="PBC split CSV (default runs/split.csv).")
@click.option("--data-root", type=click.Path(file_okay=False), help="Where the split's paths live.")
@click.option("--seed", default=0, show_default=True)
def adapt_cmd(labelled, unlabelled, model, out, name, framing, rbc_px, steps, lr, folds, copies, cut, bn_pbc, pseudo,
              review_target, split, data_root, seed):
    """Adapt the model to a new microscope; prints the new bundle's path last."""
    opts = AdaptOptions(labelled=labelled, out=out, unlabelled=unlabelled, model=model, name=name, split=split,
                        data_root=data_root, framing=framing, rbc_px=rbc_px, folds=folds, review_target=review_target,
                        core={"steps": steps, "lr": lr, "seed": seed, "copies": copies, "cut": cut,
                              "bn_pbc": bn_pbc, "pseudo": pseudo})
    try:
        res = adapt(opts, log=click.echo)
    except AdaptInputError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except (AdaptFailed, BundleError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except OSError as e:  # a full disk, an OUTDIR that cannot be written
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    if res["skipped"]:
        click.echo(f"{res['skipped']} unreadable input(s) skipped (listed above)")
    click.echo(res["bundle"])
    sys.exit(1 if res["skipped"] else 0)

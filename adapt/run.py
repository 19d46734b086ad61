"""`edge-bloodcls adapt`: the shipped model, fine-tuned to a new microscope from labelled local
cells (and unlabelled local fields), exported as one int8 bundle with a `site` section.

    labelled cells (folders, session logs) ─frame as capture crops─▶ model-size crops
        ─▶ every layer fine-tuned, batches half site / half PBC, augmented (adapt/finetune.py)
        ─▶ [self-training on unlabelled site crops] ─▶ [output bias to the site's class proportions]
        ─▶ --validate cells (held out) scored as capture sees them, PBC test (home) scored
        ─▶ convert (int8, calibration + trust statistics on PBC + local cells, gate)
        ─▶ checks through the runtime ─▶ OUTDIR/NAME.tflite + NAME.trust.npz + NAME.json

Nothing lands in OUTDIR until the bundle is complete: convert writes into a hidden staging folder
inside OUTDIR, and the final files are moved in with the manifest last (bundle.write_bundle), so
a killed adapt leaves at most a `.adapt-*` folder, which the next run removes.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import click
import numpy as np
from PIL import Image

from edge_bloodcls.convert import calibrate, export
from edge_bloodcls.edge_runtime.core.bundle import BundleError, load_bundle, sha256_file, write_bundle
from edge_bloodcls.edge_runtime.core.cellhead import CellHead
from edge_bloodcls.edge_runtime.core.classifier import Classifier
from edge_bloodcls.edge_runtime.core.images import printable
from edge_bloodcls.edge_runtime.core.preprocess import ImageError, normalise
from edge_bloodcls.errors import EXIT_INPUTS_FAILED, CliError, InputsFailed, require_train_extra
from edge_bloodcls.tfenv import configure
from edge_bloodcls.train.pipeline import load_pixels

from . import cellhead as ch
from . import core
from . import evaluate as ev
from . import finetune as ft
from . import route as rt
from .data import (
    DEFAULT_BASE,
    AdaptInputError,
    framing_of,
    load_labelled,
    load_unlabelled,
    paste,
    pbc_split,
    reframe_tight,
    resolve_base,
    source_fields,
)

_log = logging.getLogger(__name__)

STAGING_PREFIX = ".adapt-"


@dataclass
class AdaptOptions:
    labelled: list[str]  # class folders and/or reviewed session logs, merged
    out: str
    unlabelled: str | None = None
    validate: list[str] = field(default_factory=list)  # held-out labelled cells: scored, never trained on
    model: str | None = None
    name: str | None = None
    split: str | None = None  # PBC split CSV (default: the base model's, runs/split.csv)
    data_root: str | None = None
    framing: str = "auto"  # auto | capture | tight
    rbc_px: float | None = None
    pbc_cells: int = 1600  # PBC training cells rehearsed (stratified)
    val_cells: int = 400  # PBC val cells for convert's gate, temperature and OOD threshold
    test_cells: int = 0  # PBC test cells for what the home site keeps (0: the whole test split)
    trust_copies: int = 4  # copies of each local cell among the trust/calibration training cells
    # Accepted-cell accuracy the site's review threshold aims at. Not the shipped 99.5%: certifying
    # that at the 90% Wilson bound takes >= ~330 accepted validation cells all right, which a few
    # hundred validation cells of an ~85%-accurate site model never give.
    review_target: float = 0.90
    # route: the bundle holds the base network for home cells and the fine-tuned one for the site's,
    # with a router (adapt/route.py); shared: the fine-tuned network answers both (half the size).
    home: str = "route"
    # The cell-feature head (adapt/cellhead.py, edge_runtime/core/cellhead.py): a second expert on
    # measured cell features, fused with the network's answer for the site's cells.
    cell_head: bool = True
    ft: dict = field(default_factory=dict)  # FinetuneConfig overrides (steps, lr, pseudo, prior, ...)


@dataclass
class Framed:
    """Labelled cells as capture would crop them, from any number of sources."""

    px: np.ndarray  # (N, H, W, 3) uint8 at model size
    labels: np.ndarray
    names: list[str]
    sha256: list[str]
    sources: list[dict]  # per source: path, framing, counts, skipped
    fields: list[str | None]  # the field each cell was recropped from (own-field framing), else None
    skipped: int = 0


def _frame(sources, labels, framing, opts, unl, spec, rng, log, what="labelled") -> Framed:
    """Load and frame each source. Tight boxes are recropped from their own field when the
    --unlabelled folder holds it (exactly capture's crop: adapt/evaluate.capture_view), else
    pasted into a local neighbourhood, else padded to capture's framing."""

    fields = ev.index_fields(opts.unlabelled)
    cache: dict = {}
    px, ys, names, shas, per, own = [], [], [], [], [], []
    skipped = 0
    for src in sources:
        cells = load_labelled(src, labels, log)
        fr = framing_of(framing, src, cells)
        how = {"own_field": 0, "pasted": 0, "padded": 0, "capture": 0}
        rbc = opts.rbc_px or (unl.rbc_px if unl else None)
        for img, name in zip(cells.images, cells.names):
            out, f = None, None
            # A crop cut from a field in --unlabelled is recropped from it as capture crops it,
            # whatever its shape, unless --framing capture says it already is capture's crop.
            v = ev.capture_view(img, name, fields, opts.rbc_px, cache) if fields and framing != "capture" else None
            if v is not None and v.crop is not None:
                out, f = v.crop, v.field
                how["own_field"] += 1
            elif fr == "tight":
                if not rbc:
                    raise AdaptInputError(
                        f"{printable(name)}: a tight crop needs a scale to be framed as capture "
                        "frames it: pass --rbc-px (red-cell diameter in pixels) or --unlabelled "
                        "fields from the same camera"
                    )
                if unl and unl.backgrounds:
                    out = paste(img, rbc, unl.backgrounds, rng)
                    how["pasted"] += 1
                else:
                    out = reframe_tight(img, rbc)
                    how["padded"] += 1
            else:
                out = img
                how["capture"] += 1
            px.append(out)
            own.append(f)
        ys.extend(cells.labels.tolist())
        names.extend(cells.names)
        shas.extend(cells.sha256)
        skipped += len(cells.skipped)
        counts = {labels[c]: int((cells.labels == c).sum()) for c in np.unique(cells.labels)}
        per.append(
            {
                "source": printable(cells.source),
                "framing": {k: v for k, v in how.items() if v},
                "counts": counts,
                "skipped": len(cells.skipped),
            }
        )
        log(
            f"{what}: {len(cells.images)} cells ({', '.join(f'{k} {v}' for k, v in counts.items())}) from "
            f"{printable(cells.source)}; {len(cells.skipped)} skipped; framing "
            + ", ".join(f"{k} {v}" for k, v in how.items() if v)
        )
    seen: dict[str, str] = {}
    for n, h in zip(names, shas):
        if h in seen:  # the same cell twice would be counted (and weighted) twice
            raise AdaptInputError(
                f"{printable(n)}: the same image as {printable(seen[h])} ({what} cells must be distinct)"
            )
        seen[h] = n
    return Framed(core.to_model_size(px, spec.size), np.asarray(ys, np.int64), names, shas, per, own, skipped)


def adapt(opts: AdaptOptions, log=print) -> dict:

    configure()  # before TensorFlow is first imported (adapt may run without the CLI)

    t0 = time.time()
    out = Path(opts.out)
    base = resolve_base(opts.model)
    cfg = replace(ft.FinetuneConfig(), **opts.ft)
    try:
        src = export.load_source(base)
        core.backbone(src.model)
        if cfg.freeze:
            ft.frozen_stem(src.model, cfg.freeze)  # a base too small for it fails here, before any work
    except (export.ExportError, ValueError, OSError) as e:
        raise AdaptInputError(str(e)) from None
    spec, labels = src.spec, list(src.labels)
    log(f"base {base} ({src.arch}, input {list(spec.size)}, sha256 {src.sha256[:12]})")
    rng = np.random.default_rng(cfg.seed)

    # Fields of the validation cells stay out of the unlabelled crops: self-training and the
    # class-proportion estimate never see the cells they are scored on.
    held_out_fields: set[str] = set()
    for v in opts.validate:
        held_out_fields |= source_fields(v)
    unl = load_unlabelled(opts.unlabelled, opts.rbc_px, log=log, exclude=held_out_fields) if opts.unlabelled else None
    if unl:
        log(
            f"unlabelled: {len(unl.crops)} crops ({unl.fields} fields located, {unl.crop_files} crop files"
            + (", fields of the --validate cells left out" if held_out_fields else "")
            + f"); "
            f"{len(unl.skipped)} skipped"
        )
    cells = _frame(opts.labelled, labels, opts.framing, opts, unl, spec, rng, log)
    val = _frame(opts.validate, labels, opts.framing, opts, unl, spec, rng, log, "validate") if opts.validate else None
    if val is not None and set(val.sha256) & set(cells.sha256):
        raise AdaptInputError("some --validate cells are also --labelled cells: a cell trained on cannot validate")
    local, y = cells.px, cells.labels
    unl_px = core.to_model_size(unl.crops if unl else [], spec.size)

    split_csv = pbc_split(opts.split, src)
    try:
        pbc = calibrate.sample(calibrate.from_split(split_csv, "train", opts.data_root), opts.pbc_cells, cfg.seed)
        pbc_val = calibrate.sample(calibrate.from_split(split_csv, "val", opts.data_root), opts.val_cells, cfg.seed)
        pbc_test = calibrate.sample(
            calibrate.from_split(split_csv, "test", opts.data_root), opts.test_cells or None, cfg.seed
        )
        # Decoded on every core (train/pipeline.py), each set once: the test cells serve the base
        # model's figure, the head's router check and the bundle's home check; the val cells the
        # router's check and the site's operating point.
        pbc_px = load_pixels(pbc.paths, spec.size)
        test_px = load_pixels(pbc_test.paths, spec.size)
        val_px = load_pixels(pbc_val.paths, spec.size)
    except ImageError as e:
        raise AdaptInputError(f"PBC: {e}") from None
    except (OSError, ValueError) as e:
        raise AdaptInputError(str(e)) from None

    import tf_keras  # [train] extra: loaded only when a model is built (the CLI starts without TensorFlow)

    tf_keras.utils.set_random_seed(cfg.seed)
    model: Any = src.model  # a tf_keras Model (tf_keras is untyped)
    base_test = _base_test(
        base,
        pbc_test,
        opts.test_cells,
        lambda: ft.predict(model, spec, test_px),
    )
    soft = ft.predict(model, spec, pbc_px) if cfg.distill else None
    base_weights = model.get_weights() if cfg.wise != 1.0 or cfg.anchor > 0 or opts.home == "route" else None
    log(
        f"fine-tuning {ft.trained_layers(cfg)}: {cfg.steps} steps, Adam {cfg.lr:g}, batches of {cfg.batch} "
        f"({cfg.local_share:.0%} site cells, the rest of {len(pbc.labels)} PBC cells) ({time.time() - t0:.0f}s)"
    )
    # The site's looks for cfg.transfer: its labelled crops and the unlabelled ones (never the
    # --validate fields, left out of the unlabelled crops above).
    looks = core.lab_stats(np.concatenate([local, unl_px])) if cfg.transfer else None
    ft.train(
        model,
        spec,
        local,
        y,
        pbc_px,
        pbc.labels,
        cfg,
        soft,
        _progress("fine-tune", log),
        base_weights=base_weights,
        site_looks=looks,
    )
    pseudo = ft.self_train(
        model,
        spec,
        local,
        y,
        unl_px,
        pbc_px,
        pbc.labels,
        cfg,
        soft,
        _progress("self-training", log),
        base_weights,
        site_looks=looks,
    )
    if cfg.pseudo and len(unl_px):
        log(
            f"self-training: {int((pseudo >= 0).sum())} of {len(unl_px)} unlabelled crops joined at confidence "
            f">= {cfg.pseudo}"
        )
    if base_weights is not None and cfg.wise != 1.0:
        ft.wise(model, base_weights, cfg.wise)
        log(f"weight-space ensemble: {1 - cfg.wise:g} x base + {cfg.wise:g} x fine-tuned")
    prior = None
    if cfg.prior == "em" and len(unl_px):
        train_prior = ft.training_prior(y, pbc.labels, len(labels), cfg)
        site_prior = ev.em_priors(ft.predict(model, spec, unl_px), train_prior)
        ft.shift_output_bias(model, ev.log_prior_shift(train_prior, site_prior))
        prior = {"train": _by_label(train_prior, labels), "site_em": _by_label(site_prior, labels)}
        log(
            "class proportions of the site (EM on the unlabelled crops): "
            + ", ".join(f"{k} {v:.1%}" for k, v in prior["site_em"].items() if v >= 0.005)
        )
    if not cfg.pseudo and len(unl_px):  # labels for the trust statistics of the site's crops (below)
        pseudo = ft.pseudo_labels(ft.predict(model, spec, unl_px), 0.9, np.unique(y))
    log(f"trained ({time.time() - t0:.0f}s)")
    route_info = None
    if opts.home == "route":
        assert base_weights is not None, "taken before training for the route's home network"
        model, route_info = _route(base_weights, model, spec, pbc_px, val_px, local, unl_px, val, cfg, log)
    head = _cell_head(local, y, labels, pbc_px, unl_px, test_px, val, log) if opts.cell_head else None
    val_float = val_network = None
    if val is not None:
        # The same held-out cells through the float model: beside the int8 figure below, what
        # quantisation costs the site.
        vp = ft.predict(model, spec, val.px)
        if head is not None:
            # The network alone too: what the head adds on these cells, paired.
            val_network = ev.estimate(val.labels, vp.argmax(1), labels)
            log(f"validation (held out, float, network alone, as capture crops them): {val_network.line()}")
            vp = head[1].fuse(vp, ch.features(val.px))
        val_float = ev.estimate(val.labels, vp.argmax(1), labels)
        log(
            f"validation (held out, float{', with the cell-feature head' if head else ''}, as capture crops them): "
            f"{val_float.line()}"
        )

    site: dict[str, Any] = {
        "adapted_on": {
            "sources": cells.sources,
            "counts": _counts(y, labels),
            "files": [
                {"name": printable(n), "label": labels[c], "sha256": h} for n, c, h in zip(cells.names, y, cells.sha256)
            ],
            "skipped": cells.skipped,
            "unlabelled": (
                {
                    "source": printable(opts.unlabelled),
                    "crops": len(unl.crops),
                    "fields": unl.fields,
                    "fields_left_out": len(held_out_fields),
                }
                if unl
                else None
            ),
        },
        "method": f"{ft.trained_layers(cfg)} fine-tuned; batches {cfg.local_share:.0%} site cells (framed as "
        f"capture crops them), the rest PBC training cells; flips, rotations, zoom, blur, colour ({cfg.colour_mode})"
        + (f"; distillation {cfg.distill:g}" if cfg.distill else "")
        + (f"; L2-SP anchor {cfg.anchor:g}" if cfg.anchor else "")
        + (f"; {cfg.transfer:.0%} of the PBC cells in the site's colours" if cfg.transfer else "")
        + (
            f"; weights averaged over the last {cfg.average:.0%} of the fine-tune's steps"
            + (" (before self-training)" if cfg.pseudo else "")
            if cfg.average
            else ""
        )
        + (f"; WiSE {cfg.wise:g}" if cfg.wise != 1.0 else "")
        + ("; routed: the base network answers home cells, the fine-tuned one the site's" if route_info else "")
        + ("; a cell-feature head fused for the site's cells" if head else ""),
        "route": route_info,
        "cell_head": head[2] if head else None,
        "prior": prior,
        "base_model": {"path": str(base), "sha256": src.sha256},
        "options": {
            **cfg.to_json(),
            "rbc_px": opts.rbc_px,
            "pbc_cells": opts.pbc_cells,
            "trust_copies": opts.trust_copies,
            "val_cells": opts.val_cells,
            "review_target": opts.review_target,
            "home": opts.home,
            "cell_head": opts.cell_head,
        },
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if val is not None and val_float is not None:
        site["validation_sources"] = val.sources
        site["validation_float"] = val_float.to_json()
        if val_network is not None:
            site["validation_float_network_alone"] = val_network.to_json()
    bundle = _export(
        opts,
        src,
        model,
        out,
        local,
        y,
        cfg,
        rng,
        calibrate.sample(pbc, 600, cfg.seed),
        pbc_val,
        val_px,
        pbc_test,
        test_px,
        site,
        unl_px,
        labels,
        log,
        val,
        pseudo,
        base_test,
        head[0] if head else None,
    )
    site["seconds"] = round(time.time() - t0, 1)
    log(f"adapt took {site['seconds']:.0f}s")
    return {
        "bundle": str(bundle),
        "site": site,
        "skipped": cells.skipped + (val.skipped if val else 0) + (len(unl.skipped) if unl else 0),
    }


def _router_checks(home_px, unl_held_out, val, gate, home_name: str) -> dict:
    """What a router does on cells it was not fitted on: home cells (PBC), the held-out half of the
    unlabelled crops and the --validate cells (the site's); `gate(px)` gives its g per cell."""
    checks = {}
    for what, px, site_side in (
        (home_name, home_px, False),
        ("unlabelled_held_out", unl_held_out, True),
        ("validate", val.px if val is not None else unl_held_out[:0], True),
    ):
        if len(px):
            right = (gate(px) >= 0.5) == site_side
            checks[what] = {"cells": len(px), "routed_right": round(float(right.mean()), 4)}
    return checks


def _routed(checks: dict) -> str:
    return ", ".join(f"{k} {v['routed_right']:.1%} of {v['cells']} routed right" for k, v in checks.items())


def _cell_head(local, y, labels, pbc_px, unl_px, test_px, val, log):
    """(manifest section, CellHead, what it does on cells it was not fitted on) or None."""
    t = time.time()
    half = len(unl_px) // 2
    local_f = ch.features(local)
    section = ch.fit(local_f, y, labels, ch.features(pbc_px), np.concatenate([local_f, ch.features(unl_px[:half])]))
    if section is None:
        log("cell-feature head: the labelled cells hold one class; no head")
        return None
    head = CellHead.from_json(section, labels, "cell_head")
    checks = _router_checks(test_px, unl_px[half:], val, lambda px: head.parts(ch.features(px))[0], "pbc_test")
    log(
        f"cell-feature head on {len(y)} labelled cells ({', '.join(section['classes'])}); its router: "
        f"{_routed(checks)} ({time.time() - t:.0f}s)"
    )
    info = {
        "features": section["features"],
        "classes": section["classes"],
        "fitted_on": section["fitted_on"],
        "checks": checks,
        "how": "log p += g x (log q - mean log q) on the head's classes, g its router's "
        "'a cell of the site', q its logistic regression on 66 cell features (edge_runtime/core/cellhead.py)",
    }
    return section, head, info


def _route(base_weights: list, site_model, spec, pbc_px, val_px, local, unl_px, val, cfg, log):
    """The routed model (adapt/route.py) and what its router does on cells it was not fitted on;
    its home network is a copy of the fine-tuned one holding the base's weights (base_weights)."""
    import tf_keras  # [train] extra

    t = time.time()
    home_model = tf_keras.models.clone_model(site_model)  # half the time of loading the base again
    home_model.set_weights(base_weights)
    # Fitted on PBC training cells against the labelled cells and the first half of the unlabelled
    # crops (the half the OOD statistics are fitted on too); the second half checks it.
    half = len(unl_px) // 2
    site_px = np.concatenate([local, unl_px[:half]]) if half else local
    w, b = rt.fit_router(rt.pooled(home_model, spec, pbc_px), rt.pooled(home_model, spec, site_px), cfg.seed)
    checks = _router_checks(
        val_px, unl_px[half:], val, lambda px: rt.gate(rt.pooled(home_model, spec, px), w, b), "pbc_val"
    )
    log(f"router (base network's features, logistic regression): {_routed(checks)} ({time.time() - t:.0f}s)")
    if any(c["routed_right"] < 0.9 for c in checks.values()):
        # Home and site cells that look alike (the same microscope adapted again): g stays between
        # 0 and 1 and the two networks' answers are averaged. Both were trained on such cells, so
        # that is safe, but the router says nothing about which site a cell is from.
        log("router: home and site cells are hard to tell apart here; --home shared gives one network")
    model = rt.routed(home_model, site_model, w, b, name=site_model.name)
    return model, {
        "how": "g = sigmoid(w . base pooled features + b); probs and features = g x site + (1 - g) x home",
        "fitted_on": {"home": len(pbc_px), "site": len(site_px)},
        "checks": checks,
    }


def _base_test(base: Path, pbc_test, test_cells: int, predict) -> float:
    """The base model's float accuracy on the PBC test cells: its training run's figure when that
    is the same whole split (metrics.json), else measured (before fine-tuning)."""
    try:
        m = json.loads((base.parent / "metrics.json").read_text())
        if not test_cells and m.get("split_sha256") == pbc_test.split_sha256 and m["test"]["n"] == len(pbc_test.labels):
            return float(m["test"]["accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return float((predict().argmax(1) == pbc_test.labels).mean())


def _by_label(v, labels) -> dict:
    return {labels[c]: round(float(x), 4) for c, x in enumerate(v)}


def _counts(y, labels) -> dict:
    return {labels[c]: int((y == c).sum()) for c in np.unique(y)}


def _progress(what, log):
    def report(s, total, loss):
        if s % max(1, total // 4) == 0:
            log(f"  {what}: step {s}/{total}, loss {loss:.3f}")

    return report


def _export(
    opts,
    src,
    model,
    out: Path,
    local,
    y,
    cfg,
    rng,
    pbc,
    pbc_val,
    val_px,
    pbc_test,
    test_px,
    site,
    unl_px,
    labels,
    log,
    val=None,
    pseudo=None,
    base_test=None,
    cell_head=None,
) -> Path:
    """Convert in a staging folder inside OUTDIR, check the bundle through the runtime, then write
    it to OUTDIR with the site section (manifest last)."""

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{STAGING_PREFIX}*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        cells_dir = stage / "cells"
        rows = []
        tc = max(1, opts.trust_copies)
        copies = core.augmented(local, tc, rng, cfg)
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
        for j in np.flatnonzero(pseudo[:half] >= 0) if pseudo is not None else []:
            f = cells_dir / labels[pseudo[j]] / f"unlabelled_{j:05d}.png"
            f.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(unl_px[j]).save(f)
            rows.append({"path": str(f.resolve()), "label": labels[pseudo[j]], "split": "train", "sha256": ""})
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
        cfg_json = {
            **src.config,
            "arch": src.arch,
            "input": src.spec.to_json(),
            "labels": labels,
            "split": {"csv": str(csv_path), "sha256": sha256_file(csv_path), "root": "/"},
        }
        cfg_json["params"] = int(model.count_params())  # a routed model holds two networks
        (run_dir / "config.json").write_text(json.dumps(cfg_json, indent=1, default=str) + "\n")
        name = opts.name or f"{src.arch}_{src.spec.size[0]}_site_int8"
        eo = export.ExportOptions(
            model=str(run_dir / "model.keras"),
            quantize="int8",
            per_tensor=True,
            out=str(stage / "bundle"),
            split=str(csv_path),
            calibration=str(csv_path),
            trust_samples=None,
            name=name,
            seed=cfg.seed,
            data_root="/",
            site_cells=str(cells_dir),
        )
        t = time.time()
        # The model just trained and saved, not read back (12 s for a routed model on the
        # project's machine): the file stays the bundle's recorded source and its checksum.
        staged_src = export.source_of(model, run_dir / "model.keras")
        try:
            res = export.run(eo, staged_src)
        except export.GateFailed as e:
            # Per-tensor int8 (the shipped format, 0.4 MB smaller) can lose more than the gate
            # allows once the trunk's statistics are the site's; per-channel int8 keeps a scale for
            # each channel and runs on the same runtime. The gate still decides.
            log(f"per-tensor int8 failed the gate ({e}); exporting per-channel int8")
            res = export.run(replace(eo, per_tensor=False), staged_src)
        staged = load_bundle(res["bundle"])
        log(f"int8 bundle staged: calibration, conversion and convert's checks ({time.time() - t:.0f}s)")
        if cell_head is not None:
            # The head joins the staged bundle before any check: every figure below, and the
            # site's temperature and review threshold, are those of the fused answer.
            staged = write_bundle(
                staged.tflite.read_bytes(),
                {**staged.manifest, "cell_head": cell_head},
                staged.tflite.parent,
                staged.name,
                staged.trust_path.read_bytes() if staged.trust_path else None,
            )
        clf = Classifier(staged)
        checks = {
            "val_accuracy_int8": res["metrics"]["exported"]["accuracy"],
            "val": "PBC val sample + the local cells (in-sample)"
            + ("; the network alone, before the cell-feature head" if cell_head is not None else ""),
        }
        if staged.trust is None:
            raise AdaptFailed(f"{res['bundle']}: the exported bundle has no trust statistics")

        def run(px):
            return clf.predict_many([normalise(p, src.spec) for p in px])

        t = time.time()
        seen = {}
        half = len(unl_px) // 2
        for what, px in (
            ("local_labelled_in_sample", local),
            ("validate_held_out", val.px if val is not None else None),
            ("local_unlabelled", unl_px),
            # Another lab's stain, as a stand-in: the site's own crops with their colour
            # channels swapped (no third site's images may be brought in).
            ("another_stain_stand_in", unl_px[:, :, :, ::-1] if len(unl_px) else None),
            ("foreign_synthetic", core.foreign_images(48, src.spec.size, cfg.seed)),
        ):
            if px is not None and len(px):
                seen[what] = o = run(px)
                checks[f"ood_{what}"] = float(o["ood"].mean())
            if what == "local_unlabelled" and pseudo is not None and (pseudo >= 0).any():
                # The half of the fields kept out of the OOD fit: rows of the run just made, each
                # crop's answer its own (the runtime has no state between crops).
                checks["ood_local_unlabelled_held_out"] = float(seen[what]["ood"][half:].mean())
        site_checks_s = time.time() - t
        # What the home site keeps: the int8 bundle on the PBC test split, as the runtime runs it.
        t = time.time()
        test_raw = run(test_px)["raw"]
        site["pbc_test"] = {
            "accuracy_int8": float((test_raw.argmax(1) == pbc_test.labels).mean()),
            "accuracy_base_float": base_test,
            "n": int(len(pbc_test.labels)),
            "split_sha256": pbc_test.split_sha256,
        }
        log(
            f"PBC test (home): {site['pbc_test']['accuracy_int8']:.2%} int8 on {len(pbc_test.labels)} cells "
            f"(base model {base_test:.2%} float) ({time.time() - t:.0f}s)"
        )
        if val is not None:
            vr = seen["validate_held_out"]["raw"]
            est = ev.estimate(val.labels, vr.argmax(1), labels)
            site["validation"] = {
                **est.to_json(),
                "what": "the --validate cells (never trained on), int8 bundle, framed as capture crops them",
                "sources": val.sources,
            }
            log(f"validation (held out, int8, as capture crops them): {est.line()}")
        manifest = dict(staged.manifest)
        v = run(val_px)
        loc_raw = seen["validate_held_out"]["raw"] if val is not None else np.zeros((0, len(labels)), np.float32)
        loc_ood = seen["validate_held_out"]["ood"] if val is not None else np.zeros(0, bool)
        sp = core.site_operating_point(
            v["raw"],
            pbc_val.labels,
            v["ood"],
            loc_raw,
            val.labels if val is not None else np.zeros(0, np.int64),
            loc_ood,
            opts.review_target,
        )
        if val is None:
            # No held-out site cell: nothing shows how right the site's confident answers are (the
            # labelled ones are in-sample, PBC val is the home site), so every cell goes to review.
            sp = {
                **sp,
                "review_threshold": 1.0,  # as convert does when nothing reaches the target
                "by_set": {k: {**v, "coverage": 0.0, "accepted_accuracy": None} for k, v in sp["by_set"].items()},
                "why": "no --validate cells: the site's accuracy is not certified, every cell is reviewed",
            }
            log(
                "no --validate cells: review threshold set so that every cell is reviewed (pass --validate with "
                "held-out reviewed cells to fit one)"
            )
        manifest["trust"] = {
            **manifest["trust"],
            "temperature": sp["temperature"],
            "review_threshold": sp["review_threshold"],
            "review_target_accuracy": opts.review_target,
            "site_fit": {
                **sp,
                "convert_fit": {
                    k: manifest["trust"][k] for k in ("temperature", "review_threshold", "review_target_accuracy")
                },
                "note": "temperature and review threshold refitted on PBC val (int8)"
                + (", the network fused with its cell-feature head" if cell_head is not None else "")
                + (" + the --validate cells (held out)" if val is not None else "")
                + "; 'val' above is convert's fit, where the local cells are "
                "in-sample" + (" (the network alone, before the cell-feature head)" if cell_head is not None else ""),
            },
        }
        b = sp["by_set"]
        log(
            f"site review threshold {sp['review_threshold']:.3f} for {opts.review_target:.1%} accepted accuracy "
            f"(temperature {sp['temperature']:.2f}): accepts {b['pbc_val']['coverage']:.0%} of PBC val"
            + (f", {b['local_out_of_fold']['coverage']:.0%} of the --validate cells" if val is not None else "")
        )
        log(
            "runtime check (int8 bundle): OOD flagged "
            + ", ".join(f"{k[4:]} {v:.1%}" for k, v in checks.items() if k.startswith("ood_"))
            + f"; PBC val OOD {staged.manifest['trust']['val']['ood_flagged']:.1%} ({site_checks_s:.0f}s)"
        )
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
@click.option(
    "--labelled",
    required=True,
    multiple=True,
    type=click.Path(exists=True),
    help="Class folders named as the model's labels, or a SESSION.db with reviewed cells; repeat to merge.",
)
@click.option(
    "--validate",
    multiple=True,
    type=click.Path(exists=True),
    help="Held-out labelled cells (same forms, repeatable): never trained on; scored through the int8 "
    "bundle as capture crops them; their fields stay out of the unlabelled crops.",
)
@click.option(
    "--unlabelled",
    type=click.Path(exists=True, file_okay=False),
    help="Local fields (white cells are located) or crops: own-field framing of tight crops, "
    "self-training, the site's class proportions, trust statistics, checks.",
)
@click.option("--model", "model", help=f"Base: a .keras model or a bundle exported from one (default {DEFAULT_BASE}).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the new bundle.")
@click.option("--name", help="Bundle name (default ARCH_SIZE_site_int8).")
@click.option(
    "--framing",
    type=click.Choice(["auto", "capture", "tight"]),
    default="auto",
    show_default=True,
    help="tight: boxes around cells, recropped from their own field in --unlabelled (else pasted into "
    "a local neighbourhood, or padded) as capture crops; capture: as capture crops; auto: capture "
    "for a session log or square crops, else tight.",
)
@click.option("--rbc-px", type=click.FloatRange(1), help="Red-cell diameter in pixels (tight framing).")
@click.option("--steps", type=click.IntRange(1), default=600, show_default=True)
@click.option(
    "--batch",
    type=click.IntRange(2),
    default=16,
    show_default=True,
    help="Cells per training step, --site-share of them the site's (16: measured as good as 32 on BCCD "
    "at half the time; docs/adapt.md, seventh round).",
)
@click.option(
    "--lr", type=click.FloatRange(0, min_open=True), default=1e-4, show_default=True, help="Adam learning rate."
)
@click.option(
    "--colour",
    type=click.FloatRange(0),
    default=1.0,
    show_default=True,
    help="Strength of the colour augmentation (--colour-mode; 0: none).",
)
@click.option(
    "--colour-mode",
    type=click.Choice(["stain", "light", "hed"]),
    default="hed",
    show_default=True,
    help="stain: per-channel stain/colour mix; light: brightness, contrast, gamma only (keeps hue); "
    "hed: stain amounts in haematoxylin-eosin space.",
)
@click.option(
    "--wise",
    type=click.FloatRange(0, 1, min_open=True),
    default=1.0,
    show_default=True,
    help="Weight-space ensemble: (1 - WISE) x base + WISE x fine-tuned weights (1: fine-tuned only).",
)
@click.option(
    "--distill",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Weight of distillation from the base model on the PBC cells (keeps the home site).",
)
@click.option(
    "--anchor",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="L2-SP: pull of the weights towards the base model's (keeps the home site; 0: off).",
)
@click.option(
    "--transfer",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of the PBC cells shown in a site crop's colours (CIELAB mean and spread, Reinhard "
    "transfer) while training (0: off).",
)
@click.option(
    "--average",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Export the mean of the weights over this last share of the steps (stochastic weight "
    "averaging, snapshots every 10 steps; 0: the last step's weights).",
)
@click.option(
    "--site-share",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.5,
    show_default=True,
    help="Share of each training batch drawn from the site's labelled cells; the rest is PBC cells.",
)
@click.option(
    "--bn",
    type=click.Choice(["train", "frozen"]),
    default="train",
    show_default=True,
    help="BatchNorm statistics: follow the mixed batches, or keep the base's.",
)
@click.option(
    "--freeze",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Keep the backbone's layers finer than 1/N of the input (the high-resolution stem) as the base "
    "trained them: no gradient runs through them, so a step takes about half the time (0: every layer trains).",
)
@click.option(
    "--pseudo",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Self-training: unlabelled local crops at least this sure join training (0: off).",
)
@click.option(
    "--pseudo-per-class",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Self-training: at most this many pseudo-labelled crops per class, the surest (0: no cap).",
)
@click.option(
    "--prior",
    type=click.Choice(["none", "em"]),
    default="none",
    show_default=True,
    help="em: the output answers under the site's class proportions, estimated from the unlabelled crops.",
)
@click.option(
    "--review-target",
    type=click.FloatRange(0.5, 1, max_open=True),
    default=0.90,
    show_default=True,
    help="Accuracy the accepted (not reviewed) cells should reach; sets the review threshold.",
)
@click.option("--split", type=click.Path(exists=True, dir_okay=False), help="PBC split CSV (default runs/split.csv).")
@click.option("--data-root", type=click.Path(file_okay=False), help="Where the split's paths live.")
@click.option(
    "--test-cells",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="PBC test cells scored for the home site (0: the whole test split).",
)
@click.option(
    "--home",
    type=click.Choice(["route", "shared"]),
    default="route",
    show_default=True,
    help="route: the bundle keeps the base network for home (PBC) cells and routes the site's cells to "
    "the fine-tuned one (twice the size and time per cell); shared: the fine-tuned network answers both.",
)
@click.option(
    "--cell-head/--no-cell-head",
    default=True,
    show_default=True,
    help="Fuse a second expert for the site's cells: a logistic regression on measured cell features "
    "(granule colour, nucleus lobes and shape, texture) fitted on the labelled cells (docs/adapt.md).",
)
@click.option("--seed", default=0, show_default=True)
def adapt_cmd(
    labelled,
    validate,
    unlabelled,
    model,
    out,
    name,
    framing,
    rbc_px,
    steps,
    batch,
    lr,
    colour,
    colour_mode,
    wise,
    distill,
    anchor,
    transfer,
    average,
    site_share,
    bn,
    freeze,
    pseudo,
    pseudo_per_class,
    prior,
    review_target,
    split,
    data_root,
    test_cells,
    home,
    cell_head,
    seed,
):
    """Adapt the model to a new microscope; prints the new bundle's path last."""
    require_train_extra("adapt")  # it trains a model; the edge install only runs bundles
    opts = AdaptOptions(
        labelled=list(labelled),
        validate=list(validate),
        out=out,
        unlabelled=unlabelled,
        model=model,
        name=name,
        split=split,
        data_root=data_root,
        framing=framing,
        rbc_px=rbc_px,
        test_cells=test_cells,
        review_target=review_target,
        home=home,
        cell_head=cell_head,
        ft={
            "steps": steps,
            "batch": batch,
            "lr": lr,
            "seed": seed,
            "colour": colour,
            "colour_mode": colour_mode,
            "wise": wise,
            "distill": distill,
            "anchor": anchor,
            "transfer": transfer,
            "average": average,
            "local_share": site_share,
            "bn": bn,
            "freeze": freeze,
            "pseudo": pseudo,
            "pseudo_per_class": pseudo_per_class,
            "prior": prior,
        },
    )
    try:
        res = adapt(opts, log=_log.info)
    except AdaptInputError as e:
        raise CliError(str(e)) from None
    except (AdaptFailed, BundleError) as e:
        raise CliError(str(e), EXIT_INPUTS_FAILED) from None
    except OSError as e:  # a full disk, an OUTDIR that cannot be written
        raise CliError(str(e), EXIT_INPUTS_FAILED) from None
    if res["skipped"]:
        click.echo(f"{res['skipped']} unreadable input(s) skipped (listed above)")
    click.echo(res["bundle"])
    if res["skipped"]:
        raise InputsFailed()


COMMANDS = [adapt_cmd]

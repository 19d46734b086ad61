"""The trust report: does each bundle know when it is out of its depth?

    edge-bloodcls trust-report [--models M ...] [--out benchmarks/results/trust]

For each bundle, through the runtime (no TensorFlow), on data anyone with ../shared/data has:
  - PBC test split (runs/split.csv): ECE (15 bins) and NLL before and after the bundle's
    temperature; the accepted-accuracy / coverage curve and the bundle's operating point;
    the share of PBC cells the OOD gate flags (false alarms);
  - white cells cut from the BCCD fields (another lab) at their annotation boxes, with the
    runtime's own crop (unlabelled: only "foreign" is known): share flagged as OOD, and OOD
    AUROC against PBC test for the Mahalanobis score and for max-softmax;
  - bccd_site (41 labelled BCCD crops): accuracy, and the share of wrong calls flagged;
  - the cost of the OOD score per cell, in ms and as a share of the interpreter's invoke time.
Writes OUT.json, OUT.md and OUT_coverage.png.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import numpy as np

from edge_bloodcls.convert.trust_fit import coverage_curve
from edge_bloodcls.edge_runtime.capture.locate import Detection, crop, default_rbc_px
from edge_bloodcls.edge_runtime.capture.locate_eval import read_voc
from edge_bloodcls.edge_runtime.core.bundle import DEFAULT_MODEL, FAST_MODEL, MODELS_DIR, load_bundle
from edge_bloodcls.edge_runtime.core.classifier import Classifier
from edge_bloodcls.edge_runtime.core.interpreter import backend_name
from edge_bloodcls.edge_runtime.core.preprocess import ImageError, load_rgb, prepare
from edge_bloodcls.edge_runtime.core.spec import LABELS
from edge_bloodcls.edge_runtime.core.trust import ece, nll
from edge_bloodcls.train.data import read_split

# The two shipped int8 bundles first, then their float32 twins (whatever else is bundled).
SHIPPED = tuple(
    sorted(
        (p.stem for p in MODELS_DIR.glob("*.tflite")),
        key=lambda n: (n not in (DEFAULT_MODEL, FAST_MODEL), n != DEFAULT_MODEL, n),
    )
)


def pbc_test(split_csv: Path, data_root: Path | None):
    s = read_split(split_csv, data_root)
    paths, y = s.items("test")
    return [str(p) for p in paths], np.asarray(y), s.sha256


def bccd_field_cells(bccd: Path) -> list[np.ndarray]:
    """Every annotated white cell of the BCCD fields, cropped as capture crops a located cell."""
    out = []
    for xml in sorted((bccd / "Annotations").glob("*.xml")):
        try:
            rgb = load_rgb(bccd / "JPEGImages" / f"{xml.stem}.jpg")
        except ImageError:
            continue
        for box in read_voc(xml):
            det = Detection(box, box, 0.0, 0.0)
            out.append(crop(rgb, det, default_rbc_px(rgb.shape)))
    return out


def site_cells(site: Path, labels) -> tuple[list[str], np.ndarray]:
    paths, y = [], []
    for i, lab in enumerate(labels):
        for f in sorted((site / lab).glob("*.jpg")) if (site / lab).is_dir() else []:
            paths.append(str(f))
            y.append(i)
    return paths, np.asarray(y)


def run_bundle(clf: Classifier, inputs) -> dict:
    """Prepared inputs -> predict_many output plus per-cell OOD cost."""
    xs = [prepare(x, clf.spec) for x in inputs]
    out = clf.predict_many(xs)
    out["inputs"] = len(xs)
    return out


def ood_cost(clf: Classifier, x: np.ndarray, runs: int = 300) -> dict:
    """Median ms of the OOD scores (features and colour) and of invoke, on the same cell, interleaved."""
    _, f, _ = clf.infer(x)
    trust = clf.trust
    if trust is None or f is None:
        raise ValueError(f"{clf.bundle.name}: no trust statistics (or no features output) to time")
    score_ms, invoke_ms = [], []
    for _ in range(runs):
        _, _, ms = clf.infer(x)
        t = time.perf_counter()
        trust.score(f)  # the same cell each time: its features do not change
        clf.colour_score(x)  # None at once for a bundle without the colour statistic
        score_ms.append((time.perf_counter() - t) * 1000)
        invoke_ms.append(ms)
    s, i = float(np.median(score_ms)), float(np.median(invoke_ms))
    return {"ood_ms": round(s, 4), "invoke_ms": round(i, 4), "share_of_invoke": round(s / i, 4)}


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    # scikit-learn: the [edge]/[train] extras, only for this step
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    return float(roc_auc_score(y, np.r_[in_scores, out_scores]))


def evaluate_bundle(name: str, test, bccd_cells, site) -> dict:
    clf = Classifier(load_bundle(name), threads=1)
    t = clf.trust
    res = {
        "model": name,
        "quantization": clf.bundle.quantization,
        "interpreter": clf.describe()["interpreter"],
        "has_trust": t is not None,
    }
    paths, y, _ = test
    pbc = run_bundle(clf, paths)
    res["pbc_test"] = {
        "n": int(len(y)),
        "accuracy": float((pbc["probs"].argmax(1) == y).mean()),
        "ece": {"raw": ece(pbc["raw"], y), "calibrated": ece(pbc["probs"], y)},
        "nll": {"raw": nll(pbc["raw"], y), "calibrated": nll(pbc["probs"], y)},
    }
    if t is None:
        return res
    conf = pbc["probs"].max(1)
    ood = pbc["ood"]  # either statistic over its threshold (the runtime's rule)
    accepted = (conf >= clf.review_threshold) & ~ood
    correct = pbc["probs"].argmax(1) == y
    res["trust"] = {
        k: clf.bundle.manifest["trust"].get(k)
        for k in (
            "ood_threshold",
            "colour_ood_threshold",
            "false_alarm_target",
            "colour_false_alarm_target",  # the colour statistic's own, lower target
            "temperature",
            "review_threshold",
            "review_target_accuracy",
            "dims",
            "feature_dim",
        )
    }
    res["pbc_test"].update(
        {
            "ood_flagged": float(ood.mean()),
            **_colour_share(pbc, t),
            "coverage": float(accepted.mean()),
            "accepted_accuracy": float(correct[accepted].mean()) if accepted.any() else None,
            "errors": int((~correct).sum()),
            "errors_flagged": int((~correct & ~accepted).sum()),
            "curve": coverage_curve(pbc["probs"], y, ood),
        }
    )
    if bccd_cells:
        b = run_bundle(clf, bccd_cells)
        b_ood = b["ood"]
        b_conf = b["probs"].max(1)
        res["bccd_fields"] = {
            "n": len(bccd_cells),
            "ood_flagged": float(b_ood.mean()),
            **_colour_share(b, t),
            "review_flagged": float(((b_conf < clf.review_threshold) | b_ood).mean()),
            "auroc_mahalanobis": auroc(pbc["ood_score"], b["ood_score"]),
            **(
                {"auroc_colour": auroc(pbc["colour_score"], b["colour_score"])}
                if pbc["colour_score"] is not None
                else {}
            ),
            "auroc_max_softmax": auroc(-conf, -b_conf),
            "predicted": {
                lab: int(n) for lab, n in zip(clf.labels, np.bincount(b["probs"].argmax(1), minlength=len(clf.labels)))
            },
        }
    if site is not None and len(site[0]):
        sp, sy = site
        s = run_bundle(clf, sp)
        s_ood = s["ood"]
        s_flag = (s["probs"].max(1) < clf.review_threshold) | s_ood
        wrong = s["probs"].argmax(1) != sy
        res["bccd_site"] = {
            "n": int(len(sy)),
            "accuracy": float((~wrong).mean()),
            "wrong": int(wrong.sum()),
            "wrong_flagged": int((wrong & s_flag).sum()),
            "wrong_flagged_share": float((wrong & s_flag).sum() / max(1, wrong.sum())),
            "ood_flagged": float(s_ood.mean()),
            **_colour_share(s, t),
        }
    res["cost"] = ood_cost(clf, prepare(paths[0], clf.spec))
    return res


def _colour_share(out: dict, t) -> dict:
    """Feature and colour OOD shares apart, where the bundle has the colour statistic."""
    if out["colour_score"] is None or t.colour is None:
        return {}
    return {
        "feature_ood_flagged": float((out["ood_score"] > t.threshold).mean()),
        "colour_ood_flagged": float((out["colour_score"] > t.colour.threshold).mean()),
    }


def _ood(d: dict) -> str:
    """Either statistic, then each apart where the bundle has the colour statistic."""
    if "colour_ood_flagged" not in d:
        return _pct(d.get("ood_flagged"))
    return (
        f"{_pct(d['ood_flagged'])} (features {_pct(d['feature_ood_flagged'])}, colour {_pct(d['colour_ood_flagged'])})"
    )


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def markdown(report: dict) -> str:
    L = [
        "# Trust report",
        "",
        f"Made by `{report['command']}` on {report['created']} ({report['interpreter']}, 1 thread). "
        f"PBC test: {report['pbc_test_n']} cells of `runs/split.csv` (sha256 {report['split_sha256'][:8]}…); "
        f"BCCD fields: {report['bccd_cells']} white cells cut at their annotation boxes (another lab, unlabelled); "
        f"bccd_site: {report['site_n']} labelled BCCD crops. TensorFlow imported: "
        f"{'yes' if report.get('tensorflow_imported') else 'no'}.",
        "",
        "| bundle | PBC test acc. | ECE raw → calibrated | T | OOD flagged on PBC test | OOD flagged on BCCD "
        "| OOD AUROC (Mahalanobis / max-softmax) | review threshold | coverage | accepted acc. | bccd_site acc. "
        "| bccd_site wrong calls flagged | OOD cost |",
        "|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["bundles"]:
        p = r["pbc_test"]
        if not r["has_trust"]:
            L.append(
                f"| {r['model']} | {_pct(p['accuracy'])} | {_pct(p['ece']['raw'])} | – | no trust statistics "
                "| | | | | | | | |"
            )
            continue
        b, s, c, t = r.get("bccd_fields", {}), r.get("bccd_site", {}), r["cost"], r["trust"]
        L.append(
            f"| {r['model']} | {_pct(p['accuracy'])} | {_pct(p['ece']['raw'])} → {_pct(p['ece']['calibrated'])} "
            f"| {t['temperature']:.3g} | {_ood(p)} | {_ood(b)} "
            f"| {b.get('auroc_mahalanobis', float('nan')):.4f} / {b.get('auroc_max_softmax', float('nan')):.4f}"
            + (f" (colour {b['auroc_colour']:.4f})" if "auroc_colour" in b else "")
            + " "
            f"| {t['review_threshold']:.3f} | {_pct(p['coverage'])} | {_pct(p['accepted_accuracy'])} "
            f"| {_pct(s.get('accuracy'))} | {s.get('wrong_flagged', '–')}/{s.get('wrong', '–')} "
            f"({_pct(s.get('wrong_flagged_share'))}) | {c['ood_ms']:.3f} ms ({100 * c['share_of_invoke']:.1f}% "
            f"of {c['invoke_ms']:.2f} ms invoke) |"
        )
    L += [
        "",
        "- **OOD threshold**: set at convert time on the validation split for the stated false-alarm "
        "rate (`false_alarm_target`) for the features and, where the bundle has it, its own lower "
        "rate (`colour_false_alarm_target`) for the colour statistic; a cell is OOD when either is "
        "over. The PBC test column is the false-alarm rate on unseen PBC cells.",
        "- **Review**: a cell is accepted when its calibrated confidence is at least the review threshold "
        "(chosen on validation for the target accepted accuracy) and it is not OOD; coverage is the share "
        "accepted, accepted acc. their accuracy on PBC test.",
        f"- Coverage curve: `{Path(report['plot']).name}`.",
        "",
    ]
    return "\n".join(L)


def plot(report: dict, path: Path) -> None:
    # matplotlib: the [train] extra, only for plots
    import matplotlib

    matplotlib.use("Agg")
    # matplotlib: the [train] extra, only for plots
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for r in report["bundles"]:
        if not r["has_trust"]:
            continue
        c = [p for p in r["pbc_test"]["curve"] if p["accepted_accuracy"] is not None]
        ax.plot([p["coverage"] for p in c], [100 * p["accepted_accuracy"] for p in c], label=r["model"])
        ax.scatter([r["pbc_test"]["coverage"]], [100 * r["pbc_test"]["accepted_accuracy"]], marker="o")
    ax.axhline(99.5, color="grey", ls=":", lw=1)
    ax.set_xlabel("coverage (share of PBC test cells accepted)")
    ax.set_ylabel("accuracy of accepted cells (%)")
    ax.set_title("Review threshold: accepted accuracy vs coverage (dots: shipped operating point)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@click.command("trust-report")
@click.option("--models", "-m", multiple=True, help=f"bundles (default: the shipped {', '.join(SHIPPED)})")
@click.option(
    "--split",
    "split_csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=Path("runs/split.csv"),
    show_default=True,
)
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("../shared/data/pbc256"),
    show_default=True,
)
@click.option(
    "--bccd",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("../shared/data/bccd"),
    show_default=True,
    help="BCCD fields with VOC boxes (skipped when absent)",
)
@click.option(
    "--site",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("../shared/data/bccd_site"),
    show_default=True,
    help="labelled crops of another lab (skipped when absent)",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("benchmarks/results/trust"),
    show_default=True,
    help="path prefix: OUT.json, OUT.md, OUT_coverage.png",
)
def trust_report_cmd(models, split_csv, data_root, bccd, site, out):
    """Calibration, review coverage and out-of-distribution detection of bundles (the trust report)."""
    test = pbc_test(split_csv, data_root)
    cells = bccd_field_cells(bccd) if (bccd / "Annotations").is_dir() else []
    site_set = site_cells(site, LABELS) if site.is_dir() else None
    click.echo(
        f"PBC test {len(test[1])}, BCCD field white cells {len(cells)}, "
        f"bccd_site {len(site_set[0]) if site_set else 0}",
        err=True,
    )
    rows = []
    for name in models or SHIPPED:
        click.echo(f"{name} …", err=True)
        rows.append(evaluate_bundle(name, test, cells, site_set))
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": "edge-bloodcls trust-report " + " ".join(sys.argv[2:]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "interpreter": backend_name(),
        "split_sha256": test[2],
        "pbc_test_n": int(len(test[1])),
        "bccd_cells": len(cells),
        "site_n": len(site_set[0]) if site_set else 0,
        "plot": str(out) + "_coverage.png",
        "bundles": rows,
    }
    # The trust layer is runtime code: it must run where TensorFlow is not installed.
    report["tensorflow_imported"] = "tensorflow" in sys.modules
    plot(report, Path(report["plot"]))
    Path(f"{out}.json").write_text(json.dumps(report, indent=1) + "\n")
    Path(f"{out}.md").write_text(markdown(report))
    click.echo(markdown(report))


COMMANDS = [trust_report_cmd]

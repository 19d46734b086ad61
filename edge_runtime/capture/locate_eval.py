"""How well `locate` finds the annotated white cells of BCCD (Pascal VOC boxes).

    python -m edge_bloodcls.edge_runtime.capture.locate_eval /path/to/bccd --json benchmarks/results/locate_bccd.json

A white cell counts as found when a detection overlaps its box with IoU >= 0.3 (one detection
per box, greedy by IoU). Precision is detections matched / detections made; BCCD annotates most
but not all white cells, so precision is a lower bound. Reported for all images and for each split
in ImageSets/Main (parameters were tuned on train only).
"""

from __future__ import annotations

import json
import platform
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, replace
from pathlib import Path

import click
import numpy as np

from ..core.preprocess import ImageError, load_rgb
from .locate import LocateParams, iou, locate

IOU_MIN = 0.3
DEFAULT_PARAMS = LocateParams()  # frozen: one shared default is safe


def read_voc(xml_path, cls: str = "WBC") -> list[tuple[int, int, int, int]]:
    root = ET.parse(xml_path).getroot()
    out = []
    for obj in root.findall("object"):
        if obj.findtext("name", "").strip() != cls:
            continue
        b = obj.find("bndbox")
        if b is None:
            raise ValueError(f"{xml_path}: a {cls} object without a bndbox")
        x0, y0, x1, y1 = (int(float(b.findtext(k, ""))) for k in ("xmin", "ymin", "xmax", "ymax"))
        out.append((x0, y0, x1, y1))
    return out


def match(pred, truth, iou_min: float = IOU_MIN) -> int:
    """Number of truth boxes matched one-to-one by predictions (greedy on IoU)."""
    pairs = sorted(((iou(p, t), i, j) for i, p in enumerate(pred) for j, t in enumerate(truth)), reverse=True)
    used_p, used_t = set(), set()
    for v, i, j in pairs:
        if v < iou_min:
            break
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    return len(used_t)


def splits(root: Path) -> dict[str, set[str]]:
    out = {}
    for name in ("train", "val", "test"):
        f = root / "ImageSets" / "Main" / f"{name}.txt"
        if f.exists():
            out[name] = {line.strip() for line in f.read_text().split() if line.strip()}
    return out


def load_images(root, ids=None):
    """(id, truth boxes, RGB frame or the ImageError) for each annotated image."""
    root = Path(root)
    for xml in sorted((root / "Annotations").glob("*.xml")):
        if ids is not None and xml.stem not in ids:
            continue
        try:
            rgb = load_rgb(root / "JPEGImages" / f"{xml.stem}.jpg")
        except ImageError as e:
            rgb = e
        yield xml.stem, read_voc(xml), rgb


def evaluate_images(images, params: LocateParams = DEFAULT_PARAMS, rbc_px=None) -> list[dict]:
    """Per image: id, truth boxes, predicted boxes, matched count, milliseconds in locate."""
    rows = []
    for image_id, truth, rgb in images:
        if isinstance(rgb, ImageError):
            rows.append({"id": image_id, "truth": truth, "pred": [], "matched": 0, "ms": 0.0, "error": rgb.reason})
            continue
        t = time.perf_counter()
        dets = locate(rgb, rbc_px=rbc_px, params=params)
        ms = (time.perf_counter() - t) * 1000
        pred = [d.box for d in dets]
        rows.append({"id": image_id, "truth": truth, "pred": pred, "matched": match(pred, truth), "ms": ms})
    return rows


def summarise(rows) -> dict:
    n_truth = sum(len(r["truth"]) for r in rows)
    n_pred = sum(len(r["pred"]) for r in rows)
    tp = sum(r["matched"] for r in rows)
    ms = np.array([r["ms"] for r in rows]) if rows else np.zeros(1)
    return {
        "images": len(rows),
        "wbc_boxes": n_truth,
        "detections": n_pred,
        "matched": tp,
        "recall": tp / n_truth if n_truth else 0.0,
        "precision": tp / n_pred if n_pred else 0.0,
        "images_all_found": sum(r["matched"] == len(r["truth"]) for r in rows),
        "locate_ms_median": float(np.median(ms)),
        "locate_ms_p95": float(np.percentile(ms, 95)),
    }


# Values tried for each parameter by `tune`, around the hand-set starting point.
GRID = {
    "b_drop": (10.0, 12.0, 14.0, 16.0, 18.0, 20.0, 24.0),
    "group_gap": (0.15, 0.2, 0.3, 0.4, 0.5),
    "max_nucleus": (2.0, 2.2, 2.5, 2.8, 3.2),
    "lobe_area": (0.3, 0.5, 0.7),
    "min_area": (0.15, 0.25, 0.35, 0.45, 0.55),
    "cell_expand": (1.0, 1.1, 1.25, 1.4, 1.6),
    "min_cell": (0.8, 1.0, 1.2),
}


def _f2(s: dict) -> float:
    # Recall weighs four times precision: a missed white cell skews the differential, an extra
    # box is visible on the preview and in the log.
    p, r = s["precision"], s["recall"]
    return 5 * p * r / (4 * p + r) if p + r else 0.0


def tune(root, rbc_px=None, rounds: int = 3, log=print) -> LocateParams:
    """Coordinate descent over GRID on the train split only, maximising F2."""
    ids = splits(Path(root)).get("train")
    if not ids:
        raise click.ClickException(f"{root}: no ImageSets/Main/train.txt to tune on")
    images = list(load_images(root, ids))
    params = LocateParams()
    best = _f2(summarise(evaluate_images(images, params, rbc_px)))
    for _ in range(rounds):
        changed = False
        for name, values in GRID.items():
            for v in values:
                trial = replace(params, **{name: v})
                score = _f2(summarise(evaluate_images(images, trial, rbc_px)))
                if score > best + 1e-9:
                    best, params, changed = score, trial, True
                    log(f"train F2={best:.4f} with {name}={v}")
        if not changed:
            break
    return params


def report(root, params: LocateParams = DEFAULT_PARAMS, rbc_px=None) -> dict:
    root = Path(root)
    rows = evaluate_images(load_images(root), params, rbc_px)
    out = {
        "data": str(root),
        "iou_min": IOU_MIN,
        "params": asdict(params),
        "rbc_px": rbc_px or "default (0.21 x short side)",
        "all": summarise(rows),
    }
    for name, ids in splits(root).items():
        out[name] = summarise([r for r in rows if r["id"] in ids])
    out["missed"] = [
        {"id": r["id"], "truth": r["truth"], "pred": r["pred"]} for r in rows if r["matched"] < len(r["truth"])
    ]
    # Listed so that each can be looked at: on BCCD most are white cells left unannotated.
    out["unmatched_detections"] = [
        {"id": r["id"], "box": p} for r in rows for p in r["pred"] if all(iou(p, t) < IOU_MIN for t in r["truth"])
    ]
    out["machine"] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
    }
    return out


@click.command("locate-eval")
@click.argument("bccd", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the full report (with every missed box) here.",
)
@click.option("--rbc-px", type=float, default=None, help="Red-cell diameter in pixels (default: 0.21 x short side).")
@click.option(
    "--tune",
    "do_tune",
    is_flag=True,
    help="First search the parameters on the train split (ImageSets/Main/train.txt), then report with them.",
)
def locate_eval_command(bccd, json_path, rbc_px, do_tune):
    """Recall and precision of white-cell location on a BCCD-style (Pascal VOC) folder."""
    steps = []

    def log(msg):
        steps.append(msg)
        click.echo(msg)

    params = tune(bccd, rbc_px, log=log) if do_tune else LocateParams()
    out = report(bccd, params, rbc_px=rbc_px)
    if do_tune:
        out["tuning"] = {
            "split": "train",
            "objective": "F2 (recall weighted 4x)",
            "grid": GRID,
            "start": asdict(LocateParams()),
            "improvements": steps,
        }
    for name in ("all", "train", "val", "test"):
        if name in out:
            s = out[name]
            click.echo(
                f"{name:<6} images={s['images']:>4} wbc={s['wbc_boxes']:>4} detections={s['detections']:>4} "
                f"recall={s['recall']:.4f} precision={s['precision']:.4f} "
                f"locate median={s['locate_ms_median']:.1f} ms"
            )
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(out, indent=1) + "\n")
        click.echo(f"wrote {json_path}")


if __name__ == "__main__":
    sys.exit(locate_eval_command())

"""One emulated run against the native run, command by command: classify, evaluate, capture,
and the timings (reported, never judged).

A run is a folder of what pi_check.sh's commands left there: info.json (pi_probe.py info),
classify.jsonl, evaluate.json, capture_summary.json and capture_cells.json (pi_probe.py session).
"""

from __future__ import annotations

import json
from pathlib import Path

from pi_compare_report import Report, table

# jsonl and the session log round probabilities to 6 decimals.
ROUNDING = 1e-6


def load(d: Path, name: str, kind: str = "json"):
    """A run's output file, parsed; None when the command left nothing."""
    p = d / name
    if not p.exists():
        return None
    text = p.read_text()
    if kind == "jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if kind == "text":
        return text
    return json.loads(text)


def _max_dp(a: dict, b: dict) -> float:
    if set(a) != set(b):
        return float("inf")
    return max(abs(a[k] - b[k]) for k in a) if a else 0.0


def _close(a, b, tol: float = 1e-9) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= tol
    return a == b


def compare_side(r: Report, native: Path, emu: Path, name: str, step: float, tol: float) -> None:
    prefix = f"[{name}]"
    ni, ei = load(native, "info.json"), load(emu, "info.json")
    if ni is None or ei is None:
        r.fail(f"{prefix} no info.json ({'native' if ni is None else 'emulated'}): the run did not start")
        r(f"  {prefix} FAIL: missing info.json")
        return
    for side, i in (("native", ni), (name, ei)):
        if i["tensorflow"]["importable"] or i["tensorflow"]["distributions"] or i["tensorflow"].get("imported"):
            r.fail(f"{side}: TensorFlow present in the edge install ({i['tensorflow']})")
    if ni["model"]["model_sha256"] != ei["model"]["model_sha256"]:
        r.fail(f"{prefix} different models: {ni['model']['model_sha256']} vs {ei['model']['model_sha256']}")
    _classify(r, native, emu, name, step, tol)
    _evaluate(r, native, emu, name)
    _capture(r, native, emu, name, tol)
    _timings(r, native, emu, name)


def _pair(
    r: Report, native: Path, emu: Path, filename: str, heading: str, failure: str, missing: str, kind: str = "json"
):
    """Both sides' FILENAME after a blank line and HEADING; None (and a failure) when either is missing."""
    n, e = load(native, filename, kind), load(emu, filename, kind)
    r("")
    r(heading)
    if n is None or e is None:
        r.fail(failure)
        r(f"  FAIL: {missing}")
        return None
    return n, e


def _classify(r: Report, native: Path, emu: Path, name: str, step: float, tol: float) -> None:
    prefix = f"[{name}]"
    pair = _pair(
        r,
        native,
        emu,
        "classify.jsonl",
        f"classify (--format jsonl --top-k 8), {name} vs native:",
        f"{prefix} classify produced no output",
        "no output",
        "jsonl",
    )
    if pair is None:
        return
    nc, ec = pair
    by_e = {x["path"]: x for x in ec}
    rows, worst, worst_ood = [], 0.0, 0.0
    for x in nc:
        y = by_e.pop(x["path"], None)
        if "error" in x or y is None or "error" in y:
            r.fail(f"{prefix} classify {x['path']}: {x.get('error') or (y or {}).get('error') or 'missing'}")
            rows.append([x["path"], x.get("label", "ERROR"), (y or {}).get("label", "ERROR"), "", "", "", "FAIL"])
            continue
        dp = _max_dp(x["probs"], y["probs"])
        worst = max(worst, dp)
        # The trust outputs (edge_runtime/core/trust.py) must agree too: the same cells flagged as out
        # of distribution and for review; the OOD score differs at most by float rounding.
        if x.get("ood_score") is not None or y.get("ood_score") is not None:
            dood = abs((x.get("ood_score") or 0.0) - (y.get("ood_score") or 0.0))
            worst_ood = max(worst_ood, dood)
            if x.get("ood") != y.get("ood") or x.get("review") != y.get("review"):
                r.fail(
                    f"{prefix} classify {x['path']}: ood/review {x.get('ood')}/{x.get('review')} vs "
                    f"{y.get('ood')}/{y.get('review')} (scores {x.get('ood_score')} vs {y.get('ood_score')})",
                    "result",
                )
        ok = x["label"] == y["label"] and dp <= tol
        if not ok:
            r.fail(
                f"{prefix} classify {x['path']}: {x['label']} {x['confidence']} vs {y['label']} "
                f"{y['confidence']} (max |dp| {dp:.6f})",
                "result" if x["label"] != y["label"] else "prob",
            )
        rows.append(
            [
                x["path"],
                x["label"],
                y["label"],
                f"{x['confidence']:.6f}",
                f"{y['confidence']:.6f}",
                f"{dp:.6f} ({dp / step:.2f} step)" if step else f"{dp:.2g}",
                "ok" if ok else "FAIL",
            ]
        )
    for p in by_e:
        r.fail(f"{prefix} classify: {p} only in the emulated run")
    for line in table(rows, ["path", "native", name, "conf native", f"conf {name}", "max |dp| over 8", ""]):
        r("  " + line)
    r(
        f"  {len(nc)} images; labels identical: {sum(1 for x in rows if x[1] == x[2])}/{len(rows)}; "
        f"max |dp| {worst:.6f} (tolerance {tol:.6f}); OOD and review flags identical, max |d ood_score| "
        f"{worst_ood:.6f}"
    )


def _evaluate(r: Report, native: Path, emu: Path, name: str) -> None:
    pair = _pair(
        r,
        native,
        emu,
        "evaluate.json",
        f"evaluate (--json), {name} vs native:",
        f"[{name}] evaluate produced no report",
        "no report",
    )
    if pair is None:
        return
    ne, ee = pair
    # Identical predictions give identical confusion matrices; the derived floats may differ in
    # the last bit between scikit-learn versions.
    same = (
        ne["metrics"]["confusion_matrix"] == ee["metrics"]["confusion_matrix"]
        and ne["n_images"] == ee["n_images"]
        and ne["n_failed"] == ee["n_failed"]
        and _close(ne["metrics"], ee["metrics"])
    )
    if not same:
        r.fail(f"[{name}] evaluate: confusion matrices or metrics differ")
    m = ne["metrics"]
    r(
        f"  native:   n={ne['n_images']} failed={ne['n_failed']} accuracy={m['accuracy']:.4f} "
        f"balanced={m['balanced_accuracy']:.4f} macro F1={m['macro']['f1']:.4f}"
    )
    m = ee["metrics"]
    r(
        f"  {name + ':':<9} n={ee['n_images']} failed={ee['n_failed']} accuracy={m['accuracy']:.4f} "
        f"balanced={m['balanced_accuracy']:.4f} macro F1={m['macro']['f1']:.4f}"
    )
    r(f"  confusion matrices identical, all metrics equal (to 1e-9): {'yes' if same else 'NO'}")


def _capture(r: Report, native: Path, emu: Path, name: str, tol: float) -> None:
    prefix = f"[{name}]"
    pair = _pair(
        r,
        native,
        emu,
        "capture_cells.json",
        f"capture --mode field --no-preview --max-frames N, SQLite log read back, {name} vs native:",
        f"{prefix} capture log could not be read back",
        "no capture log",
    )
    if pair is None:
        return
    ns, es = pair
    for side, s in (("native", ns), (name, es)):
        r(
            f"  {side + ':':<9} {s['session']['frames']} frames, {s['session']['cells']} cells, "
            f"end: {s['session']['end_reason']}; interpreter {s['session']['interpreter']}"
        )
    r("  frames: " + ", ".join(f"{Path(f['name']).name} ({f['n_cells']})" for f in ns["frames"]))
    nf = [(Path(f["name"]).name, f["width"], f["height"], f["n_cells"]) for f in ns["frames"]]
    ef = [(Path(f["name"]).name, f["width"], f["height"], f["n_cells"]) for f in es["frames"]]
    if nf != ef:
        r.fail(f"{prefix} capture frames differ: {nf} vs {ef}")
    if not ns["cells"]:
        r.fail(f"{prefix} capture logged no cells: nothing compared")
    if len(ns["cells"]) != len(es["cells"]):
        r.fail(f"{prefix} capture: {len(ns['cells'])} vs {len(es['cells'])} cells")
    rows, worst = [], 0.0
    for a, b in zip(ns["cells"], es["cells"]):
        dp = _max_dp(a["probs"], b["probs"])
        dc = abs(a["confidence"] - b["confidence"])
        worst = max(worst, dp)
        same_cell = a["frame_index"] == b["frame_index"] and a["box"] == b["box"] and a["label"] == b["label"]
        ok = same_cell and dp <= tol and dc <= tol + ROUNDING
        if not ok:
            r.fail(
                f"{prefix} capture cell frame {a['frame_index']} {a['box']}: {a['label']} vs "
                f"{b['frame_index']} {b['box']} {b['label']} (max |dp| {dp:.6f})",
                "prob" if same_cell else "result",
            )
        rows.append(
            [
                a["frame_index"],
                ",".join(map(str, a["box"])),
                "same" if a["box"] == b["box"] else ",".join(map(str, b["box"])),
                a["label"],
                b["label"],
                f"{a['confidence']:.6f}",
                f"{b['confidence']:.6f}",
                f"{dp:.6f}",
                "ok" if ok else "FAIL",
            ]
        )
    for line in table(
        rows, ["frame", "box native", f"box {name}", "native", name, "conf native", f"conf {name}", "max |dp|", ""]
    ):
        r("  " + line)
    r(
        f"  cells identical in frame, box and label: {sum(1 for x in rows if x[-1] == 'ok')}/{len(rows)}; "
        f"max |dp| {worst:.6f}"
    )


def _timings(r: Report, native: Path, emu: Path, name: str) -> None:
    """Interpreter invoke only, labelled for what they are: neither side is a Pi."""
    r("")
    r("timings, median interpreter invoke() per image/cell (classify | evaluate | capture):")
    for side, d, label in (
        ("native", native, "native x86-64 development machine (busy), not a Pi"),
        (name, emu, "EMULATED: qemu-user on x86-64, NOT a Raspberry Pi timing"),
    ):
        cl = load(d, "classify.jsonl", "jsonl") or []
        lat = sorted(x["latency_ms"] for x in cl if "latency_ms" in x)
        med = f"{lat[len(lat) // 2]:.1f}" if lat else "-"
        ev = load(d, "evaluate.json") or {}
        cs = load(d, "capture_summary.json") or {}
        cap = (cs.get("timing_ms") or {}).get("interpreter", {}).get("median")
        r(
            f"  {side + ':':<9} {med} | {ev.get('latency_ms', {}).get('median', float('nan')):.1f} | "
            f"{cap if cap is not None else '-'} ms  [{label}]"
        )

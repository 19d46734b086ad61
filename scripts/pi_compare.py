"""`make pi-check` helpers (standard library only; runs with any Python 3.9+).

    pi_compare.py inputs OUT [--data DIR]
        The check's inputs, a fixed selection: 2 PBC images per class (classify), 5 others per
        class in class folders (evaluate), 8 BCCD fields (capture, field mode). Copies, never
        links; synthetic PNGs when the data set is not there.

    pi_compare.py compare --native DIR --emulated NAME=DIR [...] --manifest M.json --log FILE
        Native run vs each emulated run: identical labels (classify, evaluate, every cell of the
        capture log, and identical boxes), probabilities within one output quantization step.
        Writes the report to FILE (appending) and stdout; exit 1 on any difference.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import struct
import sys
import zlib
from pathlib import Path


def _labels() -> tuple:
    """The runtime's labels, from their one list (edge_runtime/spec.py). pi_check.sh runs this
    with the machine's own python3, where edge_bloodcls is not installed: then spec.py (standard
    library only) is loaded from this checkout by path."""
    try:
        from edge_bloodcls.edge_runtime.spec import LABELS as labels
    except ImportError:
        import importlib.util

        spec_py = Path(__file__).resolve().parents[1] / "edge_runtime" / "spec.py"
        spec = importlib.util.spec_from_file_location("_bloodcls_spec", spec_py)
        sys.modules[spec.name] = module = importlib.util.module_from_spec(spec)  # dataclasses looks it up
        spec.loader.exec_module(module)
        labels = module.LABELS
    return tuple(labels)


LABELS = _labels()
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
N_CLASSIFY, N_EVALUATE, N_FIELDS = 2, 5, 8
# jsonl and the session log round probabilities to 6 decimals.
ROUNDING = 1e-6


# ---------------------------------------------------------------- inputs

def _spread(items: list, n: int) -> list:
    """n items evenly spread over a sorted list (deterministic, not just the first n)."""
    if len(items) <= n:
        return list(items)
    return [items[(2 * j + 1) * len(items) // (2 * n)] for j in range(n)]


def _images(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _png(path: Path, w: int, h: int, pixel) -> None:
    raw = bytearray()
    for y in range(h):
        raw.append(0)
        for x in range(w):
            raw.extend(pixel(x, y))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(bytes(raw), 6)) + chunk(b"IEND", b""))


def _synthetic_cell(path: Path, k: int, seed: int) -> None:
    """A pink disc with a nucleus whose size and shade depend on the class index."""
    rng = random.Random(seed)
    size, c = 128, 64 + rng.randint(-4, 4)
    r_cell, r_nuc = 30 + 3 * k, 10 + 2 * k
    nuc = (60 + 15 * k, 40 + 5 * k, 140 + 10 * (k % 4))

    def pixel(x, y):
        d2 = (x - c) ** 2 + (y - c) ** 2
        n = (x * 7 + y * 13 + seed) % 9
        if d2 < r_nuc ** 2:
            return bytes(v + n for v in nuc)
        if d2 < r_cell ** 2:
            return bytes((225 - n, 190 - n, 205 - n))
        return bytes((240 - n, 225 - n, 215 - n))

    _png(path, size, size, pixel)


def _synthetic_field(path: Path, seed: int) -> None:
    """640x480: pale background, pink red cells, two or three purple nuclei."""
    rng = random.Random(seed)
    w, h = 640, 480
    rbcs = [(rng.randint(0, w), rng.randint(0, h)) for _ in range(40)]
    wbcs = [(rng.randint(80, w - 80), rng.randint(80, h - 80)) for _ in range(rng.randint(2, 3))]

    def pixel(x, y):
        for cx, cy in wbcs:
            d2 = (x - cx) ** 2 + (y - cy) ** 2
            if d2 < 30 ** 2:
                return bytes((90, 50, 150))
            if d2 < 48 ** 2:
                return bytes((215, 200, 225))
        for cx, cy in rbcs:
            if (x - cx) ** 2 + (y - cy) ** 2 < 45 ** 2:
                return bytes((220, 150, 160))
        return bytes((235, 228, 215))

    _png(path, w, h, pixel)


def make_inputs(out: Path, data: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    pbc, bccd = data / "pbc256", data / "bccd" / "JPEGImages"
    record = {"data": str(data), "classify": [], "evaluate": [], "fields": []}

    def put(src: Path, dst: Path, key: str):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        record[key].append({"file": str(dst.relative_to(out)), "source": str(src),
                            "sha256": hashlib.sha256(dst.read_bytes()).hexdigest()})

    classes = [lab for lab in LABELS if (pbc / lab).is_dir() and _images(pbc / lab)]
    if classes:
        record["pbc"] = "real"
        for lab in classes:
            files = _images(pbc / lab)
            picked = _spread(files, N_CLASSIFY)
            rest = [f for f in files if f not in picked]
            for f in picked:
                put(f, out / "cells" / lab / f.name, "classify")
            for f in _spread(rest, N_EVALUATE):
                put(f, out / "evalset" / lab / f.name, "evaluate")
    else:
        record["pbc"] = "synthetic (no PBC images at %s)" % pbc
        for k, lab in enumerate(LABELS):
            for i in range(N_CLASSIFY + N_EVALUATE):
                dst = out / ("cells" if i < N_CLASSIFY else "evalset") / lab / f"{lab}_{i}.png"
                dst.parent.mkdir(parents=True, exist_ok=True)
                _synthetic_cell(dst, k, seed=100 * k + i)
                record["classify" if i < N_CLASSIFY else "evaluate"].append(
                    {"file": str(dst.relative_to(out)), "source": "synthetic"})
    fields = _images(bccd) if bccd.is_dir() else []
    if fields:
        record["bccd"] = "real"
        for f in _spread(fields, N_FIELDS):
            put(f, out / "fields" / f.name, "fields")
    else:
        record["bccd"] = "synthetic (no BCCD fields at %s)" % bccd
        for i in range(N_FIELDS):
            dst = out / "fields" / f"field_{i}.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            _synthetic_field(dst, seed=i)
            record["fields"].append({"file": str(dst.relative_to(out)), "source": "synthetic"})
    (out / "inputs.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


# ---------------------------------------------------------------- compare

class Report:
    def __init__(self, log: Path | None):
        self.lines: list[str] = []
        self.failures: list[str] = []
        self.kinds: list[str] = []
        self.log = log

    def __call__(self, line: str = "") -> None:
        self.lines.append(line)
        print(line)

    def fail(self, what: str, kind: str = "result") -> None:
        """kind: "result" (a label, box, count or error) or "prob" (only a probability, labels equal)."""
        self.failures.append(what)
        self.kinds.append(kind)

    def write(self) -> None:
        if self.log:
            with open(self.log, "a") as f:
                f.write("\n".join(self.lines) + "\n")


def _load(d: Path, name: str, kind: str = "json"):
    p = d / name
    if not p.exists():
        return None
    text = p.read_text()
    if kind == "jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if kind == "text":
        return text
    return json.loads(text)


def _table(rows: list[list[str]], head: list[str]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*map(str, r)) for r in rows]


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


def _versions(r: Report, sides: list[tuple[str, dict]]) -> None:
    def row(title, f):
        return [title] + [f(i) if i else "-" for _, i in sides]

    def pkg(name):
        return lambda i: i["packages"].get(name) or "-"

    rows = [
        row("OS", lambda i: i["os"]),
        row("machine", lambda i: i["machine"] + (f" (qemu-user, QEMU_CPU={i['qemu_cpu']})" if i.get("qemu_cpu") else "")),
        row("CPU features (AT_HWCAP)", lambda i: ",".join(i["cpu_features"]) if i["cpu_features"] is not None else "n/a (x86-64)"),
        row("libc", lambda i: i["libc"]),
        row("Python", lambda i: f"{i['python']} ({i['implementation']})"),
        row("interpreter", lambda i: f"{i['model']['interpreter']} {i['model']['interpreter_version']}, "
                                     f"{i['model']['threads']} thread(s)"),
        row("XNNPACK delegate", lambda i: "created" if i.get("xnnpack_delegate") else "not created"),
        row("interpreter stderr", lambda i: "; ".join(x[:60] for x in i.get("interpreter_log", [])[:3]) or "-"),
        row("numpy", pkg("numpy")),
        row("opencv-python-headless", lambda i: i["packages"].get("opencv-python-headless")
            or f"cv2 {i['modules']['cv2']} ({i['modules']['cv2_file']})"),
        row("pillow", pkg("pillow")),
        row("scikit-learn", pkg("scikit-learn")),
        row("scipy", pkg("scipy")),
        row("click", pkg("click")),
        row("edge-bloodcls", pkg("edge-bloodcls")),
        row("TensorFlow installed", lambda i: ("importable! " if i["tensorflow"]["importable"] else "no")
            + (" " + ",".join(i["tensorflow"]["distributions"]) if i["tensorflow"]["distributions"] else "")),
        row("model", lambda i: f"{i['model']['model']} sha256 {i['model']['model_sha256'][:12]}"),
    ]
    for line in _table(rows, ["", *(name for name, _ in sides)]):
        r("  " + line)


def compare_side(r: Report, native: Path, emu: Path, name: str, step: float, tol: float) -> None:
    prefix = f"[{name}]"
    ni, ei = _load(native, "info.json"), _load(emu, "info.json")
    if ni is None or ei is None:
        r.fail(f"{prefix} no info.json ({'native' if ni is None else 'emulated'}): the run did not start")
        r(f"  {prefix} FAIL: missing info.json")
        return
    for side, i in (("native", ni), (name, ei)):
        if i["tensorflow"]["importable"] or i["tensorflow"]["distributions"] or i["tensorflow"].get("imported"):
            r.fail(f"{side}: TensorFlow present in the edge install ({i['tensorflow']})")
    if ni["model"]["model_sha256"] != ei["model"]["model_sha256"]:
        r.fail(f"{prefix} different models: {ni['model']['model_sha256']} vs {ei['model']['model_sha256']}")

    # classify
    nc, ec = _load(native, "classify.jsonl", "jsonl"), _load(emu, "classify.jsonl", "jsonl")
    r("")
    r(f"classify (--format jsonl --top-k 8), {name} vs native:")
    if nc is None or ec is None:
        r.fail(f"{prefix} classify produced no output")
        r("  FAIL: no output")
    else:
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
            # The trust outputs (edge_runtime/trust.py) must agree too: the same cells flagged as out
            # of distribution and for review; the OOD score differs at most by float rounding.
            if x.get("ood_score") is not None or y.get("ood_score") is not None:
                dood = abs((x.get("ood_score") or 0.0) - (y.get("ood_score") or 0.0))
                worst_ood = max(worst_ood, dood)
                if x.get("ood") != y.get("ood") or x.get("review") != y.get("review"):
                    r.fail(f"{prefix} classify {x['path']}: ood/review {x.get('ood')}/{x.get('review')} vs "
                           f"{y.get('ood')}/{y.get('review')} (scores {x.get('ood_score')} vs {y.get('ood_score')})",
                           "result")
            ok = x["label"] == y["label"] and dp <= tol
            if not ok:
                r.fail(f"{prefix} classify {x['path']}: {x['label']} {x['confidence']} vs {y['label']} "
                       f"{y['confidence']} (max |dp| {dp:.6f})", "result" if x["label"] != y["label"] else "prob")
            rows.append([x["path"], x["label"], y["label"], f"{x['confidence']:.6f}", f"{y['confidence']:.6f}",
                         f"{dp:.6f} ({dp / step:.2f} step)" if step else f"{dp:.2g}", "ok" if ok else "FAIL"])
        for p in by_e:
            r.fail(f"{prefix} classify: {p} only in the emulated run")
        for line in _table(rows, ["path", "native", name, "conf native", f"conf {name}", "max |dp| over 8", ""]):
            r("  " + line)
        r(f"  {len(nc)} images; labels identical: {sum(1 for x in rows if x[1] == x[2])}/{len(rows)}; "
          f"max |dp| {worst:.6f} (tolerance {tol:.6f}); OOD and review flags identical, max |d ood_score| "
          f"{worst_ood:.6f}")

    # evaluate
    ne, ee = _load(native, "evaluate.json"), _load(emu, "evaluate.json")
    r("")
    r(f"evaluate (--json), {name} vs native:")
    if ne is None or ee is None:
        r.fail(f"{prefix} evaluate produced no report")
        r("  FAIL: no report")
    else:
        # Identical predictions give identical confusion matrices; the derived floats may differ in
        # the last bit between scikit-learn versions.
        same = (ne["metrics"]["confusion_matrix"] == ee["metrics"]["confusion_matrix"]
                and ne["n_images"] == ee["n_images"] and ne["n_failed"] == ee["n_failed"]
                and _close(ne["metrics"], ee["metrics"]))
        if not same:
            r.fail(f"{prefix} evaluate: confusion matrices or metrics differ")
        m = ne["metrics"]
        r(f"  native:   n={ne['n_images']} failed={ne['n_failed']} accuracy={m['accuracy']:.4f} "
          f"balanced={m['balanced_accuracy']:.4f} macro F1={m['macro']['f1']:.4f}")
        m = ee["metrics"]
        r(f"  {name + ':':<9} n={ee['n_images']} failed={ee['n_failed']} accuracy={m['accuracy']:.4f} "
          f"balanced={m['balanced_accuracy']:.4f} macro F1={m['macro']['f1']:.4f}")
        r(f"  confusion matrices identical, all metrics equal (to 1e-9): {'yes' if same else 'NO'}")

    # capture
    ns, es = _load(native, "capture_cells.json"), _load(emu, "capture_cells.json")
    r("")
    r(f"capture --mode field --no-preview --max-frames N, SQLite log read back, {name} vs native:")
    if ns is None or es is None:
        r.fail(f"{prefix} capture log could not be read back")
        r("  FAIL: no capture log")
    else:
        for side, s in (("native", ns), (name, es)):
            r(f"  {side + ':':<9} {s['session']['frames']} frames, {s['session']['cells']} cells, "
              f"end: {s['session']['end_reason']}; interpreter {s['session']['interpreter']}")
        r(f"  frames: " + ", ".join(f"{Path(f['name']).name} ({f['n_cells']})" for f in ns["frames"]))
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
                r.fail(f"{prefix} capture cell frame {a['frame_index']} {a['box']}: {a['label']} vs "
                       f"{b['frame_index']} {b['box']} {b['label']} (max |dp| {dp:.6f})",
                       "prob" if same_cell else "result")
            rows.append([a["frame_index"], ",".join(map(str, a["box"])),
                         "same" if a["box"] == b["box"] else ",".join(map(str, b["box"])),
                         a["label"], b["label"], f"{a['confidence']:.6f}", f"{b['confidence']:.6f}",
                         f"{dp:.6f}", "ok" if ok else "FAIL"])
        for line in _table(rows, ["frame", "box native", f"box {name}", "native", name, "conf native",
                                  f"conf {name}", "max |dp|", ""]):
            r("  " + line)
        r(f"  cells identical in frame, box and label: {sum(1 for x in rows if x[-1] == 'ok')}/{len(rows)}; "
          f"max |dp| {worst:.6f}")

    # timings: interpreter invoke only, labelled for what they are.
    r("")
    r(f"timings, median interpreter invoke() per image/cell (classify | evaluate | capture):")
    for side, d, label in (("native", native, "native x86-64 development machine (busy), not a Pi"),
                           (name, emu, "EMULATED: qemu-user on x86-64, NOT a Raspberry Pi timing")):
        cl = _load(d, "classify.jsonl", "jsonl") or []
        lat = sorted(x["latency_ms"] for x in cl if "latency_ms" in x)
        med = f"{lat[len(lat) // 2]:.1f}" if lat else "-"
        ev = _load(d, "evaluate.json") or {}
        cs = _load(d, "capture_summary.json") or {}
        cap = (cs.get("timing_ms") or {}).get("interpreter", {}).get("median")
        r(f"  {side + ':':<9} {med} | {ev.get('latency_ms', {}).get('median', float('nan')):.1f} | "
          f"{cap if cap is not None else '-'} ms  [{label}]")


def compare(args) -> int:
    r = Report(Path(args.log) if args.log else None)
    native = Path(args.native)
    manifest = json.loads(Path(args.manifest).read_text()) if args.manifest else {}
    q = (manifest.get("output") or {}).get("quant") or {}
    ni = _load(native, "info.json")
    step = q.get("scale")
    source = "the bundle manifest (output.quant.scale)"
    if not step and ni:
        step = ni["model"]["output_quant"]["scale"]
        source = "the interpreter's output tensor (the manifest has no output.quant)"
    if step:
        tol = step + ROUNDING
        r(f"output quantization step {step:.8f} (from {source}); tolerance for probabilities: one step "
          f"+ {ROUNDING:g} for rounding to 6 decimals = {tol:.8f}")
    else:
        step, tol = 0.0, 1e-5
        r(f"float output (no quantization step); tolerance for probabilities {tol:g}")
    sides = [("native", ni)] + [(n, _load(Path(d), "info.json")) for n, d in (e.split("=", 1) for e in args.emulated)]
    r("")
    r("versions:")
    if ni is None:
        r.fail("native run produced no info.json")
    _versions(r, [(n, i) for n, i in sides])
    for spec in args.emulated:
        name, d = spec.split("=", 1)
        r("")
        r(f"==== {name} vs native " + "=" * 40)
        compare_side(r, native, Path(d), name, step, tol)
    r("")
    if r.failures:
        n_prob = r.kinds.count("prob")
        n_res = len(r.kinds) - n_prob
        r(f"RESULT: FAIL: {n_res} difference(s) in labels, boxes, counts or errors; {n_prob} result(s) with "
          "the same label but a probability more than one quantization step away")
        for f in r.failures:
            r(f"  - {f}")
    else:
        r("RESULT: PASS: every label identical to the native run, every probability within one output "
          "quantization step, identical capture boxes; no TensorFlow on either side")
    r.write()
    return 1 if r.failures else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("inputs")
    a.add_argument("out")
    a.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    c = sub.add_parser("compare")
    c.add_argument("--native", required=True)
    c.add_argument("--emulated", action="append", default=[], metavar="NAME=DIR")
    c.add_argument("--manifest")
    c.add_argument("--log")
    args = ap.parse_args(argv)
    if args.cmd == "inputs":
        rec = make_inputs(Path(args.out), Path(args.data))
        print(f"inputs: {len(rec['classify'])} cells to classify ({rec['pbc']}), {len(rec['evaluate'])} in "
              f"class folders ({rec['pbc']}), {len(rec['fields'])} fields ({rec['bccd']})")
        return 0
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())

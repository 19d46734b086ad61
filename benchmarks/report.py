"""Markdown report and PNG plots from a bench results JSON (benchmarks/harness.py).

    edge-bloodcls bench-report benchmarks/results/bench.json

Writes REPORT.md, bench_accuracy_latency.png, bench_size_accuracy.png and
bench_confusion_shipped.png beside it (or in --out). Everything here is computed from the JSON;
nothing is measured.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..edge_runtime.spec import LABELS

FORMAT_ORDER = ["keras", "float32", "float16", "dynamic", "int8", "qat-int8", "edgetpu"]
PAPER_ORDER = ["vgg16", "vgg19", "resnet50", "mobilenetv2"]
TABLE_ORDER = ["mobilenetv2", "resnet50", "vgg16", "vgg19"]  # the shipped network first
PAPER_NAMES = {"vgg16": "VGG16", "vgg19": "VGG19", "resnet50": "ResNet50", "mobilenetv2": "MobileNetV2"}
# The paper's Table 2 (224x224, ImageNet transfer learning). Its "precision" is specificity.
PAPER = {"vgg16": {"accuracy": 0.9053}, "vgg19": {"accuracy": 0.8901}, "resnet50": {"accuracy": 0.9634},
         "mobilenetv2": {"accuracy": 0.9789, "precision": 0.98, "recall": 0.98, "f1": 0.98}}

# Published figures the edge estimates scale from; none of them was measured here.
XNNPACK_PI4 = {  # google/XNNPACK README, "Raspberry Pi" table, RPi 4 (BCM2711, ARM64), multi-threaded, Feb 2022
    "source": "XNNPACK README (github.com/google/XNNPACK), Raspberry Pi 4 BCM2711 ARM64, 4 threads, Feb 2022",
    "model": "MobileNet v2 1.0 224x224", "macs": 300e6, "float32": 46.0, "int8": 17.0}
PI4_INT8_SPEEDUP = XNNPACK_PI4["float32"] / XNNPACK_PI4["int8"]
PI5_SPEEDUP = (2.0, 3.0)  # Raspberry Pi Ltd, Pi 5 announcement: "2-3x the CPU performance of Pi 4"
CORAL = {  # coral.ai/docs/edgetpu/benchmarks, Table 1, desktop CPU + USB Accelerator (USB 3.0), ms
    "source": "coral.ai/docs/edgetpu/benchmarks, Table 1 (USB Accelerator on USB 3.0)",
    "mobilenetv2_ms": 2.6, "mobilenetv2_macs": 300e6,  # 3.5 M parameters: on chip
    "vgg16_ms": 296.0, "vgg16_mb": 138.0}  # 138 M int8 parameters: nearly all streamed
CORAL_SRAM_MB = 8  # parameters beyond the Edge TPU's on-chip memory stream from the host each inference
# Time a streamed MB costs at most: VGG16's whole time as if it were all streaming.
CORAL_MS_PER_STREAMED_MB = CORAL["vgg16_ms"] / CORAL["vgg16_mb"]
# Formats whose arithmetic on an Arm CPU is float32 (float16 weights are dequantized at load).
FLOAT_LIKE = {"float32": "float32", "float16": "float32", "int8": "int8", "qat-int8": "int8"}

PLOTS = {"latency": "bench_accuracy_latency.png", "size": "bench_size_accuracy.png",
         "confusion": "bench_confusion_shipped.png"}


def _order(c: dict, models: list[str]) -> tuple:
    fmt = c["format"]
    return (models.index(c["model"]) if c["model"] in models else 99,
            FORMAT_ORDER.index(fmt) if fmt in FORMAT_ORDER else 99, c["threads"] != "1", c["threads"])


def _ms(x) -> str:
    """Milliseconds with three significant figures below 10 ms (a tiny model's are hundredths)."""
    if x is None:
        return ""
    return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


def _pct(x, nd=2) -> str:
    return "" if x is None else f"{x * 100:.{nd}f}"


def _f(x, fmt=".2f") -> str:
    return "" if x is None else format(x, fmt)


def model_order(r: dict) -> list[str]:
    """Runs and builds of the four networks (MobileNetV2 first), then the rest (bundles, the reference)."""
    def rank(k):
        m = r["models"][k]
        return m.get("role") != "model", TABLE_ORDER.index(m["arch"]) if m["arch"] in TABLE_ORDER else 9

    return sorted(r["models"], key=rank)


def accuracy(r: dict, model: str, fmt: str) -> dict | None:
    a = r["accuracy"].get(f"{model}|{fmt}")
    return a["metrics"] if a and a.get("metrics") else None


def accuracy_note(r: dict, model: str, fmt: str) -> str:
    a = r["accuracy"].get(f"{model}|{fmt}")
    if a and a.get("metrics"):
        return ""
    if a and a.get("note"):
        return a["note"]
    return "not trained" if not r["models"].get(model, {}).get("trained", True) else "not measured"


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both lower latency and higher accuracy,
    in order of latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def threads_for_plots(r: dict) -> str:
    ths = {c["threads"] for c in r["configs"]}
    return "1" if "1" in ths else sorted(ths)[0] if ths else "1"


# --- plots --------------------------------------------------------------------------------

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _log_x(ax):
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    # 1-2-5 ticks in plain numbers: a range under a decade still gets labels, and none collide.
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _point(ax, c, x, y, k, colours, markers):
    ax.scatter(x, y, color=colours[c["model"]], marker=markers.get(c["format"], "x"), s=60, zorder=3)
    # Formats of one model often sit on top of each other: alternate the label side.
    ax.annotate(f"{c['model']} {c['format']}", (x, y), fontsize=7, xytext=(5, 4 if k % 2 else -10),
                textcoords="offset points")


def _plot_setup(r: dict):
    """What both scatter plots share: the thread count shown, the scored rows, colours, markers."""
    th = threads_for_plots(r)
    rows = [c for c in r["configs"] if c["threads"] == th and accuracy(r, c["model"], c["format"])]
    plt = _plt() if rows else None
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(model_order(r))} if rows else {}
    return th, rows, plt, colours, dict(zip(FORMAT_ORDER, "sodv^P*"))


def plot_accuracy_latency(r: dict, path: Path) -> bool:
    th, rows, plt, colours, markers = _plot_setup(r)
    if not rows:
        return False
    pts = [(c["latency_ms"]["p50"], accuracy(r, c["model"], c["format"])["accuracy"] * 100) for c in rows]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for k, (c, (x, y)) in enumerate(zip(rows, pts)):
        _point(ax, c, x, y, k, colours, markers)
    front = pareto(pts)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k--", lw=1, zorder=2)
    ax.scatter([pts[i][0] for i in front], [pts[i][1] for i in front], s=180, facecolors="none", edgecolors="k",
               lw=1, zorder=2, label="Pareto front")
    for fmt in [f for f in FORMAT_ORDER if any(c["format"] == f for c in rows)]:
        ax.scatter([], [], color="grey", marker=markers[fmt], label=fmt)
    _log_x(ax)
    ax.set_xlabel(f"latency p50, ms per image (batch 1, {th} thread{'s' if th != '1' else ''}; log scale)")
    ax.set_ylabel("test accuracy, %")
    ax.set_title("Accuracy vs latency (" + r["machine"]["cpu_model"] + ")", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_size_accuracy(r: dict, path: Path) -> bool:
    th, rows, plt, colours, markers = _plot_setup(r)
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for k, c in enumerate(rows):
        x, y = c["size_bytes"] / 1e6, accuracy(r, c["model"], c["format"])["accuracy"] * 100
        _point(ax, c, x, y, k, colours, markers)
    _log_x(ax)
    ax.set_xlabel("model file size, MB (log scale)")
    ax.set_ylabel("test accuracy, %")
    ax.set_title("Size vs accuracy", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def shipped_accuracy(r: dict) -> tuple[str, dict] | None:
    """(what it is, metrics) of the runtime's default bundle: its own measurement, else the
    export with the same sha256."""
    s = r.get("shipped")
    if s:
        same = s.get("same_as")
        key = (same["model"], same["format"]) if same else (s["name"], None)
        if same:
            m = accuracy(r, *key)
            if m:
                return f"{s['name']} (= {same['model']} {same['format']}, same sha256)", m
        for k, a in r["accuracy"].items():
            if k.startswith(s["name"] + "|") and a.get("metrics"):
                return s["name"], a["metrics"]
    base = r.get("baseline")
    m = accuracy(r, base, "int8") if base else None
    return (f"{base} int8 (the default bundle was not measured: the baseline's int8 instead)", m) if m else None


def plot_confusion(title: str, m: dict, path: Path):
    plt = _plt()
    cm = np.asarray(m["confusion_matrix"], float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    labels = m.get("labels") or list(LABELS)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    import textwrap

    ax.set_title(textwrap.fill(f"{title}: accuracy {m['accuracy'] * 100:.2f}% (n={m['n']})", 70), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- edge estimates -------------------------------------------------------------------------

def edge_estimates(r: dict) -> list[dict]:
    """Estimated Pi 4 / Pi 5 / Coral latency per model and format, from published figures for
    MobileNet v2 at 224 px (XNNPACK_PI4, CORAL). Pi 4 by two methods:
      scaled: float formats, our latency x (published Pi 4 float32 / ours for the untrained
        224 px MobileNetV2 reference, same thread setting); int8 formats, that float32 estimate
        / the published Pi 4 int8 speed-up (this CPU's int8 instructions have no Pi 4 twin);
      macs: the published time x our MACs / the reference's MACs."""
    by = {(c["model"], c["format"], c["threads"]): c for c in r["configs"]}
    ref = next((k for k, m in r["models"].items() if m.get("role") == "reference"), None)
    th = "all" if any(c["threads"] == "all" for c in r["configs"]) else threads_for_plots(r)
    ref_f32 = by.get((ref, "float32", th)) if ref else None
    out = []
    for model in model_order(r):
        info = r["models"][model]
        if info.get("role") == "reference" or not info.get("macs"):
            continue
        f32 = by.get((model, "float32", th))
        f32_scaled = (f32["latency_ms"]["p50"] * XNNPACK_PI4["float32"] / ref_f32["latency_ms"]["p50"]
                      if f32 and ref_f32 else None)
        for fmt in [f for f in FORMAT_ORDER if f in FLOAT_LIKE]:
            c = by.get((model, fmt, th))
            if not c:
                continue
            kind = FLOAT_LIKE[fmt]
            macs_ms = XNNPACK_PI4[kind] * info["macs"] / XNNPACK_PI4["macs"]
            if kind == "float32":
                scaled = (c["latency_ms"]["p50"] * XNNPACK_PI4["float32"] / ref_f32["latency_ms"]["p50"]
                          if ref_f32 else None)
            else:
                scaled = f32_scaled / PI4_INT8_SPEEDUP if f32_scaled else None
            both = [v for v in (scaled, macs_ms) if v is not None]
            row = {"model": model, "format": fmt, "here_ms": c["latency_ms"]["p50"], "threads": th,
                   "pi4_scaled_ms": scaled, "pi4_macs_ms": macs_ms, "pi4_ms": (min(both), max(both))}
            row["pi5_ms"] = (row["pi4_ms"][0] / PI5_SPEEDUP[1], row["pi4_ms"][1] / PI5_SPEEDUP[0])
            if kind == "int8":
                compute = CORAL["mobilenetv2_ms"] / CORAL["mobilenetv2_macs"] * info["macs"]
                streamed = max(0.0, c["size_bytes"] / 1e6 - CORAL_SRAM_MB)
                row["coral_ms"] = (compute, compute + streamed * CORAL_MS_PER_STREAMED_MB)
                row["int8_mb"] = c["size_bytes"] / 1e6
            out.append(row)
    return out


# --- markdown -------------------------------------------------------------------------------

def _machine_lines(r: dict) -> list[str]:
    m = r["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
    loads = [c["loadavg"][0] for c in r["configs"] if c.get("loadavg")]
    lines = [f"- CPU: {m['cpu_model']} ({m['machine']}), {m['cores_usable']} usable of {m['cores_logical']} logical "
             f"cores, {m['memory_gb']} GB; flags of interest: {' '.join(m['cpu_flags_of_interest']) or 'none'} "
             f"(all {len(m['cpu_flags'])} flags in the JSON)",
             f"- OS: {m['os']}, kernel {m['kernel']}, Python {m['python']}",
             f"- Libraries: {libs}; edge_bloodcls {m['edge_bloodcls']}",
             f"- Interpreter: {m['interpreter_backend']} (TFLite formats, XNNPACK as its default CPU delegate); "
             "Keras rows: tf_keras on TensorFlow, a traced tf.function"]
    if loads:
        lines.append(f"- 1-minute load average during the measurements: {min(loads):.1f} to {max(loads):.1f} "
                     f"on {m['cores_usable']} cores")
        if max(loads) > 0.5 * m["cores_usable"]:
            lines.append("- **Other work was running on this machine during the measurements** (e.g. model "
                         "training): absolute latencies are pessimistic and noisier than on an idle machine; "
                         "ratios between formats measured minutes apart are less affected but not immune.")
    return lines


def _paper_table(r: dict) -> list[str]:
    lines = ["| model | paper accuracy | paper P / R / F1 | ours: Keras float accuracy | balanced acc. | "
             "macro P / R / F1 | ours: int8 accuracy | training here |",
             "|---|---:|---|---:|---:|---|---:|---|"]
    by_arch: dict[str, list[str]] = {}  # every measured model of an architecture (e.g. two input sizes)
    for k, m in r["models"].items():
        if m.get("role") == "model" and m["arch"] in PAPER:
            by_arch.setdefault(m["arch"], []).append(k)
    for arch in PAPER_ORDER:
        p = PAPER[arch]
        prf = " / ".join(f"{p[x]:.2f}" for x in ("precision", "recall", "f1")) if "f1" in p else "not quoted"
        if arch not in by_arch:
            lines.append(f"| {PAPER_NAMES[arch]} | {p['accuracy'] * 100:.2f} | {prf} | not benchmarked | | | | |")
            continue
        lines += [_paper_row(r, arch, key, p, prf) for key in by_arch[arch]]
    return lines


def _paper_row(r: dict, arch: str, key: str, p: dict, prf: str) -> str:
    info = r["models"][key]
    mk, mi = accuracy(r, key, "keras") or accuracy(r, key, "float32"), accuracy(r, key, "int8")
    if not info["trained"]:
        ours = ["not trained", "", "", "not trained"]
    else:
        ours = [_pct(mk["accuracy"]) if mk else accuracy_note(r, key, "keras"),
                _pct(mk["balanced_accuracy"]) if mk else "",
                " / ".join(f"{mk['macro'][x]:.3f}" for x in ("precision", "recall", "f1")) if mk else "",
                _pct(mi["accuracy"]) if mi else accuracy_note(r, key, "int8")]
    t = info.get("training") or {}
    if not info["trained"]:
        train = "not trained yet: an untrained build, measured for speed and size"
    else:
        train = (f"{t.get('epochs_run')} epochs, {t.get('stop_reason')}" if t else "") or info.get("note") or ""
    return (f"| {PAPER_NAMES[arch]} (`{key}`, {info['size']} px) | {p['accuracy'] * 100:.2f} | {prf} | "
            + " | ".join(ours) + f" | {train} |")


def _size_table(r: dict, models: list[str]) -> list[str]:
    lines = ["| model | format | I/O | file (MB) | size vs float32 | size vs baseline int8 | params | MMACs | "
             "accuracy | balanced | macro F1 | Δ acc. vs baseline int8 (points) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    seen = set()
    for c in sorted(r["configs"], key=lambda c: _order(c, models)):
        if (c["model"], c["format"]) in seen:
            continue
        seen.add((c["model"], c["format"]))
        m = accuracy(r, c["model"], c["format"])
        rat = c.get("ratios", {})
        acc = [_pct(m["accuracy"]), _pct(m["balanced_accuracy"]), _f(m["macro"]["f1"], ".3f")] if m else \
            [accuracy_note(r, c["model"], c["format"]), "", ""]
        lines.append(f"| {c['model']} | {c['format']} | {c['io_dtype']} | {c['size_bytes'] / 1e6:.2f} | "
                     f"{_f(rat.get('size_vs_float32'), '.3f')} | {_f(rat.get('size_vs_baseline_int8'), '.2f')} | "
                     f"{c['params']:,} | {_f(c['macs'] / 1e6 if c.get('macs') else None, ',.1f')} | "
                     + " | ".join(acc) + f" | {_f(rat.get('accuracy_points_vs_baseline_int8'), '+.2f')} |")
    return lines


def _speed_table(r: dict, models: list[str]) -> list[str]:
    lines = ["| model | format | threads | p50 (ms) | p90 | p99 | images/s | speed-up vs float32 | "
             "speed-up vs baseline int8 | load (s) | peak RSS (MB) | interpreter |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for c in sorted(r["configs"], key=lambda c: _order(c, models)):
        lat, rat = c["latency_ms"], c.get("ratios", {})
        it = c["interpreter"]
        lines.append(f"| {c['model']} | {c['format']} | {c['threads_n']} | {_ms(lat['p50'])} | {_ms(lat['p90'])} | "
                     f"{_ms(lat['p99'])} | {c['images_per_s']:.1f} | {_f(rat.get('speedup_vs_float32'))} | "
                     f"{_f(rat.get('speedup_vs_baseline_int8'), '.3f')} | {c['load_s']:.2f} | {c['peak_rss_mb']:.0f} | "
                     f"{it.get('interpreter')} {it.get('interpreter_version', '')} |")
    return lines


def _per_class_table(r: dict, models: list[str]) -> list[str]:
    rows = []
    for model in models:
        for fmt in FORMAT_ORDER:
            m = accuracy(r, model, fmt)
            if m:
                rows.append((model, fmt, m))
    if not rows:
        return []
    labels = rows[0][2]["labels"]
    lines = ["| model | format | " + " | ".join(labels) + " |", "|---|---|" + "---:|" * len(labels)]
    for model, fmt, m in rows:
        lines.append(f"| {model} | {fmt} | " + " | ".join(f"{m['per_class'][k]['f1']:.3f}" for k in labels) + " |")
    return lines


def _int8_hardware_note(r: dict) -> list[str]:
    fast = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm") if f in r["machine"]["cpu_flags"]]
    if not fast:
        return []
    return [f"- Why int8 is not scaled from this machine: its CPU has int8 dot-product/matrix instructions "
            f"({', '.join(fast)}) that XNNPACK's int8 kernels use, so int8's speed-up over float32 here (see the table "
            "above) is far larger than a Pi 4's Cortex-A72, which has none, can give: on a Pi 4 the published "
            f"MobileNet v2 speed-up is {PI4_INT8_SPEEDUP:.1f}×."]


def _edge_section(r: dict) -> list[str]:
    est = edge_estimates(r)
    ref = next((m for m in r["models"].values() if m.get("role") == "reference"), None)
    lines = ["## Edge targets (estimates, not measurements)", "",
             "Nothing below was run on a Raspberry Pi or a Coral. Each figure scales a published measurement of "
             f"{XNNPACK_PI4['model']} ({XNNPACK_PI4['macs'] / 1e6:.0f} M MACs) to our models. Basis for the Pi 4: "
             f"{XNNPACK_PI4['source']}: float32 {XNNPACK_PI4['float32']:.0f} ms, "
             f"int8 {XNNPACK_PI4['int8']:.0f} ms.", "",
             "- **Pi 4, scaled from this machine**: float formats: our p50 here × (published Pi 4 float32 time ÷ our "
             "time for an untrained MobileNetV2 at 224 px, measured here at the same thread setting). int8 formats: "
             f"that float32 estimate ÷ {PI4_INT8_SPEEDUP:.1f} (the published Pi 4 int8 speed-up)."
             + ("" if ref else " Not available: this run did not measure the 224 px reference (`bench --reference`)."),
             "- **Pi 4, by MACs**: the published time of the same arithmetic (float32 or int8) × our MACs ÷ 300 M. "
             "It assumes MobileNetV2's time per MAC; dense 3×3 convolutions (VGG, ResNet) usually run more MACs per "
             "second than depthwise ones, so for those it likely overestimates.",
             f"- **Pi 5**: the Pi 4 range of both methods ÷ {PI5_SPEEDUP[0]:.0f}–{PI5_SPEEDUP[1]:.0f} (Raspberry Pi "
             "Ltd's stated CPU speed-up of Pi 5 over Pi 4; Cortex-A76 at 2.4 GHz vs A72 at 1.5–1.8 GHz; the A76 "
             "also has int8 dot-product instructions, so int8 may gain more than that).",
             f"- **Coral USB (Edge TPU)**, int8 only, from {CORAL['source']}: compute at MobileNet v2's published "
             f"rate ({CORAL['mobilenetv2_ms']} ms for 300 M MACs, its weights on chip); for a model whose int8 file "
             f"exceeds the Edge TPU's ~{CORAL_SRAM_MB} MB of on-chip memory, the upper end adds the excess streamed "
             f"from the host on every inference at up to {CORAL_MS_PER_STREAMED_MB:.1f} ms/MB (VGG16 224: "
             f"{CORAL['vgg16_ms']:.0f} ms for ~{CORAL['vgg16_mb']:.0f} MB of weights, all counted as streaming). Dense "
             "convolutions likely use the systolic array better than MobileNet's depthwise ones, so the compute "
             "part may be lower still. Ops the compiler cannot map would run on the host CPU; the Edge TPU compiler "
             "was not run here.",
             *_int8_hardware_note(r),
             "", "| model | format | here p50 (ms, threads) | Pi 4 scaled (ms) | Pi 4 by MACs (ms) | Pi 5 (ms) | "
             "Coral USB (ms) | int8 file vs 8 MB |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for e in est:
        coral = "" if "coral_ms" not in e else _ms(e["coral_ms"][0]) if e["coral_ms"][0] == e["coral_ms"][1] \
            else f"{_ms(e['coral_ms'][0])}–{_ms(e['coral_ms'][1])}"
        fits = "" if "int8_mb" not in e else (
            "fits" if e["int8_mb"] <= CORAL_SRAM_MB else f"{e['int8_mb']:.1f} MB: streams")
        lines.append(f"| {e['model']} | {e['format']} | {_ms(e['here_ms'])} ({e['threads']}) | "
                     f"{_ms(e['pi4_scaled_ms'])} | {_ms(e['pi4_macs_ms'])} | "
                     f"{_ms(e['pi5_ms'][0])}–{_ms(e['pi5_ms'][1])} | {coral} | {fits} |")
    if not est:
        lines.append("| (no model with a MAC count and a float32/int8 measurement) | | | | | | | |")
    return lines


def _summary(r: dict) -> list[str]:
    """The baseline's int8 against its float32 and Keras originals, in one paragraph a line."""
    base = r.get("baseline")
    by = {(c["model"], c["format"], c["threads"]): c for c in r["configs"]}
    i8 = [c for c in r["configs"] if c["model"] == base and c["format"] == "int8"]
    if not i8:
        return []
    acc = {f: accuracy(r, base, f) for f in ("keras", "float32", "int8")}
    f32 = by.get((base, "float32", i8[0]["threads"]))
    parts = [f"`{base}` int8: {i8[0]['size_bytes'] / 1e6:.2f} MB"
             + (f" ({i8[0]['ratios']['size_vs_float32']:.2f}× the float32 file)" if f32 else "")]
    if acc["int8"]:
        f32_acc, keras_acc = (acc[f] or {} for f in ("float32", "keras"))
        parts.append(f"test accuracy {_pct(acc['int8']['accuracy'])}% (float32 TFLite "
                     f"{_pct(f32_acc.get('accuracy'))}%, Keras {_pct(keras_acc.get('accuracy'))}%)")
    for c in sorted(i8, key=lambda c: c["threads_n"]):
        sp = c["ratios"].get("speedup_vs_float32")
        parts.append(f"p50 {_ms(c['latency_ms']['p50'])} ms at {c['threads_n']} thread(s)"
                     + (f", {sp:.2f}× float32's speed" if sp else ""))
    lines = ["## Summary", "", "- " + "; ".join(parts) + "."]
    sa = shipped_accuracy(r)
    s = r.get("shipped") or {}
    rows = [c for c in r["configs"] if c["model"] == s.get("name")] if s and not s.get("same_as") else []
    if sa and rows:
        c = min(rows, key=lambda c: c["threads_n"])
        lines.append(f"- Shipped `{s['name']}`: {c['size_bytes'] / 1e6:.2f} MB, test accuracy "
                     f"{_pct(sa[1]['accuracy'])}%, p50 {_ms(c['latency_ms']['p50'])} ms at {c['threads_n']} thread(s).")
    return lines + [""]


def markdown(r: dict, plots: dict) -> str:
    models = model_order(r)
    d = r["data"]
    base = r.get("baseline")
    untrained = [k for k, m in r["models"].items() if not m["trained"] and m.get("role") == "model"]
    lines = ["# Benchmark: blood-cell classifiers on the edge runtime", "",
             f"Results `bench.json` (updated {r.get('updated')}), written by `edge-bloodcls bench`; this page by "
             "`edge-bloodcls bench-report` (docs/benchmarks.md says how to reproduce both).", "",
             *_summary(r),
             "## Machine", "", *_machine_lines(r), "",
             "## Test images", "",
             f"{d['n']} images from `{d['source']}`"
             + (f" (a stratified subset of {d['n_total']})" if d["subset"] else "")
             + ": " + ", ".join(f"{k} {v}" for k, v in d["per_class"].items()) + ". Every model and format is scored "
             "on the same images; metrics by `edge_runtime.metrics.classification_metrics` (scikit-learn "
             "definitions, macro averages over the 8 classes).", ""]
    if untrained:
        lines += [f"**Not trained:** {', '.join(f'`{k}`' for k in untrained)} had no `model.keras` when measured; "
                  "they are untrained builds of `train.archs.build` at the same input size, so their latency, size, "
                  "parameters and MACs are real and their accuracy is not reported.", ""]
    lines += ["## Against the paper (Table 2)", "", *_paper_table(r), "",
              "How the two differ: the paper fine-tuned ImageNet-pretrained networks at 224×224 (transfer learning); "
              "here every network is trained from scratch on a CPU (at 96×96; MobileNetV2's final model continues to "
              "160×160 by progressive resizing, README Training), and the baselines "
              "(VGG, ResNet50) get short time budgets (scripts/train_all.sh): where trained, they stop after few "
              "epochs and are not a fair reading of those architectures. The paper's column called precision is, by "
              "its definition, specificity (TN / (TN + FP)); ours is precision as scikit-learn defines it "
              "(TP / (TP + FP)). The paper quotes P/R/F1 here only for MobileNetV2.", "",
              "## Every model and format", "",
              f"Size and accuracy (baseline for the ratios: `{base}` int8):", "", *_size_table(r, models), "",
              "Speed and memory. Latency: one image (batch 1) through `Classifier.predict` — input quantization, "
              "`invoke`, output dequantization — after the warm-up, percentiles of "
              f"{_runs(r)} timed runs; images/s = 1000 / mean latency at batch 1. Speed-up > 1 is faster. Load: "
              "reading and verifying the bundle and building the interpreter (Keras: `load_model`, TensorFlow "
              "import excluded). Peak RSS: VmHWM of the process that measured that configuration alone, after "
              "loading and the timed runs (TFLite processes import no TensorFlow, as on a Pi).", "",
              *_speed_table(r, models), ""]
    pc = _per_class_table(r, models)
    if pc:
        lines += ["Per-class F1:", "", *pc, ""]
    lines += ["## Plots", ""]
    if plots.get("latency"):
        lines += [f"![accuracy vs latency]({PLOTS['latency']})", "",
                  f"Accuracy against p50 latency at {threads_for_plots(r)} thread(s), log scale; the dashed line joins "
                  "the Pareto front (no other configuration is both faster and more accurate).", ""]
    if plots.get("size"):
        lines += [f"![size vs accuracy]({PLOTS['size']})", ""]
    if not plots.get("latency"):
        lines += ["(No configuration with an accuracy: nothing to plot.)", ""]
    sa = shipped_accuracy(r)
    lines += ["## The shipped model", ""]
    if sa:
        title, m = sa
        lines += [f"`{title}`: accuracy {_pct(m['accuracy'])}%, balanced {_pct(m['balanced_accuracy'])}%, macro "
                  f"F1 {m['macro']['f1']:.3f} on {m['n']} test images.", "",
                  f"![confusion matrix]({PLOTS['confusion']})", "",
                  "| true \\ predicted | " + " | ".join(l[:5] for l in m["labels"]) + " |",
                  "|---|" + "---:|" * len(m["labels"])]
        for lab, row in zip(m["labels"], m["confusion_matrix"]):
            lines.append(f"| {lab} | " + " | ".join(str(v) for v in row) + " |")
        lines.append("")
    else:
        lines += ["The runtime's default bundle (edge_runtime/models/mobilenetv2_96_int8) was not present or not "
                  "measured on the test images when this report was made.", ""]
    lines += [*_edge_section(r), ""]
    lines += ["## Method", "",
              "- Bundles: `runs/exports/RUN/` (scripts/export_all.sh) when exported from the same `model.keras`, "
              "otherwise exported here by `convert.export` (int8 calibrated on the split's training images; QAT "
              "fine-tuned for `--qat-epochs`, on the training split); untrained builds get no QAT export (fine-tuning "
              "a random network says nothing; its int8 row has the same integer kernels).",
              f"- MACs: {next((m['macs_method'] for m in r['models'].values() if m.get('macs_method')), 'n/a')}.",
              "- Each model × format × thread count runs in its own process; the accuracy pass runs once per model "
              "and format (at all cores), the same images for all.",
              "- Ratios: speed-up = p50 of the reference ÷ p50 of the row, at the same thread count; size = file "
              "bytes ÷ the reference's.", ""]
    errs = r.get("errors") or []
    if errs:
        lines += ["## Not measured", "", "| model | format | stage | why |", "|---|---|---|---|"]
        lines += [f"| {e['model']} | {e['format'] or ''} | {e['stage']} | {e['error'][:200]} |" for e in errs]
        lines.append("")
    return "\n".join(lines)


def _runs(r: dict) -> str:
    runs = sorted({c["runs"] for c in r["configs"]})
    warm = sorted({c["warmup"] for c in r["configs"]})
    return f"{'/'.join(map(str, runs))} (after {'/'.join(map(str, warm))} warm-up)"


def write_report(results_path: Path, out_dir: Path | None = None, name: str = "REPORT.md") -> list[Path]:
    results_path = Path(results_path)
    out_dir = Path(out_dir or results_path.parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    r = json.loads(results_path.read_text())
    written, plots = [], {}
    if plot_accuracy_latency(r, out_dir / PLOTS["latency"]):
        plots["latency"] = True
        written.append(out_dir / PLOTS["latency"])
    if plot_size_accuracy(r, out_dir / PLOTS["size"]):
        plots["size"] = True
        written.append(out_dir / PLOTS["size"])
    sa = shipped_accuracy(r)
    if sa:
        plot_confusion(sa[0], sa[1], out_dir / PLOTS["confusion"])
        written.append(out_dir / PLOTS["confusion"])
    md = out_dir / name
    md.write_text(markdown(r, plots) + "\n")
    written.append(md)
    return written

"""Markdown report and PNG plots from a bench results JSON (benchmarks/harness.py).

    edge-bloodcls bench-report benchmarks/results/bench.json

Writes REPORT.md, bench_accuracy_latency.png, bench_size_accuracy.png and
bench_confusion_shipped.png beside it (or in --out). Everything here is computed from the JSON;
nothing is measured. The parts: report_common.py (orders, formatting, reading the results),
report_plots.py, report_edge.py (the edge estimates), this module (the page).
"""

from __future__ import annotations

from pathlib import Path

from edge_bloodcls.edge_runtime.core.bundle import DEFAULT_MODEL
from edge_bloodcls.train import archs

from .models import initialisation, run_convergence
from .report_common import (
    FORMAT_ORDER,
    PAPER,
    PAPER_NAMES,
    PAPER_ORDER,
    PLOTS,
    _f,
    _ms,
    _order,
    _pct,
    accuracy_note,
    model_order,
    pareto,
    shipped_accuracy,
    threads_for_plots,
)
from .report_edge import _edge_section
from .report_plots import plot_accuracy_latency, plot_confusion, plot_size_accuracy
from .results import Results

__all__ = ["PLOTS", "markdown", "pareto", "write_report"]


def _machine_lines(r: Results) -> list[str]:
    m = r.machine_info
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
    loads = [c["loadavg"][0] for c in r.configs if c.get("loadavg")]
    lines = [
        f"- CPU: {m['cpu_model']} ({m['machine']}), {m['cores_usable']} usable of {m['cores_logical']} logical "
        f"cores, {m['memory_gb']} GB; flags of interest: {' '.join(m['cpu_flags_of_interest']) or 'none'} "
        f"(all {len(m['cpu_flags'])} flags in the JSON)",
        f"- OS: {m['os']}, kernel {m['kernel']}, Python {m['python']}",
        f"- Libraries: {libs}; edge_bloodcls {m['edge_bloodcls']}",
        f"- Interpreter: {m['interpreter_backend']} (TFLite formats, XNNPACK as its default CPU delegate); "
        "Keras rows: tf_keras on TensorFlow, a traced tf.function",
    ]
    if loads:
        lines.append(
            f"- 1-minute load average during the measurements: {min(loads):.1f} to {max(loads):.1f} "
            f"on {m['cores_usable']} cores"
        )
        if max(loads) > 0.5 * m["cores_usable"]:
            lines.append(
                "- **Other work was running on this machine during the measurements** (e.g. model "
                "training): absolute latencies are pessimistic and noisier than on an idle machine; "
                "ratios between formats measured minutes apart are less affected but not immune."
            )
    return lines


PAPER_COLUMNS = (
    "network",
    "paper (224 px, ImageNet): acc.; P / R / F1",
    "ours: run",
    "input",
    "initialisation",
    "epochs",
    "training",
    "test acc.",
    "balanced",
    "macro F1",
    "int8 acc.",
    "int8 size",
    "params",
    "MMACs",
)


def paper_arch(arch: str) -> str:
    """The Table 2 row a registered architecture stands for (vgg16_bn -> vgg16)."""
    return (archs.REGISTRY[arch].paper or arch) if arch in archs.REGISTRY else arch


def paper_table(r: Results) -> list[str]:
    """The paper's Table 2 against every trained run of the same network in the results: one
    table for REPORT.md and the README (bench-report --readme), so the two cannot disagree."""
    lines = [
        "| " + " | ".join(PAPER_COLUMNS) + " |",
        "|---|---|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_paper: dict[str, list[str]] = {}  # every measured run of a network (several sizes, variants)
    for k, m in r.models.items():
        if m.get("role") == "model" and paper_arch(m["arch"]) in PAPER:
            by_paper.setdefault(paper_arch(m["arch"]), []).append(k)
    for arch in PAPER_ORDER:
        p = PAPER[arch]
        prf = " / ".join(f"{p[x] * 100:.0f}" for x in ("precision", "recall", "f1")) if "f1" in p else "not quoted"
        paper = f"{p['accuracy'] * 100:.2f}; {prf}"
        keys = sorted(by_paper.get(arch, []), key=lambda k: (r.models[k]["size"], k))
        if not keys:
            cells = [PAPER_NAMES[arch], paper, "not benchmarked"] + [""] * (len(PAPER_COLUMNS) - 3)
            lines.append("| " + " | ".join(cells) + " |")
        lines += [_paper_row(r, key, paper) for key in keys]
    return lines


def _paper_row(r: Results, key: str, paper: str) -> str:
    info = r.models[key]
    variant = archs.REGISTRY[info["arch"]].variant if info["arch"] in archs.REGISTRY else ""
    name = variant.split(":")[0] if variant else PAPER_NAMES[paper_arch(info["arch"])]
    mk, mi = r.metrics(key, "keras") or r.metrics(key, "float32"), r.metrics(key, "int8")
    size = next((c["size_bytes"] for c in r.configs if c["model"] == key and c["format"] == "int8"), None)
    t = dict(info.get("training") or {})
    if t and "converged" not in t and info.get("source"):  # results written before the field
        t.update(run_convergence(Path(info["source"]).parent, t.get("stop_reason")))
    if not info["trained"]:
        init = epochs = "not trained"
        train = "an untrained build, measured for speed and size"
        acc = ["", "", "", ""]
    else:
        init = t.get("initialisation") or (initialisation(Path(info["source"]).parent) if info.get("source") else "")
        n, planned, best = t.get("epochs_run"), t.get("epochs_planned"), t.get("best_epoch")
        epochs = (
            (
                f"{n} of {planned} (best {best}); {'converged' if t.get('converged') else 'NOT converged'}: "
                f"{t.get('convergence') or t.get('stop_reason')}"
            )
            if t
            else info.get("note") or ""
        )
        train = f"{(t.get('train_seconds') or 0) / 3600:.1f} h on {_machines(t)}" if t else ""
        acc = [
            _pct(mk["accuracy"]) if mk else accuracy_note(r, key, "keras"),
            _pct(mk["balanced_accuracy"]) if mk else "",
            f"{mk['macro']['f1']:.3f}" if mk else "",
            _pct(mi["accuracy"]) if mi else accuracy_note(r, key, "int8"),
        ]
    macs = info.get("macs")
    cells = [
        name,
        paper,
        f"`{key}`",
        f"{info['size']} px",
        init,
        epochs,
        train,
        *acc,
        f"{size / 1e6:.2f} MB" if size else "",
        f"{info['params'] / 1e6:.1f} M" if info.get("params") else "",
        f"{macs / 1e6:.0f}" if macs else "",
    ]
    return "| " + " | ".join(str(c) for c in cells) + " |"


README_MARK = (
    "<!-- paper-table: written by `edge-bloodcls bench-report benchmarks/results/bench.json --readme "
    "README.md`; edit the command, not the table -->",
    "<!-- /paper-table -->",
)


def check_readme(readme: Path) -> str:
    """The README's text, or ValueError where it has no paper-table markers to write between."""
    text = readme.read_text()
    if README_MARK[0] not in text or README_MARK[1] not in text:
        raise ValueError(f"{readme}: no paper-table markers ({README_MARK[0]} ... {README_MARK[1]}) to write between")
    return text


def update_readme(readme: Path, r: Results) -> None:
    """Replace the README's paper table (between README_MARK) with the one REPORT.md has."""
    text = check_readme(readme)
    start, end = README_MARK
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(head + start + "\n" + "\n".join(paper_table(r)) + "\n" + end + tail)


def _machines(training: dict) -> str:
    """Where a run trained, chunk by chunk (train/fit.py records it since issue 14)."""
    chunks = training.get("chunks") or []
    if not chunks:
        return "a CPU (machine not recorded)"
    return (
        "; ".join(
            f"{c['machine']} (epochs {c['epochs'][0]}-{c['epochs'][1]}, {c['seconds'] / 3600:.1f} h)" for c in chunks
        )
        if len(chunks) > 1
        else chunks[0]["machine"]
    )


def _size_table(r: Results, models: list[str]) -> list[str]:
    lines = [
        "| model | format | I/O | file (MB) | size vs float32 | size vs baseline int8 | params | MMACs | "
        "accuracy | balanced | macro F1 | Δ acc. vs baseline int8 (points) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    seen = set()
    for c in sorted(r.configs, key=lambda c: _order(c, models)):
        if (c["model"], c["format"]) in seen:
            continue
        seen.add((c["model"], c["format"]))
        m = r.metrics(c["model"], c["format"])
        rat = c.get("ratios", {})
        acc = (
            [_pct(m["accuracy"]), _pct(m["balanced_accuracy"]), _f(m["macro"]["f1"], ".3f")]
            if m
            else [accuracy_note(r, c["model"], c["format"]), "", ""]
        )
        lines.append(
            f"| {c['model']} | {c['format']} | {c['io_dtype']} | {c['size_bytes'] / 1e6:.2f} | "
            f"{_f(rat.get('size_vs_float32'), '.3f')} | {_f(rat.get('size_vs_baseline_int8'), '.2f')} | "
            f"{c['params']:,} | {_f(c['macs'] / 1e6 if c.get('macs') else None, ',.1f')} | "
            + " | ".join(acc)
            + f" | {_f(rat.get('accuracy_points_vs_baseline_int8'), '+.2f')} |"
        )
    return lines


def _speed_table(r: Results, models: list[str]) -> list[str]:
    lines = [
        "| model | format | threads | p50 (ms) | p90 | p99 | images/s | speed-up vs float32 | "
        "speed-up vs baseline int8 | load (s) | peak RSS (MB) | interpreter |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in sorted(r.configs, key=lambda c: _order(c, models)):
        lat, rat = c["latency_ms"], c.get("ratios", {})
        it = c["interpreter"]
        lines.append(
            f"| {c['model']} | {c['format']} | {c['threads_n']} | {_ms(lat['p50'])} | {_ms(lat['p90'])} | "
            f"{_ms(lat['p99'])} | {c['images_per_s']:.1f} | {_f(rat.get('speedup_vs_float32'))} | "
            f"{_f(rat.get('speedup_vs_baseline_int8'), '.3f')} | {c['load_s']:.2f} | {c['peak_rss_mb']:.0f} | "
            f"{it.get('interpreter')} {it.get('interpreter_version', '')} |"
        )
    return lines


def _per_class_table(r: Results, models: list[str]) -> list[str]:
    rows = []
    for model in models:
        for fmt in FORMAT_ORDER:
            m = r.metrics(model, fmt)
            if m:
                rows.append((model, fmt, m))
    if not rows:
        return []
    labels = rows[0][2]["labels"]
    lines = ["| model | format | " + " | ".join(labels) + " |", "|---|---|" + "---:|" * len(labels)]
    for model, fmt, m in rows:
        lines.append(f"| {model} | {fmt} | " + " | ".join(f"{m['per_class'][k]['f1']:.3f}" for k in labels) + " |")
    return lines


def _summary(r: Results) -> list[str]:
    """The baseline's int8 against its float32 and Keras originals, in one paragraph a line."""
    base = r.baseline
    by = r.by_key()
    i8 = [c for c in r.configs if c["model"] == base and c["format"] == "int8"]
    if base is None or not i8:
        return []
    acc = {f: r.metrics(base, f) for f in ("keras", "float32", "int8")}
    f32 = by.get((base, "float32", i8[0]["threads"]))
    parts = [
        f"`{base}` int8: {i8[0]['size_bytes'] / 1e6:.2f} MB"
        + (f" ({i8[0]['ratios']['size_vs_float32']:.2f}× the float32 file)" if f32 else "")
    ]
    if acc["int8"]:
        f32_acc, keras_acc = (acc[f] or {} for f in ("float32", "keras"))
        parts.append(
            f"test accuracy {_pct(acc['int8']['accuracy'])}% (float32 TFLite "
            f"{_pct(f32_acc.get('accuracy'))}%, Keras {_pct(keras_acc.get('accuracy'))}%)"
        )
    for c in sorted(i8, key=lambda c: c["threads_n"]):
        sp = c["ratios"].get("speedup_vs_float32")
        parts.append(
            f"p50 {_ms(c['latency_ms']['p50'])} ms at {c['threads_n']} thread(s)"
            + (f", {sp:.2f}× float32's speed" if sp else "")
        )
    lines = ["## Summary", "", "- " + "; ".join(parts) + "."]
    sa = shipped_accuracy(r)
    s = r.shipped or {}
    rows = [c for c in r.configs if c["model"] == s.get("name")] if s and not s.get("same_as") else []
    if sa and rows:
        c = min(rows, key=lambda c: c["threads_n"])
        lines.append(
            f"- Shipped `{s['name']}`: {c['size_bytes'] / 1e6:.2f} MB, test accuracy "
            f"{_pct(sa[1]['accuracy'])}%, p50 {_ms(c['latency_ms']['p50'])} ms at {c['threads_n']} thread(s)."
        )
    return lines + [""]


def markdown(r: Results, plots: dict) -> str:
    models = model_order(r)
    d = r.test_data
    base = r.baseline
    untrained = [k for k, m in r.models.items() if not m["trained"] and m.get("role") == "model"]
    lines = [
        "# Benchmark: blood-cell classifiers on the edge runtime",
        "",
        f"Results `bench.json` (updated {r.updated}), written by `edge-bloodcls bench`; this page by "
        "`edge-bloodcls bench-report` (docs/benchmarks.md says how to reproduce both).",
        "",
        *_summary(r),
        "## Machine",
        "",
        *_machine_lines(r),
        "",
        "## Test images",
        "",
        f"{d['n']} images from `{d['source']}`"
        + (f" (a stratified subset of {d['n_total']})" if d["subset"] else "")
        + ": "
        + ", ".join(f"{k} {v}" for k, v in d["per_class"].items())
        + ". Every model and format is scored "
        "on the same images; metrics by `edge_runtime.core.metrics.classification_metrics` (scikit-learn "
        "definitions, macro averages over the 8 classes).",
        "",
    ]
    if untrained:
        lines += [
            f"**Not trained:** {', '.join(f'`{k}`' for k in untrained)} had no `model.keras` when measured; "
            "they are untrained builds of `train.archs.build` at the same input size, so their latency, size, "
            "parameters and MACs are real and their accuracy is not reported.",
            "",
        ]
    lines += [
        "## Against the paper (Table 2)",
        "",
        *paper_table(r),
        "",
        "How the two differ: the paper fine-tuned ImageNet-pretrained networks at 224×224 (transfer learning); "
        "here every network is trained from scratch on a CPU (at 96×96; MobileNetV2's final model continues to "
        "160×160 by progressive resizing, README Training), and the baselines "
        "(VGG, ResNet50) get short time budgets (scripts/train_all.sh): where trained, they stop after few "
        "epochs and are not a fair reading of those architectures. The paper's column called precision is, by "
        "its definition, specificity (TN / (TN + FP)); ours is precision as scikit-learn defines it "
        "(TP / (TP + FP)).",
        "",
        "## Every model and format",
        "",
        f"Size and accuracy (baseline for the ratios: `{base}` int8):",
        "",
        *_size_table(r, models),
        "",
        "Speed and memory. Latency: one image (batch 1) through `Classifier.predict` — input quantization, "
        "`invoke`, output dequantization — after the warm-up, percentiles of "
        f"{_runs(r)} timed runs; images/s = 1000 / mean latency at batch 1. Speed-up > 1 is faster. Load: "
        "reading and verifying the bundle and building the interpreter (Keras: `load_model`, TensorFlow "
        "import excluded). Peak RSS: VmHWM of the process that measured that configuration alone, after "
        "loading and the timed runs (TFLite processes import no TensorFlow, as on a Pi).",
        "",
        *_speed_table(r, models),
        "",
    ]
    pc = _per_class_table(r, models)
    if pc:
        lines += ["Per-class F1:", "", *pc, ""]
    lines += ["## Plots", ""]
    if plots.get("latency"):
        lines += [
            f"![accuracy vs latency]({PLOTS['latency']})",
            "",
            f"Accuracy against p50 latency at {threads_for_plots(r)} thread(s), log scale; the dashed line joins "
            "the Pareto front (no other configuration is both faster and more accurate).",
            "",
        ]
    if plots.get("size"):
        lines += [f"![size vs accuracy]({PLOTS['size']})", ""]
    if not plots.get("latency"):
        lines += ["(No configuration with an accuracy: nothing to plot.)", ""]
    sa = shipped_accuracy(r)
    lines += ["## The shipped model", ""]
    if sa:
        title, m = sa
        lines += [
            f"`{title}`: accuracy {_pct(m['accuracy'])}%, balanced {_pct(m['balanced_accuracy'])}%, macro "
            f"F1 {m['macro']['f1']:.3f} on {m['n']} test images.",
            "",
            f"![confusion matrix]({PLOTS['confusion']})",
            "",
            "| true \\ predicted | " + " | ".join(lab[:5] for lab in m["labels"]) + " |",
            "|---|" + "---:|" * len(m["labels"]),
        ]
        for lab, row in zip(m["labels"], m["confusion_matrix"]):
            lines.append(f"| {lab} | " + " | ".join(str(v) for v in row) + " |")
        lines.append("")
    else:
        lines += [
            f"The runtime's default bundle (edge_runtime/core/models/{DEFAULT_MODEL}) was not present or not "
            "measured on the test images when this report was made.",
            "",
        ]
    lines += [*_edge_section(r), ""]
    lines += [
        "## Method",
        "",
        "- Bundles: `runs/exports/RUN/` (scripts/export_all.sh) when exported from the same `model.keras`, "
        "otherwise exported here by `convert.export` (int8 calibrated on the split's training images; QAT "
        "fine-tuned for `--qat-epochs`, on the training split); untrained builds get no QAT export (fine-tuning "
        "a random network says nothing; its int8 row has the same integer kernels).",
        f"- MACs: {next((m['macs_method'] for m in r.models.values() if m.get('macs_method')), 'n/a')}.",
        "- Each model × format × thread count runs in its own process; the accuracy pass runs once per model "
        "and format (at all cores), the same images for all.",
        "- Ratios: speed-up = p50 of the reference ÷ p50 of the row, at the same thread count; size = file "
        "bytes ÷ the reference's.",
        "",
    ]
    errs = r.errors or []
    if errs:
        lines += ["## Not measured", "", "| model | format | stage | why |", "|---|---|---|---|"]
        lines += [f"| {e['model']} | {e['format'] or ''} | {e['stage']} | {e['error'][:200]} |" for e in errs]
        lines.append("")
    return "\n".join(lines)


def _runs(r: Results) -> str:
    runs = sorted({c["runs"] for c in r.configs})
    warm = sorted({c["warmup"] for c in r.configs})
    return f"{'/'.join(map(str, runs))} (after {'/'.join(map(str, warm))} warm-up)"


def write_report(results_path: Path, out_dir: Path | None = None, name: str = "REPORT.md") -> list[Path]:
    results_path = Path(results_path)
    out_dir = Path(out_dir or results_path.parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    r = Results.load(results_path)
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

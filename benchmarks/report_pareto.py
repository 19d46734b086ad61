"""The speed search's report (issue 13): the answer first, then the Pareto plots.

Reads one bench results JSON holding int8 rows of every candidate and of the untrained
MobileNetV2-1.0 at 224 px (the paper's network at its input size), all at 1 thread, and writes
PARETO.md and pareto.png beside it. Speed-ups are against that reference's p50 *in the same
results file*, so they hold only when one run measured them all on an idle machine: the
report states the load average of every row and warns when any was busy.
"""

from __future__ import annotations

from pathlib import Path

from .report_common import pareto
from .results import Results

REFERENCE_KEY = "mobilenetv2_224_ref"
# 1-minute load average above which other work shared the machine: the measuring process itself
# keeps about 1 runnable (it times one thread back to back), so an idle 2-core machine reads 1.0-1.3.
BUSY_LOAD = 1.5
FAST_SPEEDUP = 8.0  # issue 13: the fast bundle is at least 8x faster than the reference


def rows(r: Results, fmt: str = "int8", threads: str = "1") -> tuple[dict | None, list[dict]]:
    """(the reference row, one row per trained model) for one format and thread count."""
    ref, out = None, []
    for c in r.configs:
        if c["format"] != fmt or c["threads"] != threads:
            continue
        if c["model"] == REFERENCE_KEY:
            ref = c
            continue
        m = r.metrics(c["model"], fmt)
        if not m:
            continue
        info = r.models.get(c["model"], {})
        out.append(
            {
                "model": c["model"],
                "size": info.get("size"),
                "accuracy": m["accuracy"],
                "macro_f1": m["macro"]["f1"],
                "p50": c["latency_ms"]["p50"],
                "macs": c.get("macs"),
                "mb": c["size_bytes"] / 1e6,
                "load": (c.get("loadavg") or [None])[0],
                "float_accuracy": (r.metrics(c["model"], "float32") or {}).get("accuracy"),
            }
        )
    for row in out:
        row["speedup"] = ref["latency_ms"]["p50"] / row["p50"] if ref else None
    return ref, sorted(out, key=lambda x: x["p50"])


def markdown(r: Results, plot: str | None) -> str:
    ref, rs = rows(r)
    loads = [x["load"] for x in rs if x["load"] is not None]
    loads += [ref["loadavg"][0]] if ref and ref.get("loadavg") else []
    lines = [
        "# Fast cell classifiers: accuracy against speed",
        "",
        f"One bench run (`{r.updated}`); int8, ai-edge-litert, 1 thread; "
        "accuracy on our PBC test split (1538 images). Speed-up = MobileNetV2-1.0 @224 int8 p50 / "
        "the model's p50, measured in the same run.",
        "",
    ]
    if ref is None:
        lines += ["**No MobileNetV2-1.0 @224 reference row in this run: no speed-ups.**", ""]
    else:
        lines += [
            "Reference: MobileNetV2-1.0 @224 int8 (untrained build, latency only): "
            f"p50 {ref['latency_ms']['p50']:.2f} ms.",
            "",
        ]
    if loads and max(loads) > BUSY_LOAD:
        lines += [
            f"**Warning: the machine was busy during this run (1-minute load average up to {max(loads):.2f} on "
            "2 cores): timings are pessimistic and the speed-ups less certain.**",
            "",
        ]
    elif loads:
        lines += [
            f"The machine was idle: 1-minute load average {min(loads):.2f} to {max(loads):.2f} during the run.",
            "",
        ]
    lines += [
        "| model | input | int8 test accuracy | macro-F1 | int8 - float (points) | p50 (ms) "
        "| speed-up vs MobileNetV2-224 | MMACs | size (MB) | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in rs:
        drop = f"{(x['accuracy'] - x['float_accuracy']) * 100:+.2f}" if x["float_accuracy"] is not None else ""
        sp = f"{x['speedup']:.1f}x" if x["speedup"] else ""
        lines.append(
            f"| `{x['model']}` | {x['size']} | {x['accuracy']:.2%} | {x['macro_f1']:.4f} | {drop} | "
            f"{x['p50']:.2f} | {sp} | {(x['macs'] or 0) / 1e6:.0f} | {x['mb']:.2f} | "
            f"{x['load'] if x['load'] is None else round(x['load'], 2)} |"
        )
    front = [rs[i]["model"] for i in pareto([(x["p50"], x["accuracy"]) for x in rs])]
    fast = [x for x in rs if x["speedup"] and x["speedup"] >= FAST_SPEEDUP]
    shown = ", ".join(f"`{m}`" for m in front)
    lines += ["", f"Pareto front (no other model both faster and more accurate): {shown}.", ""]
    if fast:
        best = max(fast, key=lambda x: x["accuracy"])
        lines += [
            f"Most accurate model at least {FAST_SPEEDUP:g}x faster than MobileNetV2-224 int8: "
            f"`{best['model']}`, {best['accuracy']:.2%} at {best['speedup']:.1f}x.",
            "",
        ]
    else:
        lines += [f"No model in this run is at least {FAST_SPEEDUP:g}x faster than MobileNetV2-224 int8.", ""]
    if plot:
        lines += [f"![accuracy against p50 latency and MACs]({plot})", ""]
    lines += [
        "Rows are the int8 exports of `convert` (with the trust statistics); float accuracies are the float32 "
        "TFLite export of the same model on the same images. Reproduce: `scripts/bench_all.sh` "
        "(PARETO section).",
        "",
    ]
    return "\n".join(lines)


def plot(r: Results, out: Path) -> Path | None:
    ref, rs = rows(r)
    if not rs:
        return None
    # matplotlib: the [train] extra, only for plots
    import matplotlib

    matplotlib.use("Agg")
    # matplotlib: the [train] extra, only for plots
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "p50", "p50 latency, int8, 1 thread (ms)"), (axes[1], "macs", "MMACs")):
        xs = [x[key] / (1e6 if key == "macs" else 1) for x in rs]
        ys = [x["accuracy"] * 100 for x in rs]
        ax.scatter(xs, ys, zorder=3)
        for x, y, row in zip(xs, ys, rs):
            ax.annotate(row["model"], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
        front = pareto(list(zip(xs, ys)))
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "--", color="grey", zorder=2, label="Pareto front")
        if key == "p50" and ref:
            ax.axvline(
                ref["latency_ms"]["p50"] / FAST_SPEEDUP,
                color="red",
                lw=0.8,
                label=f"{FAST_SPEEDUP:g}x faster than MobileNetV2-224",
            )
        ax.set_xlabel(label)
        ax.set_ylabel("int8 test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_pareto(results_path: Path, out_dir: Path | None = None) -> list[Path]:
    r = Results.load(results_path)
    out_dir = out_dir or results_path.parent
    png = plot(r, out_dir / "pareto.png")
    md = out_dir / "PARETO.md"
    md.write_text(markdown(r, png.name if png else None))
    return [md] + ([png] if png else [])

"""The report's plots: accuracy against latency (with its Pareto front), size against
accuracy, and the shipped model's confusion matrix. matplotlib is imported only here."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from edge_bloodcls.edge_runtime.core.spec import LABELS

from .report_common import FORMAT_ORDER, model_order, pareto, threads_for_plots
from .results import Results


def _plt():
    # matplotlib: the [train] extra, only for plots
    import matplotlib

    matplotlib.use("Agg")
    # matplotlib: the [train] extra, only for plots
    import matplotlib.pyplot as plt

    return plt


def _log_x(ax):
    # matplotlib: the [train] extra, only for plots
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    # 1-2-5 ticks in plain numbers: a range under a decade still gets labels, and none collide.
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _point(ax, c, x, y, k, colours, markers):
    ax.scatter(x, y, color=colours[c["model"]], marker=markers.get(c["format"], "x"), s=60, zorder=3)
    # Formats of one model often sit on top of each other: alternate the label side.
    ax.annotate(
        f"{c['model']} {c['format']}", (x, y), fontsize=7, xytext=(5, 4 if k % 2 else -10), textcoords="offset points"
    )


def _plot_setup(r: Results):
    """What both scatter plots share: the thread count shown, the scored rows, colours, markers."""
    th = threads_for_plots(r)
    rows = [c for c in r.configs if c["threads"] == th and r.metrics(c["model"], c["format"])]
    if not rows:
        return th, rows, None, {}, {}
    plt = _plt()
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(model_order(r))}
    return th, rows, plt, colours, dict(zip(FORMAT_ORDER, "sodv^P*"))


def plot_accuracy_latency(r: Results, path: Path) -> bool:
    th, rows, plt, colours, markers = _plot_setup(r)
    if not rows:
        return False
    pts = [(c["latency_ms"]["p50"], r.scored(c["model"], c["format"])["accuracy"] * 100) for c in rows]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for k, (c, (x, y)) in enumerate(zip(rows, pts)):
        _point(ax, c, x, y, k, colours, markers)
    front = pareto(pts)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k--", lw=1, zorder=2)
    ax.scatter(
        [pts[i][0] for i in front],
        [pts[i][1] for i in front],
        s=180,
        facecolors="none",
        edgecolors="k",
        lw=1,
        zorder=2,
        label="Pareto front",
    )
    for fmt in [f for f in FORMAT_ORDER if any(c["format"] == f for c in rows)]:
        ax.scatter([], [], color="grey", marker=markers[fmt], label=fmt)
    _log_x(ax)
    ax.set_xlabel(f"latency p50, ms per image (batch 1, {th} thread{'s' if th != '1' else ''}; log scale)")
    ax.set_ylabel("test accuracy, %")
    ax.set_title("Accuracy vs latency (" + r.machine_info["cpu_model"] + ")", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_size_accuracy(r: Results, path: Path) -> bool:
    th, rows, plt, colours, markers = _plot_setup(r)
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for k, c in enumerate(rows):
        x, y = c["size_bytes"] / 1e6, r.scored(c["model"], c["format"])["accuracy"] * 100
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
                ax.text(
                    j,
                    i,
                    int(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if norm[i, j] > 0.6 else "black",
                )
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")

    ax.set_title(textwrap.fill(f"{title}: accuracy {m['accuracy'] * 100:.2f}% (n={m['n']})", 70), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""What the report's parts share: the row orders, number formatting, and reading a results
object (benchmarks/results.py) for the tables, the plots and the edge estimates."""

from __future__ import annotations

import numpy as np

from edge_bloodcls.convert.formats import ORDER
from edge_bloodcls.train.archs import names as arch_names

from .results import Results

FORMAT_ORDER = ["keras", *ORDER]
TABLE_ORDER = list(arch_names())  # registry order: the shipped network first
PAPER_NAMES = {"vgg16": "VGG16", "vgg19": "VGG19", "resnet50": "ResNet50", "mobilenetv2": "MobileNetV2"}
# The paper's Table 2 in full (224x224, ImageNet transfer learning; P/R/F quoted in whole
# percent). Its "precision" is specificity by its own definition.
PAPER = {
    "vgg16": {"accuracy": 0.9053, "precision": 0.92, "recall": 0.91, "f1": 0.91},
    "vgg19": {"accuracy": 0.8901, "precision": 0.90, "recall": 0.89, "f1": 0.89},
    "resnet50": {"accuracy": 0.9634, "precision": 0.97, "recall": 0.97, "f1": 0.97},
    "mobilenetv2": {"accuracy": 0.9789, "precision": 0.98, "recall": 0.98, "f1": 0.98},
}
PAPER_ORDER = list(PAPER)  # the paper's row order

PLOTS = {
    "latency": "bench_accuracy_latency.png",
    "size": "bench_size_accuracy.png",
    "confusion": "bench_confusion_shipped.png",
}


def _order(c: dict, models: list[str]) -> tuple:
    fmt = c["format"]
    return (
        models.index(c["model"]) if c["model"] in models else 99,
        FORMAT_ORDER.index(fmt) if fmt in FORMAT_ORDER else 99,
        c["threads"] != "1",
        c["threads"],
    )


def _ms(x) -> str:
    """Milliseconds with three significant figures below 10 ms (a tiny model's are hundredths)."""
    if x is None:
        return ""
    return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


def _pct(x, nd=2) -> str:
    return "" if x is None else f"{x * 100:.{nd}f}"


def _f(x, fmt=".2f") -> str:
    return "" if x is None else format(x, fmt)


def model_order(r: Results) -> list[str]:
    """Runs and builds of the four networks (MobileNetV2 first), then the rest (bundles, the reference)."""

    def rank(k):
        m = r.models[k]
        return m.get("role") != "model", TABLE_ORDER.index(m["arch"]) if m["arch"] in TABLE_ORDER else 9

    return sorted(r.models, key=rank)


def accuracy_note(r: Results, model: str, fmt: str) -> str:
    a = r.accuracy_entry(model, fmt)
    if a and a.get("metrics"):
        return ""
    if a and a.get("note"):
        return a["note"]
    return "not trained" if not r.models.get(model, {}).get("trained", True) else "not measured"


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


def threads_for_plots(r: Results) -> str:
    ths = {c["threads"] for c in r.configs}
    return "1" if "1" in ths else sorted(ths)[0] if ths else "1"


def shipped_accuracy(r: Results) -> tuple[str, dict] | None:
    """(what it is, metrics) of the runtime's default bundle: its own measurement, else the
    export with the same sha256."""
    s = r.shipped
    if s:
        same = s.get("same_as")
        key = (same["model"], same["format"]) if same else (s["name"], None)
        if same:
            m = r.metrics(*key)
            if m:
                return f"{s['name']} (= {same['model']} {same['format']}, same sha256)", m
        for fmt in FORMAT_ORDER:
            m = r.metrics(s["name"], fmt)
            if m:
                return s["name"], m
    base = r.baseline
    m = r.metrics(base, "int8") if base else None
    return (f"{base} int8 (the default bundle was not measured: the baseline's int8 instead)", m) if m else None

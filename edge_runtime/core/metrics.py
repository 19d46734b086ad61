"""Classification metrics on predictions, one definition for training, runtime and benchmarks.

Standard definitions (scikit-learn): precision = TP / (TP + FP), recall = TP / (TP + FN).
Macro averages are over the classes present in y_true ("macro_over"): a class with no image
has no recall to average, and counting it as 0 would make a folder of one class score near
zero whatever the model did. Per-class rows and the confusion matrix keep every label.
scikit-learn is imported when metrics are asked for, so classify/capture run without it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from .spec import LABELS


def classification_metrics(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, labels: Sequence[str] = LABELS
) -> dict:
    # scikit-learn: the [edge]/[train] extras, only for metrics
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    idx = list(range(len(labels)))
    present = sorted(set(y_true.tolist())) or idx
    with warnings.catch_warnings():
        # Expected wherever a folder lacks classes ("y_pred contains classes not in y_true",
        # "A single label was found"): balanced accuracy is the mean recall over the classes
        # present, as documented above, and the confusion matrix below is given every label.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", message="A single label was found")
        balanced = float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else 0.0
    out: dict[str, Any] = {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced,
    }
    for avg, over in (("macro", present), ("weighted", idx)):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=over, average=avg, zero_division=0)
        out[avg] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    out["macro_over"] = [labels[i] for i in present]
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=idx, average=None, zero_division=0)
    out["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(labels)
    }
    out["labels"] = list(labels)
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=idx).tolist()
    return out


def format_metrics(m: dict) -> str:
    lines = [
        f"n={m['n']}  accuracy={m['accuracy']:.4f}  balanced={m['balanced_accuracy']:.4f}  "
        f"macro P/R/F1={m['macro']['precision']:.4f}/{m['macro']['recall']:.4f}/{m['macro']['f1']:.4f}"
        + _macro_note(m),
        f"{'class':<14}{'prec':>7}{'rec':>7}{'f1':>7}{'n':>6}",
    ]
    for name, c in m["per_class"].items():
        lines.append(f"{name:<14}{c['precision']:>7.3f}{c['recall']:>7.3f}{c['f1']:>7.3f}{c['support']:>6}")
    return "\n".join(lines)


def _macro_note(m: dict) -> str:
    over = m.get("macro_over")
    if over is None or len(over) == len(m["per_class"]):
        return ""
    return f" (macro over the {len(over)} of {len(m['per_class'])} classes present: {', '.join(over)})"

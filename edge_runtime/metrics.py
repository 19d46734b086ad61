"""Classification metrics on predictions, one definition for training, runtime and benchmarks.

Standard definitions (scikit-learn): precision = TP / (TP + FP), recall = TP / (TP + FN).
scikit-learn is imported when metrics are asked for, so classify/capture run without it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .spec import LABELS


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int],
                           labels: Sequence[str] = LABELS) -> dict:
    from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix,
                                 precision_recall_fscore_support)

    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    idx = list(range(len(labels)))
    out = {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
    }
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=idx, average=avg, zero_division=0)
        out[avg] = {"precision": float(p), "recall": float(r), "f1": float(f)}
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
        f"macro P/R/F1={m['macro']['precision']:.4f}/{m['macro']['recall']:.4f}/{m['macro']['f1']:.4f}",
        f"{'class':<14}{'prec':>7}{'rec':>7}{'f1':>7}{'n':>6}",
    ]
    for name, c in m["per_class"].items():
        lines.append(f"{name:<14}{c['precision']:>7.3f}{c['recall']:>7.3f}{c['f1']:>7.3f}{c['support']:>6}")
    return "\n".join(lines)

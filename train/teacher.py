"""A teacher for distillation: trained models, averaged over the 8 symmetries of the square.

A cell image has no up, down, left or right, so the dihedral group D4 (4 quarter turns, each
with and without a flip) maps a cell to the same cell. Averaging a model's log-probabilities
over the 8 views (test-time augmentation) and over several models (an ensemble) makes a more
accurate teacher, and its soft targets are invariant to exactly the flips and quarter turns of
the "geometric" training augmentation: they can be computed once per image and stored, so a
student's distillation costs no teacher forward pass.

`edge-bloodcls teacher` writes NAME.npz: for each split part, the teacher's mean log-probability
per image (the logits of its soft targets) keyed to the split hash, and a JSON report of its
validation and test accuracy, alone and per member.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_bloodcls.edge_runtime.core.metrics import classification_metrics
from edge_bloodcls.edge_runtime.core.preprocess import normalise
from edge_bloodcls.edge_runtime.core.spec import InputSpec
from edge_bloodcls.tfenv import configure

from . import infer
from .data import read_split
from .pipeline import cached_pixels

_log = logging.getLogger(__name__)


PARTS = ("train", "val", "test")


def d4_views(x: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries of a batch of square images (N, H, W, C)."""
    views = []
    for flip in (False, True):
        v = x[:, :, ::-1] if flip else x
        for k in range(4):
            views.append(np.rot90(v, k, axes=(1, 2)))
    return views


def log_probs(model, pixels: np.ndarray, spec: InputSpec, tta: bool = True, batch: int = 128) -> np.ndarray:
    """Mean log-probability over the D4 views (or the image alone) -> (N, n_classes) float32."""
    out = []
    f = infer.forward(model)
    for start in range(0, len(pixels), batch):
        x = normalise(np.asarray(pixels[start : start + batch]), spec)  # the runtime's own
        views = d4_views(x) if tta else [x]
        lp = [np.log(np.clip(f(np.ascontiguousarray(v)).numpy(), 1e-12, 1.0)) for v in views]
        out.append(np.mean(lp, axis=0))
    return np.concatenate(out).astype(np.float32)


def build_teacher(
    models: list[str],
    split_csv: str,
    out: str,
    tta: bool = True,
    data_root: str | None = None,
    cache_dir: str | None = None,
    parts=PARTS,
) -> dict:
    """Score every part of the split with every model; write out.npz and out.json."""
    configure()
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tf_keras

    split = read_split(split_csv, data_root)
    key = split.sha256[:12]
    members: list[dict] = []
    per_member: dict[str, dict[str, float]] = {}
    totals: dict[str, np.ndarray] = {}
    t0 = time.time()
    for path in models:
        model = tf_keras.models.load_model(path, compile=False)
        size = int(model.input_shape[1])
        # Every model here is trained from scratch, on the symmetric [-1, 1] input.
        spec = InputSpec.named(size, "symmetric")
        members.append({"model": str(path), "img_size": size, "params": int(model.count_params())})
        per_member[str(path)] = {}
        for p in parts:
            paths, y = split.items(p)
            t = time.time()
            lp = log_probs(model, cached_pixels(paths, spec.size, cache_dir, key, progress=True), spec, tta)
            totals[p] = totals[p] + lp if p in totals else lp
            acc = float(np.mean(lp.argmax(1) == np.asarray(y)))
            per_member[str(path)][p] = round(acc, 5)
            _log.info(f"{path} {p}: accuracy {acc:.4f}{' (8-view TTA)' if tta else ''} ({time.time() - t:.0f}s)")
    logits = {p: totals[p] / len(models) for p in parts}
    result: dict[str, Any] = {
        "members": members,
        "tta": "D4 (8 views)" if tta else "none",
        "split_sha256": split.sha256,
        "per_member_accuracy": per_member,
        "seconds": round(time.time() - t0, 1),
    }
    for p in parts:
        _, y = split.items(p)
        m = classification_metrics(np.asarray(y), logits[p].argmax(1))
        result[p] = {k: m[k] for k in ("n", "accuracy", "balanced_accuracy", "macro")}
        _log.info(f"teacher {p}: accuracy {m['accuracy']:.4f}, balanced {m['balanced_accuracy']:.4f}")
    dest = Path(out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {f"{p}_logits": logits[p] for p in parts}
    np.savez_compressed(dest.with_suffix(".npz"), split_sha256=np.array(split.sha256), **arrays)
    dest.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def load_teacher(path: str, split_sha256: str) -> dict[str, np.ndarray]:
    """The stored soft-target logits of each part, refused when made for another split."""
    with np.load(path) as z:
        if str(z["split_sha256"]) != split_sha256:
            raise ValueError(f"{path}: made for split {str(z['split_sha256'])[:12]}, not {split_sha256[:12]}")
        return {k[: -len("_logits")]: z[k] for k in z.files if k.endswith("_logits")}

"""Can the base network's features tell BCCD's white cells apart without fine-tuning? (issue 29)

    .venv/bin/python scripts/adapt_probe.py [--out benchmarks/results/adapt_probe.json]

Why: adapt fine-tunes every layer; a frozen trunk with a new head (the earlier adapt) did worse.
This measures the ceiling of any frozen-trunk method directly: a linear probe (standardised
features, L2 logistic regression) on the base model's pooled activations at six depths (and all
six concatenated), each averaged over the 8 flips and quarter turns, trained on the 41 bccd_site
cells and scored on the 60 bccd_session cells (BCCD's natural proportions), both framed as
capture crops them (scripts/adapt_experiments.py's inputs). No fine-tuning, so no setting is
chosen on the cells scored: every depth and regularisation is listed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import adapt_experiments as ax  # noqa: E402  (configures TensorFlow's environment first)
import numpy as np  # noqa: E402

from edge_bloodcls.edge_runtime.core.preprocess import normalise  # noqa: E402
from edge_bloodcls.edge_runtime.core.spec import LABELS, InputSpec  # noqa: E402
from edge_bloodcls.train.teacher import d4_views  # noqa: E402

DEPTHS = ("block_2_add", "block_5_add", "block_9_add", "block_12_add", "block_15_add", "out_relu")


def pooled_features(model, spec, x: np.ndarray) -> list[np.ndarray]:
    import tf_keras

    trunk = model.layers[1]  # the MobileNetV2 trunk between the input and the head
    pool = tf_keras.layers.GlobalAveragePooling2D()
    fx = tf_keras.Model(trunk.input, [pool(trunk.get_layer(n).output) for n in DEPTHS])
    views = d4_views(x)
    total = None
    for v in views:
        v = np.ascontiguousarray(v)
        outs = [fx(normalise(v[i : i + 64], spec), training=False) for i in range(0, len(v), 64)]
        f = [np.concatenate([o[j].numpy() for o in outs]) for j in range(len(DEPTHS))]
        total = f if total is None else [a + b for a, b in zip(total, f)]
    return [t / len(views) for t in total]


def main() -> int:
    import tf_keras
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ax.REPO / "benchmarks" / "results" / "adapt_probe.json"))
    args = ap.parse_args()
    spec = InputSpec.named(160)
    _, site, ses, _, _ = ax.inputs(spec)
    model = tf_keras.models.load_model(ax.MODEL, compile=False)
    fs, fe = pooled_features(model, spec, site["x"]), pooled_features(model, spec, ses["x"])
    fs.append(np.concatenate(fs, 1))
    fe.append(np.concatenate(fe, 1))
    ys, ye = site["y"], ses["y"]
    classes = [c for c in np.unique(ye) if (ye == c).sum() >= 5]
    rows = []
    for c_reg in (0.01, 0.1, 1.0):
        for name, a, b in zip((*DEPTHS, "all six"), fs, fe):
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=c_reg, max_iter=5000)).fit(a, ys)
            pred = clf.predict(b)
            rows.append(
                {
                    "features": name,
                    "C": c_reg,
                    "accuracy": float((pred == ye).mean()),
                    "balanced": float(np.mean([(pred[ye == c] == c).mean() for c in classes])),
                    "recall": {LABELS[c]: f"{(pred[ye == c] == c).sum()}/{(ye == c).sum()}" for c in np.unique(ye)},
                }
            )
            r = rows[-1]
            print(f"{name:13s} C={c_reg:<5} accuracy {r['accuracy']:.1%} balanced {r['balanced']:.1%} {r['recall']}")
    out = {
        "what": __doc__.split("\n\n", 2)[2].strip(),
        "command": ".venv/bin/python scripts/adapt_probe.py",
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A float Keras model's inference, eager against traced (train/infer.py), timed and compared.

    .venv/bin/python scripts/infer_speed.py [--images 512] [--repeats 2] [--out benchmarks/results/infer_speed.json]

The shipped 160 px MobileNetV2 (runs/mobilenetv2_160_ft/model.keras) runs the same random uint8
images in batches of 64, normalised as the runtime does, two ways: `eager`, the model called
directly as adapt, convert's gate and the teacher called it before (tf_keras runs a functional
model op by op), and `traced`, train/infer.py's `outputs` (one tf.function per model). Each way is
warmed up with one batch, then timed --repeats times, alternating; the outputs are compared value
for value. Run it on an idle machine: the figure is milliseconds per image on this CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edge_bloodcls.tfenv import configure

configure()  # before TensorFlow is first imported

import numpy as np  # noqa: E402

from edge_bloodcls.convert import export  # noqa: E402
from edge_bloodcls.edge_runtime.core.preprocess import normalise  # noqa: E402
from edge_bloodcls.train import infer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "runs" / "mobilenetv2_160_ft" / "model.keras"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "infer_speed.json"))
    args = ap.parse_args()
    src = export.load_source(MODEL)
    model, spec = src.model, src.spec
    px = np.random.default_rng(0).integers(0, 256, (args.images, *spec.size, 3), dtype=np.uint8)

    def eager(p):
        return np.concatenate(
            [model(normalise(p[i : i + 64], spec), training=False).numpy() for i in range(0, len(p), 64)]
        )

    def traced(p):
        return infer.outputs(model, p, spec, 64)

    ways = {"eager": eager, "traced": traced}
    outs = {k: f(px[:64]) for k, f in ways.items()}  # warm-up (and the trace)
    ms: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(args.repeats):
        for k, f in ways.items():
            t = time.perf_counter()
            outs[k] = f(px)
            ms[k].append(round((time.perf_counter() - t) / len(px) * 1000, 2))
            print(f"{k}: {ms[k][-1]} ms an image", flush=True)
    diff = float(np.abs(outs["eager"] - outs["traced"]).max())
    res = {
        "command": ".venv/bin/python scripts/infer_speed.py"
        + (f" --images {args.images}" if args.images != 512 else "")
        + (f" --repeats {args.repeats}" if args.repeats != 2 else ""),
        "model": str(MODEL.relative_to(REPO)),
        "images": len(px),
        "batch": 64,
        "ms_per_image": ms,
        "max_abs_difference": diff,
        "same_argmax": float((outs["eager"].argmax(1) == outs["traced"].argmax(1)).mean()),
    }
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"largest difference {diff:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a training step's time goes, by TensorFlow op type, with oneDNN's kernels and with
TensorFlow's own (Eigen) ones:

    .venv/bin/python scripts/step_ops.py [--batch 16] [--steps 5]

Why: adapt's wall time is mostly its training steps, and TensorFlow on x86 Linux picks oneDNN's
kernels by itself only on CPUs with AVX512_VNNI, AVX512_BF16 or AMX (app/tfenv.py now asks for
them). This profiles adapt's step (the base model, every layer trained, Adam, cross-entropy; random
inputs of the model's size: the kernels' time does not depend on the pixels) in one process per
setting (the setting is read when TensorFlow starts) with TensorFlow's profiler, and sums the
ops' durations by type. Threads run ops side by side, so a type's total can exceed its share of
the wall time; the step's own wall time is timed apart, outside the profiler. Run it on an idle
machine. Writes benchmarks/results/step_ops.json.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "runs" / "mobilenetv2_160_ft" / "model.keras"
SETTINGS = {"onednn": "1", "eigen": "0"}  # TF_ENABLE_ONEDNN_OPTS
TOP = 12
WRAPPERS = {"Process", "Run"}


def child(batch: int, steps: int) -> dict:
    from edge_bloodcls.tfenv import configure

    configure()
    import numpy as np
    import tensorflow as tf
    import tf_keras
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    model = tf_keras.models.load_model(MODEL, compile=False)
    opt = tf_keras.optimizers.Adam(1e-4)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf_keras.losses.sparse_categorical_crossentropy(y, model(x, training=True)))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    rng = np.random.default_rng(0)
    size = model.input_shape[1:]
    x = tf.constant(rng.uniform(-1, 1, (batch, *size)).astype(np.float32))
    y = tf.constant(rng.integers(model.output_shape[-1], size=batch))
    for _ in range(3):  # tracing and warm-up
        step(x, y)
    t = time.perf_counter()
    for _ in range(steps):
        float(step(x, y))
    wall = (time.perf_counter() - t) / steps
    with tempfile.TemporaryDirectory() as log:
        tf.profiler.experimental.start(log)
        for _ in range(steps):
            float(step(x, y))
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(Path(sorted(glob.glob(f"{log}/**/*.xplane.pb", recursive=True))[-1]).read_bytes())
    by_type: collections.Counter = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            for ev in line.events:
                name = plane.event_metadata[ev.metadata_id].name
                if ":" not in name:
                    continue
                kind = name.rsplit(":", 1)[1].strip()
                # An op's event is "node name:op type"; the function call and the executor's
                # events around the ops would count the same time twice.
                if kind not in WRAPPERS and not kind.startswith("__inference"):
                    by_type[kind] += ev.duration_ps / 1e9 / steps  # ms a step
    return {
        "seconds_per_step": round(wall, 3),
        "ms_per_step_by_op_type": {k: round(v, 1) for k, v in by_type.most_common(TOP)},
        "ms_per_step_all_ops": round(sum(by_type.values()), 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "step_ops.json"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.batch, args.steps)))
        return 0
    res: dict = {"command": f".venv/bin/python scripts/step_ops.py --batch {args.batch} --steps {args.steps}"}
    for name, flag in SETTINGS.items():
        run = subprocess.run(
            [sys.executable, __file__, "--child", "--batch", str(args.batch), "--steps", str(args.steps)],
            env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": flag},
            capture_output=True,
            text=True,
        )
        if run.returncode:
            print(run.stderr[-2000:], file=sys.stderr)
            return 1
        res[name] = json.loads(run.stdout.strip().splitlines()[-1])
        print(name, json.dumps(res[name]), flush=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

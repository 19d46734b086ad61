"""Two ways into the TFLite converter, timed and compared (issue 29: adapt within 10 minutes):

- `keras`: `TFLiteConverter.from_keras_model(model)`, what convert used before;
- `module`: a tf.Module holding the model's variables and one traced call
  (convert/export.py `_converter`, what convert takes: a SavedModel is written and read back);
- `frozen`: the same traced call handed over without the module: the converter freezes the
  variables into constants and converts that graph, with no SavedModel written and read back.

    .venv/bin/python scripts/convert_paths.py [--cells 100] [--ways keras module] [--out FILE.json]

For the shipped 160 px model (with its feature output, as convert exports it) and for adapt's
routed model (two copies of it joined by adapt/route.py, as adapt exports them), each converted to
per-tensor int8 both ways with the same 300 PBC calibration cells; then both files run --cells PBC
test cells through the interpreter and their int8 outputs are compared value for value. Both
conversions of a model run in one process, one after the other; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import adapt_experiments as ax  # noqa: E402  (configures TensorFlow's environment first)
import numpy as np  # noqa: E402

from edge_bloodcls.adapt import route as rt  # noqa: E402
from edge_bloodcls.convert import calibrate, export, formats  # noqa: E402
from edge_bloodcls.edge_runtime.core.preprocess import normalise  # noqa: E402
from edge_bloodcls.edge_runtime.core.spec import InputSpec  # noqa: E402


def convert(model, spec, way: str, samples: np.ndarray) -> tuple[bytes, float]:
    import tensorflow as tf

    t = time.perf_counter()
    if way == "keras":
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
    elif way == "module":
        conv = export._converter(model, spec, False)  # noqa: SLF001 - the path convert takes
    else:
        call = tf.function(
            lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, *spec.size, 3], tf.float32)]
        )
        conv = tf.lite.TFLiteConverter.from_concrete_functions([call.get_concrete_function()])
    formats.apply(conv, formats.resolve("int8", per_tensor=True), "int8", calibrate.representative(samples))
    return conv.convert(), time.perf_counter() - t


def outputs(tflite: bytes, px: np.ndarray, spec) -> list[np.ndarray]:
    """The int8 outputs for each cell, ordered by width (probabilities, then features)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=tflite)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    outs = sorted(it.get_output_details(), key=lambda o: int(o["shape"][-1]))
    scale, zero = inp["quantization"]
    res = []
    for p in px:
        q = np.clip(np.round(normalise(p, spec) / scale + zero), -128, 127).astype(np.int8)
        it.set_tensor(inp["index"], q[None])
        it.invoke()
        res.append(np.concatenate([it.get_tensor(o["index"]).ravel() for o in outs]))
    return res


def main() -> int:
    import tf_keras

    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=100)
    ap.add_argument("--ways", nargs=2, choices=("keras", "module", "frozen"), default=["keras", "module"])
    ap.add_argument("--out", default=str(ax.REPO / "benchmarks" / "results" / "convert_paths.json"))
    args = ap.parse_args()
    spec = InputSpec.named(160)
    _, _, _, _, pbc = ax.inputs(spec)
    samples = np.stack([normalise(p, spec) for p in pbc["train"][:300]]).astype(np.float32)
    test = pbc["test"][: args.cells]

    def base():
        return tf_keras.models.load_model(ax.MODEL, compile=False)

    home, site = base(), base()
    # The router's (small, random) weights change the answers, not what the converter does.
    w = np.random.default_rng(0).normal(0, 0.01, 1280).astype(np.float32)
    models = {"mobilenetv2_160": export.with_features(base())[0], "routed": rt.routed(home, site, w, 0.0, "routed")}
    cmd = (
        ".venv/bin/python scripts/convert_paths.py"
        + (f" --cells {args.cells}" if args.cells != 100 else "")
        + (f" --ways {' '.join(args.ways)}" if args.ways != ["keras", "module"] else "")
        + (f" --out {args.out}" if "--out" in sys.argv else "")
    )
    res: dict = {"command": cmd}
    for name, model in models.items():
        row: dict = {}
        outs = {}
        for way in args.ways:
            tfl, s = convert(model, spec, way, samples)
            outs[way] = outputs(tfl, test, spec)
            row[way] = {"seconds": round(s, 1), "bytes": len(tfl), "sha256": hashlib.sha256(tfl).hexdigest()[:12]}
            print(f"{name} {way}: {s:.1f} s, {len(tfl)} bytes", flush=True)
        same = sum(np.array_equal(a, b) for a, b in zip(*outs.values()))
        row["cells_with_identical_outputs"] = f"{same}/{len(test)}"
        print(f"{name}: identical int8 outputs on {same} of {len(test)} PBC test cells", flush=True)
        res[name] = row
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

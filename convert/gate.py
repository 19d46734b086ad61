"""The accuracy gate: the float Keras model and the exported TFLite model on the same images.

The exported model is run by the runtime's own Classifier (edge_runtime.core.classifier), so the
quantization of inputs and outputs under test is the code the Pi runs. Also here: which ops of
an integer export stayed float, and the per-layer error report of the quantization debugger.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_bloodcls.edge_runtime.core.bundle import Bundle
from edge_bloodcls.edge_runtime.core.classifier import Classifier
from edge_bloodcls.edge_runtime.core.metrics import classification_metrics
from edge_bloodcls.edge_runtime.core.preprocess import normalise
from edge_bloodcls.edge_runtime.core.spec import InputSpec
from edge_bloodcls.train import infer

from .calibrate import representative

FLOAT_DTYPES = ("float32", "float16", "float64")


def _interpreter(tflite_bytes: bytes):
    """An interpreter without the default XNNPACK delegate, so every op is listed by its own name."""
    try:
        # the LiteRT interpreter: the [edge] extra, only to run a .tflite
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
        import tensorflow as tf

        Interpreter, OpResolverType = tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    it = Interpreter(
        model_content=tflite_bytes, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    it.allocate_tensors()
    return it


def _quant(detail) -> dict | None:
    scale, zero = detail["quantization"]
    if detail["dtype"] == np.float32 or scale == 0:
        return None
    return {"scale": float(scale), "zero_point": int(zero)}


def io_details(tflite_bytes: bytes, n_labels: int | None = None) -> dict:
    """{"input": {"dtype", "quant", "shape"}, "output": {...}, "features": {...} or None}: the
    probabilities are the output with one value per label (the converter does not promise an
    order), the pooled features the other one."""
    it = _interpreter(tflite_bytes)
    outs = it.get_output_details()
    probs = next((d for d in outs if n_labels is None or d["shape"][-1] == n_labels), outs[0])
    feats = next((d for d in outs if d is not probs), None)
    out = {}
    for key, d in (("input", it.get_input_details()[0]), ("output", probs), ("features", feats)):
        out[key] = (
            None
            if d is None
            else {
                "dtype": np.dtype(d["dtype"]).name,
                "quant": _quant(d),
                "shape": [int(s) for s in d["shape_signature"]],
            }
        )
    return out


def ops(tflite_bytes: bytes) -> list[dict]:
    """Every op with the dtypes of its tensors, in execution order."""
    it = _interpreter(tflite_bytes)
    dtype = {d["index"]: np.dtype(d["dtype"]).name for d in it.get_tensor_details()}
    inputs = {d["index"] for d in it.get_input_details()}
    outputs = {d["index"] for d in it.get_output_details()}
    res = []
    for op in it._get_ops_details():  # noqa: SLF001 - the interpreter's only op listing
        ins = [i for i in op["inputs"] if i >= 0]
        res.append(
            {
                "index": int(op["index"]),
                "op": op["op_name"],
                "inputs": [dtype[i] for i in ins],
                "outputs": [dtype[i] for i in op["outputs"]],
                "graph_input": any(i in inputs for i in ins),
                "graph_output": any(i in outputs for i in op["outputs"]),
            }
        )
    return res


def op_shapes(tflite_bytes: bytes) -> list[dict]:
    """Every op with the shapes of its tensors, in execution order ({"op", "inputs",
    "outputs"}; an absent optional input, such as a convolution without bias, is None):
    what counting the arithmetic of a graph needs (benchmarks' MACs)."""
    it = _interpreter(tflite_bytes)
    shape = {d["index"]: [int(s) for s in d["shape"]] for d in it.get_tensor_details()}
    return [
        {
            "op": op["op_name"],
            "inputs": [shape[i] if i >= 0 else None for i in op["inputs"]],
            "outputs": [shape[i] for i in op["outputs"]],
        }
        for op in it._get_ops_details()
    ]  # noqa: SLF001 - the interpreter's only op listing


def float_ops(tflite_bytes: bytes) -> list[dict]:
    """Ops computing in floating point. The QUANTIZE of a float model input and the DEQUANTIZE
    of a float model output (--io float32) are conversions at the edge, not float arithmetic."""
    res = []
    for op in ops(tflite_bytes):
        if op["op"] == "QUANTIZE" and op["graph_input"] and not any(t in FLOAT_DTYPES for t in op["outputs"]):
            continue
        if op["op"] == "DEQUANTIZE" and op["graph_output"] and not any(t in FLOAT_DTYPES for t in op["inputs"]):
            continue
        if any(t in FLOAT_DTYPES for t in op["inputs"] + op["outputs"]):
            res.append(op)
    return res


def predict_keras(model, pixels: np.ndarray, spec: InputSpec, batch: int = 64) -> np.ndarray:
    """The float model's probabilities (the first output of a routed model's [probs, features])."""
    return infer.outputs(model, pixels, spec, batch)


def predict_tflite(tflite_path, manifest: dict, pixels: np.ndarray, threads: int | None = None):
    """The runtime's Classifier on each image (batch of one, as on the Pi) -> (Classifier.predict_many
    output: raw probabilities and pooled features, interpreter info)."""
    clf = Classifier(Bundle(Path(tflite_path), manifest), threads=threads)
    out = clf.predict_many(normalise(np.asarray(p), clf.spec) for p in pixels)
    return out, dict(clf.info)


def summary(m: dict) -> dict:
    return {
        "accuracy": m["accuracy"],
        "balanced_accuracy": m["balanced_accuracy"],
        "macro_f1": m["macro"]["f1"],
        "recall": {k: v["recall"] for k, v in m["per_class"].items()},
    }


def compare(y: np.ndarray, float_probs: np.ndarray, exported_probs: np.ndarray, labels) -> dict:
    """Metrics of both models, the drop in accuracy points, and how often they agree."""
    mf = classification_metrics(y, float_probs.argmax(1), labels)
    me = classification_metrics(y, exported_probs.argmax(1), labels)
    return {
        "float": summary(mf),
        "exported": summary(me),
        "drop": round((mf["accuracy"] - me["accuracy"]) * 100, 3),
        "agreement": float(np.mean(float_probs.argmax(1) == exported_probs.argmax(1))),
        "max_abs_prob_diff": float(np.abs(float_probs - exported_probs).max()),
        "n": int(len(y)),
    }


@dataclass
class LayerError:
    op: str
    tensor: str
    rmse_over_scale: float  # ~0.29 (uniform rounding) is ideal; larger means range trouble
    scale: float
    max_abs_error: float


def debug_report(make_converter, samples: np.ndarray, path, top: int = 10, n: int = 64) -> list[LayerError]:
    """tf.lite QuantizationDebugger: per-layer error of the quantized model against float,
    written as CSV (all layers, worst first); returns the `top` worst."""
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tensorflow as tf

    debug_set = samples[: max(1, min(n, len(samples)))]
    dbg = tf.lite.experimental.QuantizationDebugger(converter=make_converter(), debug_dataset=representative(debug_set))
    dbg.run()
    buf = io.StringIO()
    dbg.layer_statistics_dump(buf)
    rows: list[dict[str, Any]] = list(csv.DictReader(io.StringIO(buf.getvalue())))
    for r in rows:
        scale = float(r["scale"]) or float("nan")
        r["rmse/scale"] = math.sqrt(float(r["mean_squared_error"])) / scale
    rows.sort(key=lambda r: -(r["rmse/scale"] if r["rmse/scale"] == r["rmse/scale"] else -1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["op_name"], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return [
        LayerError(r["op_name"], r["tensor_name"], float(r["rmse/scale"]), float(r["scale"]), float(r["max_abs_error"]))
        for r in rows[:top]
    ]

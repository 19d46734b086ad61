"""One benchmark configuration (model x format x threads), measured in a process of its own.

    python -m edge_bloodcls.benchmarks.child SPEC.json

A fresh process per configuration makes the peak resident memory (VmHWM) that of this model in
this format alone, and keeps TensorFlow out of the TFLite measurements: a TFLite child imports
the edge runtime only, as the Pi does, so its memory is what the Pi would pay. The spec and the
result are JSON files (the parent computes the metrics from the predictions written here).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from edge_bloodcls.edge_runtime.core.bundle import load_bundle
from edge_bloodcls.edge_runtime.core.classifier import Classifier
from edge_bloodcls.edge_runtime.core.preprocess import normalise, prepare
from edge_bloodcls.edge_runtime.core.progress import Progress
from edge_bloodcls.edge_runtime.core.spec import InputSpec
from edge_bloodcls.tfenv import configure


def peak_rss_mb() -> float:
    """The process's high-water resident set (VmHWM), in MB; ru_maxrss where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, kB on Linux


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms, np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
        "n": int(a.size),
    }


def _timed(call, x, warmup: int, runs: int) -> tuple[list[float], list[float]]:
    """(wall ms of each call, the callee's own ms where it reports one) after `warmup` calls."""
    for _ in range(warmup):
        call(x)
    wall, inner = [], []
    for _ in range(runs):
        t = time.perf_counter()
        r = call(x)
        wall.append((time.perf_counter() - t) * 1000)
        if r is not None:
            inner.append(r)
    return wall, inner


def run_tflite(spec: dict) -> dict:
    t0 = time.perf_counter()
    bundle = load_bundle(spec["path"])  # sha256 verified, as the runtime does
    clf = Classifier(bundle, threads=spec["threads"])
    load_s = time.perf_counter() - t0
    x = prepare(spec["latency_image"], clf.spec)
    # Classifier.predict: input quantization, invoke, output dequantization; it returns the
    # invoke time alone as well.
    wall, invoke = _timed(lambda v: clf.predict(v)[1], x, spec["warmup"], spec["runs"])
    out = {
        "load_s": load_s,
        "latency_ms": percentiles(wall),
        "invoke_ms": percentiles(invoke),
        "peak_rss_mb": peak_rss_mb(),
        "interpreter": clf.describe(),
    }
    if spec.get("pixels"):
        pixels = _pixels(spec)
        res = clf.predict_many(_progress(spec, len(pixels), (normalise(np.asarray(p), clf.spec) for p in pixels)))
        out["predictions"] = res["probs"].argmax(1).tolist()
        # Calibrated confidence, for ECE in the bench (edge_runtime.core.trust.ece).
        out["confidences"] = [round(float(c), 6) for c in res["probs"].max(1)]
    return out


def run_keras(spec: dict) -> dict:
    configure()  # this process did not start through the CLI
    t0 = time.perf_counter()
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tensorflow as tf
    import tf_keras

    import_s = time.perf_counter() - t0
    threads = spec["threads"]
    if threads:
        # Fixed before TensorFlow creates its thread pools, i.e. before the first op runs.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    t0 = time.perf_counter()
    model = tf_keras.models.load_model(spec["path"], compile=False)
    load_s = time.perf_counter() - t0
    ispec = InputSpec.from_json(spec["input"])
    # A traced graph, not eager calls: eager Python overhead would dominate a small model.
    fn = tf.function(lambda v: model(v, training=False))
    x = prepare(spec["latency_image"], ispec)[None]
    wall, _ = _timed(lambda v: (fn(v).numpy(), None)[1], x, spec["warmup"], spec["runs"])
    out = {
        "load_s": load_s,
        "import_s": import_s,
        "latency_ms": percentiles(wall),
        "peak_rss_mb": peak_rss_mb(),
        "interpreter": {
            "interpreter": "tf_keras",
            "interpreter_version": tf_keras.__version__,
            "tensorflow": tf.__version__,
            "threads": threads or os.cpu_count(),
            "device": "cpu",
        },
    }
    if spec.get("pixels"):
        # Here, not at the top: a TFLite child imports the edge runtime only, as the Pi does (its
        # memory is what the Pi pays); convert/ is for the Keras child alone.
        from edge_bloodcls.convert.gate import predict_keras

        out["predictions"] = predict_keras(model, _pixels(spec), ispec).argmax(1).tolist()
    return out


def _progress(spec: dict, total: int, items):
    """The accuracy pass counted on the terminal the bench was started from: the parent passes
    its stderr as progress_fd when that is a terminal (this process's own stderr is a pipe the
    parent reads for errors)."""
    fd = spec.get("progress_fd")
    if fd is None:
        return items

    return Progress(total, spec.get("progress_label", "accuracy"), os.fdopen(fd, "w", closefd=False)).iterate(items)


def _pixels(spec: dict) -> np.ndarray:
    arr = np.load(spec["pixels"], mmap_mode="r")
    idx = spec.get("indices")
    return np.asarray(arr if idx is None else arr[np.asarray(idx, np.int64)])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    t0 = time.perf_counter()
    out = (run_keras if spec["kind"] == "keras" else run_tflite)(spec)
    out["peak_rss_mb_with_accuracy"] = peak_rss_mb()
    out["wall_s"] = time.perf_counter() - t0
    out["tensorflow_imported"] = "tensorflow" in sys.modules
    out["loadavg"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    tmp = Path(spec["out"]).with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, spec["out"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

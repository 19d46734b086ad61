"""The benchmark harness: every model x format x thread count, on the same test images.

For each model (a training run runs/ARCH_SIZE/, an untrained build where a run has no
model.keras yet, or a bundle) and each format it gets the bundle (an export already in
runs/exports/RUN/, else one made here by convert's own export), then measures each
configuration in a fresh process (benchmarks/child.py): load time, latency percentiles after
warm-up through the runtime's Classifier (or Keras for the float reference), peak resident
memory, and, once per model and format, the predictions on the test images. The parent turns
predictions into metrics with edge_runtime.metrics and keeps everything in one results JSON,
saved after every configuration: a rerun skips what is already there, so a long benchmark can
run in pieces (--redo measures again).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from .. import __version__
from ..edge_runtime.bundle import DEFAULT_MODEL, MODELS_DIR, BundleError, load_bundle, sha256_file
from ..edge_runtime.metrics import classification_metrics
from ..edge_runtime.spec import LABELS, InputSpec

SCHEMA = 1
FORMATS = ("keras", "float32", "float16", "dynamic", "int8", "qat-int8")
DEFAULT_ARCHS = ("mobilenetv2", "resnet50", "vgg16", "vgg19")
BASELINE = "mobilenetv2_96"  # the "vs MobileNetV2 int8" ratios
REFERENCE = "mobilenetv2@224"  # the ImageNet-size network published edge figures are quoted for
RESULTS_NAME = "bench.json"
# An untrained build is measured for speed and size only: a few calibration and gate images do.
UNTRAINED_CALIBRATION = 32
UNTRAINED_EVAL = 16
MACS_METHOD = ("counted on the float32 TFLite graph: CONV_2D and TRANSPOSE_CONV output elements x kernel "
               "height x width x input channels, DEPTHWISE_CONV_2D output elements x kernel height x width, "
               "FULLY_CONNECTED and BATCH_MATMUL output elements x reduction length; BatchNorm is folded "
               "into the convolutions, activations, additions and pooling are not counted")
CPU_FLAGS_OF_INTEREST = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16",
                         "avx512_fp16", "avx_vnni", "amx_int8", "amx_bf16", "asimd", "asimddp", "fphp", "i8mm")


class BenchError(RuntimeError):
    pass


@dataclass
class BenchOptions:
    out: str
    models: list = field(default_factory=lambda: list(DEFAULT_ARCHS))
    formats: list = field(default_factory=lambda: list(FORMATS))
    threads: list = field(default_factory=lambda: ["1", "all"])
    data: str | None = None  # split CSV (its test rows) or a class-folder directory [runs/split.csv]
    data_root: str | None = None
    calibration: str | None = None  # split CSV for exports made here [--data when a CSV, else runs/split.csv]
    runs: int = 200
    warmup: int = 20
    max_images: int | None = None  # stratified subset of the test images for accuracy; 0: no accuracy
    size: int = 96
    runs_dir: str = "runs"
    exports_dir: str | None = "runs/exports"
    cache_dir: str = ".cache"
    qat_epochs: int = 1
    export_eval_samples: int | None = 256
    calibration_samples: int = 300
    baseline: str = BASELINE
    shipped: bool = True
    reference: bool = False
    redo: bool = False  # latency and accuracy again
    redo_latency: bool = False  # latency again, accuracy kept (e.g. on a machine now idle)
    timeout: float = 3 * 3600
    seed: int = 0
    quick: bool = False
    report: bool = True


@dataclass
class ModelSource:
    key: str  # results key: mobilenetv2_96, tiny_32, mobilenetv2_96_int8 (a bundle)
    arch: str
    size: int
    kind: str  # run | untrained | bundle
    path: Path  # model.keras, or the bundle's NAME.json
    trained: bool
    note: str = ""
    training: dict | None = None
    formats: tuple | None = None  # the only formats it has (a bundle; the reference)
    role: str = "model"  # model | shipped | reference


# --- models -----------------------------------------------------------------------------

def _arch_size(name: str) -> tuple[str, int | None]:
    m = re.fullmatch(r"(.+?)_(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else (name, None)


def _training_record(run: Path) -> dict | None:
    f = run / "metrics.json"
    if not f.exists():
        return None
    m = json.loads(f.read_text())
    test = m.get("test") or {}
    keys = ("epochs_run", "epochs_planned", "best_epoch", "stop_reason", "train_seconds")
    return {**{k: m.get(k) for k in keys}, "test_accuracy_at_training": test.get("accuracy")}


def resolve_model(spec: str, opts: BenchOptions) -> ModelSource:
    """A name (mobilenetv2, mobilenetv2_96), a run directory, a bundle (NAME.json/.tflite/NAME),
    'shipped' (the runtime's default bundle) or ARCH@SIZE (an untrained build, e.g. the reference)."""
    if spec == "shipped":
        return _bundle_source(MODELS_DIR / f"{DEFAULT_MODEL}.json", role="shipped")
    if "@" in spec:
        arch, size = spec.split("@")
        return _untrained(arch, int(size), f"{arch}_{size}_ref", "reference build (untrained): latency and size only",
                          role="reference", formats=("float32", "int8"))
    p = Path(spec)
    if p.suffix in (".json", ".tflite") or (not p.is_dir() and p.with_suffix(".json").exists()):
        return _bundle_source(p)
    run = p if p.is_dir() else Path(opts.runs_dir) / (spec if _arch_size(spec)[1] else f"{spec}_{opts.size}")
    cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    arch, size = _arch_size(run.name)
    arch = (cfg.get("train") or {}).get("arch") or arch
    size = (cfg.get("train") or {}).get("img_size") or size or opts.size
    if (run / "model.keras").exists():
        rec = _training_record(run)
        note = "" if rec else "no metrics.json beside model.keras"
        if rec and "time budget" in str(rec.get("stop_reason")):
            note = (f"training stopped by its time budget after {rec.get('epochs_run')} of "
                    f"{rec.get('epochs_planned')} epochs")
        return ModelSource(run.name, arch, int(size), "run", run / "model.keras", True, note, rec)
    return _untrained(arch, int(size), run.name,
                      f"not trained: no {run}/model.keras; an untrained build of train.archs.build "
                      "(latency, size, parameters and MACs only)")


def _bundle_source(path: Path, role: str = "model") -> ModelSource:
    b = load_bundle(path)
    size = int(b.manifest["input"]["size"][0])
    origin = b.manifest.get("exported_as") or b.name
    # The shipped bundle is named like the int8 export it was copied from (often another one,
    # e.g. the per-tensor int8): its key says which.
    key = f"shipped:{origin}" if role == "shipped" else b.name
    return ModelSource(key, b.manifest.get("arch", "?"), size, "bundle", b.tflite.with_suffix(".json"), True,
                       f"bundle {b.name}" + (f" (exported as {origin})" if origin != b.name else ""),
                       None, (b.quantization,), role)


def _untrained(arch: str, size: int, key: str, note: str, role: str = "model", formats=None) -> ModelSource:
    return ModelSource(key, arch, size, "untrained", Path(), False, note, None, formats, role)


def untrained_build(src: ModelSource, opts: BenchOptions, calib_csv: Path, log) -> Path:
    """train.archs.build with random weights, saved (once) as a run dir convert can export."""
    d = Path(opts.cache_dir) / "bench" / "untrained" / f"{src.arch}_{src.size}"
    f = d / "model.keras"
    if f.exists():
        return f
    import tf_keras

    from ..train import archs

    log(f"{src.key}: building an untrained {src.arch} at {src.size} px")
    tf_keras.utils.set_random_seed(opts.seed)
    model = archs.build(src.arch, src.size, "none")
    d.mkdir(parents=True, exist_ok=True)
    model.save(d / "tmp.keras")
    os.replace(d / "tmp.keras", f)
    (d / "config.json").write_text(json.dumps({
        "train": {"arch": src.arch, "img_size": src.size, "weights": "none"}, "untrained": True,
        "input": archs.input_spec(src.arch, src.size, "none").to_json(), "labels": list(LABELS),
        "params": int(model.count_params()), "split": {"csv": str(calib_csv)}}, indent=2))
    return f


# --- bundles ----------------------------------------------------------------------------

def bundles_for(src: ModelSource, formats: list[str], opts: BenchOptions, calib_csv: Path,
                log) -> tuple[dict, list, Path | None]:
    """format -> model file (NAME.tflite, or model.keras for "keras"), the errors of formats
    that could not be exported, and the Keras model they come from (None for a bundle)."""
    if src.kind == "bundle":
        return {src.formats[0]: src.path.with_suffix(".tflite")}, [], None
    from ..convert.formats import FORMATS as TABLE

    keras_path = src.path if src.kind == "run" else untrained_build(src, opts, calib_csv, log)
    sha = sha256_file(keras_path)
    cache = Path(opts.cache_dir) / "bench" / "exports" / f"{src.key}-{sha[:12]}"
    out, errors = {}, []
    for fmt in formats:
        if fmt == "keras":
            out[fmt] = keras_path
            continue
        name = f"{src.key}_{TABLE[fmt].suffix}"
        candidates = [cache / f"{name}.json"]
        if src.kind == "run" and opts.exports_dir:
            candidates.insert(0, Path(opts.exports_dir) / src.key / f"{name}.json")
        found = None
        for c in candidates:
            if not c.exists():
                continue
            try:
                b = load_bundle(c)
            except BundleError as e:
                log(f"warning: {e}")
                continue
            if b.manifest.get("source_model", {}).get("sha256") not in (None, sha):
                log(f"{c}: exported from another {keras_path.name} (sha256 differs); not used")
                continue
            found = b.tflite
            break
        if found is None and fmt == "qat-int8" and (not src.trained or opts.qat_epochs < 1):
            # convert's QAT fine-tunes at least one epoch, and fine-tuning an untrained network
            # measures nothing the int8 row does not: its graph has the same integer kernels.
            why = "untrained build" if not src.trained else "--qat-epochs 0"
            errors.append({"model": src.key, "format": fmt, "stage": "skipped",
                           "error": f"no QAT export ({why}); the int8 row has the same integer kernels"})
            continue
        if found is None:
            try:
                found = _export(keras_path, fmt, name, cache, calib_csv, opts, not src.trained, log)
            except Exception as e:  # one format that cannot be exported must not stop the others
                errors.append({"model": src.key, "format": fmt, "stage": "export", "error": _one_line(e)})
                log(f"{src.key} {fmt}: export failed: {_one_line(e)}")
                continue
        out[fmt] = found
    return out, errors, keras_path


def _export(keras_path: Path, fmt: str, name: str, out_dir: Path, calib_csv: Path, opts: BenchOptions,
            untrained: bool, log) -> Path:
    from ..convert.export import ExportOptions, run

    log(f"exporting {name} from {keras_path} (convert.export)")
    eo = ExportOptions(
        model=str(keras_path), quantize="int8" if fmt in ("int8", "qat-int8") else fmt, out=str(out_dir),
        qat=fmt == "qat-int8", qat_epochs=opts.qat_epochs,
        calibration=str(calib_csv), split=str(calib_csv), data_root=opts.data_root,
        calibration_samples=(min(opts.calibration_samples, UNTRAINED_CALIBRATION) if untrained
                             else opts.calibration_samples),
        eval_samples=UNTRAINED_EVAL if untrained else opts.export_eval_samples,
        cache_dir=str(Path(opts.cache_dir) / "pixels"), force=True, name=name, seed=opts.seed)
    res = run(eo, log=lambda s: log("  " + s))
    return Path(res["bundle"])


def _rel(p) -> str:
    """A path relative to the working directory when under it: results get committed."""
    try:
        return str(Path(p).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[-1] if s else ''}"


# --- graph statistics -------------------------------------------------------------------

def graph_macs(tflite_path) -> dict:
    """Multiply-accumulates of one inference, from the TFLite graph's op list and tensor shapes."""
    from ..convert.gate import _interpreter  # no default delegate: every op is listed as itself

    it = _interpreter(Path(tflite_path).read_bytes())
    shape = {d["index"]: [int(s) for s in d["shape"]] for d in it.get_tensor_details()}
    by_op: dict[str, int] = {}
    for op in it._get_ops_details():  # noqa: SLF001 - the interpreter's only op listing
        name, ins, outs = op["op_name"], list(op["inputs"]), list(op["outputs"])
        n_out = int(np.prod(shape[outs[0]])) if outs else 0
        if name == "CONV_2D":
            w = shape[ins[1]]  # [out_ch, kh, kw, in_ch]
            macs = n_out * w[1] * w[2] * w[3]
        elif name == "DEPTHWISE_CONV_2D":
            w = shape[ins[1]]  # [1, kh, kw, out_ch]
            macs = n_out * w[1] * w[2]
        elif name in ("FULLY_CONNECTED", "BATCH_MATMUL"):
            macs = n_out * shape[ins[0]][-1]
        elif name == "TRANSPOSE_CONV":
            w = shape[ins[1]]  # [out_ch, kh, kw, in_ch]; every input element meets the whole kernel
            macs = int(np.prod(shape[ins[2]])) * w[0] * w[1] * w[2]
        else:
            continue
        by_op[name] = by_op.get(name, 0) + int(macs)
    return {"macs": int(sum(by_op.values())), "by_op": by_op, "method": MACS_METHOD}


# --- machine ----------------------------------------------------------------------------

def machine_info() -> dict:
    cpu = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            k, v = k.strip(), v.strip()
            if k in ("model name", "flags", "Features", "cpu MHz", "Model") and k not in cpu:
                cpu[k] = v
    except OSError:
        pass
    flags = (cpu.get("flags") or cpu.get("Features") or "").split()
    os_name = platform.platform()
    try:
        rel = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
        os_name = rel.get("PRETTY_NAME", os_name).strip('"')
    except OSError:
        pass
    mem_gb = None
    try:
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem_gb = round(kb / 1024 ** 2, 1)
    except (OSError, IndexError, ValueError):
        pass
    libs = {}
    for dist in ("numpy", "ai-edge-litert", "tflite-runtime", "tensorflow", "tensorflow-cpu", "tf-keras",
                 "tensorflow-model-optimization", "scikit-learn", "pillow", "matplotlib"):
        try:
            libs[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        from ..edge_runtime.interpreter import backend_name
        backend = backend_name()
    except Exception as e:  # recorded, not fatal: the children report what they used
        backend = f"unavailable ({_one_line(e)})"
    return {
        "cpu_model": cpu.get("model name") or cpu.get("Model") or platform.processor() or platform.machine(),
        "cpu_mhz": cpu.get("cpu MHz"), "machine": platform.machine(),
        "cpu_flags_of_interest": [f for f in CPU_FLAGS_OF_INTEREST if f in flags], "cpu_flags": flags,
        "cores_logical": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": mem_gb, "os": os_name, "kernel": platform.release(), "python": platform.python_version(),
        "libraries": libs, "edge_bloodcls": __version__, "interpreter_backend": backend,
        "nice": os.nice(0) if hasattr(os, "nice") else None,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


# --- test images ------------------------------------------------------------------------

@dataclass
class TestImages:
    source: str
    paths: list
    labels: np.ndarray
    indices: np.ndarray  # the images accuracy is measured on (all, or a stratified subset)
    key: str  # identity of the image list, for the pixel cache and for stale results
    split_sha256: str | None = None
    _pixels: dict = field(default_factory=dict)

    def pixel_file(self, size: int, cache_dir: Path) -> str:
        """The test images decoded and resized by the runtime's functions, as a uint8 .npy file
        (training's cache of the same split is reused)."""
        if size not in self._pixels:
            from ..train.pipeline import cached_pixels

            arr = cached_pixels(self.paths, (size, size), cache_dir, self.key)
            if getattr(arr, "filename", None) is None:  # just written: read back as a memmap
                arr = cached_pixels(self.paths, (size, size), cache_dir, self.key)
            self._pixels[size] = str(arr.filename)
        return self._pixels[size]

    def describe(self) -> dict:
        counts = np.bincount(self.labels[self.indices], minlength=len(LABELS)).tolist()
        return {"source": self.source, "n_total": int(len(self.labels)), "n": int(len(self.indices)),
                "subset": len(self.indices) < len(self.labels), "key": self.key,
                "split_sha256": self.split_sha256, "per_class": dict(zip(LABELS, counts))}


def load_test_images(data: Path, data_root, max_images: int | None, seed: int) -> TestImages:
    from ..convert import calibrate

    if data.is_dir():
        # The same files as `edge-bloodcls evaluate DIR` (edge_runtime.images.list_class_images);
        # those that are not images by their header are left out and counted in `source`.
        try:
            images = calibrate.from_directory(data)
        except (OSError, ValueError) as e:
            raise BenchError(str(e)) from None
        rel = "\n".join(str(Path(p).relative_to(data)) for p in images.paths)
        key = "dir" + hashlib.sha256(rel.encode("utf-8", "surrogateescape")).hexdigest()[:9]
        left_out = len(images.info.get("unreadable", []))
        note = f"; {left_out} unreadable file(s) left out" if left_out else ""
        source = f"{data} (class folders{note})"
    else:
        images = calibrate.from_split(data, "test", data_root)
        # The pixel cache is named by key, size and count only: a key of the split alone would
        # read the val images' file in place of the test images' wherever both have one count.
        key = images.split_sha256[:12] + "-test"
        source = f"{data}:test"
    n = None if not max_images else max_images
    idx = calibrate.stratified(images.labels, n, seed)
    return TestImages(source, [str(p) for p in images.paths], images.labels, idx, key, images.split_sha256)


# --- results file -----------------------------------------------------------------------

def new_results() -> dict:
    return {"schema": SCHEMA, "created": _now(), "sessions": [], "machine": None, "data": None,
            "models": {}, "configs": [], "accuracy": {}, "errors": [], "shipped": None}


def load_results(path: Path) -> dict:
    if path.exists():
        r = json.loads(path.read_text())
        if r.get("schema") != SCHEMA:
            raise BenchError(f"{path}: results schema {r.get('schema')} is not {SCHEMA}; use another --out")
        return r
    return new_results()


def save_results(results: dict, path: Path, baseline: str):
    derive(results, baseline)
    results["updated"] = _now()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, path)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def acc_key(model: str, fmt: str) -> str:
    return f"{model}|{fmt}"


def find_config(results: dict, model: str, fmt: str, threads: str) -> dict | None:
    return next((c for c in results["configs"]
                 if (c["model"], c["format"], c["threads"]) == (model, fmt, threads)), None)


def derive(results: dict, baseline: str):
    """Ratios of every configuration: against the float32 TFLite of the same model at the same
    thread count, and against the baseline's (MobileNetV2's) int8. Speed-up > 1 is faster."""
    by = {(c["model"], c["format"], c["threads"]): c for c in results["configs"]}
    acc = results["accuracy"]
    results["baseline"] = baseline
    models = results["models"]
    # A bundle measured on its own (the shipped one) compares with the float32 export of the
    # run it came from.
    run_of = {m["source_sha256"]: k for k, m in models.items() if m.get("kind") != "bundle" and m.get("source_sha256")}
    for c in results["configs"]:
        r = {}
        p50 = c["latency_ms"]["p50"]
        info = models.get(c["model"]) or {}
        own = run_of.get(info.get("source_sha256"), c["model"]) if info.get("kind") == "bundle" else c["model"]
        f32 = by.get((own, "float32", c["threads"]))
        if f32:
            r["speedup_vs_float32"] = f32["latency_ms"]["p50"] / p50
            r["size_vs_float32"] = c["size_bytes"] / f32["size_bytes"]
        base = by.get((baseline, "int8", c["threads"]))
        if base:
            r["speedup_vs_baseline_int8"] = base["latency_ms"]["p50"] / p50
            r["size_vs_baseline_int8"] = c["size_bytes"] / base["size_bytes"]
            a, b = acc.get(acc_key(c["model"], c["format"])), acc.get(acc_key(baseline, "int8"))
            if a and b and a.get("metrics") and b.get("metrics"):  # an untrained model has a note instead
                diff = a["metrics"]["accuracy"] - b["metrics"]["accuracy"]
                r["accuracy_points_vs_baseline_int8"] = round(diff * 100, 3)
        c["ratios"] = r


# --- one configuration ------------------------------------------------------------------

def run_child(spec: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        spec = {**spec, "out": str(Path(tmp) / "result.json")}
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_USE_LEGACY_KERAS": "1"}
        try:
            p = subprocess.run([sys.executable, "-m", "edge_bloodcls.benchmarks.child", str(spec_file)],
                               capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise BenchError(f"timed out after {timeout:.0f}s") from None
        out = Path(spec["out"])
        if p.returncode != 0 or not out.exists():
            tail = (p.stderr or p.stdout or "").strip().splitlines()[-3:]
            raise BenchError(f"measurement process exited {p.returncode}: " + " | ".join(tail))
        return json.loads(out.read_text())


def _input_spec_json(size: int) -> dict:
    return InputSpec.named(size, "symmetric").to_json()


def _threads_arg(t: str) -> int | None:
    return None if t == "all" else int(t)


def _threads_n(t: str) -> int:
    return os.cpu_count() or 1 if t == "all" else int(t)


# --- the benchmark ----------------------------------------------------------------------

def prepare_quick(opts: BenchOptions, log) -> BenchOptions:
    """--quick: a tiny model trained on generated images, every format, a few runs."""
    from .quick import make_quick_run

    base = Path(opts.out) / "quick_inputs"
    log(f"--quick: generated cells and a tiny model in {base}")
    run, split_csv = make_quick_run(base, opts.seed)
    return BenchOptions(**{**asdict(opts), "models": [str(run)], "data": str(split_csv), "calibration": str(split_csv),
                           "data_root": None, "runs": min(opts.runs, 30), "warmup": min(opts.warmup, 3),
                           "exports_dir": None, "cache_dir": str(base / "cache"), "qat_epochs": 1,
                           "export_eval_samples": None, "calibration_samples": 32, "baseline": run.name,
                           "shipped": False, "reference": False, "max_images": None})


def run_bench(opts: BenchOptions, log=print) -> Path:
    """Measure what is missing from OUT/bench.json, write it after each configuration, and the
    report at the end; returns the results path."""
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    # The lock lives outside OUT so that OUT holds only results to commit.
    digest = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"edge-bloodcls-bench-{digest}.lock", "w") as lock:
        try:
            import fcntl
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no guard
            pass
        except OSError:
            # Two runs would each save their own copy of the results and lose the other's.
            raise BenchError(f"another bench is writing {out}; wait for it or use another --out") from None
        return _run_bench(opts, log)


def _run_bench(opts: BenchOptions, log) -> Path:
    if opts.quick:
        opts = prepare_quick(opts, log)
    bad = [f for f in opts.formats if f not in FORMATS]
    if bad:
        raise BenchError(f"unknown formats {bad}; known: {', '.join(FORMATS)}")
    for t in opts.threads:
        if t != "all" and not (t.isdigit() and int(t) > 0):
            raise BenchError(f"--threads: {t!r} is neither a positive number nor 'all'")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_NAME
    results = load_results(path)

    data = Path(opts.data or Path(opts.runs_dir) / "split.csv")
    if not data.exists():
        raise BenchError(f"{data}: no test data (a split CSV or a class-folder directory; --data)")
    calib = Path(opts.calibration or (data if data.is_file() else Path(opts.runs_dir) / "split.csv"))
    test = load_test_images(data, opts.data_root, opts.max_images, opts.seed)
    if results["data"] and results["data"]["key"] != test.key:
        log(f"note: {path} holds accuracy on other test images ({results['data']['source']}); measured again")
    results["data"] = test.describe()
    results["machine"] = machine_info()
    session = {"started": _now(), "argv": sys.argv, "options": asdict(opts), "loadavg": results["machine"]["loadavg"]}
    results["sessions"].append(session)
    pixel_cache = Path(opts.cache_dir) / "pixels"

    specs = list(opts.models)
    if opts.reference and REFERENCE not in specs:
        specs.append(REFERENCE)
    shipped_file = MODELS_DIR / f"{DEFAULT_MODEL}.json"
    if opts.shipped and "shipped" not in specs and shipped_file.exists():
        specs.append("shipped")
    acc_threads = "all" if "all" in opts.threads else opts.threads[0]

    for spec in specs:
        try:
            src = resolve_model(spec, opts)
        except (BundleError, OSError, ValueError) as e:
            _error(results, spec, None, "resolve", e, log)
            continue
        formats = [f for f in opts.formats if not src.formats or f in src.formats]
        if src.role == "shipped":
            sha = load_bundle(src.path).sha256
            twin = next((c for c in results["configs"]
                         if c.get("bundle_sha256") == sha and c["model"] != src.key), None)
            results["shipped"] = {"name": src.key, "sha256": sha, "path": _rel(src.path),
                                  "same_as": {"model": twin["model"], "format": twin["format"]} if twin else None}
            if twin:
                log(f"shipped bundle {src.key} is {twin['model']} {twin['format']} (same sha256): not measured twice")
                save_results(results, path, opts.baseline)
                continue
            formats = list(src.formats)
        if not formats:
            continue
        log(f"== {src.key}: {src.kind}{' (' + src.note + ')' if src.note else ''}")
        # What failed or was skipped before is decided again now.
        results["errors"] = [e for e in results["errors"] if not (e["model"] in (spec, src.key)
                                                                   and e["format"] in (None, *formats))]
        try:
            files, errors, keras_path = bundles_for(src, formats, opts, calib, log)
        except Exception as e:  # an untrained build or a model that cannot load: the others go on
            _error(results, src.key, None, "bundles", e, log)
            continue
        for e in errors:
            _error(results, e["model"], e["format"], e["stage"], e["error"], log)
        model_info = _model_info(src, files, keras_path)
        before = results["models"].get(src.key)
        if before and before.get("source_sha256") != model_info["source_sha256"]:
            # Another model under the same name (e.g. the untrained build, now trained): its
            # figures describe a different network.
            log(f"{src.key}: the model changed since it was last measured; its old results are dropped")
            results["configs"] = [c for c in results["configs"] if c["model"] != src.key]
            results["accuracy"] = {k: v for k, v in results["accuracy"].items() if not k.startswith(src.key + "|")}
        results["models"][src.key] = model_info
        save_results(results, path, opts.baseline)
        for fmt in formats:
            if fmt not in files:
                continue
            _measure_format(results, src, fmt, files[fmt], model_info, opts, test, pixel_cache, acc_threads, path, log)
    log(f"results: {path}")
    if opts.report:
        from .report import write_report

        for f in write_report(path, out):
            log(f"wrote {f}")
    return path


def _model_info(src: ModelSource, files: dict, keras_path: Path | None) -> dict:
    params = None
    cfg = keras_path.parent / "config.json" if keras_path else None
    if cfg and cfg.exists():
        params = json.loads(cfg.read_text()).get("params")
    tflites = [p for k, p in files.items() if k != "keras"]
    if params is None and tflites:
        params = load_bundle(tflites[0]).manifest.get("params")
    tfl = files.get("float32") or (tflites[0] if tflites else None)
    macs = graph_macs(tfl) if tfl else None
    if keras_path:
        source_sha = sha256_file(keras_path)
    else:  # a bundle: the Keras model it was exported from, as its manifest records
        source_sha = (load_bundle(src.path).manifest.get("source_model") or {}).get("sha256")
    return {"arch": src.arch, "size": src.size, "kind": src.kind, "role": src.role, "trained": src.trained,
            "source": _rel(keras_path or src.path), "source_sha256": source_sha,
            "note": src.note, "training": src.training, "params": params,
            "macs": macs["macs"] if macs else None, "macs_by_op": macs["by_op"] if macs else None,
            "macs_from": Path(tfl).name if tfl else None, "macs_method": MACS_METHOD if macs else None}


def _no_accuracy_reason(src: ModelSource, opts: BenchOptions) -> str | None:
    if not src.trained:
        return "not trained"
    if opts.max_images == 0:
        return "--max-images 0"
    return None


def _measure_format(results, src, fmt, path, model_info, opts, test, pixel_cache, acc_threads, out_path, log):
    sha = sha256_file(path)
    no_acc = _no_accuracy_reason(src, opts)
    ak = acc_key(src.key, fmt)
    have = results["accuracy"].get(ak)
    same = bool(have and have.get("bundle_sha256") == sha and have.get("data_key") == test.key
                and have.get("n") == len(test.indices))
    need_acc = no_acc is None and (opts.redo or not same)
    if no_acc and not (have and have.get("metrics") and have.get("bundle_sha256") == sha):  # --max-images 0 keeps it
        results["accuracy"][ak] = {"bundle_sha256": sha, "note": no_acc, "metrics": None}
    manifest = load_bundle(path).manifest if fmt != "keras" else None
    for th in opts.threads:
        old = find_config(results, src.key, fmt, th)
        with_acc = need_acc and th == acc_threads
        if old and old.get("bundle_sha256") == sha and not (opts.redo or opts.redo_latency) and not with_acc:
            log(f"{src.key} {fmt} threads={th}: in {out_path.name} already")
            continue
        spec = {"kind": "keras" if fmt == "keras" else "tflite", "path": str(path), "threads": _threads_arg(th),
                "warmup": opts.warmup, "runs": opts.runs, "latency_image": test.paths[int(test.indices[0])]}
        if fmt == "keras":
            cfg_file = Path(path).parent / "config.json"
            cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
            # convert.export's own fallback: every model trained here takes [-1, 1] input.
            spec["input"] = cfg.get("input") or _input_spec_json(src.size)
        if with_acc:
            spec["pixels"] = test.pixel_file(src.size, pixel_cache)
            spec["indices"] = None if len(test.indices) == len(test.labels) else test.indices.tolist()
        t0 = time.time()
        try:
            res = run_child(spec, opts.timeout)
        except BenchError as e:
            _error(results, src.key, fmt, f"measure threads={th}", e, log)
            save_results(results, out_path, opts.baseline)
            continue
        lat = res["latency_ms"]
        row = {"model": src.key, "format": fmt, "threads": th,
               "threads_n": res["interpreter"].get("threads") or _threads_n(th),
               "arch": src.arch, "trained": src.trained, "role": src.role, "file": _rel(path), "bundle_sha256": sha,
               "size_bytes": Path(path).stat().st_size, "params": model_info["params"], "macs": model_info["macs"],
               "quantization": manifest.get("quantization") if manifest else "keras",
               "io_dtype": manifest["input"].get("dtype", "float32") if manifest else "float32",
               "load_s": res["load_s"], "import_s": res.get("import_s"), "latency_ms": lat,
               "invoke_ms": res.get("invoke_ms"), "images_per_s": 1000.0 / lat["mean"],
               "peak_rss_mb": res["peak_rss_mb"], "peak_rss_mb_with_accuracy": res["peak_rss_mb_with_accuracy"],
               "tensorflow_imported": res["tensorflow_imported"], "interpreter": res["interpreter"],
               "runs": opts.runs, "warmup": opts.warmup, "loadavg": res["loadavg"], "measured": _now(),
               "wall_s": round(time.time() - t0, 2)}
        results["configs"] = [c for c in results["configs"] if c is not old] + [row]
        if "predictions" in res:
            y = test.labels[test.indices]
            pred = np.asarray(res["predictions"])
            results["accuracy"][ak] = {"bundle_sha256": sha, "data_key": test.key, "n": int(len(y)),
                                       "threads": th, "metrics": classification_metrics(y, pred),
                                       "measured": _now()}
            acc_txt = f", accuracy {results['accuracy'][ak]['metrics']['accuracy']:.4f} (n={len(y)})"
        else:
            acc_txt = ""
        log(f"{src.key} {fmt} threads={th}: p50 {lat['p50']:.2f} ms p90 {lat['p90']:.2f} p99 {lat['p99']:.2f}, "
            f"load {res['load_s']:.2f}s, peak RSS {res['peak_rss_mb']:.0f} MB{acc_txt}")
        save_results(results, out_path, opts.baseline)


def _error(results, model, fmt, stage, e, log):
    msg = e if isinstance(e, str) else _one_line(e)
    results["errors"] = [x for x in results["errors"] if (x["model"], x["format"], x["stage"]) != (model, fmt, stage)]
    results["errors"].append({"model": model, "format": fmt, "stage": stage, "error": msg, "when": _now()})
    log(f"{'skipped' if stage == 'skipped' else 'error'}: {model} {fmt or ''} {stage}: {msg}")

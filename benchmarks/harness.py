"""The benchmark harness: every model x format x thread count, on the same test images.

For each model (a training run runs/ARCH_SIZE/, an untrained build where a run has no
model.keras yet, or a bundle) and each format it gets the bundle (an export already in
runs/exports/RUN/, else one made here by convert's own export), then measures each
configuration in a fresh process (benchmarks/child.py): load time, latency percentiles after
warm-up through the runtime's Classifier (or Keras for the float reference), peak resident
memory, and, once per model and format, the predictions on the test images. The parent turns
predictions into metrics with edge_runtime.core.metrics and keeps everything in one results JSON,
saved after every configuration: a rerun skips what is already there, so a long benchmark can
run in pieces (--redo measures again).

The parts: options.py (options, names), models.py (what is measured, from which files),
machine.py, testset.py, results.py (the results object the report reads), child.py (one
configuration), this module (the loop).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edge_bloodcls.edge_runtime.core.bundle import DEFAULT_MODEL, MODELS_DIR, BundleError, load_bundle, sha256_file
from edge_bloodcls.edge_runtime.core.metrics import classification_metrics
from edge_bloodcls.edge_runtime.core.spec import InputSpec

from .machine import machine_info
from .models import MACS_METHOD, ModelSource, bundles_for, graph_macs, resolve_model
from .options import BASELINE, DEFAULT_ARCHS, FORMATS, REFERENCE, RESULTS_NAME, BenchError, BenchOptions, one_line, rel
from .quick import make_quick_run
from .report import write_report
from .results import SCHEMA, ConfigRow, Results, now
from .testset import TestImages, load_test_images

__all__ = [
    "BASELINE",
    "DEFAULT_ARCHS",
    "FORMATS",
    "REFERENCE",
    "RESULTS_NAME",
    "SCHEMA",
    "BenchError",
    "BenchOptions",
    "Results",
    "graph_macs",
    "resolve_model",
    "run_bench",
]


# --- one configuration ------------------------------------------------------------------


def _terminal_fd() -> int | None:
    """A copy of stderr for the child's progress count, when stderr is a terminal."""
    try:
        return os.dup(2) if sys.stderr.isatty() else None
    except (OSError, ValueError, AttributeError):
        return None


def run_child(spec: dict, timeout: float) -> dict:
    progress_fd = _terminal_fd() if spec.get("pixels") else None
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        spec = {**spec, "out": str(Path(tmp) / "result.json"), "progress_fd": progress_fd}
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec))
        try:  # the child sets TensorFlow's environment itself (tfenv.configure)
            p = subprocess.run(
                [sys.executable, "-m", "edge_bloodcls.benchmarks.child", str(spec_file)],
                capture_output=True,
                text=True,
                timeout=timeout,
                pass_fds=() if progress_fd is None else (progress_fd,),
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"timed out after {timeout:.0f}s") from None
        finally:
            if progress_fd is not None:
                os.close(progress_fd)
        out = Path(spec["out"])
        if p.returncode != 0 or not out.exists():
            tail = (p.stderr or p.stdout or "").strip().splitlines()[-3:]
            raise BenchError(f"measurement process exited {p.returncode}: " + " | ".join(tail))
        return json.loads(out.read_text())


def _threads_arg(t: str) -> int | None:
    return None if t == "all" else int(t)


def _threads_n(t: str) -> int:
    return os.cpu_count() or 1 if t == "all" else int(t)


# --- the benchmark ----------------------------------------------------------------------


def prepare_quick(opts: BenchOptions, log) -> BenchOptions:
    """--quick: a tiny model trained on generated images, every format, a few runs."""
    base = Path(opts.out) / "quick_inputs"
    log(f"--quick: generated cells and a tiny model in {base}")
    run, split_csv = make_quick_run(base, opts.seed)
    return BenchOptions(
        **{
            **asdict(opts),
            "models": [str(run)],
            "data": str(split_csv),
            "calibration": str(split_csv),
            "data_root": None,
            "runs": min(opts.runs, 30),
            "warmup": min(opts.warmup, 3),
            "exports_dir": None,
            "cache_dir": str(base / "cache"),
            "qat_epochs": 1,
            "export_eval_samples": None,
            "calibration_samples": 32,
            "baseline": run.name,
            "shipped": False,
            "reference": False,
            "max_images": None,
        }
    )


def run_bench(opts: BenchOptions, log=print) -> Path:
    """Measure what is missing from OUT/bench.json, write it after each configuration, and the
    report at the end; returns the results path."""
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    # The lock lives outside OUT so that OUT holds only results to commit.
    digest = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"edge-bloodcls-bench-{digest}.lock", "w") as lock:
        try:
            # Unix only
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no guard
            pass
        except OSError:
            # Two runs would each save their own copy of the results and lose the other's.
            raise BenchError(f"another bench is writing {out}; wait for it or use another --out") from None
        return _run_bench(opts, log)


@dataclass
class Session:
    """What every configuration of one bench run shares."""

    opts: BenchOptions
    results: Results
    path: Path  # the results file
    test: TestImages
    calibration: Path  # split CSV for exports made here
    pixel_cache: Path
    acc_threads: str  # the thread setting the accuracy pass runs at
    log: Callable[[str], None]

    def save(self):
        self.results.save(self.path, self.opts.baseline)

    def error(self, model, fmt, stage, e):
        msg = e if isinstance(e, str) else one_line(e)
        self.results.record_error(model, fmt, stage, msg)
        self.log(f"{'skipped' if stage == 'skipped' else 'error'}: {model} {fmt or ''} {stage}: {msg}")


def _check(opts: BenchOptions):
    bad = [f for f in opts.formats if f not in FORMATS]
    if bad:
        raise BenchError(f"unknown formats {bad}; known: {', '.join(FORMATS)}")
    for t in opts.threads:
        if t != "all" and not (t.isdigit() and int(t) > 0):
            raise BenchError(f"--threads: {t!r} is neither a positive number nor 'all'")


def _start(opts: BenchOptions, log) -> Session:
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_NAME
    results = Results.load(path)
    data = Path(opts.data or Path(opts.runs_dir) / "split.csv")
    if not data.exists():
        raise BenchError(f"{data}: no test data (a split CSV or a class-folder directory; --data)")
    calib = Path(opts.calibration or (data if data.is_file() else Path(opts.runs_dir) / "split.csv"))
    test = load_test_images(data, opts.data_root, opts.max_images, opts.seed)
    if results.data and results.data["key"] != test.key:
        log(f"note: {path} holds accuracy on other test images ({results.data['source']}); measured again")
    results.data = test.describe()
    results.machine = machine_info()
    results.sessions.append(
        {"started": now(), "argv": sys.argv, "options": asdict(opts), "loadavg": results.machine["loadavg"]}
    )
    return Session(
        opts,
        results,
        path,
        test,
        calib,
        Path(opts.cache_dir) / "pixels",
        "all" if "all" in opts.threads else opts.threads[0],
        log,
    )


def _run_bench(opts: BenchOptions, log) -> Path:
    if opts.quick:
        opts = prepare_quick(opts, log)
    _check(opts)
    s = _start(opts, log)
    specs = list(opts.models)
    if opts.reference and REFERENCE not in specs:
        specs.append(REFERENCE)
    if opts.shipped and "shipped" not in specs and (MODELS_DIR / f"{DEFAULT_MODEL}.json").exists():
        specs.append("shipped")
    for spec in specs:
        _bench_model(s, spec)
    log(f"results: {s.path}")
    if opts.report:
        for f in write_report(s.path, Path(opts.out)):
            log(f"wrote {f}")
    return s.path


def _bench_model(s: Session, spec: str):
    """Every format of one model (a name, a run, a bundle, 'shipped' or ARCH@SIZE)."""
    results, opts, log = s.results, s.opts, s.log
    try:
        src = resolve_model(spec, opts)
    except (BundleError, OSError, ValueError) as e:
        s.error(spec, None, "resolve", e)
        return
    formats = [f for f in opts.formats if not src.formats or f in src.formats]
    if src.role == "shipped":
        sha = load_bundle(src.path).sha256
        twin = next((c for c in results.configs if c.get("bundle_sha256") == sha and c["model"] != src.key), None)
        results.shipped = {
            "name": src.key,
            "sha256": sha,
            "path": rel(src.path),
            "same_as": {"model": twin["model"], "format": twin["format"]} if twin else None,
        }
        if twin:
            log(f"shipped bundle {src.key} is {twin['model']} {twin['format']} (same sha256): not measured twice")
            s.save()
            return
        formats = list(src.formats or ())
    if not formats:
        return
    log(f"== {src.key}: {src.kind}{' (' + src.note + ')' if src.note else ''}")
    results.clear_errors((spec, src.key), formats)
    try:
        files, errors, keras_path = bundles_for(src, formats, opts, s.calibration, log)
    except Exception as e:  # an untrained build or a model that cannot load: the others go on
        s.error(src.key, None, "bundles", e)
        return
    for err in errors:
        s.error(err["model"], err["format"], err["stage"], err["error"])
    model_info = _model_info(src, files, keras_path)
    before = results.models.get(src.key)
    if before and before.get("source_sha256") != model_info["source_sha256"]:
        # Another model under the same name (e.g. the untrained build, now trained): its
        # figures describe a different network.
        log(f"{src.key}: the model changed since it was last measured; its old results are dropped")
        results.drop_model(src.key)
    results.models[src.key] = model_info
    s.save()
    for fmt in formats:
        if fmt in files:
            _measure_format(s, Measurement(src, fmt, Path(files[fmt]), model_info))


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
    source_sha: str | None
    if keras_path:
        source_sha = sha256_file(keras_path)
    else:  # a bundle: the Keras model it was exported from, as its manifest records
        source_sha = (load_bundle(src.path).manifest.get("source_model") or {}).get("sha256")
    return {
        "arch": src.arch,
        "size": src.size,
        "kind": src.kind,
        "role": src.role,
        "trained": src.trained,
        "source": rel(keras_path or src.path),
        "source_sha256": source_sha,
        "note": src.note,
        "training": src.training,
        "params": params,
        "macs": macs["macs"] if macs else None,
        "macs_by_op": macs["by_op"] if macs else None,
        "macs_from": Path(tfl).name if tfl else None,
        "macs_method": MACS_METHOD if macs else None,
    }


@dataclass
class Measurement:
    """One model in one format (measured at each thread count)."""

    src: ModelSource
    fmt: str
    path: Path  # NAME.tflite, or model.keras for "keras"
    model_info: dict

    @property
    def keras(self) -> bool:
        return self.fmt == "keras"

    def no_accuracy_reason(self, opts: BenchOptions) -> str | None:
        if not self.src.trained:
            return "not trained"
        if opts.max_images == 0:
            return "--max-images 0"
        return None


def _child_spec(s: Session, m: Measurement, th: str, with_acc: bool) -> dict:
    test = s.test
    spec = {
        "kind": "keras" if m.keras else "tflite",
        "path": str(m.path),
        "threads": _threads_arg(th),
        "warmup": s.opts.warmup,
        "runs": s.opts.runs,
        "latency_image": test.paths[int(test.indices[0])],
    }
    if m.keras:
        cfg_file = m.path.parent / "config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
        # convert.export's own fallback: every model trained here takes [-1, 1] input.
        spec["input"] = cfg.get("input") or InputSpec.named(m.src.size, "symmetric").to_json()
    if with_acc:
        spec["progress_label"] = f"{m.src.key} {m.fmt}: accuracy"
        spec["pixels"] = test.pixel_file(m.src.size, s.pixel_cache)
        spec["indices"] = None if len(test.indices) == len(test.labels) else test.indices.tolist()
    return spec


def _measure_format(s: Session, m: Measurement):
    results, opts, test, src, fmt = s.results, s.opts, s.test, m.src, m.fmt
    sha = sha256_file(m.path)
    no_acc = m.no_accuracy_reason(opts)
    have = results.accuracy_entry(src.key, fmt)
    same = bool(
        have
        and have.get("bundle_sha256") == sha
        and have.get("data_key") == test.key
        and have.get("n") == len(test.indices)
    )
    need_acc = no_acc is None and (opts.redo or not same)
    if no_acc and not (have and have.get("metrics") and have.get("bundle_sha256") == sha):  # --max-images 0 keeps it
        results.set_accuracy(src.key, fmt, {"bundle_sha256": sha, "note": no_acc, "metrics": None})
    manifest = None if m.keras else load_bundle(m.path).manifest
    for th in opts.threads:
        old = results.config(src.key, fmt, th)
        with_acc = need_acc and th == s.acc_threads
        if old and old.get("bundle_sha256") == sha and not (opts.redo or opts.redo_latency) and not with_acc:
            s.log(f"{src.key} {fmt} threads={th}: in {s.path.name} already")
            continue
        t0 = time.time()
        try:
            res = run_child(_child_spec(s, m, th, with_acc), opts.timeout)
        except BenchError as e:
            s.error(src.key, fmt, f"measure threads={th}", e)
            s.save()
            continue
        lat = res["latency_ms"]
        results.put_config(
            ConfigRow(
                model=src.key,
                format=fmt,
                threads=th,
                threads_n=res["interpreter"].get("threads") or _threads_n(th),
                arch=src.arch,
                trained=src.trained,
                role=src.role,
                file=rel(m.path),
                bundle_sha256=sha,
                size_bytes=m.path.stat().st_size,
                params=m.model_info["params"],
                macs=m.model_info["macs"],
                quantization=manifest.get("quantization") if manifest else "keras",
                io_dtype=manifest["input"].get("dtype", "float32") if manifest else "float32",
                load_s=res["load_s"],
                import_s=res.get("import_s"),
                latency_ms=lat,
                invoke_ms=res.get("invoke_ms"),
                images_per_s=1000.0 / lat["mean"],
                peak_rss_mb=res["peak_rss_mb"],
                peak_rss_mb_with_accuracy=res["peak_rss_mb_with_accuracy"],
                tensorflow_imported=res["tensorflow_imported"],
                interpreter=res["interpreter"],
                runs=opts.runs,
                warmup=opts.warmup,
                loadavg=res["loadavg"],
                measured=now(),
                wall_s=round(time.time() - t0, 2),
            ),
            replaces=old,
        )
        acc_txt = ""
        if "predictions" in res:
            y = test.labels[test.indices]
            metrics = classification_metrics(y, np.asarray(res["predictions"]))
            results.set_accuracy(
                src.key,
                fmt,
                {
                    "bundle_sha256": sha,
                    "data_key": test.key,
                    "n": int(len(y)),
                    "threads": th,
                    "metrics": metrics,
                    "measured": now(),
                },
            )
            acc_txt = f", accuracy {metrics['accuracy']:.4f} (n={len(y)})"
        s.log(
            f"{src.key} {fmt} threads={th}: p50 {lat['p50']:.2f} ms p90 {lat['p90']:.2f} p99 {lat['p99']:.2f}, "
            f"load {res['load_s']:.2f}s, peak RSS {res['peak_rss_mb']:.0f} MB{acc_txt}"
        )
        s.save()

"""One export: trained Keras model -> (QAT) -> TFLite -> checks -> accuracy gate -> bundle (-> Edge TPU).

Nothing is written to the output directory until the exported model has passed the gate
(or --force says to write it anyway); a failed int8 gate leaves only the per-layer error
report that says where the quantization went wrong.
"""

from __future__ import annotations

import csv
import json
import logging
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_bloodcls.edge_runtime.core.bundle import Bundle, sha256_file, write_bundle
from edge_bloodcls.edge_runtime.core.spec import LABELS, InputSpec
from edge_bloodcls.edge_runtime.core.trust import (
    COLOUR_FALSE_ALARM,
    DEFAULT_FALSE_ALARM,
    DEFAULT_REVIEW_TARGET,
    TrustStats,
)
from edge_bloodcls.train.pipeline import Augment, cached_pixels

from . import calibrate, edgetpu, formats, gate, qat, trust_fit

_log = logging.getLogger(__name__)


class ExportError(ValueError):
    """Bad options or inputs: nothing was converted (exit 2)."""


class GateFailed(RuntimeError):
    """The export does not meet its checks (exit 1); nothing but the error report was written."""

    def __init__(self, problems: list[str], report: Path | None = None, result: dict | None = None):
        self.problems, self.report, self.result = problems, report, result
        super().__init__("; ".join(problems))


class EdgeTPUUnavailable(RuntimeError):
    """The CPU model was written but the Edge TPU compiler is missing (a setup error: exit 2)."""


@dataclass
class Source:
    model: object
    path: Path
    sha256: str
    arch: str
    spec: InputSpec
    labels: list[str]
    params: int
    split_sha256: str | None
    split_csv: str | None
    config: dict = field(default_factory=dict)


def load_source(path) -> Source:
    """The .keras model and what its training recorded in config.json beside it."""
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tf_keras

    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path}: no such model")
    return source_of(tf_keras.models.load_model(path, compile=False), path)


def source_of(model, path) -> Source:
    """The Source of a model in memory that was saved as `path` (its config.json beside it): what
    load_source gives without reading the model back (adapt converts the model it just trained)."""
    path = Path(path)
    cfg_file = path.parent / "config.json"
    config = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
    h, w = (int(s) for s in model.input_shape[1:3])
    shape = (h, w)
    if "input" in config:
        spec = InputSpec.from_json(config["input"])
        if tuple(spec.size) != shape:
            raise ExportError(f"{cfg_file}: input size {list(spec.size)} differs from the model's {list(shape)}")
    else:
        # Every model trained from scratch here uses [-1, 1] (edge_runtime.core.spec.NORMALISATIONS).
        spec = InputSpec.named(shape, "symmetric")
    labels = list(config.get("labels") or LABELS)
    n_out = probs_shape(model)[-1]
    if n_out != len(labels):
        raise ExportError(f"{path}: {n_out} outputs but {len(labels)} labels")
    split = config.get("split") or {}
    return Source(
        model,
        path,
        sha256_file(path),
        arch=config.get("arch") or config.get("train", {}).get("arch") or model.name,
        spec=spec,
        labels=labels,
        params=int(config.get("params") or model.count_params()),
        split_sha256=split.get("sha256"),
        split_csv=split.get("csv"),
        config=config,
    )


@dataclass
class ExportOptions:
    model: str
    quantize: str
    out: str
    qat: bool = False
    qat_epochs: int = 2
    qat_lr: float = 1e-4
    batch_size: int = 64
    calibration: str | None = None
    calibration_samples: int = calibrate.DEFAULT_SAMPLES
    io: str | None = None
    edgetpu: bool = False
    per_tensor: bool = False
    max_drop: float = 1.0
    allow_float_ops: bool = False
    force: bool = False
    data_root: str | None = None
    split: str | None = None
    eval_samples: int | None = None
    eval_test: bool = False
    cache_dir: str | None = None
    threads: int | None = None
    name: str | None = None
    seed: int = 0
    trust: bool = True
    trust_samples: int | None = None  # all training cells
    false_alarm: float = DEFAULT_FALSE_ALARM
    colour_false_alarm: float = COLOUR_FALSE_ALARM  # the colour statistic's own target (see there)
    review_target: float = DEFAULT_REVIEW_TARGET
    # A folder: the training rows under it are a site's cells (adapt), which the colour statistic
    # fits with a Gaussian of their own, so that they read as in distribution beside PBC's.
    site_cells: str | None = None


def default_name(src: Source, fmt: formats.Format, io: str) -> str:
    h, w = src.spec.size
    size = f"{h}" if h == w else f"{h}x{w}"
    io_part = f"_{io}io" if fmt.integer_only and io != "int8" else ""
    return f"{arch_label(src.arch, (src.config.get('train') or {}).get('width'))}_{size}_{fmt.suffix}{io_part}"


def arch_label(arch: str, width: float | None) -> str:
    """mobilenetv2, or mobilenetv2_a035 for a narrower one: two widths at one input size must not
    share a bundle name."""
    return f"{arch}_a{round(width * 100):03d}" if width not in (None, 1.0) else arch


def _eval_split(opts: ExportOptions, src: Source) -> Path:
    """--split, else --calibration when it is a CSV, else the split the model was trained on."""
    if opts.split:
        if not Path(opts.split).is_file():
            raise ExportError(f"{opts.split}: no such split CSV")
        return Path(opts.split)
    if opts.calibration and Path(opts.calibration).is_file():
        return Path(opts.calibration)
    if src.split_csv:
        # Recorded relative to where training ran: try there, then beside the run directory.
        p = Path(src.split_csv)
        for q in (p, src.path.parent / p, src.path.parent.parent / p.name):
            if q.is_file():
                return q
    raise ExportError("no split to evaluate on: pass --split (or --calibration) with the training split CSV")


def _pixels(images: calibrate.ImageSet, spec: InputSpec, cache_dir, whole_split: bool) -> np.ndarray:
    # Same cache key as training (split hash, size, count), so a training cache is reused.
    key = (images.split_sha256 or "dir")[:12]
    return cached_pixels(images.paths, spec.size, cache_dir if whole_split else None, key)


def carries_features(model) -> bool:
    """A model saved with its features as its second output (adapt's routed model, adapt/route.py:
    its "pool" mixes two networks' features and feeds no probability, so a one-output model would
    drop it)."""
    return len(model.outputs) == 2 and model.outputs[1].name.split("/")[0] == "pool"


def probs_shape(model) -> tuple:
    return tuple(model.output_shape[0] if carries_features(model) else model.output_shape)


def with_features(model):
    """The model with a second output, its pooled features (the layer the training head names
    "pool"), from the same graph: the runtime's out-of-distribution score needs them. Models
    without that layer are exported with one output (no trust statistics)."""
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tf_keras

    if carries_features(model):
        return model, True
    try:
        pool = model.get_layer("pool")
    except ValueError:
        return model, False
    return tf_keras.Model(model.inputs, [model.outputs[0], pool.output], name=model.name), True


def _converter(model, spec: InputSpec, fixed_batch: bool):
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tensorflow as tf

    # The converter saves what it is given as a SavedModel first. Given the Keras model, that save
    # traces every layer's call for Keras's own reloading, which the converter never uses: a plain
    # tf.Module holding the model's variables and one traced call converts the same graph in half
    # to a third of the time, with the same int8 outputs on PBC test cells, for the 160 px model
    # and adapt's routed two-network one (scripts/convert_paths.py: 20.5 s against 38.4 s, 33.5 s
    # against 89.5 s on the project's 2-core machine). The traced call alone, without the module,
    # is faster still (16.9 s against 21.0 s, 19.2 against 30.0 s: convert_paths_frozen.json) but
    # takes the frozen-graph path TensorFlow marks deprecated and warns about on every export:
    # not taken.
    module = tf.Module()
    module.weights_ = list(model.variables)
    # The Edge TPU compiler wants static shapes: a batch of one, as the runtime feeds it.
    batch = 1 if fixed_batch else None
    module.call = tf.function(
        lambda x: model(x, training=False),  # a list for a two-output model
        input_signature=[tf.TensorSpec([batch, *spec.size, 3], tf.float32)],
    )
    return tf.lite.TFLiteConverter.from_concrete_functions([module.call.get_concrete_function()], module)


def _evaluate(src: Source, tflite: Path, manifest: dict, images, pixels, threads) -> tuple[dict, dict, dict]:
    """-> (gate metrics, interpreter info, the exported model's raw outputs for trust fitting)."""
    float_probs = gate.predict_keras(src.model, pixels, src.spec)
    exp, interp = gate.predict_tflite(tflite, manifest, pixels, threads)
    return gate.compare(images.labels, float_probs, exp["raw"], src.labels), interp, exp


def site_domain(paths, site_cells: str | None) -> np.ndarray | None:
    """0 for a home (PBC) cell, 1 for one under the site's folder; None without a site."""
    if not site_cells:
        return None
    site = Path(site_cells).resolve()
    return np.array([int(Path(p).resolve().is_relative_to(site)) for p in paths], np.int64)


def _fit_trust(
    opts: ExportOptions, src: Source, split_csv, tflite: Path, manifest: dict, val, val_out: dict, val_pixels
) -> tuple[bytes, dict, TrustStats]:
    """Trust statistics on training cells through the exported model (see trust_fit)."""
    train = calibrate.sample(calibrate.from_split(split_csv, "train", opts.data_root), opts.trust_samples, opts.seed)
    pixels = _pixels(train, src.spec, opts.cache_dir, opts.trust_samples is None)
    out, _ = gate.predict_tflite(tflite, manifest, pixels, opts.threads)
    domain = site_domain(train.paths, opts.site_cells)
    if domain is not None and len(np.unique(domain)) < 2:
        raise ExportError(f"site cells {opts.site_cells}: no training row of the split is (or is not) under it")
    stats, section = trust_fit.fit(
        out["features"],
        train.labels,
        val_out["raw"],
        val_out["features"],
        val.labels,
        len(src.labels),
        opts.false_alarm,
        opts.review_target,
        train_pixels=pixels,
        val_pixels=val_pixels,
        train_domain=domain,
        colour_false_alarm=opts.colour_false_alarm,
    )
    v = section["val"]
    colour = (
        f", colour threshold {stats.colour.threshold:.2f} ({opts.colour_false_alarm:.1%} of val, "
        f"{stats.colour.means.shape[0]} component(s))"
        if stats.colour is not None
        else ""
    )
    _log.info(
        f"trust: OOD threshold {stats.threshold:.2f} ({opts.false_alarm:.0%} of val flagged){colour}, temperature "
        f"{stats.temperature:.3g}, val ECE {v['ece']['raw']:.4f} -> {v['ece']['calibrated']:.4f}; review below "
        f"confidence {stats.review_threshold:.3f}: val coverage {v['coverage']:.4f}, accepted accuracy "
        f"{_fmt(v['accepted_accuracy'])} (target {opts.review_target})"
    )
    return trust_fit.to_bytes(stats), section, stats


def _fmt(x) -> str:
    # None when no cell is accepted at the review threshold (every cell goes to review).
    return "-" if x is None else f"{x:.4f}"


def run(opts: ExportOptions, source: Source | None = None) -> dict:
    """source: opts.model already in memory (export.source_of), instead of loading it again."""
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tensorflow as tf

    try:
        fmt = formats.resolve(opts.quantize, opts.qat, opts.edgetpu, opts.per_tensor)
    except ValueError as e:
        raise ExportError(str(e)) from None
    io = opts.io or (formats.FORMATS["edgetpu"].io if opts.edgetpu else fmt.io)
    if io != "float32" and not fmt.integer_only:
        raise ExportError(f"--io {io}: {fmt.name} models take and give float32; integer I/O needs --quantize int8")
    if opts.edgetpu and io == "float32":
        raise ExportError("the Edge TPU needs integer input and output: --io uint8 or int8")
    out = Path(opts.out)
    src = source if source is not None else load_source(opts.model)
    spec = src.spec
    name = opts.name or default_name(src, fmt, io)
    _log.info(
        f"{src.path}: {src.arch}, {src.params:,} parameters, input {list(spec.size)} {spec.color} "
        f"mean {list(spec.mean)} std {list(spec.std)} -> {fmt.name} ({io} I/O) as {name}"
    )

    split_csv = _eval_split(opts, src)
    try:
        val = calibrate.sample(calibrate.from_split(split_csv, "val", opts.data_root), opts.eval_samples, opts.seed)
    except (OSError, ValueError) as e:
        raise ExportError(str(e)) from None
    if src.split_sha256 and val.split_sha256 != src.split_sha256:
        _log.warning(
            f"warning: {split_csv} (sha256 {(val.split_sha256 or '?')[:12]}) is not the split the model "
            f"was trained on ({src.split_sha256[:12]}); its val images may include training images"
        )
    val_pixels = _pixels(val, spec, opts.cache_dir, opts.eval_samples is None)

    model, qat_rows, qat_info = src.model, None, None
    if fmt.qat:
        train_set = calibrate.from_split(split_csv, "train", opts.data_root)
        train_pixels = _pixels(train_set, spec, opts.cache_dir, True)
        aug = Augment(**src.config["augment"]) if src.config.get("augment") else Augment()
        cw = qat.class_weight_from_config(src.config, train_set.labels, len(src.labels))
        _log.info(
            f"quantization-aware fine-tuning: {opts.qat_epochs} epochs on {len(train_set.labels)} "
            f"training images, lr {opts.qat_lr:g} (cosine to 0), batch {opts.batch_size}"
        )
        tf.random.set_seed(opts.seed)
        model = qat.quantize(src.model)
        qat_rows = qat.fine_tune(
            model,
            (train_pixels, train_set.labels),
            (val_pixels, val.labels),
            spec,
            opts.qat_epochs,
            opts.batch_size,
            opts.qat_lr,
            aug,
            cw,
            opts.seed,
        )
        qat_info = {
            "epochs": opts.qat_epochs,
            "lr": opts.qat_lr,
            "batch_size": opts.batch_size,
            "augment": aug.to_json(),
            "class_weights": bool(cw),
            "train_images": len(train_set.labels),
            "history": f"{name}.history.csv",
            "final": qat_rows[-1] if qat_rows else None,
        }

    samples, calib_info, problems = None, None, []
    if fmt.calibration:
        try:
            cal_all = calibrate.image_set(opts.calibration or split_csv, "train", opts.data_root)
        except (OSError, ValueError) as e:
            raise ExportError(str(e)) from None
        cal = calibrate.sample(cal_all, opts.calibration_samples, opts.seed)
        samples = calibrate.load_samples(cal, spec)
        counts = Counter(src.labels[i] for i in cal.labels)
        calib_info = {
            "source": cal.source,
            "n": len(cal.paths),
            "seed": opts.seed,
            "split_sha256": cal.split_sha256,
            "per_class": {k: counts.get(k, 0) for k in src.labels},
            "range": [float(samples.min()), float(samples.max())],
        }
        _log.info(
            f"calibration: {len(cal.paths)} images from {cal.source}, stratified; input range "
            f"[{samples.min():.3f}, {samples.max():.3f}]"
        )
        problem = calibrate.check_samples(samples, spec)
        if problem:
            problems.append(problem)

    export_model, has_features = with_features(model) if opts.trust else (model, False)

    def make_converter(m=None):
        rep = calibrate.representative(samples) if samples is not None else None
        return formats.apply(_converter(m or export_model, spec, opts.edgetpu), fmt, io, rep, opts.allow_float_ops)

    try:
        tflite = make_converter().convert()
    except Exception as e:  # ConverterError and friends carry the op that failed
        hint = (
            "; ops without an int8 kernel can be left in float with --allow-float-ops"
            if fmt.integer_only and not opts.allow_float_ops
            else ""
        )
        raise ExportError(f"conversion failed: {str(e).strip().splitlines()[-1] if str(e).strip() else e}{hint}") from e

    details = gate.io_details(tflite, len(src.labels))
    fops = gate.float_ops(tflite) if fmt.integer_only else []
    if fops:
        listing = ", ".join(f"{o['op']}#{o['index']}" for o in fops)
        if not opts.allow_float_ops:
            raise GateFailed(
                [f"{len(fops)} ops stayed float in the {fmt.name} export: {listing} (--allow-float-ops accepts them)"]
            )
        _log.warning(f"warning: {len(fops)} ops run in float: {listing}")
    problem = calibrate.coverage_problem(details["input"]["quant"], details["input"]["dtype"], spec)
    if problem:
        problems.append(problem)

    manifest: dict[str, Any] = {
        "name": name,
        "arch": src.arch,
        "labels": src.labels,
        "input": {**spec.to_json(), "dtype": details["input"]["dtype"], "quant": details["input"]["quant"]},
        "output": {"dtype": details["output"]["dtype"], "quant": details["output"]["quant"]},
        "features": (
            {
                "dtype": details["features"]["dtype"],
                "quant": details["features"]["quant"],
                "dim": details["features"]["shape"][-1],
                "layer": "pool",
            }
            if details["features"]
            else None
        ),
        "quantization": fmt.name,
        "params": src.params,
        "split_sha256": src.split_sha256 or val.split_sha256,
        "source_model": {"path": str(src.path), "sha256": src.sha256},
        "converter": {"tensorflow": tf.__version__, **formats.options(fmt, io, opts.allow_float_ops)},
        "calibration": calib_info,
        "qat": qat_info,
        "float_ops": [f"{o['op']}#{o['index']}" for o in fops],
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp_tflite = Path(tmp) / f"{name}.tflite"
        tmp_tflite.write_bytes(tflite)
        metrics, interp, val_out = _evaluate(src, tmp_tflite, manifest, val, val_pixels, opts.threads)
        metrics["eval_split"] = "val" if opts.eval_samples is None else f"val (stratified {len(val.labels)})"
        trust_bytes: bytes | None = None
        stats: TrustStats | None = None
        if has_features:
            trust_bytes, manifest["trust"], stats = _fit_trust(
                opts, src, split_csv, tmp_tflite, manifest, val, val_out, val_pixels
            )
        if opts.eval_test:
            test = calibrate.from_split(split_csv, "test", opts.data_root)
            test_pixels = _pixels(test, spec, opts.cache_dir, True)
            metrics["test"], _, test_out = _evaluate(src, tmp_tflite, manifest, test, test_pixels, opts.threads)
            if stats is not None:
                manifest["trust"]["test"] = trust_fit.evaluate(
                    stats, test_out["raw"], test_out["features"], test.labels, test_pixels
                )
    _log.info(
        f"val accuracy: float {metrics['float']['accuracy']:.4f}, "
        f"{fmt.name} {metrics['exported']['accuracy']:.4f}, drop {metrics['drop']:.2f} points "
        f"(max {opts.max_drop:g}); agreement {metrics['agreement']:.4f}, n={metrics['n']}"
    )
    if "test" in metrics:
        t = metrics["test"]
        _log.info(
            f"test accuracy: float {t['float']['accuracy']:.4f}, {fmt.name} {t['exported']['accuracy']:.4f}, "
            f"drop {t['drop']:.2f} points, n={t['n']}"
        )
        tt = (manifest.get("trust") or {}).get("test")
        if tt:
            _log.info(
                f"test trust: ECE {tt['ece']['raw']:.4f} -> {tt['ece']['calibrated']:.4f}, OOD flagged "
                f"{tt['ood_flagged']:.4f}"
                + (f" (colour {tt['colour_ood_flagged']:.4f})" if "colour_ood_flagged" in tt else "")
                + f", coverage {tt['coverage']:.4f}, "
                f"accepted accuracy {_fmt(tt['accepted_accuracy'])}"
            )
    if metrics["drop"] > opts.max_drop:
        problems.append(f"accuracy drop {metrics['drop']:.2f} points exceeds --max-drop {opts.max_drop:g}")

    result = {
        "name": name,
        "format": fmt.name,
        "io": io,
        "metrics": metrics,
        "size_bytes": len(tflite),
        "problems": problems,
    }
    report = None
    if problems:
        if fmt.calibration:
            report = out / f"{name}.quant_debug.csv"
            # The debugger wants a single-output model: the probabilities' graph is the same.
            assert samples is not None, "a format with calibration has its samples (above)"
            worst = gate.debug_report(lambda: make_converter(model), samples, report)
            _log.info(f"per-layer quantization error (rmse/scale; ~0.3 is rounding only), worst first -> {report}")
            for w in worst:
                _log.info(f"  {w.rmse_over_scale:8.3f}  {w.op:<18} {w.tensor}")
            result["report"] = str(report)
        if not opts.force:
            raise GateFailed(problems, report, result)
        _log.info("--force: writing the bundle despite: " + "; ".join(problems))

    manifest["metrics"] = metrics
    manifest["interpreter"] = interp
    manifest["gate"] = {
        "max_drop": opts.max_drop,
        "passed": not problems,
        "problems": problems,
        "forced": bool(problems),
    }
    bundle = write_bundle(tflite, manifest, out, name, trust_bytes)
    result["bundle"] = str(bundle.tflite)
    _log.info(f"wrote {bundle.tflite} ({len(tflite) / 1e6:.2f} MB) and {bundle.tflite.with_suffix('.json').name}")
    if qat_rows:
        _write_rows(out / f"{name}.history.csv", qat_rows)
    if opts.edgetpu:
        result["edgetpu"] = str(_compile_edgetpu(bundle, manifest, out).tflite)
    return result


def _write_rows(path: Path, rows: list[dict]):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def _compile_edgetpu(bundle: Bundle, manifest: dict, out: Path) -> Bundle:
    try:
        data, text, info = edgetpu.compile_model(bundle.tflite)
    except edgetpu.CompilerMissing as e:
        raise EdgeTPUUnavailable(
            f"{e}\nThe full-integer CPU model {bundle.tflite} is written and ready to compile: "
            f"rerun this command where edgetpu_compiler is installed, or run "
            f"`edgetpu_compiler -s -o {out} {bundle.tflite}` there"
        ) from None
    name = f"{bundle.name}_edgetpu"
    m = {
        **manifest,
        "name": name,
        "quantization": "edgetpu",
        "edgetpu": {**info, "compiled_from": bundle.tflite.name, "compiled_from_sha256": bundle.sha256},
    }
    m["metrics"] = {
        **manifest["metrics"],
        "note": f"measured on the CPU model {bundle.tflite.name}; the Edge TPU runs the same int8 graph",
    }
    # The compiled model runs the same int8 graph: its features, and so its statistics, are the same.
    trust = bundle.trust_path.read_bytes() if bundle.trust_path else None
    compiled = write_bundle(data, m, out, name, trust)
    (out / f"{name}.log").write_text(text)
    _log.info(
        f"edgetpu_compiler {info['compiler_version']}: {info['mapped_ops']} ops on the Edge TPU, "
        f"{info['cpu_ops']} on the CPU, {info['subgraphs']} subgraph(s) -> {compiled.tflite}"
    )
    for o in info["ops"]:
        _log.info(f"  {o['op']:<24}{o['count']:>5}  {o['status']}")
    return compiled

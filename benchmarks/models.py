"""The models a benchmark measures and the files it measures them from: a training run, an
untrained build of a registered architecture, or a bundle; the bundle of each format (an
export already made, else one made here by convert's own export); and the multiply-accumulates
of a graph, counted from its TFLite ops."""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_bloodcls.convert.export import ExportOptions, arch_label, run
from edge_bloodcls.convert.formats import FORMATS as TABLE
from edge_bloodcls.convert.gate import op_shapes  # no default delegate: every op is listed as itself
from edge_bloodcls.edge_runtime.core.bundle import DEFAULT_MODEL, MODELS_DIR, BundleError, load_bundle, sha256_file
from edge_bloodcls.edge_runtime.core.spec import LABELS
from edge_bloodcls.train import archs

from .options import UNTRAINED_CALIBRATION, UNTRAINED_EVAL, BenchOptions, one_line

MACS_METHOD = (
    "counted on the float32 TFLite graph: CONV_2D and TRANSPOSE_CONV output elements x kernel "
    "height x width x input channels, DEPTHWISE_CONV_2D output elements x kernel height x width, "
    "FULLY_CONNECTED and BATCH_MATMUL output elements x reduction length; BatchNorm is folded "
    "into the convolutions, activations, additions and pooling are not counted"
)


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


def _arch_size(name: str) -> tuple[str, int | None]:
    m = re.fullmatch(r"(.+?)_(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else (name, None)


PLATEAU_POINTS = 0.3  # a run has converged when its last 5 epochs gained less than this (issue 14)


def converged(stop_reason: str | None, val_accuracy: list[float]) -> tuple[bool, str]:
    """Whether validation stopped improving, and why: early stopping, or under PLATEAU_POINTS
    gained by the best of the last 5 epochs over the best before them."""
    reason = str(stop_reason or "")
    if reason.startswith("early stopping"):
        return True, "early-stopped"
    if "time budget" in reason:
        return False, "stopped by its time budget"
    if len(val_accuracy) < 6:
        return False, f"only {len(val_accuracy)} epochs"
    gain = (max(val_accuracy[-5:]) - max(val_accuracy[:-5])) * 100
    return (
        gain < PLATEAU_POINTS,
        f"{'plateau' if gain < PLATEAU_POINTS else 'still improving'}: +{max(gain, 0):.2f} points of "
        "validation accuracy in its last 5 epochs",
    )


def _training_record(run: Path) -> dict | None:
    f = run / "metrics.json"
    if not f.exists():
        return None
    m = json.loads(f.read_text())
    test = m.get("test") or {}
    keys = ("epochs_run", "epochs_planned", "best_epoch", "stop_reason", "train_seconds", "chunks")
    return {
        **{k: m.get(k) for k in keys},
        "test_accuracy_at_training": test.get("accuracy"),
        "initialisation": initialisation(run),
        **run_convergence(run, m.get("stop_reason")),
    }


def initialisation(run: Path) -> str:
    """Where a run's weights started, from its config.json and those of the runs it continued
    (progressive resizing): the paper table's column, e.g. "from scratch (via mobilenetv2_96)"."""
    chain: list[str] = []
    while True:
        f = run / "config.json"
        w = (json.loads(f.read_text()).get("train") or {}).get("weights") if f.exists() else None
        if not f.exists():
            start = "not recorded"
        elif w in (None, "none"):
            start = "from scratch"
        elif w == "imagenet":
            start = "ImageNet"
        elif len(chain) < 10 and (Path(w).parent / "config.json").exists():
            run = Path(w).parent
            chain.insert(0, run.name)
            continue
        else:
            start = f"from {w}"
        return start + (f" (via {' → '.join(chain)})" if chain else "")


def run_convergence(run: Path, stop_reason) -> dict:
    """{"converged": bool, "convergence": why} of a run directory, from its history.csv."""
    val_acc = []
    if (run / "history.csv").exists():
        with open(run / "history.csv") as h:
            val_acc = [float(row["val_accuracy"]) for row in csv.DictReader(h)]
    done, why = converged(stop_reason, val_acc)
    return {"converged": done, "convergence": why}


def resolve_model(spec: str, opts: BenchOptions) -> ModelSource:
    """A name (mobilenetv2, mobilenetv2_96), a run directory, a bundle (NAME.json/.tflite/NAME),
    'shipped' (the runtime's default bundle) or ARCH@SIZE (an untrained build, e.g. the reference)."""
    if spec == "shipped":
        return _bundle_source(MODELS_DIR / f"{DEFAULT_MODEL}.json", role="shipped")
    if "@" in spec:
        ref_arch, ref_size = spec.split("@")
        return _untrained(
            ref_arch,
            int(ref_size),
            f"{ref_arch}_{ref_size}_ref",
            "reference build (untrained): latency and size only",
            role="reference",
            formats=("float32", "int8"),
        )
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
            note = (
                f"training stopped by its time budget after {rec.get('epochs_run')} of "
                f"{rec.get('epochs_planned')} epochs"
            )
        return ModelSource(run.name, arch, int(size), "run", run / "model.keras", True, note, rec)
    return _untrained(
        arch,
        int(size),
        run.name,
        f"not trained: no {run}/model.keras; an untrained build of train.archs.build "
        "(latency, size, parameters and MACs only)",
    )


def _bundle_source(path: Path, role: str = "model") -> ModelSource:
    b = load_bundle(path)
    size = int(b.manifest["input"]["size"][0])
    origin = b.manifest.get("exported_as") or b.name
    # The shipped bundle is named like the int8 export it was copied from (often another one,
    # e.g. the per-tensor int8): its key says which.
    key = f"shipped:{origin}" if role == "shipped" else b.name
    return ModelSource(
        key,
        b.manifest.get("arch", "?"),
        size,
        "bundle",
        b.tflite.with_suffix(".json"),
        True,
        f"bundle {b.name}" + (f" (exported as {origin})" if origin != b.name else ""),
        None,
        (b.quantization,),
        role,
    )


def _untrained(arch: str, size: int, key: str, note: str, role: str = "model", formats=None) -> ModelSource:
    return ModelSource(key, arch, size, "untrained", Path(), False, note, None, formats, role)


def untrained_build(src: ModelSource, opts: BenchOptions, calib_csv: Path, log) -> Path:
    """train.archs.build with random weights, saved (once) as a run dir convert can export."""
    d = Path(opts.cache_dir) / "bench" / "untrained" / f"{src.arch}_{src.size}"
    f = d / "model.keras"
    if f.exists():
        return f
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tf_keras

    log(f"{src.key}: building an untrained {src.arch} at {src.size} px")
    tf_keras.utils.set_random_seed(opts.seed)
    model = archs.build(src.arch, src.size, "none")
    d.mkdir(parents=True, exist_ok=True)
    model.save(d / "tmp.keras")
    os.replace(d / "tmp.keras", f)
    (d / "config.json").write_text(
        json.dumps(
            {
                "train": {"arch": src.arch, "img_size": src.size, "weights": "none"},
                "untrained": True,
                "input": archs.input_spec(src.arch, src.size, "none").to_json(),
                "labels": list(LABELS),
                "params": int(model.count_params()),
                "split": {"csv": str(calib_csv)},
            },
            indent=2,
        )
    )
    return f


def bundles_for(
    src: ModelSource, formats: list[str], opts: BenchOptions, calib_csv: Path, log
) -> tuple[dict, list, Path | None]:
    """format -> model file (NAME.tflite, or model.keras for "keras"), the errors of formats
    that could not be exported, and the Keras model they come from (None for a bundle)."""
    if src.kind == "bundle":
        assert src.formats, "a bundle source carries its one format (_bundle_source)"
        return {src.formats[0]: src.path.with_suffix(".tflite")}, [], None

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
            # scripts/export_all.sh's bundles: named by the run, or by convert's default name.
            folder = Path(opts.exports_dir) / src.key
            candidates[:0] = [folder / f"{name}.json", folder / f"{_convert_name(src, TABLE[fmt].suffix)}.json"]
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
            errors.append(
                {
                    "model": src.key,
                    "format": fmt,
                    "stage": "skipped",
                    "error": f"no QAT export ({why}); the int8 row has the same integer kernels",
                }
            )
            continue
        if found is None:
            try:
                found = _export(keras_path, fmt, name, cache, calib_csv, opts, not src.trained, log)
            except Exception as e:  # one format that cannot be exported must not stop the others
                errors.append({"model": src.key, "format": fmt, "stage": "export", "error": one_line(e)})
                log(f"{src.key} {fmt}: export failed: {one_line(e)}")
                continue
        out[fmt] = found
    return out, errors, keras_path


def _convert_name(src: ModelSource, suffix: str) -> str:
    """The name `convert` gives an export of this run by default (convert.export.default_name)."""
    cfg_file = src.path.parent / "config.json"

    width = (json.loads(cfg_file.read_text()).get("train") or {}).get("width") if cfg_file.exists() else None
    return f"{arch_label(src.arch, width)}_{src.size}_{suffix}"


def _export(
    keras_path: Path, fmt: str, name: str, out_dir: Path, calib_csv: Path, opts: BenchOptions, untrained: bool, log
) -> Path:
    log(f"exporting {name} from {keras_path} (convert.export)")
    eo = ExportOptions(
        model=str(keras_path),
        quantize="int8" if fmt in ("int8", "qat-int8") else fmt,
        out=str(out_dir),
        qat=fmt == "qat-int8",
        qat_epochs=opts.qat_epochs,
        calibration=str(calib_csv),
        split=str(calib_csv),
        data_root=opts.data_root,
        calibration_samples=(
            min(opts.calibration_samples, UNTRAINED_CALIBRATION) if untrained else opts.calibration_samples
        ),
        eval_samples=UNTRAINED_EVAL if untrained else opts.export_eval_samples,
        cache_dir=str(Path(opts.cache_dir) / "pixels"),
        force=True,
        name=name,
        seed=opts.seed,
        # An untrained build's features are degenerate (no statistics can be fitted on them), and
        # it is measured for speed only: the pooled-feature output costs a copy, not compute.
        trust=not untrained,
    )
    res = run(eo)
    return Path(res["bundle"])


def graph_macs(tflite_path) -> dict:
    """Multiply-accumulates of one inference, from the TFLite graph's op list and tensor shapes."""
    by_op: dict[str, int] = {}
    for op in op_shapes(Path(tflite_path).read_bytes()):
        name, ins, outs = op["op"], op["inputs"], op["outputs"]
        n_out = int(np.prod(outs[0])) if outs else 0
        if name == "CONV_2D":
            w = ins[1]  # [out_ch, kh, kw, in_ch]
            macs = n_out * w[1] * w[2] * w[3]
        elif name == "DEPTHWISE_CONV_2D":
            w = ins[1]  # [1, kh, kw, out_ch]
            macs = n_out * w[1] * w[2]
        elif name in ("FULLY_CONNECTED", "BATCH_MATMUL"):
            macs = n_out * ins[0][-1]
        elif name == "TRANSPOSE_CONV":
            w = ins[1]  # [out_ch, kh, kw, in_ch]; every input element meets the whole kernel
            macs = int(np.prod(ins[2])) * w[0] * w[1] * w[2]
        else:
            continue
        by_op[name] = by_op.get(name, 0) + int(macs)
    return {"macs": int(sum(by_op.values())), "by_op": by_op, "method": MACS_METHOD}

"""Runtime commands: classify, evaluate, models, capture, locate-eval. No TensorFlow here."""
from __future__ import annotations

import csv
import glob
import json
import os
import sys
from pathlib import Path

import click
import numpy as np

from .bundle import DEFAULT_MODEL, MODELS_DIR, BundleError, load_bundle
from .classifier import DEFAULT_REVIEW_THRESHOLD, Classifier
from .interpreter import InterpreterUnavailable
from .locate_eval import locate_eval_command
from .preprocess import ImageError
from .sources import IMAGE_SUFFIXES

# Exit codes: 1 some inputs failed (the others were processed); 2 nothing could start
# (no or invalid model, no interpreter, source cannot be opened, bad usage).
EXIT_INPUT_FAILED = 1
EXIT_CANNOT_START = 2


def _fail(msg: str, code: int = EXIT_CANNOT_START):
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def load_classifier(model, threads=None, device="cpu", review_threshold=DEFAULT_REVIEW_THRESHOLD) -> Classifier:
    """The classifier, or a one-line error and exit 2."""
    try:
        bundle = load_bundle(model)
    except BundleError as e:
        if model is None and not any((MODELS_DIR / f"{DEFAULT_MODEL}{s}").exists() for s in (".json", ".tflite")):
            _fail(f"no --model given and the bundled default {DEFAULT_MODEL} is not installed in {MODELS_DIR}; "
                  "pass --model PATH/NAME.tflite (a bundle written by `edge-bloodcls convert`)")
        _fail(str(e))
    try:
        return Classifier(bundle, threads=threads, device=device, review_threshold=review_threshold)
    except InterpreterUnavailable as e:
        _fail(str(e))


def model_options(f):
    f = click.option("--device", type=click.Choice(["cpu", "edgetpu", "auto"]), default="cpu", show_default=True,
                     help="edgetpu needs a Coral and an *_edgetpu model; auto falls back to the CPU.")(f)
    f = click.option("--threads", type=click.IntRange(1, 64), default=None,
                     help="Interpreter threads (default: all cores).")(f)
    f = click.option("--model", "-m", default=None, metavar="M",
                     help=f"Bundle NAME.tflite/NAME.json, or a bundled model's name (default: {DEFAULT_MODEL}).")(f)
    return f


def review_option(f):
    return click.option("--review-threshold", type=click.FloatRange(0, 1), default=DEFAULT_REVIEW_THRESHOLD,
                        show_default=True, help="Results below this confidence are flagged for review.")(f)


class _Echo:
    """A file-like stdout for csv.writer that goes through click (and so CliRunner)."""

    def write(self, s):
        click.echo(s, nl=False)


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def _folder_images(d: Path) -> list[Path]:
    # Hidden files are included: an unreadable ".DS_…jpg" must be reported, not silently skipped.
    return sorted(p for p in d.rglob("*") if p.is_file() and _is_image_name(p))


def expand_inputs(paths) -> list[tuple[str, str | None]]:
    """Files, folders (recursive, image suffixes) and globs -> [(path, error or None)], in order."""
    out, seen = [], set()

    def add(p, err=None):
        key = str(p)
        if err is not None or key not in seen:
            seen.add(key)
            out.append((key, err))

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files = _folder_images(p)
            if not files:
                add(raw, "folder holds no images")
            for f in files:
                add(f)
        elif p.exists() or p.is_symlink():
            add(p)
        elif glob.has_magic(raw):
            matches = sorted(glob.glob(raw, recursive=True))
            if not matches:
                add(raw, "no file matches this pattern")
            for m in matches:
                if os.path.isdir(m):
                    for f in _folder_images(Path(m)):
                        add(f)
                else:
                    add(m)
        else:
            add(raw, "no such file or folder")
    return out


@click.command()
@click.argument("paths", nargs=-1, required=True)
@model_options
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl", "csv"]), default="table", show_default=True)
@click.option("--top-k", type=click.IntRange(1, 8), default=3, show_default=True)
@review_option
@click.option("--verbose", "-v", is_flag=True, help="Model and interpreter on stderr at the start, counts at the end.")
def classify(paths, model, threads, device, fmt, top_k, review_threshold, verbose):
    """Classify single-cell images: files, folders (recursive) and glob patterns.

    A bad input (unreadable, corrupt, not an image, too small or too large) is reported on stderr
    and skipped; the exit status is 1 when any input failed.
    """
    clf = load_classifier(model, threads, device, review_threshold)
    desc = clf.describe()
    if verbose:
        click.echo("model " + " ".join(f"{k}={v}" for k, v in desc.items()), err=True)
    writer = None
    if fmt == "csv":
        writer = csv.writer(_Echo(), lineterminator="\n")
        writer.writerow(["path", "label", "confidence", "review", "latency_ms", "interpreter", "error"]
                        + [f"p_{lab}" for lab in clf.labels])
    elif fmt == "table":
        click.echo(f"{'label':<13}{'conf':>6}  {'review':<7}{'ms':>7}  {'top-k':<40} path")
    failed, latencies = 0, []
    for path, err in expand_inputs(paths):
        pred = None
        if err is None:
            try:
                pred = clf.classify(path, top_k=top_k)
            except ImageError as e:
                err = e.reason
            except Exception as e:  # an unforeseen decoder failure must not stop a batch
                err = f"{type(e).__name__}: {e}".splitlines()[0]
        if pred is None:
            failed += 1
            click.echo(f"error: {path}: {err}", err=True)
            if fmt == "jsonl":
                click.echo(json.dumps({"path": path, "error": err}))
            elif fmt == "csv":
                writer.writerow([path, "", "", "", "", desc["interpreter"], err] + [""] * len(clf.labels))
            continue
        latencies.append(pred.latency_ms)
        if fmt == "jsonl":
            click.echo(json.dumps({
                "path": path, "label": pred.label, "confidence": round(pred.confidence, 6),
                "probs": {k: round(v, 6) for k, v in pred.probs.items()},
                "top": [[k, round(v, 6)] for k, v in pred.top],
                "latency_ms": round(pred.latency_ms, 3), "review": pred.review,
                "interpreter": desc["interpreter"], "device": desc["device"], "model": desc["model"]}))
        elif fmt == "csv":
            writer.writerow([path, pred.label, f"{pred.confidence:.6f}", int(pred.review), f"{pred.latency_ms:.3f}",
                             desc["interpreter"], ""] + [f"{pred.probs[lab]:.6f}" for lab in clf.labels])
        else:
            top = ", ".join(f"{k} {v:.2f}" for k, v in pred.top)
            click.echo(f"{pred.label:<13}{pred.confidence:>6.3f}  {'REVIEW' if pred.review else '':<7}"
                       f"{pred.latency_ms:>7.2f}  {top:<40} {path}")
    if verbose or failed:
        med = f", median invoke {np.median(latencies):.2f} ms" if latencies else ""
        click.echo(f"{len(latencies)} classified, {failed} failed{med}", err=True)
    sys.exit(EXIT_INPUT_FAILED if failed else 0)


@click.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@model_options
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report here.")
def evaluate(directory, model, threads, device, json_path):
    """Accuracy of a model on a folder with one sub-folder per class (named as the model's labels).

    Unreadable images are listed and left out of the metrics; they do not stop the run.
    """
    from .metrics import classification_metrics, format_metrics

    clf = load_classifier(model, threads, device)
    index = {lab: i for i, lab in enumerate(clf.labels)}
    y_true, y_pred, failed, latencies = [], [], [], []
    unknown = []
    for d in sorted(p for p in directory.iterdir() if p.is_dir()):
        if d.name not in index:
            unknown.append(d.name)
            continue
        for f in _folder_images(d):
            try:
                pred = clf.classify(f, top_k=1)
            except ImageError as e:
                failed.append({"path": str(f), "error": e.reason})
                click.echo(f"error: {f}: {e.reason}", err=True)
                continue
            y_true.append(index[d.name])
            y_pred.append(index[pred.label])
            latencies.append(pred.latency_ms)
    if unknown:
        click.echo(f"warning: ignored folders that are not labels of this model: {', '.join(unknown)}", err=True)
    if not y_true:
        _fail(f"{directory}: no readable images in sub-folders named {', '.join(clf.labels)}", EXIT_INPUT_FAILED)
    m = classification_metrics(y_true, y_pred, clf.labels)
    desc = clf.describe()
    click.echo(f"model {desc['model']} ({desc['quantization']}) on {desc['interpreter']} {desc['device']}")
    click.echo(format_metrics(m))
    click.echo("confusion matrix (rows true, columns predicted; " + " ".join(lab[:4] for lab in clf.labels) + ")")
    for lab, row in zip(clf.labels, m["confusion_matrix"]):
        click.echo(f"  {lab[:12]:<12}" + "".join(f"{v:>6}" for v in row))
    if failed:
        click.echo(f"{len(failed)} unreadable image(s) left out", err=True)
    if json_path:
        report = {"data": str(directory), **desc, "n_images": len(y_true) + len(failed), "n_failed": len(failed),
                  "failed": failed, "ignored_folders": unknown,
                  "latency_ms": {"median": float(np.median(latencies)), "p95": float(np.percentile(latencies, 95))},
                  "metrics": m}
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1) + "\n")


def _accuracy(manifest: dict):
    metrics = manifest.get("metrics") or {}
    for key in ("exported", "float"):
        acc = (metrics.get(key) or {}).get("accuracy")
        if acc is not None:
            return acc
    return None


@click.command()
@click.option("--json", "as_json", is_flag=True, help="JSON list instead of a table.")
def models(as_json):
    """Models bundled with the runtime (and any that fail their checks, with the reason)."""
    rows = []
    for j in sorted(MODELS_DIR.glob("*.json")):
        try:
            b = load_bundle(j)
        except BundleError as e:
            rows.append({"name": j.stem, "path": str(j.with_suffix(".tflite")), "error": str(e)})
            continue
        rows.append({"name": b.name, "path": str(b.tflite), "quantization": b.quantization,
                     "input_size": list(b.spec.size), "sha256": b.sha256, "accuracy": _accuracy(b.manifest),
                     "default": b.name == DEFAULT_MODEL})
    if as_json:
        click.echo(json.dumps(rows, indent=1))
    elif rows:
        click.echo(f"{'name':<28}{'quant':<10}{'input':<9}{'accuracy':>9}  {'sha256':<14}path")
        for r in rows:
            if "error" in r:
                click.echo(f"{r['name']:<28}INVALID: {r['error']}")
                continue
            acc = f"{r['accuracy']:.4f}" if isinstance(r["accuracy"], (int, float)) else "-"
            size = "x".join(map(str, r["input_size"]))
            click.echo(f"{r['name'] + (' *' if r['default'] else ''):<28}{r['quantization']:<10}{size:<9}{acc:>9}  "
                       f"{r['sha256'][:12]:<14}{r['path']}")
    if not any("error" not in r for r in rows):
        click.echo(f"no usable bundled model in {MODELS_DIR}: the default {DEFAULT_MODEL} has not been exported "
                   "yet. Export one with `edge-bloodcls convert` or pass --model PATH/NAME.tflite.", err=True)


@click.command()
@click.option("--camera", "camera", required=True, metavar="SOURCE",
              help="Camera index (0), picamera2[:N], a stream URL or /dev/videoN, a video file, or a folder of images.")
@model_options
@click.option("--mode", type=click.Choice(["cell", "field"]), default="field", show_default=True,
              help="cell: each frame is one centred cell; field: find the white cells in a field of view.")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=Path("bloodcls_sessions.sqlite"),
              show_default=True, help="SQLite session log (WAL; one commit per frame).")
@click.option("--max-frames", type=click.IntRange(1), default=None)
@click.option("--fps", type=click.FloatRange(0, min_open=True), default=None, help="Frames per second at most.")
@click.option("--save-crops", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Save every classified crop as JPEG here (its path goes into the log).")
@click.option("--no-preview", is_flag=True, help="No preview window even where a display exists.")
@click.option("--rbc-px", type=click.FloatRange(1), default=None,
              help="Red-cell diameter in frame pixels: the scale for locating and cropping "
                   "(default 0.21 x short side).")
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the end-of-session summary (differential, review list, timing) here.")
@review_option
def capture(camera, model, threads, device, mode, db, max_frames, fps, save_crops, no_preview, rbc_px,
            summary_json, review_threshold):
    """Classify what the microscope camera sees, log it, and keep a running differential.

    Ends at the end of a recorded source, after --max-frames, on q in the preview, on Ctrl-C or
    SIGTERM, or when a camera stops delivering frames and reopening it fails.
    """
    from .capture import CaptureOptions, format_summary, run_capture
    from .session import SessionLog
    from .sources import SourceError, open_source

    clf = load_classifier(model, threads, device, review_threshold)
    try:
        source = open_source(camera, fps=fps)
    except SourceError as e:
        _fail(str(e))
    desc = clf.describe()
    click.echo(f"capture from {source.name} ({mode} mode) with {desc['model']} on {desc['interpreter']} "
               f"{desc['device']}, {desc['threads']} thread(s); log {db}", err=True)
    log = SessionLog(db, source.name, mode, desc, review_threshold)
    try:
        summary = run_capture(source, clf, log, CaptureOptions(
            mode=mode, rbc_px=rbc_px, max_frames=max_frames, save_crops=save_crops, preview=not no_preview,
            echo=lambda m: click.echo(m, err=True)))
    finally:
        log.close()
    summary["session_id"] = log.id
    summary["db"] = str(db)
    click.echo(format_summary(summary))
    if summary_json:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps(summary, indent=1) + "\n")
    sys.exit(EXIT_INPUT_FAILED if getattr(source, "gave_up", False) else 0)


COMMANDS = [classify, evaluate, models, capture, locate_eval_command]

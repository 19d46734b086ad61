"""Runtime commands: classify, evaluate, models, capture, locate-eval. No TensorFlow here."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click
import numpy as np

from edge_bloodcls import logs
from edge_bloodcls.errors import EXIT_INPUTS_FAILED, CliError, InputsFailed

from .capture.locate_eval import locate_eval_command
from .capture.loop import (
    DEFAULT_COUNT,
    CaptureOptions,
    crop_folder_problem,
    format_summary,
    run_capture,
    runtime_versions,
)
from .capture.opener import open_source
from .capture.preview import LiveView
from .capture.sources import SourceError
from .core.bundle import DEFAULT_MODEL, FAST_MODEL, MODELS_DIR, BundleError, load_bundle
from .core.classifier import DEFAULT_REVIEW_THRESHOLD, Classifier
from .core.images import expand_inputs, list_class_images, printable
from .core.interpreter import InterpreterUnavailable
from .core.metrics import classification_metrics, format_metrics
from .core.preprocess import ImageError
from .core.progress import Progress
from .core.trust import GATE_ADVICE, trust_summary
from .lab.report import report_command
from .lab.review import review_command
from .lab.session import SessionFileError, SessionLog


def load_classifier(model, threads=None, device="cpu", review_threshold=None) -> Classifier:
    """The classifier, or CliError (one line, exit 2). review_threshold None: the bundle's own."""
    try:
        bundle = load_bundle(model)
    except BundleError as e:
        if model is None and not any((MODELS_DIR / f"{DEFAULT_MODEL}{s}").exists() for s in (".json", ".tflite")):
            raise CliError(
                f"no --model given and the bundled default {DEFAULT_MODEL} is not installed in "
                f"{MODELS_DIR}; pass --model PATH/NAME.tflite (a bundle written by "
                "`edge-bloodcls convert`)"
            ) from None
        raise CliError(str(e)) from None
    try:
        clf = Classifier(bundle, threads=threads, device=device, review_threshold=review_threshold)
    except (InterpreterUnavailable, BundleError) as e:
        raise CliError(str(e)) from None
    if clf.trust is None:
        # Said once, at load: results still come, but nothing tells a foreign cell from a PBC one.
        click.echo(
            f"note: {bundle.name} has no trust statistics (an older bundle): no out-of-distribution "
            f"check, uncalibrated confidence, review below {clf.review_threshold:.2f}. Re-export it with "
            "`edge-bloodcls convert` to add them.",
            err=True,
        )
    return clf


def model_options(f):
    f = click.option(
        "--device",
        type=click.Choice(["cpu", "edgetpu", "auto"]),
        default="cpu",
        show_default=True,
        help="edgetpu needs a Coral and an *_edgetpu model; auto falls back to the CPU.",
    )(f)
    f = click.option(
        "--threads", type=click.IntRange(1, 64), default=None, help="Interpreter threads (default: all cores)."
    )(f)
    f = click.option(
        "--model",
        "-m",
        default=None,
        metavar="M",
        help=f"Bundle NAME.tflite/NAME.json, a bundled model's name, or `fast` ({FAST_MODEL}) "
        f"(default: {DEFAULT_MODEL}).",
    )(f)
    return f


def review_option(f):
    return click.option(
        "--review-threshold",
        type=click.FloatRange(0, 1),
        default=None,
        help="Results below this (calibrated) confidence are flagged for review [default: the "
        "bundle's, chosen on validation for 99.5% accuracy of the accepted cells; "
        f"{DEFAULT_REVIEW_THRESHOLD} for bundles without one].",
    )(f)


class _Echo:
    """A file-like stdout for csv.writer that goes through click (and so CliRunner)."""

    def write(self, s):
        click.echo(s, nl=False)


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
    if verbose:  # as the group's -v: debug detail and the interpreter's own INFO lines
        logs.configure(logs.VERBOSE)
    clf = load_classifier(model, threads, device, review_threshold)
    desc = clf.describe()
    if verbose:
        click.echo("model " + " ".join(f"{k}={v}" for k, v in desc.items()), err=True)
    writer = None
    if fmt == "csv":
        writer = csv.writer(_Echo(), lineterminator="\n")
        writer.writerow(
            [
                "path",
                "label",
                "confidence",
                "review",
                "latency_ms",
                "interpreter",
                "error",
                "ood_score",
                "ood",
                "review_reason",
            ]
            + [f"p_{lab}" for lab in clf.labels]
        )
    elif fmt == "table":
        click.echo(f"{'label':<13}{'conf':>6}  {'review':<7}{'ms':>7}  {'top-k':<40} path")
    failed, latencies, n_ood, n_review = 0, [], 0, 0
    inputs = list(expand_inputs(paths))
    # Rows on a terminal are their own progress; a count on stderr helps when they go to a file.
    progress = Progress(0 if sys.stdout.isatty() else len(inputs), "classify")
    for path, err in progress.iterate(inputs):
        pred = None
        if err is None:
            try:
                pred = clf.classify(path, top_k=top_k)
            except ImageError as e:
                err = e.reason
            except Exception as e:  # decoders raise only ImageError; nothing else may stop a batch either
                err = f"{type(e).__name__}: {e}".splitlines()[0]
        if pred is None:
            failed += 1
            progress.close()  # the error gets a line of its own; the count comes back after it
            # printable(): a non-UTF-8 file name must not stop the output (JSON escapes it itself).
            click.echo(f"error: {printable(path)}: {err}", err=True)
            if fmt == "jsonl":
                click.echo(json.dumps({"path": path, "error": err}))
            elif fmt == "csv":
                writer.writerow(
                    [printable(path), "", "", "", "", desc["interpreter"], err, "", "", ""] + [""] * len(clf.labels)
                )
            continue
        latencies.append(pred.latency_ms)
        n_ood += pred.ood
        n_review += pred.review
        if fmt == "jsonl":
            click.echo(
                json.dumps(
                    {
                        "path": path,
                        "label": pred.label,
                        "confidence": round(pred.confidence, 6),
                        "probs": {k: round(v, 6) for k, v in pred.probs.items()},
                        "top": [[k, round(v, 6)] for k, v in pred.top],
                        "latency_ms": round(pred.latency_ms, 3),
                        "review": pred.review,
                        "ood_score": None if pred.ood_score is None else round(pred.ood_score, 4),
                        "ood": pred.ood,
                        # None: the bundle has no colour statistic (CSV: in review_reason only)
                        "colour_score": None if pred.colour_score is None else round(pred.colour_score, 4),
                        "review_reason": pred.review_reason,
                        "interpreter": desc["interpreter"],
                        "device": desc["device"],
                        "model": desc["model"],
                    }
                )
            )
        elif fmt == "csv":
            writer.writerow(
                [
                    printable(path),
                    pred.label,
                    f"{pred.confidence:.6f}",
                    int(pred.review),
                    f"{pred.latency_ms:.3f}",
                    desc["interpreter"],
                    "",
                    "" if pred.ood_score is None else f"{pred.ood_score:.4f}",
                    int(pred.ood),
                    pred.review_reason,
                ]
                + [f"{pred.probs[lab]:.6f}" for lab in clf.labels]
            )
        else:
            top = ", ".join(f"{k} {v:.2f}" for k, v in pred.top)
            flag = "OOD" if pred.ood else "REVIEW" if pred.review else ""
            click.echo(
                f"{pred.label:<13}{pred.confidence:>6.3f}  {flag:<7}"
                f"{pred.latency_ms:>7.2f}  {top:<40} {printable(path)}"
            )
    if verbose or failed or n_ood:
        med = f", median invoke {np.median(latencies):.2f} ms" if latencies else ""
        trust = (
            f", {n_ood} out of distribution, {n_review} flagged for review"
            if clf.trust is not None
            else f", {n_review} flagged for review (no OOD check)"
        )
        click.echo(f"{len(latencies)} classified, {failed} failed{trust}{med}", err=True)
        if latencies and n_ood > len(latencies) / 3:
            click.echo(f"warning: {n_ood} of {len(latencies)} cells are out of distribution; {GATE_ADVICE}", err=True)
    if failed:
        raise InputsFailed()


@click.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@model_options
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report here.")
def evaluate(directory, model, threads, device, json_path):
    """Accuracy of a model on a folder with one sub-folder per class (named as the model's labels).

    Unreadable images are listed and left out of the metrics; they do not stop the run. Folders
    that cannot be read are listed too, and make the exit status 1.
    """
    clf = load_classifier(model, threads, device)
    index = {lab: i for i, lab in enumerate(clf.labels)}
    y_true, y_pred, failed, latencies = [], [], [], []
    probs, ood, review, per_image = [], [], [], []
    # The same walk as calibration and the benchmark (images.list_class_images).
    classes = list_class_images(directory, index)
    unknown = classes.unknown
    not_read = [{"path": p, "error": reason} for p, reason in classes.errors]
    for row in not_read:
        click.echo(f"error: {printable(row['path'])}: {row['error']}", err=True)
    items = list(classes.items())
    progress = Progress(len(items), "evaluate")
    for f, label in progress.iterate(items):
        try:
            pred = clf.classify(f, top_k=1)
        except ImageError as e:
            failed.append({"path": str(f), "error": e.reason})
            progress.close()  # the error gets a line of its own; the count comes back after it
            click.echo(f"error: {printable(f)}: {e.reason}", err=True)
            continue
        y_true.append(index[label])
        y_pred.append(index[pred.label])
        latencies.append(pred.latency_ms)
        probs.append([pred.probs[lab] for lab in clf.labels])
        ood.append(pred.ood)
        review.append(pred.review)
        per_image.append(
            {
                "path": str(f),
                "true": label,
                "predicted": pred.label,
                "confidence": round(pred.confidence, 6),
                "ood": pred.ood,
                "review": pred.review,
            }
        )
    if unknown:
        click.echo(f"warning: ignored folders that are not labels of this model: {', '.join(unknown)}", err=True)
    if not y_true:
        raise CliError(
            f"{printable(directory)}: no readable images in sub-folders named {', '.join(clf.labels)}",
            EXIT_INPUTS_FAILED,
        )
    m = classification_metrics(y_true, y_pred, clf.labels)
    desc = clf.describe()
    click.echo(f"model {desc['model']} ({desc['quantization']}) on {desc['interpreter']} {desc['device']}")
    click.echo(format_metrics(m))
    click.echo("confusion matrix (rows true, columns predicted; " + " ".join(lab[:4] for lab in clf.labels) + ")")
    for lab, row in zip(clf.labels, m["confusion_matrix"]):
        click.echo(f"  {lab[:12]:<12}" + "".join(f"{v:>6}" for v in row))
    trust = trust_summary(
        np.asarray(probs),
        np.asarray(y_true),
        np.asarray(ood),
        np.asarray(review),
        clf.trust is not None,
        clf.review_threshold,
    )
    click.echo(trust["line"])
    if failed:
        click.echo(f"{len(failed)} unreadable image(s) left out", err=True)
    if not_read:
        click.echo(f"{len(not_read)} folder(s) or file(s) could not be read: the metrics are of the rest", err=True)
    if json_path:
        report = {
            "data": str(directory),
            **desc,
            "n_images": len(y_true) + len(failed),
            "n_failed": len(failed),
            "failed": failed,
            "not_read": not_read,
            "ignored_folders": unknown,
            "latency_ms": {"median": float(np.median(latencies)), "p95": float(np.percentile(latencies, 95))},
            "metrics": m,
            "trust": {k: v for k, v in trust.items() if k != "line"},
            "predictions": per_image,
        }
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1) + "\n")
    # Any image that could not be used is a failure of the run (exit 1), though the metrics of the rest
    # are written: the report says which images are missing from them.
    if not_read or failed:
        raise InputsFailed()


def _accuracy(manifest: dict) -> dict[str, float]:
    """The exported model's accuracy by split, as `convert` measured it: {"val": .., "test": ..}.
    A manifest that does not say which split its figure is from gets it under "unstated"."""
    metrics = manifest.get("metrics") or {}
    out = {}
    for split, m in ((metrics.get("eval_split") or "unstated", metrics), ("test", metrics.get("test") or {})):
        for key in ("exported", "float"):
            acc = (m.get(key) or {}).get("accuracy")
            if isinstance(acc, (int, float)):
                out[split] = float(acc)
                break
    return out


def _site(manifest: dict) -> str | None:
    """One line about a bundle `edge-bloodcls adapt` made for a site (None for other bundles): what it
    learnt from, its held-out estimate on the site and what the home site (PBC test) keeps."""
    site = manifest.get("site")
    if not isinstance(site, dict):
        return None
    on = site.get("adapted_on") or {}
    srcs = on.get("sources") or ([{"source": on.get("source", "?")}] if on.get("source") else [])
    where = " + ".join(str(s.get("source", "?")) for s in srcs if isinstance(s, dict)) or "?"
    parts = [f"site-adapted on {sum((on.get('counts') or {}).values())} cells of {where}"]
    v = site.get("validation") or {}
    if isinstance(v.get("accuracy"), (int, float)):
        lo, hi = (v.get("accuracy_ci") or [None, None])[:2]
        parts.append(
            f"held-out {v['accuracy']:.1%}"
            + (f" [{lo:.0%}-{hi:.0%}]" if lo is not None else "")
            + (f", balanced {v['balanced_accuracy']:.1%}" if isinstance(v.get("balanced_accuracy"), float) else "")
            + f" on {v.get('n', '?')} cells"
        )
    kf = site.get("kfold") or {}  # bundles adapted before issue 29
    if kf.get("accuracy") is not None:
        parts.append(f"{kf['k']}-fold {kf['accuracy']:.1%}")
    t = site.get("pbc_test") or {}
    test = t.get("accuracy_int8", t.get("accuracy_float"))
    if isinstance(test, (int, float)):
        parts.append(
            f"PBC test {test:.1%}"
            + (f" (base {t['accuracy_base_float']:.1%})" if isinstance(t.get("accuracy_base_float"), float) else "")
        )
    if isinstance(site.get("route"), dict):  # adapt --home route: two networks in the bundle
        parts.append("routed (base network for home cells)")
    if isinstance(site.get("cell_head"), dict):  # adapt --cell-head: a second expert for the site's cells
        parts.append("with a cell-feature head")
    return ", ".join(parts)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="JSON list instead of a table.")
@click.option(
    "--dir",
    "folder",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="List the bundles in this folder (e.g. the OUTDIR of `adapt`) instead of the bundled ones.",
)
def models(as_json, folder):
    """Models bundled with the runtime (and any that fail their checks, with the reason)."""
    rows = []
    for j in sorted((folder or MODELS_DIR).glob("*.json")):
        try:
            b = load_bundle(j)
        except BundleError as e:
            rows.append({"name": j.stem, "path": str(j.with_suffix(".tflite")), "error": str(e)})
            continue
        rows.append(
            {
                "name": b.name,
                "path": str(b.tflite),
                "quantization": b.quantization,
                "input_size": list(b.spec.size),
                "sha256": b.sha256,
                "accuracy": _accuracy(b.manifest),
                "default": b.name == DEFAULT_MODEL and folder is None,
                "site": _site(b.manifest),
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=1))
    elif rows:
        click.echo(
            "accuracy of each exported model on the validation and test images it was exported with "
            "(`convert`, `adapt`); * the default"
        )
        w = max(len(r["name"]) for r in rows) + 4
        click.echo(f"{'name':<{w}}{'quant':<10}{'input':<9}{'val acc':>8}{'test acc':>9}  {'sha256':<14}path")
        for r in rows:
            if "error" in r:
                click.echo(f"{r['name']:<{w}}INVALID: {r['error']}")
                continue
            acc = {k: f"{v:.2%}" for k, v in r["accuracy"].items()}
            size = "x".join(map(str, r["input_size"]))
            click.echo(
                f"{r['name'] + (' *' if r['default'] else ''):<{w}}{r['quantization']:<10}{size:<9}"
                f"{acc.get('val', '-'):>8}{acc.get('test', '-'):>9}  {r['sha256'][:12]:<14}{r['path']}"
            )
            if r["site"]:
                click.echo(f"  {r['site']}")
    if folder is not None and not any("error" not in r for r in rows):
        click.echo(f"no usable bundle in {folder}", err=True)
    elif not any("error" not in r for r in rows):
        click.echo(
            f"no usable bundled model in {MODELS_DIR}: the default {DEFAULT_MODEL} has not been exported "
            "yet. Export one with `edge-bloodcls convert` or pass --model PATH/NAME.tflite.",
            err=True,
        )


@click.command()
@click.option(
    "--camera",
    "camera",
    required=True,
    metavar="SOURCE",
    help="Camera index (0), picamera2[:N], a stream URL or /dev/videoN, a video file, or a folder of images.",
)
@model_options
@click.option(
    "--mode",
    type=click.Choice(["cell", "field"]),
    default="field",
    show_default=True,
    help="cell: each frame is one centred cell; field: find the white cells in a field of view.",
)
@click.option(
    "--count",
    "count",
    type=click.IntRange(0),
    default=None,
    help="Stop after N white cells, each counted once [default: 100 in field mode, no limit in cell "
    "mode; 0: no limit]. 200 for a closer differential.",
)
@click.option("--sample", default=None, help="Sample (specimen) ID, printed on the report.")
@click.option("--operator", default=None, help="Who ran the capture, printed on the report.")
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("bloodcls_sessions.sqlite"),
    show_default=True,
    help="SQLite session log (WAL; one commit per frame).",
)
@click.option("--max-frames", type=click.IntRange(1), default=None)
@click.option("--fps", type=click.FloatRange(0, min_open=True), default=None, help="Frames per second at most.")
@click.option("--width", type=click.IntRange(16), default=None, help="Camera frame width to ask for.")
@click.option("--height", type=click.IntRange(16), default=None, help="Camera frame height to ask for.")
@click.option(
    "--save-crops",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Save the crop of every counted cell as JPEG here (its path goes into the log).",
)
@click.option("--no-preview", is_flag=True, help="No preview window even where a display exists.")
@click.option(
    "--live-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Also show the preview as a web page on this port (works with headless OpenCV).",
)
@click.option("--live-host", default="127.0.0.1", show_default=True, help="Address of the live web page.")
@click.option(
    "--rbc-px",
    type=click.FloatRange(1),
    default=None,
    help="Red-cell diameter in frame pixels: the scale for locating and cropping (default 0.21 x short side).",
)
@click.option(
    "--summary-json",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the end-of-session summary (differential, review list, timing) here.",
)
@review_option
def capture(
    camera,
    model,
    threads,
    device,
    mode,
    count,
    sample,
    operator,
    db,
    max_frames,
    fps,
    width,
    height,
    save_crops,
    no_preview,
    live_port,
    live_host,
    rbc_px,
    summary_json,
    review_threshold,
):
    """Classify what the microscope camera sees, count each white cell once, log it, and keep a
    running differential.

    Ends at the end of a recorded source, after --max-frames, at --count white cells, on q, Esc
    or closing the preview, on Ctrl-C or SIGTERM, or when a camera stops delivering frames and
    reopening it fails. Then: `edge-bloodcls review DB` and `edge-bloodcls report DB`.
    """

    if (width is None) != (height is None):
        raise CliError("--width and --height go together")
    if save_crops is not None and (problem := crop_folder_problem(save_crops)):
        raise CliError(f"{printable(save_crops)}: {problem}")  # before the session: not at its first counted cell
    if count is None:
        count = DEFAULT_COUNT if mode == "field" else 0
    clf = load_classifier(model, threads, device, review_threshold)
    try:
        source = open_source(camera, fps=fps, size=(width, height) if width else None)
    except SourceError as e:
        raise CliError(str(e)) from None
    desc = clf.describe()
    try:
        log = SessionLog(
            db,
            source.name,
            mode,
            desc,
            clf.review_threshold,
            sample=sample,
            operator=operator,
            count_target=count or None,
            counting="tracked" if mode == "field" else "per-frame",
            versions=runtime_versions(clf),
        )
    except (SessionFileError, OSError) as e:
        source.close()
        raise CliError(
            str(e)
            if isinstance(e, SessionFileError)
            else f"{printable(db)}: cannot write the session log ({e.strerror})"
        ) from None
    live = None
    if live_port is not None:
        try:
            live = LiveView(live_host, live_port)
        except OSError as e:
            source.close()
            log.close()
            raise CliError(f"--live-port {live_port}: cannot listen on {live_host} ({e.strerror})") from None
    click.echo(
        f"capture from {source.name} ({mode} mode) with {desc['model']} on {desc['interpreter']} "
        f"{desc['device']}, {desc['threads']} thread(s); log {printable(db)}, session {log.id}"
        + (f"; live view {live.url}" if live else ""),
        err=True,
    )
    try:
        summary = run_capture(
            source,
            clf,
            log,
            CaptureOptions(
                mode=mode,
                rbc_px=rbc_px,
                max_frames=max_frames,
                count=count or None,
                save_crops=save_crops,
                preview=not no_preview,
                live=live,
                echo=lambda m: click.echo(m, err=True),
            ),
        )
    finally:
        log.close()
        if live is not None:
            live.close()
    summary.session_id, summary.db, summary.sample, summary.operator = log.id, printable(db), sample, operator
    click.echo(format_summary(summary))
    if summary_json:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps(summary.to_json(), indent=1) + "\n")
    if summary.log_error:
        # the session ran, but its log stops short: one line, and not the exit of a complete session
        raise CliError(summary.log_error, EXIT_INPUTS_FAILED)
    # 1: a camera gave up, a video ended short or was damaged, no image was read
    if getattr(source, "failed", False) or getattr(source, "gave_up", False):
        raise InputsFailed()


COMMANDS = [classify, evaluate, models, capture, locate_eval_command, report_command, review_command]

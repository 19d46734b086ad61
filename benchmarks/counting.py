"""Counting benchmark (issue 26): does capture count each white cell once while a person moves
the stage? Scan simulations built from BCCD fields, ground truth from their WBC boxes.

    python -m benchmarks.counting                      # all scenarios, the bundled default model
    python -m benchmarks.counting --out benchmarks/results/counting   # writes .md and .json

The slide is a row of BCCD fields side by side (each 640x480, the camera's size), and the
camera's view is a 640x480 window moved over it frame by frame: resting on a field, moving to the
next with a motion smear as long as the shift between frames (a camera exposes for about its
frame interval), sweeping, cross-fading, coming back, vibrating, drifting out of focus, with a
dark and a blank frame. Camera noise (sigma 3.2) on every frame. Each frame goes through the same
code as `edge-bloodcls capture --mode field`: locate, then the counting core (counting.py) with
the edge runtime's classifier on the crops it asks for.

Truth: the WBC boxes of the fields the view rested on (or swept over). "stills" is what the same
pipeline counts from each of those fields seen once as a still image: the locator's own count, so
that counted - stills is what the scan adds. Cost: the counting core's own time per frame
(registration, sharpness, slide position, matching: everything but locate and the classifier),
one OpenCV thread, as CPU time of the thread (time.thread_time: the machine is shared, and wall
time would count the other processes), beside the interpreter's time per frame.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

import edge_bloodcls.edge_runtime.core.preprocess as pp
from edge_bloodcls.edge_runtime.capture.counting import CountingCore
from edge_bloodcls.edge_runtime.capture.locate import background, crop, default_rbc_px, locate
from edge_bloodcls.edge_runtime.capture.track import CellCounter, Observation
from edge_bloodcls.edge_runtime.core.bundle import load_bundle
from edge_bloodcls.edge_runtime.core.classifier import Classifier, Prediction
from edge_bloodcls.edge_runtime.core.preprocess import load_rgb, prepare
from edge_bloodcls.edge_runtime.core.spec import LABELS

from .machine import cpu_model

W, H = 640, 480
PAD = 24  # canvas margin, so a vibrating view never leaves the slide
CLEAN_SMEAR = 15.0  # px: a view smeared by less still shows its cells (0.15 red-cell diameters)
DEFAULT_BCCD = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "bccd"


@dataclass
class Shot:
    """One camera frame: where the view is on the canvas and what spoils it."""

    x: float
    y: float = PAD
    smear: float = 0.0  # horizontal motion smear, px
    sigma: float = 0.0  # defocus (Gaussian sigma, px)
    fade_to: float | None = None  # cross-fade towards the view at this x ...
    alpha: float = 0.0  # ... by this much
    special: str = ""  # "dark" (lamp flicker) or "blank" (no slide)


# --- the slide -----------------------------------------------------------------------------------


def wbc_boxes(bccd: Path, name: str) -> list[tuple[int, int, int, int]]:
    root = ET.parse(bccd / "Annotations" / f"{name}.xml").getroot()
    out = []
    for o in root.iter("object"):
        if (o.findtext("name") or "").strip() == "WBC":
            b = o.find("bndbox")
            assert b is not None
            out.append(tuple(int(float(b.findtext(k) or 0)) for k in ("xmin", "ymin", "xmax", "ymax")))
    return out  # type: ignore[return-value]


def pick_fields(bccd: Path, n: int, start: int = 0) -> list[str]:
    """n BCCD fields of the usual size with at least one WBC box, every 7th from `start`, so
    that the scenarios use different fields."""
    names = sorted(p.stem for p in (bccd / "JPEGImages").glob("*.jpg"))
    out = []
    for k in range(start, len(names) * 7, 7):
        name = names[k % len(names)]
        if name not in out and wbc_boxes(bccd, name):
            out.append(name)
        if len(out) == n:
            break
    return out


class Slide:
    def __init__(self, bccd: Path, names: list[str]):
        # OpenCV: the [edge] extra; only this step needs it
        import cv2

        self.names = names
        fields = []
        for nm in names:
            f = load_rgb(bccd / "JPEGImages" / f"{nm}.jpg")
            if f.shape[:2] != (H, W):
                f = cv2.resize(f, (W, H), interpolation=cv2.INTER_AREA)
            fields.append(f)
        self.fields = fields
        row = np.concatenate(fields, axis=1)
        self.canvas = cv2.copyMakeBorder(row, PAD, PAD, PAD, PAD, cv2.BORDER_REFLECT)
        self.boxes = [
            [(x0 + PAD + k * W, y0 + PAD, x1 + PAD + k * W, y1 + PAD) for x0, y0, x1, y1 in wbc_boxes(bccd, nm)]
            for k, nm in enumerate(names)
        ]

    def x(self, k: float) -> float:
        """Canvas x of the view resting on field k."""
        return PAD + k * W

    def truth(self, shots: list[Shot]) -> int:
        """WBC boxes wholly inside a clean (unsmeared, sharp, unfaded) view at least once."""
        seen = set()
        for s in shots:
            if s.smear > CLEAN_SMEAR or s.sigma > 0.5 or s.alpha > 0 or s.special:
                continue
            for k, bs in enumerate(self.boxes):
                for i, (x0, y0, x1, y1) in enumerate(bs):
                    if x0 >= s.x - 1 and x1 <= s.x + W + 1 and y0 >= s.y - 1 and y1 <= s.y + H + 1:
                        seen.add((k, i))
        return len(seen)

    def fields_visited(self, shots: list[Shot]) -> list[int]:
        """Fields wholly in a clean view at least once (for the stills reference)."""
        out = set()
        for s in shots:
            if s.smear > CLEAN_SMEAR or s.sigma > 0.5 or s.alpha > 0 or s.special:
                continue
            for k in range(len(self.fields)):
                if abs(s.x - self.x(k)) < 8:
                    out.add(k)
        return sorted(out)


class Camera:
    """Renders shots, with fresh noise on every frame (uniform integers -5..5, sigma 3.2: a
    fixed bank of noise frames would correlate with itself between frames, which no camera's
    shot noise does)."""

    def __init__(self, slide: Slide, seed: int = 0):
        self.slide = slide
        self.rng = np.random.default_rng(seed)

    def view(self, x: float, y: float) -> np.ndarray:
        xi, yi = int(round(x)), int(round(y))
        c = self.slide.canvas
        xi = min(max(xi, 0), c.shape[1] - W)
        yi = min(max(yi, 0), c.shape[0] - H)
        return c[yi : yi + H, xi : xi + W]

    def render(self, s: Shot) -> np.ndarray:
        # OpenCV: the [edge] extra; only this step needs it
        import cv2

        img: np.ndarray
        if s.special == "dark":
            img = np.full((H, W, 3), 12, np.float32)
        elif s.special == "blank":
            img = np.full((H, W, 3), (232, 226, 222), np.float32)
        else:
            img = self.view(s.x, s.y).astype(np.float32)
            if s.smear > 1:
                n = int(round(s.smear))
                # the smear of a view that moved by n px during the exposure
                k = np.full((1, n), 1.0 / n, np.float32)
                img = cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT)
            if s.fade_to is not None and s.alpha > 0:
                img = (1 - s.alpha) * img + s.alpha * self.view(s.fade_to, s.y).astype(np.float32)
            if s.sigma > 0.3:
                img = cv2.GaussianBlur(img, (0, 0), s.sigma)
        img = img + self.rng.integers(-5, 6, img.shape, dtype=np.int8)
        return np.clip(img, 0, 255).astype(np.uint8)


# --- scenarios: lists of shots -------------------------------------------------------------------


def _smooth(u: float) -> float:
    return u * u * (3 - 2 * u)


def rest(x: float, frames: int, jitter: float = 0.0, rng=None, sigma=None) -> list[Shot]:
    out = []
    for j in range(frames):
        dx = dy = 0.0
        if jitter and rng is not None:
            dx, dy = rng.uniform(-jitter, jitter, 2)
        s = Shot(x + dx, PAD + dy, smear=abs(dx) * 0.5 if jitter else 0.0)
        if sigma is not None:
            s.sigma = sigma(j / max(1, frames - 1))
        out.append(s)
    return out


def move(x0: float, x1: float, frames: int, smear: float = 1.0) -> list[Shot]:
    """From x0 to x1 in `frames` frames (not including x0), eased; smear = shift x `smear`."""
    out, prev = [], x0
    for j in range(1, frames + 1):
        x = x0 + (x1 - x0) * _smooth(j / frames)
        out.append(Shot(x, smear=abs(x - prev) * smear))
        prev = x
    return out


def stop_and_go(slide: Slide, fps: float, rest_s=1.5, move_s=0.3, **kw) -> list[Shot]:
    shots: list[Shot] = []
    n = len(slide.fields)
    for k in range(n):
        shots += rest(slide.x(k), max(1, round(rest_s * fps)), **kw)
        if k + 1 < n:
            shots += move(slide.x(k), slide.x(k + 1), max(1, round(move_s * fps)))
    return shots


def scenarios(bccd: Path, fps_list=(5, 15, 30)) -> list[tuple[str, str, Slide, list[Shot], float]]:
    """(name, what, slide, shots, fps)."""
    out = []
    s20 = Slide(bccd, pick_fields(bccd, 20, 0))
    s12 = Slide(bccd, pick_fields(bccd, 12, 3))
    s3 = Slide(bccd, pick_fields(bccd, 3, 5))
    s8 = Slide(bccd, pick_fields(bccd, 8, 1))
    rng = np.random.default_rng(1)
    fps = 15.0
    shots: list[Shot] = []
    for k in range(len(s20.fields)):  # held fields, cut from one to the next (a folder, a video)
        shots += rest(s20.x(k), 10)
    out.append(("still fields", "20 fields, 10 frames each, cut between them", s20, shots, fps))
    for f in fps_list:
        out.append(
            (
                f"stop-and-go {f:g} fps",
                "20 fields: rest 1.5 s, move to the next in 0.3 s (smeared)",
                s20,
                stop_and_go(s20, f),
                float(f),
            )
        )
    speed = 100.0  # px/s
    shots = []
    x0, x1 = s12.x(0), s12.x(len(s12.fields) - 1)
    shots += rest(x0, 5)
    n = int((x1 - x0) / speed * fps)
    shots += move(x0, x1, n, smear=1.0)
    shots += rest(x1, 5)
    out.append(("continuous sweep", f"12 fields swept at {speed:g} px/s (smear {speed / fps:.0f} px)", s12, shots, fps))
    shots = []
    for k in range(len(s12.fields)):
        shots += rest(s12.x(k), 20)
        if k + 1 < len(s12.fields):
            nf = 8
            shots += [Shot(s12.x(k), fade_to=s12.x(k + 1), alpha=(j + 1) / (nf + 1)) for j in range(nf)]
    out.append(("cross-fades", "12 fields, 8-frame cross-fade from each to the next", s12, shots, fps))
    shots = []
    order = [0, 1, 2, 1, 0]
    for a, b in zip(order, order[1:]):
        shots += rest(s3.x(a), 15)
        shots += move(s3.x(a), s3.x(b), int(W / 60 * 1), smear=0.3)  # 60 px/frame, short exposure
    shots += rest(s3.x(0), 15)
    out.append(("revisits, pan", "A->B->C->B->A, slow sharp pan (60 px/frame, smear 18 px)", s3, shots, fps))
    shots = []
    order = [0, 1, 2, 1, 0, 2, 0]
    for a, b in zip(order, order[1:]):
        shots += rest(s3.x(a), 15)
        shots += move(s3.x(a), s3.x(b), 5)
    shots += rest(s3.x(0), 15)
    out.append(("revisits, jumps", "A->B->C->B->A->C->A, fast smeared moves (chain breaks)", s3, shots, fps))
    out.append(
        (
            "vibration at rest",
            "8 fields, stop-and-go; +-4 px shake every frame at rest",
            s8,
            stop_and_go(s8, fps, jitter=4.0, rng=rng),
            fps,
        )
    )
    drift = lambda u: 3.5 * np.sin(np.pi * u) ** 2  # noqa: E731  sharp, out to sigma 3.5 px, back
    out.append(
        (
            "focus drift",
            "8 fields, stop-and-go; focus drifts out (sigma 3.5 px) and back at each rest",
            s8,
            stop_and_go(s8, fps, rest_s=3.0, sigma=drift),
            fps,
        )
    )
    shots = stop_and_go(s8, fps)
    for j in range(10, len(shots), 25):
        shots[j] = Shot(shots[j].x, special="dark")
    shots[len(shots) // 2] = Shot(0, special="blank")
    out.append(
        ("dark / blank frames", "8 fields, stop-and-go; a dark frame every 25 frames, one blank", s8, shots, fps)
    )
    return out


# --- running a scenario ----------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    what: str
    fps: float
    frames: int
    truth: int
    stills: int  # counted from each visited field as one still image
    counted: int
    wbc: int  # counted with a white-cell label
    error_pct: float  # (counted - truth) / truth
    segments: int
    seen_again: int
    states: dict
    core_ms_mean: float
    core_ms_p95: float
    position_ms_mean: float
    interpreter_ms_per_frame: float


def make_classify(clf) -> tuple[Callable, dict[str, float]]:
    state = {"interp_ms": 0.0}

    def for_frame(index: int, rgb: np.ndarray, rbc_px: float):
        fill = background(rgb)

        def classify(dets):
            obs = []
            for d in dets:
                patch = crop(rgb, d, rbc_px, fill)
                pred = clf.classify_input(prepare(patch, clf.spec), 3)
                state["interp_ms"] += pred.latency_ms
                obs.append(Observation(index, d.box, np.array([pred.probs[k] for k in clf.labels]), pred, patch))
            return obs

        return classify

    return for_frame, state


def run_scenario(name, what, slide: Slide, shots: list[Shot], fps: float, clf) -> Row:
    cam = Camera(slide)
    rbc_px = default_rbc_px((H, W))
    core = CountingCore(clf.labels, clf.review_threshold, rbc_px)
    counter = CellCounter(clf.labels, clf.review_threshold)
    for_frame, st = make_classify(clf)
    core_ms, pos_ms = [], []
    orig_update = core.position.update

    def timed_update(rgb):
        t0 = time.thread_time()
        r = orig_update(rgb)
        pos_ms.append((time.thread_time() - t0) * 1000)
        return r

    core.position.update = timed_update  # type: ignore[method-assign]
    for i, s in enumerate(shots):
        rgb = cam.render(s)
        dets = locate(rgb, rbc_px)
        t_cls = [0.0]
        classify = for_frame(i, rgb, rbc_px)

        def timed_classify(d, classify=classify, t_cls=t_cls):
            t0 = time.thread_time()
            r = classify(d)
            t_cls[0] += (time.thread_time() - t0) * 1000
            return r

        t0 = time.thread_time()
        step = core.step(i, i / fps, rgb, dets, timed_classify)
        core_ms.append((time.thread_time() - t0) * 1000 - t_cls[0])
        counter.take(step.counted)
    counter.take(core.flush())
    # the reference: each visited field once, as a still image, through the same pipeline
    ref = CountingCore(clf.labels, clf.review_threshold, rbc_px)
    for_frame_ref, _ = make_classify(clf)
    stills = 0
    for j, k in enumerate(slide.fields_visited(shots)):
        img = slide.fields[k]
        stills += len(ref.step(j, float(j), img, locate(img, rbc_px), for_frame_ref(j, img, rbc_px)).counted)
        ref.position.force_new = True
    stills += len(ref.flush())
    truth = slide.truth(shots)
    counted = sum(counter.diff.counts.values())
    return Row(
        name,
        what,
        fps,
        len(shots),
        truth,
        stills,
        counted,
        counter.diff.wbc,
        round(100.0 * (counted - truth) / truth, 1) if truth else 0.0,
        core.segments,
        core.stats.seen_again,
        dict(core.stats.states),
        round(float(np.mean(core_ms)), 3),
        round(float(np.percentile(core_ms, 95)), 3),
        round(float(np.mean(pos_ms)), 3),
        round(st["interp_ms"] / len(shots), 3),
    )


class _NoModel:
    """--no-model: every located cell is a 'neutrophil' at 0.95 (counting only, in seconds)."""

    review_threshold = 0.5

    def __init__(self):
        self.labels = list(LABELS)
        self.spec = None

    def classify_input(self, x, top_k):
        probs = {k: 0.05 / 7 for k in self.labels}
        probs["neutrophil"] = 0.95
        return Prediction("neutrophil", 0.95, probs, 0.0, False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.counting", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bccd", type=Path, default=DEFAULT_BCCD, help="BCCD folder (JPEGImages, Annotations)")
    ap.add_argument("--out", type=Path, help="write OUT.md and OUT.json")
    ap.add_argument("--model", help="bundle (default: the bundled default model)")
    ap.add_argument("--no-model", action="store_true", help="count without classifying (fast)")
    ap.add_argument("--only", help="run the scenarios whose name contains this")
    args = ap.parse_args(argv)
    # OpenCV: the [edge] extra; only this step needs it
    import cv2

    cv2.setNumThreads(1)  # the cost is reported for one thread
    bccd = args.bccd.resolve()
    if not (bccd / "JPEGImages").is_dir() or not (bccd / "Annotations").is_dir():
        print(f"{bccd}: not a BCCD folder (JPEGImages/ and Annotations/ expected)", file=sys.stderr)
        return 2
    if args.no_model:
        clf: _NoModel | Classifier = _NoModel()
        pp_prepare = pp.prepare

        def prepare(patch, spec):
            return patch if spec is None else pp_prepare(patch, spec)

        pp.prepare = prepare  # type: ignore[assignment]
        model = "none (--no-model)"
    else:
        classifier = Classifier(load_bundle(args.model), threads=1)
        model = classifier.describe().get("model", "")
        clf = classifier
    rows = []
    t0 = time.perf_counter()
    for name, what, slide, shots, fps in scenarios(bccd):
        if args.only and args.only not in name:
            continue
        r = run_scenario(name, what, slide, shots, fps, clf)
        rows.append(r)
        print(
            f"{r.scenario:<22} truth {r.truth:>3} stills {r.stills:>3} counted {r.counted:>3} ({r.error_pct:+.1f} %) "
            f"segments {r.segments:>3} seen again {r.seen_again:>4} core {r.core_ms_mean:.2f} ms "
            f"(p95 {r.core_ms_p95:.2f}) interpreter {r.interpreter_ms_per_frame:.1f} ms/frame {r.states}",
            flush=True,
        )
    wall = time.perf_counter() - t0
    cmd = (
        "python -m benchmarks.counting"
        + (" --no-model" if args.no_model else "")
        + (f" --out {args.out}" if args.out else "")
    )
    meta = {
        "command": cmd,
        "model": model,
        "machine": cpu_model(),
        "python": platform.python_version(),
        "opencv": cv2.__version__,
        "threads": 1,
        "wall_s": round(wall, 1),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"meta": meta, "rows": [asdict(r) for r in rows]}
        args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(to_markdown(meta, rows))
    return 0


def to_markdown(meta: dict, rows: list[Row]) -> str:
    worst = max((abs(r.error_pct) for r in rows), default=0.0)
    lines = [
        "# Counting benchmark (issue 26)",
        "",
        f"Made by `{meta['command']}` ({meta['wall_s']:.0f} s) on {meta['machine']}, Python {meta['python']}, "
        f"OpenCV {meta['opencv']}, one thread; model: {meta['model']}.",
        "",
        "Truth: WBC boxes of the BCCD fields the view rested on or swept over; stills: what the same pipeline "
        "counts from each of those fields seen once as a still image; counted: cells counted from the scan "
        "(wbc: of them with a white-cell label). Core: the counting core's own time per frame at 640x480 "
        "(registration, sharpness, slide position, matching; not locate, not the model).",
        "",
        "| scenario | frames | fps | truth | stills | counted | error | wbc | segments | seen again | "
        "core ms/frame (p95) | interpreter ms/frame |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.scenario} | {r.frames} | {r.fps:g} | {r.truth} | {r.stills} | {r.counted} | "
            f"{r.error_pct:+.1f} % | {r.wbc} | {r.segments} | {r.seen_again} | {r.core_ms_mean:.2f} "
            f"({r.core_ms_p95:.2f}) | {r.interpreter_ms_per_frame:.1f} |"
        )
    lines += ["", f"Largest error: {worst:.1f} % of the truth.", "", "Scenarios:", ""]
    lines += [f"- **{r.scenario}**: {r.what}." for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

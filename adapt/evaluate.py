"""Honest figures for `adapt`: labelled cells scored as `capture` sees them, accuracy and balanced
accuracy with confidence intervals, and the site's class proportions (Saerens et al. 2002).

No TensorFlow here: the functions take pixels and probabilities, so the same code scores a Keras
model in scripts/adapt_experiments.py and an int8 bundle through the runtime.

Capture's view of a labelled crop: a labelled crop is a box cut from a field (BCCD's crops name
their field: `BloodImage_00008_1.jpg` is a cell of `BloodImage_00008.jpg`). The crop is found in
its field (template matching), the field goes through capture's own `locate`, the located box that
overlaps the crop most is taken, and it is cut with capture's `crop` and fill. A cell `locate`
does not find is one capture never classifies: it is counted apart (`missed`), not guessed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge_bloodcls.edge_runtime.capture.locate import background, default_rbc_px, iou, locate
from edge_bloodcls.edge_runtime.capture.locate import crop as capture_crop_of
from edge_bloodcls.edge_runtime.core.images import list_images
from edge_bloodcls.edge_runtime.core.preprocess import ImageError, load_rgb

# A located box must overlap the labelled box this much to be "the same cell" (capture's boxes
# come from the nucleus grown by a margin, so they are looser than a hand-drawn box).
MATCH_IOU = 0.3
# Template-matching score below which the crop is taken not to come from that field.
MATCH_SCORE = 0.95


def field_stem(name: str) -> str:
    """`.../BloodImage_00008_1.jpg` -> `BloodImage_00008` (the field a crop was cut from)."""
    stem = Path(str(name).split("#", 1)[0]).stem
    return stem.rsplit("_", 1)[0] if "_" in stem else stem


def index_fields(folder) -> dict[str, Path]:
    """Field images of a folder by stem (only those a crop name can point to)."""
    if folder is None or not Path(folder).is_dir():
        return {}
    return {p.stem: p for p in list_images(folder).files}


@dataclass
class CaptureView:
    crop: np.ndarray | None  # capture's crop of the cell (None: not found in its field, or not located)
    field: str | None  # the field's stem
    box: tuple[int, int, int, int] | None  # where the labelled crop lies in its field
    located_box: tuple[int, int, int, int] | None
    iou: float = 0.0
    why: str = ""  # why crop is None


def find_in_field(field_rgb: np.ndarray, tight: np.ndarray) -> tuple[tuple[int, int, int, int], float] | None:
    import cv2  # OpenCV, the [edge] extra: loaded when an image is resized or located

    h, w = tight.shape[:2]
    if h > field_rgb.shape[0] or w > field_rgb.shape[1]:
        return None
    score = cv2.matchTemplate(field_rgb, tight, cv2.TM_CCOEFF_NORMED)
    _, best, _, (x, y) = cv2.minMaxLoc(score)
    return (x, y, x + w, y + h), float(best)


def capture_view(
    tight: np.ndarray, name: str, fields: dict[str, Path], rbc_px: float | None = None, cache: dict | None = None
) -> CaptureView:
    """The crop capture makes of a labelled cell in its own field (see the module docstring)."""
    stem = field_stem(name)
    path = fields.get(stem)
    if path is None:
        return CaptureView(None, None, None, None, why="its field is not in the folder")
    cache = {} if cache is None else cache
    if stem not in cache:
        try:
            rgb = load_rgb(path)
        except ImageError as e:
            cache[stem] = (None, None, e.reason)
        else:
            r = rbc_px or default_rbc_px(rgb.shape)
            cache[stem] = (rgb, locate(rgb, r), r)
    rgb, dets, r = cache[stem]
    if rgb is None:
        return CaptureView(None, stem, None, None, why=f"field unreadable ({r})")
    found = find_in_field(rgb, tight)
    if found is None or found[1] < MATCH_SCORE:
        return CaptureView(None, stem, None, None, why="the crop is not part of that field")
    box = found[0]
    scored = sorted(((iou(d.box, box), d) for d in dets), key=lambda t: -t[0])
    if not scored or scored[0][0] < MATCH_IOU:
        return CaptureView(None, stem, box, None, why="capture's locate does not find this cell")
    o, det = scored[0]
    return CaptureView(capture_crop_of(rgb, det, r, background(rgb)), stem, box, det.box, float(o))


def capture_views(images, names, fields_folder, rbc_px: float | None = None) -> list[CaptureView]:
    fields = index_fields(fields_folder)
    cache: dict = {}
    return [capture_view(i, n, fields, rbc_px, cache) for i, n in zip(images, names)]


# --- figures with intervals --------------------------------------------------------------------


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


@dataclass
class Estimate:
    n: int
    accuracy: float
    accuracy_ci: tuple[float, float]  # Wilson 95%
    balanced_accuracy: float  # mean recall over the classes with >= min_cells cells
    balanced_ci: tuple[float, float]  # stratified bootstrap 95% (percentile)
    balanced_classes: list[str]
    per_class: dict[str, dict]  # label -> {"right", "n"}
    missed: int = 0  # labelled cells capture never classifies (not located); not in n
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d["accuracy_ci"], d["balanced_ci"] = list(self.accuracy_ci), list(self.balanced_ci)
        return d

    def line(self) -> str:
        a, b = self.accuracy_ci, self.balanced_ci
        return (
            f"accuracy {self.accuracy:.1%} [{a[0]:.1%}, {a[1]:.1%}], balanced {self.balanced_accuracy:.1%} "
            f"[{b[0]:.1%}, {b[1]:.1%}] on {self.n} cells"
            + (f" ({self.missed} not located)" if self.missed else "")
            + "; "
            + ", ".join(f"{c} {v['right']}/{v['n']}" for c, v in self.per_class.items())
        )


def estimate(y, pred, labels, min_cells: int = 5, boot: int = 2000, seed: int = 0, missed: int = 0) -> Estimate:
    """Accuracy (Wilson interval) and balanced accuracy over classes with >= min_cells cells
    (stratified bootstrap: each class resampled within itself, as the class counts are fixed by
    the sample's design)."""
    y, pred = np.asarray(y), np.asarray(pred)
    right = pred == y
    k, n = int(right.sum()), int(len(y))
    classes = [c for c in np.unique(y) if (y == c).sum() >= min_cells]
    per = {labels[c]: {"right": int(right[y == c].sum()), "n": int((y == c).sum())} for c in np.unique(y)}
    bal = float(np.mean([right[y == c].mean() for c in classes])) if classes else float("nan")
    rng = np.random.default_rng(seed)
    if classes:
        draws = np.stack([rng.choice(right[y == c], size=(boot, int((y == c).sum()))).mean(1) for c in classes])
        bs = draws.mean(0)
        bci = (float(np.percentile(bs, 2.5)), float(np.percentile(bs, 97.5)))
    else:
        bci = (float("nan"), float("nan"))
    return Estimate(n, k / n if n else float("nan"), wilson(k, n), bal, bci, [labels[c] for c in classes], per, missed)


# --- the site's class proportions --------------------------------------------------------------


def em_priors(
    probs: np.ndarray, train_prior: np.ndarray, iters: int = 200, tol: float = 1e-6, floor: float = 1e-4
) -> np.ndarray:
    """Saerens, Latinne & Decaestecker (2002): the class proportions of an unlabelled sample, by
    EM on the classifier's posteriors (re-weight each posterior by new/old prior, renormalise,
    average). `floor` keeps a class the sample lacks from reaching exactly zero (log of it)."""
    p = np.asarray(probs, np.float64)
    prior0 = np.asarray(train_prior, np.float64) / np.sum(train_prior)
    prior = prior0.copy()
    for _ in range(iters):
        q = adjust(p, prior0, prior)
        new = np.maximum(q.mean(0), floor)
        new /= new.sum()
        if np.abs(new - prior).max() < tol:
            prior = new
            break
        prior = new
    return prior


def adjust(probs: np.ndarray, train_prior: np.ndarray, new_prior: np.ndarray) -> np.ndarray:
    """Posteriors under other class proportions: p(y|x) new_prior(y) / train_prior(y), renormalised."""
    w = np.asarray(new_prior, np.float64) / np.maximum(np.asarray(train_prior, np.float64), 1e-12)
    q = np.asarray(probs, np.float64) * w
    return q / q.sum(1, keepdims=True)


def log_prior_shift(train_prior: np.ndarray, new_prior: np.ndarray) -> np.ndarray:
    """What to add to the logits (the output layer's bias) so the network itself answers under the
    new proportions: softmax(z + log new/old) = adjust(softmax(z), old, new)."""
    return np.log(np.maximum(new_prior, 1e-12)) - np.log(np.maximum(train_prior, 1e-12))

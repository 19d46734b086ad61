"""The inputs of `adapt`: labelled local cells (class folders or a reviewed session log),
unlabelled local fields or crops, and the framing that makes them look like capture's crops.

Everything comes back as RGB uint8 arrays in memory (about 50 cells and a few hundred crops):
nothing is written beside the user's data. Unreadable inputs are skipped, one line each, and
counted; an input that leaves nothing to learn from is an AdaptInputError (exit 2).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_bloodcls.edge_runtime.capture.locate import (
    CROP_PER_CELL,
    CROP_PER_RBC,
    Detection,
    crop,
    default_rbc_px,
    locate,
)
from edge_bloodcls.edge_runtime.core.bundle import BundleError, load_bundle
from edge_bloodcls.edge_runtime.core.images import list_class_images, list_images, printable
from edge_bloodcls.edge_runtime.core.preprocess import ImageError, load_rgb
from edge_bloodcls.edge_runtime.lab.store import SessionFileError, SessionStore

from .evaluate import field_stem


class AdaptInputError(ValueError):
    """Inputs adapt cannot start from; str() is one line (exit 2)."""


DEFAULT_BASE = Path("runs/mobilenetv2_160_ft/model.keras")


def resolve_base(model) -> Path:
    """A .keras model, or a bundle whose manifest names the Keras model it was exported from."""
    if model is None:
        here = DEFAULT_BASE if DEFAULT_BASE.exists() else Path(__file__).resolve().parents[1] / DEFAULT_BASE
        if not here.exists():
            raise AdaptInputError(f"no --model given and the default base {DEFAULT_BASE} is not here")
        return here
    p = Path(model)
    if p.suffix == ".keras":
        if not p.is_file():
            raise AdaptInputError(f"{printable(p)}: no such model")
        return p
    try:
        b = load_bundle(model)
    except BundleError as e:
        raise AdaptInputError(str(e)) from None
    src = Path((b.manifest.get("source_model") or {}).get("path", ""))
    if src.suffix != ".keras" or not src.is_file():
        raise AdaptInputError(
            f"{b.name}: the Keras model it was exported from ({src or 'not recorded'}) is not "
            "here; pass --model PATH/model.keras"
        )
    return src


def framing_of(framing: str, labelled, cells) -> str:
    if framing != "auto":
        return framing
    if Path(labelled).is_file():
        return "capture"  # a session log stores capture's own crops
    # Capture's crops are square; a folder of boxes cut around cells usually is not.
    return "capture" if all(i.shape[0] == i.shape[1] for i in cells.images) else "tight"


def pbc_split(split, src) -> Path:
    """The PBC split to mix in: --split, the base model's, or runs/split.csv."""
    for p in ([split] if split else []) + [src.split_csv, "runs/split.csv"]:
        if p and Path(p).is_file():
            return Path(p)
        if p and (src.path.parent.parent / Path(p).name).is_file():
            return src.path.parent.parent / Path(p).name
    raise AdaptInputError("no PBC split to mix in: pass --split runs/split.csv (and --data-root)")


@dataclass
class Cells:
    images: list[np.ndarray]  # RGB uint8, any size
    labels: np.ndarray  # indices into the model's labels
    names: list[str]  # file paths, or "SESSION.db#cell<id>"
    sha256: list[str]  # of the file bytes (the crop JPEG for a session log)
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_labelled(source, labels, log=print) -> Cells:
    """A class-folder directory (folders named as the model's labels) or a SESSION.db whose
    cells were reviewed (`edge-bloodcls review`): the reviewed label and the stored crop."""
    p = Path(source)
    if p.is_dir():
        cells = _from_dir(p, labels)
    elif p.is_file():
        cells = _from_session(p, labels)
    else:
        raise AdaptInputError(f"{printable(p)}: no such folder or session log")
    for name, reason in cells.skipped:
        log(f"skipped {printable(name)}: {reason}")
    if not cells.images:
        raise AdaptInputError(
            f"{printable(p)}: no readable labelled cells"
            + (f" ({len(cells.skipped)} unreadable)" if cells.skipped else "")
        )
    return cells


def _from_dir(root: Path, labels) -> Cells:
    listing = list_class_images(root, labels)
    if listing.unknown:
        raise AdaptInputError(
            f"{printable(root)}: folders {', '.join(map(printable, listing.unknown))} are not "
            f"labels of the model ({', '.join(labels)})"
        )
    if not listing.files and not listing.errors:
        raise AdaptInputError(f"{printable(root)}: no class folders named as the model's labels ({', '.join(labels)})")
    out = Cells([], np.zeros(0, np.int64), [], [], str(root), skipped=list(listing.errors))
    ys = []
    for path, label in listing.items():
        try:
            data = path.read_bytes()
            img = load_rgb(data, name=str(path))
        except ImageError as e:
            out.skipped.append((str(path), e.reason))
            continue
        except OSError as e:
            out.skipped.append((str(path), f"cannot read file ({e.strerror or e})"))
            continue
        out.images.append(img)
        ys.append(labels.index(label))
        out.names.append(str(path))
        out.sha256.append(_sha(data))
    out.labels = np.asarray(ys, np.int64)
    return out


def source_fields(source) -> set[str]:
    """Stems of the field images a labelled source's cells were cut from: a class folder's crops
    are named FIELD_N.jpg (evaluate.field_stem), a session log's reviewed cells name their frames
    and the crop files capture saved of them (--save-crops). adapt leaves these fields and crops
    out of its unlabelled ones when the source validates it."""
    p = Path(source)
    if p.is_dir():
        return {field_stem(f.name) for f in p.rglob("*") if f.is_file()}
    if p.is_file():
        return {Path(n).stem for n in _read_session(p, SessionStore.reviewed_sources)}
    return set()  # reported when the cells are read


def _read_session(path: Path, read: Callable[[SessionStore], list]) -> list:
    """One of the store's reads of a session log, its errors as one line (exit 2). The store asks
    SQLite, not the file's bytes, whether it is a log, and upgrades an older one first."""
    try:
        with SessionStore(path) as store:
            return read(store)
    except SessionFileError as e:
        msg = str(e)
        if "not an SQLite database" in msg:
            raise AdaptInputError(f"{printable(path)}: neither a folder nor a session log (not SQLite)") from None
        raise AdaptInputError(msg) from None


def _from_session(path: Path, labels) -> Cells:
    """Cells a technologist reviewed in a capture log: the reviewed label and the stored crop."""
    rows = _read_session(path, SessionStore.reviewed_crops)
    unknown = sorted({r[1] for r in rows} - set(labels))
    if unknown:
        raise AdaptInputError(
            f"{printable(path)}: reviewed labels {', '.join(unknown)} are not labels of the model ({', '.join(labels)})"
        )
    out = Cells([], np.zeros(0, np.int64), [], [], str(path))
    ys = []
    for cid, label, jpeg in rows:
        name = f"{path}#cell{cid}"
        if not jpeg:
            out.skipped.append((name, "no crop stored (capture ran without crops)"))
            continue
        try:
            img = load_rgb(bytes(jpeg), name=name)
        except ImageError as e:
            out.skipped.append((name, e.reason))
            continue
        out.images.append(img)
        ys.append(labels.index(label))
        out.names.append(name)
        out.sha256.append(_sha(bytes(jpeg)))
    out.labels = np.asarray(ys, np.int64)
    if not rows:
        raise AdaptInputError(
            f"{printable(path)}: no reviewed cells in this session log; review some first (`edge-bloodcls review`)"
        )
    return out


def border_colour(img: np.ndarray) -> np.ndarray:
    """Median colour of the outermost pixels: the slide background around a tight box."""
    edge = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    return np.median(edge, axis=0).astype(np.uint8)


def reframe_tight(img: np.ndarray, rbc_px: float) -> np.ndarray:
    """A tight box around one cell -> the square crop capture would make of it (locate.crop: side
    max(3.9 red cells, 1.4 x the box)), padded with the crop's own border colour."""
    h, w = img.shape[:2]
    side = int(round(max(CROP_PER_RBC * rbc_px, CROP_PER_CELL * max(h, w))))
    out = np.empty((side, side, 3), np.uint8)
    out[:] = border_colour(img)
    y0, x0 = (side - h) // 2, (side - w) // 2
    out[y0 : y0 + h, x0 : x0 + w] = img
    return out


@dataclass
class Unlabelled:
    crops: list[np.ndarray]
    fields: int = 0
    crop_files: int = 0
    rbc_px: float | None = None  # of the fields (default_rbc_px), for reframing tight crops
    # Local neighbourhoods for pasting tight crops into (see paste): a wide crop around a located
    # white cell and that cell's box side, both in field pixels.
    backgrounds: list[tuple[np.ndarray, int]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def is_field(img: np.ndarray) -> bool:
    """Capture's crops are square; a camera frame is not (4:3, 16:9)."""
    h, w = img.shape[:2]
    return max(h, w) > 1.15 * min(h, w)


def load_unlabelled(
    folder,
    rbc_px: float | None = None,
    max_crops: int = 600,
    max_backgrounds: int = 160,
    log=print,
    exclude=frozenset(),
) -> Unlabelled:
    """Crops of the white cells in local fields (located as capture locates them) and local crops
    as they are, in file order, until max_crops. Files whose stem is in `exclude` are left out
    (the fields of held-out validation cells)."""
    listing = list_images(folder)
    out = Unlabelled([], skipped=list(listing.errors))
    if not listing.files:
        raise AdaptInputError(f"{printable(folder)}: no images in the unlabelled folder")
    for path in listing.files:
        if len(out.crops) >= max_crops:
            break
        if path.stem in exclude:
            continue
        try:
            img = load_rgb(path)
        except ImageError as e:
            out.skipped.append((str(path), e.reason))
            continue
        if is_field(img):
            r = rbc_px or default_rbc_px(img.shape)
            out.rbc_px = out.rbc_px or r
            out.fields += 1
            for det in locate(img, r):
                out.crops.append(crop(img, det, r))
                if len(out.backgrounds) < max_backgrounds:
                    out.backgrounds.append(_wide(img, det, r))
        else:
            out.crop_files += 1
            out.crops.append(img)
    for name, reason in out.skipped:
        log(f"skipped {printable(name)}: {reason}")
    return out


# Wide enough for the largest box capture frames at 1.4x (a cell 1.2 x 3.9 red cells across).
WIDE_PER_RBC = 1.2 * CROP_PER_RBC


def _wide(img: np.ndarray, det: Detection, rbc_px: float) -> tuple[np.ndarray, int]:
    """A crop around a located cell as capture cuts it (outside the frame filled alike), but
    WIDE_PER_RBC red cells across, and the cell's box side."""
    (cx, cy), half = det.center, WIDE_PER_RBC * rbc_px / CROP_PER_CELL / 2
    box = (int(round(cx - half)), int(round(cy - half)), int(round(cx + half)), int(round(cy + half)))
    x0, y0, x1, y1 = det.box
    wide = crop(img, Detection(box, box, 0.0, 0.0), rbc_px)
    side = int(round(WIDE_PER_RBC * rbc_px))
    if wide.shape[0] != side:  # box rounding: one pixel either way, so all stack alike
        import cv2  # OpenCV, the [edge] extra: loaded when an image is resized or located

        wide = cv2.resize(wide, (side, side), interpolation=cv2.INTER_LINEAR)
    return wide, max(x1 - x0, y1 - y0)


def paste(img: np.ndarray, rbc_px: float, backgrounds, rng) -> np.ndarray:
    """A tight box around one cell -> capture's crop of it with a real local neighbourhood: the
    box is pasted (edges feathered) over the white cell of a background from the site's own
    fields whose cell is no larger than the box, so the red cells, their density and the slide's
    background around it are the site's, not a flat border colour (what reframe_tight gives).
    On bccd_site (held-out cells cut from their own fields) it lifted 5-fold accuracy from 75.6 to
    78.0% over padding (scripts/adapt_experiments.py: default vs pasted)."""
    h, w = img.shape[:2]
    side = int(round(max(CROP_PER_RBC * rbc_px, CROP_PER_CELL * max(h, w))))
    fits = [b for b, s in backgrounds if s <= 0.9 * max(h, w)] or [min(backgrounds, key=lambda t: t[1])[0]]
    bg = fits[rng.integers(len(fits))]
    if bg.shape[0] < side:
        import cv2  # OpenCV, the [edge] extra: loaded when an image is resized or located

        bg = cv2.resize(bg, (side, side), interpolation=cv2.INTER_LINEAR)
    o = (bg.shape[0] - side) // 2
    out = bg[o : o + side, o : o + side].astype(np.float32)
    ramp = max(2, int(0.06 * min(h, w)))  # a soft seam: the box's own background fades into the field's
    ay = np.clip(np.minimum(np.arange(h), np.arange(h)[::-1]) / ramp, 0, 1)
    ax = np.clip(np.minimum(np.arange(w), np.arange(w)[::-1]) / ramp, 0, 1)
    a = (ay[:, None] * ax[None, :])[..., None]
    y0, x0 = (side - h) // 2, (side - w) // 2
    out[y0 : y0 + h, x0 : x0 + w] = a * img + (1 - a) * out[y0 : y0 + h, x0 : x0 + w]
    return np.round(out).astype(np.uint8)

"""Representative data for full-integer quantization, and the checks that it is the right data.

Calibration images come from the TRAINING split (or a class-folder directory), stratified by
class, and go through edge_runtime.core.preprocess.prepare with the model's InputSpec: the ranges
the converter measures are those of the pixels the runtime will feed the model. A calibration
set prepared any other way (0..1 scaling, BGR, unnormalised) quantizes the input tensor to a
range the runtime's pixels fall outside of; `input_coverage` measures exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_bloodcls.edge_runtime.core.images import list_class_images, printable
from edge_bloodcls.edge_runtime.core.preprocess import ImageError, normalise, prepare, probe
from edge_bloodcls.edge_runtime.core.spec import LABELS, InputSpec
from edge_bloodcls.train.data import read_split

DEFAULT_SAMPLES = 300
MIN_COVERAGE = 0.75  # of the spec's input range that the quantized input must represent


@dataclass
class ImageSet:
    paths: list[Path]
    labels: np.ndarray
    source: str  # what to record: "split.csv:train" or a directory
    split_sha256: str | None = None
    info: dict = field(default_factory=dict)


def from_split(csv_path, split: str = "train", data_root=None) -> ImageSet:
    s = read_split(csv_path, data_root)
    paths, labels = s.items(split)
    if not paths:
        raise ValueError(f"{csv_path}: the {split} split is empty")
    return ImageSet(paths, labels, f"{Path(csv_path).name}:{split}", s.sha256, {"root": str(s.root)})


def from_directory(root) -> ImageSet:
    """root/<label>/..., labels from LABELS (folders with other names are an error).

    The files are those `edge-bloodcls evaluate` reads (edge_runtime.core.images.list_class_images).
    A folder that cannot be read is an error: the set would silently lack it. A file that is not
    an image by its header (a stray ".DS_…jpg", an AppleDouble "._x.jpg") is left out and listed
    in info["unreadable"]; evaluate reports the same files as failed.
    """
    root = Path(root)
    listing = list_class_images(root, LABELS)
    if listing.errors:
        shown = "; ".join(f"{printable(p)}: {reason}" for p, reason in listing.errors[:3])
        more = f" (and {len(listing.errors) - 3} more)" if len(listing.errors) > 3 else ""
        raise ValueError(f"{root}: cannot read {shown}{more}")
    if listing.unknown:
        raise ValueError(f"{root}: folders {listing.unknown} are not labels of the model ({', '.join(LABELS)})")
    paths, labels, unreadable = [], [], []
    for path, label in listing.items():
        try:
            probe(path)
        except ImageError as e:
            unreadable.append([str(path), e.reason])
            continue
        paths.append(path)
        labels.append(LABELS.index(label))
    if not paths:
        raise ValueError(f"{root}: no images in class folders")
    return ImageSet(paths, np.asarray(labels, np.int64), str(root), info={"unreadable": unreadable})


def image_set(source, split: str = "train", data_root=None) -> ImageSet:
    """A split CSV (its `split` rows) or a class-folder directory."""
    p = Path(source)
    if p.is_dir():
        return from_directory(p)
    if p.is_file():
        return from_split(p, split, data_root)
    raise FileNotFoundError(f"{source}: neither a split CSV nor a directory")


def stratified(labels: np.ndarray, n: int | None, seed: int = 0) -> np.ndarray:
    """Indices of about n items in the classes' proportions, every class present; sorted."""
    labels = np.asarray(labels)
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    # Largest remainder: proportional shares that sum to n, at least one per class.
    share = counts / counts.sum() * n
    take = np.maximum(1, np.floor(share)).astype(int)
    for i in np.argsort(-(share - np.floor(share))):
        if take.sum() >= n:
            break
        take[i] += 1
    take = np.minimum(take, counts)
    out = [rng.choice(np.flatnonzero(labels == c), k, replace=False) for c, k in zip(classes, take)]
    return np.sort(np.concatenate(out))


def sample(images: ImageSet, n: int | None, seed: int = 0) -> ImageSet:
    idx = stratified(images.labels, n, seed)
    return ImageSet([images.paths[i] for i in idx], images.labels[idx], images.source, images.split_sha256, images.info)


def load_samples(images: ImageSet, spec: InputSpec) -> np.ndarray:
    """The runtime's own preprocessing of every calibration file -> float32 (N, H, W, 3)."""
    return np.stack([prepare(str(p), spec) for p in images.paths]).astype(np.float32)


def representative(samples: np.ndarray):
    """The converter's representative_dataset: one image a step, batch of one."""

    def gen():
        for x in samples:
            yield [x[None]]

    return gen


def spec_range(spec: InputSpec) -> tuple[float, float]:
    """The model-input values that pixels 0..255 map to, over all channels."""
    ends = normalise(np.array([[0, 0, 0], [255, 255, 255]], np.uint8), spec)
    return float(ends.min()), float(ends.max())


def check_samples(samples: np.ndarray, spec: InputSpec, tol: float = 1e-3) -> str | None:
    """A problem (text) when calibration tensors cannot be the spec's preprocessing of pixels."""
    lo, hi = spec_range(spec)
    smin, smax = float(samples.min()), float(samples.max())
    if smin < lo - tol * (hi - lo) or smax > hi + tol * (hi - lo):
        return (
            f"calibration inputs span [{smin:.3g}, {smax:.3g}] but the model's input spec "
            f"(mean {list(spec.mean)}, std {list(spec.std)}) maps pixels to [{lo:.3g}, {hi:.3g}]: "
            "the calibration data was not prepared with the model's preprocessing"
        )
    return None


def input_coverage(quant: dict | None, dtype: str, spec: InputSpec) -> float | None:
    """Fraction of the spec's input range the quantized input tensor can represent (None: float input).

    A full-integer model saturates inputs outside scale * (q - zero_point) for q in the dtype's
    range; calibration on the runtime's pixels makes that cover (nearly) the whole spec range.
    """
    if quant is None or dtype == "float32":
        return None
    info = np.iinfo(np.dtype(dtype))
    scale, zero = quant["scale"], quant["zero_point"]
    qlo, qhi = scale * (info.min - zero), scale * (info.max - zero)
    lo, hi = spec_range(spec)
    return max(0.0, min(hi, qhi) - max(lo, qlo)) / (hi - lo)


def coverage_problem(quant: dict | None, dtype: str, spec: InputSpec, min_coverage: float = MIN_COVERAGE) -> str | None:
    cov = input_coverage(quant, dtype, spec)
    if quant is None or cov is None or cov >= min_coverage:
        return None
    info = np.iinfo(np.dtype(dtype))
    scale, zero = quant["scale"], quant["zero_point"]
    lo, hi = spec_range(spec)
    return (
        f"the {dtype} input is quantized to [{scale * (info.min - zero):.3g}, {scale * (info.max - zero):.3g}], "
        f"{cov:.0%} of the [{lo:.3g}, {hi:.3g}] the runtime feeds (minimum {min_coverage:.0%}): the calibration "
        "data did not go through the model's preprocessing, or is not like the images it will see"
    )

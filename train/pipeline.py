"""tf.data input: cached uint8 pixels from edge_runtime.core.preprocess, augmentation, normalisation.

Images are decoded and resized once by the runtime's own functions (so training sees the
pixels the Pi sees), kept in memory as uint8, and augmented with stateless ops seeded by
(seed, epoch, index): a resumed run draws exactly the batches the uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_bloodcls.edge_runtime.core.preprocess import ImageError, load_rgb, resize
from edge_bloodcls.edge_runtime.core.spec import InputSpec


@dataclass(frozen=True)
class Augment:
    """Mild, label-preserving changes for single-cell micrographs (a cell has no up or left)."""

    flips: bool = True
    rot90: bool = True
    zoom: float = 0.10  # random crop of (1 - zoom)..1 of the side, resized back
    brightness: float = 0.08
    contrast: float = 0.10
    saturation: float = 0.10
    hue: float = 0.02

    def to_json(self) -> dict:
        return asdict(self)


NO_AUGMENT = Augment(False, False, 0.0, 0.0, 0.0, 0.0, 0.0)
# Flips and quarter turns only: exact symmetries of a cell image, nothing resampled or recoloured.
GEOMETRIC = Augment(True, True, 0.0, 0.0, 0.0, 0.0, 0.0)
AUGMENT_PRESETS = {"full": Augment(), "geometric": GEOMETRIC, "none": NO_AUGMENT}


def augment_preset(value) -> Augment:
    """A preset name, or a bool as older run configs recorded it (True = full)."""
    if isinstance(value, bool):
        value = "full" if value else "none"
    try:
        return AUGMENT_PRESETS[value]
    except KeyError:
        raise ValueError(f"unknown augmentation {value!r}; known: {', '.join(AUGMENT_PRESETS)}") from None


def load_pixels(paths, size: tuple[int, int], workers: int | None = None, progress: bool = False) -> np.ndarray:
    """Decode and resize every file with the runtime's functions -> uint8 (N, H, W, 3)."""
    out = np.empty((len(paths), size[0], size[1], 3), np.uint8)

    def one(i):
        out[i] = resize(load_rgb(paths[i]), size)

    it = range(len(paths))
    with ThreadPoolExecutor(max_workers=workers or (os.cpu_count() or 2)) as ex:
        results = ex.map(one, it)
        if progress:
            # tqdm: the [train] extra, only for progress bars
            from tqdm import tqdm

            results = tqdm(results, total=len(paths), desc=f"decode {size[0]}px", unit="img", mininterval=5)
        for _ in results:
            pass
    return out


def cached_pixels(paths, size, cache_dir=None, key: str = "", progress: bool = False) -> np.ndarray:
    """load_pixels, memoised on disk as .npy under cache_dir (keyed by the split hash and size)."""
    if cache_dir is None:
        return load_pixels(paths, size, progress=progress)
    # The file list itself is part of the name: two parts of one split with the same image
    # count must never share a cache file.
    listing = hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()[:12]
    f = Path(cache_dir) / f"pixels-{key}-{size[0]}x{size[1]}-{len(paths)}-{listing}.npy"
    if f.exists():
        return np.load(f, mmap_mode="r")
    arr = load_pixels(paths, size, progress=progress)
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, f)
    return arr


def normalise_tf(x, spec: InputSpec):
    """The TensorFlow twin of edge_runtime.core.preprocess.normalise (x: float32 pixels 0..255)."""
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tensorflow as tf

    if spec.color == "BGR":
        x = x[..., ::-1]
    return (x - tf.constant(spec.mean, tf.float32)) / tf.constant(spec.std, tf.float32)


def _augment(img, aug: Augment, seed):
    """img float32 RGB in [0, 1]; colour ops expect that range, so normalisation comes after."""
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tensorflow as tf

    s = lambda k: tf.stack([seed[0], seed[1] * 16 + k])  # noqa: E731 - one stream per op
    if aug.flips:
        img = tf.image.stateless_random_flip_left_right(img, s(1))
    if aug.rot90:
        k = tf.random.stateless_uniform([], s(2), 0, 4, dtype=tf.int32)
        img = tf.image.rot90(img, k)
    if aug.zoom > 0:
        h, w = img.shape[0], img.shape[1]
        frac = tf.random.stateless_uniform([], s(3), 1.0 - aug.zoom, 1.0)
        ch = tf.cast(tf.round(frac * h), tf.int32)
        cw = tf.cast(tf.round(frac * w), tf.int32)
        img = tf.image.stateless_random_crop(img, tf.stack([ch, cw, 3]), s(4))
        img = tf.image.resize(img, (h, w), method="bilinear")
    if aug.brightness > 0:
        img = tf.image.stateless_random_brightness(img, aug.brightness, s(5))
    if aug.contrast > 0:
        img = tf.image.stateless_random_contrast(img, 1 - aug.contrast, 1 + aug.contrast, s(6))
    if aug.saturation > 0:
        img = tf.image.stateless_random_saturation(img, 1 - aug.saturation, 1 + aug.saturation, s(7))
    if aug.hue > 0:
        img = tf.image.stateless_random_hue(img, aug.hue, s(8))
    return tf.clip_by_value(img, 0.0, 1.0)


def train_dataset(
    pixels: np.ndarray,
    labels: np.ndarray,
    spec: InputSpec,
    batch_size: int,
    aug: Augment,
    seed: int,
    first_epoch: int,
    epochs: int,
):
    """An endless-until-`epochs` stream of batches; epoch e is a fixed function of (seed, e)."""
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tensorflow as tf

    n = len(labels)
    steps = n // batch_size
    h, w = pixels.shape[1:3]
    labels = _as_targets(labels)

    def epoch_indices(e):
        perm = tf.argsort(tf.random.stateless_uniform([n], tf.stack([tf.cast(seed, tf.int64), e])))
        perm = perm[: steps * batch_size]
        return tf.data.Dataset.from_tensor_slices((tf.fill([steps * batch_size], e), perm))

    def fetch(i):
        return pixels[i], labels[i]

    def load(e, i):
        img, y = tf.numpy_function(fetch, [i], (tf.uint8, tf.as_dtype(labels.dtype)), stateful=False)
        img.set_shape((h, w, 3))
        y.set_shape(labels.shape[1:])
        img = tf.cast(img, tf.float32) / 255.0
        img = _augment(img, aug, tf.stack([tf.cast(seed, tf.int64) * 100003 + e, tf.cast(i, tf.int64)]))
        return normalise_tf(img * 255.0, spec), y

    ds = tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch_indices)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE), steps


def eval_dataset(pixels: np.ndarray, labels, spec: InputSpec, batch_size: int):
    """Unaugmented, in order: the training side of the train/serve parity test."""
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tensorflow as tf

    h, w = pixels.shape[1:3]
    labels = _as_targets(labels)

    def gen():
        for start in range(0, len(labels), batch_size):
            yield np.asarray(pixels[start : start + batch_size]), labels[start : start + batch_size]

    ds = tf.data.Dataset.from_generator(
        gen,
        output_signature=(
            tf.TensorSpec((None, h, w, 3), tf.uint8),
            tf.TensorSpec((None,) + labels.shape[1:], tf.as_dtype(labels.dtype)),
        ),
    )
    return ds.map(lambda x, y: (normalise_tf(tf.cast(x, tf.float32), spec), y)).prefetch(2)


def _as_targets(labels) -> np.ndarray:
    """Integer labels (N,), or float rows (N, 1 + classes) of label and teacher logits."""
    labels = np.asarray(labels)
    return labels.astype(np.float32) if labels.ndim == 2 else labels.astype(np.int32)


def class_weights(labels, n_classes: int) -> dict[int, float]:
    """'balanced' weights n / (k * count): each class contributes equally to the loss."""
    # scikit-learn: the [edge]/[train] extras, only for this step
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    w = compute_class_weight("balanced", classes=present, y=labels)
    out = {i: 1.0 for i in range(n_classes)}
    out.update({int(c): float(v) for c, v in zip(present, w)})
    return out


__all__ = [
    "Augment",
    "NO_AUGMENT",
    "GEOMETRIC",
    "AUGMENT_PRESETS",
    "augment_preset",
    "load_pixels",
    "cached_pixels",
    "train_dataset",
    "eval_dataset",
    "class_weights",
    "normalise_tf",
    "ImageError",
]

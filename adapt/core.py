"""Pieces of `adapt` that are not the training loop (adapt/finetune.py): pixel-space augmentation
(flips, rotations, zoom, blur, stain/colour jitter), the base model's shape check, synthetic
non-cell images for the OOD check, and the site's review operating point.
"""

from __future__ import annotations

import numpy as np

from edge_bloodcls.convert import trust_fit
from edge_bloodcls.edge_runtime.core.preprocess import resize
from edge_bloodcls.edge_runtime.core.trust import apply_temperature, ece


def to_model_size(images, size) -> np.ndarray:
    return np.stack([resize(i, size) for i in images]) if len(images) else np.zeros((0, *size, 3), np.uint8)


# --- augmentation in pixel space (uint8 at model size) -----------------------------------------


def _stain_jitter(x: np.ndarray, rng, strength: float) -> np.ndarray:
    """Stain and camera differences: per-channel gain and gamma, a shift of hue in optical
    density (the stains' absorbance mixes differently) and saturation; x float 0..1."""
    od = -np.log(np.clip(x, 1 / 255, 1))
    mix = np.eye(3) + rng.normal(0, 0.08 * strength, (3, 3))
    od = od @ mix.T * rng.uniform(1 - 0.25 * strength, 1 + 0.25 * strength)
    x = np.exp(-np.clip(od, 0, 6))
    x = x * rng.uniform(1 - 0.1 * strength, 1 + 0.1 * strength, 3)
    x = np.clip(x, 0, 1) ** rng.uniform(1 - 0.2 * strength, 1 + 0.2 * strength)
    grey = x.mean(-1, keepdims=True)
    return np.clip(grey + (x - grey) * rng.uniform(1 - 0.3 * strength, 1 + 0.3 * strength), 0, 1)


def _light_jitter(x: np.ndarray, rng, strength: float) -> np.ndarray:
    """Brightness, contrast and gamma only, the same for the three channels: the lamp and the
    camera's exposure change, the hue does not (an eosinophil's orange granules stay orange)."""
    x = np.clip(x * rng.uniform(1 - 0.15 * strength, 1 + 0.15 * strength), 0, 1)
    mean = x.mean()
    x = np.clip(mean + (x - mean) * rng.uniform(1 - 0.2 * strength, 1 + 0.2 * strength), 0, 1)
    return x ** rng.uniform(1 - 0.2 * strength, 1 + 0.2 * strength)


# Ruifrok & Johnston (2001) stain vectors, haematoxylin / eosin / DAB in optical density: the
# rows of scikit-image's `rgb_from_hed` (not a dependency for nine numbers).
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


def _hed_jitter(x: np.ndarray, rng, strength: float) -> np.ndarray:
    """Stain augmentation in HED space (Tellez et al. 2019): each stain's amount scaled by
    U(1-s, 1+s) and shifted by U(-s, s) with s = 0.05 * strength, so the stains vary in amount
    but each keeps its own colour."""
    od = -np.log(np.clip(x, 1 / 255, 1))
    hed = od @ _HED_FROM_RGB
    s = 0.05 * strength
    hed = hed * rng.uniform(1 - s, 1 + s, 3) + rng.uniform(-s, s, 3)
    return np.exp(-np.clip(hed @ _RGB_FROM_HED, 0, 6))


_COLOUR = {"stain": _stain_jitter, "light": _light_jitter, "hed": _hed_jitter}


# --- the site's look on home cells (Reinhard et al. 2001) ---------------------------------------


def _lab_moments(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 RGB -> (CIELAB image, per-channel mean, per-channel standard deviation)."""
    import cv2  # OpenCV, the [edge] extra: loaded when an image is resized or located

    lab = cv2.cvtColor(img.astype(np.float32) / 255, cv2.COLOR_RGB2LAB)
    flat = lab.reshape(-1, 3)
    return lab, flat.mean(0), flat.std(0) + 1e-3


def lab_stats(pixels: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N, 2, 3): per crop, the mean and standard deviation of each
    CIELAB channel, the "look" (stain, lamp, camera) that colour transfer moves to another crop."""
    out = np.empty((len(pixels), 2, 3), np.float32)
    for i, p in enumerate(pixels):
        out[i] = _lab_moments(p)[1:]
    return out


def site_look(img: np.ndarray, target: np.ndarray) -> np.ndarray:
    """A home (PBC) crop given a site crop's look: each CIELAB channel shifted and scaled to the
    target's mean and standard deviation (target: one row of lab_stats). The home cell keeps its
    label and shape, so rehearsal shows the network thousands of labelled cells as the site's
    microscope would show them, where the site labelled ten of each class."""
    import cv2  # OpenCV, the [edge] extra: loaded when an image is resized or located

    lab, mean, std = _lab_moments(img)
    rgb = cv2.cvtColor(((lab - mean) / std * target[1] + target[0]).astype(np.float32), cv2.COLOR_LAB2RGB)
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def augment(img: np.ndarray, rng, cfg) -> np.ndarray:
    """One random, label-preserving variant of a uint8 crop at model size; cfg: scale, blur,
    colour and colour_mode (finetune.FinetuneConfig)."""
    import cv2  # OpenCV, the [edge] extra: loaded when an image is resized or located

    x = np.rot90(img, rng.integers(4))
    if rng.random() < 0.5:
        x = x[:, ::-1]
    h, w = x.shape[:2]
    if cfg.scale:
        # Zoom out pads with the crop's border colour (capture pads with the field's background).
        z = rng.uniform(1 - cfg.scale, 1 + cfg.scale)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(0, 360)), z)
        fill = np.median(np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]]), 0)
        x = cv2.warpAffine(
            np.ascontiguousarray(x),
            m,
            (w, h),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=[float(v) for v in fill],
        )
    if cfg.blur and rng.random() < 0.5:
        x = cv2.GaussianBlur(np.ascontiguousarray(x), (0, 0), float(rng.uniform(0.3, cfg.blur)))
    if cfg.colour:
        x = _COLOUR[getattr(cfg, "colour_mode", "stain")](x.astype(np.float32) / 255, rng, cfg.colour) * 255
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def augmented(pixels: np.ndarray, copies: int, rng, cfg) -> np.ndarray:
    """(N, H, W, 3) -> (N * copies, H, W, 3): the first copy of each cell is the cell itself."""
    out = np.empty((len(pixels) * copies, *pixels.shape[1:]), np.uint8)
    for i, p in enumerate(pixels):
        out[i * copies] = p
        for c in range(1, copies):
            out[i * copies + c] = augment(p, rng, cfg)
    return out


# --- the network cut in two --------------------------------------------------------------------


def backbone(model):
    """The nested application model inside the training head (archs.build)."""
    import tf_keras  # [train] extra: loaded only when a model is built (the CLI starts without TensorFlow)

    nested = [layer for layer in model.layers if isinstance(layer, tf_keras.Model)]
    if len(nested) != 1 or not _has(model, "pool") or not _has(model, "probs"):
        raise ValueError(f"{model.name}: not a model built by `edge-bloodcls train` (backbone + pool + probs)")
    return nested[0]


def _has(model, name) -> bool:
    return any(layer.name == name for layer in model.layers)


def foreign_images(n: int, size, seed: int = 0) -> np.ndarray:
    """Images that are no blood cell (noise, smooth colour blobs, stripes, flat colours), uint8 at
    model size: the new bundle's OOD statistics should flag them."""
    import cv2  # OpenCV, the [edge] extra: loaded when an image is resized or located

    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for i in range(n):
        kind = i % 4
        x: np.ndarray
        if kind == 0:
            x = rng.integers(0, 256, (h, w, 3))
        elif kind == 1:
            x = cv2.resize(rng.integers(0, 256, (4, 4, 3)).astype(np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
        elif kind == 2:
            x = 127 + 120 * np.sin(np.arange(w) / rng.uniform(2, 12))[None, :, None] * rng.uniform(0, 1, 3)
            x = np.broadcast_to(x, (h, w, 3))
        else:
            x = np.broadcast_to(rng.integers(0, 256, 3), (h, w, 3))
        out.append(np.clip(x, 0, 255).astype(np.uint8))
    return np.stack(out)


# --- the site's review threshold ---------------------------------------------------------------


def site_operating_point(pbc_raw, pbc_y, pbc_ood, local_raw, local_y, local_ood, target: float) -> dict:
    """Temperature and review threshold for the site the bundle serves. convert fits them on its
    validation split, where the local cells are in-sample (the model learnt them, so they look
    right and sure) and the rule ends at 1.0 (everything reviewed) or trusts them too much.
    Here only cells the adapted model never learnt count: PBC val and the held-out --validate
    cells (`local_*`, key "local_out_of_fold"; none when no --validate), through the int8 bundle.
    The same rule as convert's (trust_fit.review_operating_point: lowest threshold whose accepted,
    in-distribution cells reach `target` at the one-sided 90% Wilson bound), met by PBC val and by
    the site's held-out cells each on their own (the higher threshold of the two)."""

    raw = np.concatenate([pbc_raw, local_raw])
    y = np.concatenate([pbc_y, local_y])
    ood = np.concatenate([pbc_ood, local_ood]).astype(bool)
    t = trust_fit.fit_temperature(raw, y)
    if ece(apply_temperature(raw, t), y) >= ece(raw, y):
        t = 1.0
    probs = apply_temperature(raw, t)
    op = trust_fit.review_operating_point(probs, y, ood, target)
    is_pbc = np.arange(len(y)) < len(pbc_y)
    if (~is_pbc).any():
        # The site's cells must reach the target on their own: pooled with ~400 PBC val cells, a
        # few dozen site cells at 65% would be accepted wholesale (PBC carries the bound).
        op_local = trust_fit.review_operating_point(probs[~is_pbc], y[~is_pbc], ood[~is_pbc], target)
        if op_local["review_threshold"] > op["review_threshold"]:
            op = {**op_local, "set_by": "local_out_of_fold"}
    accept = (probs.max(1) >= op["review_threshold"]) & ~ood
    right = probs.argmax(1) == y
    part = {}
    for name, m in (("pbc_val", is_pbc), ("local_out_of_fold", ~is_pbc)):
        a = accept & m
        part[name] = {
            "n": int(m.sum()),
            "accuracy": float(right[m].mean()) if m.any() else None,
            "coverage": float(a.sum() / max(1, m.sum())),
            "accepted_accuracy": float(right[a].mean()) if a.any() else None,
            "ood_flagged": float(ood[m].mean()) if m.any() else None,
        }
    return {
        "temperature": round(float(t), 6),
        "review_threshold": op["review_threshold"],
        "operating_point": op,
        "by_set": part,
    }

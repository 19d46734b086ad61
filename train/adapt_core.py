"""The learning part of `adapt`: a frozen trunk, a trained top, augmented copies computed once.

Why this shape: on a 2-core CPU one training step of the whole 160 px MobileNetV2 takes ~1.2 s
(batch 32), so fine-tuning every layer for a few hundred steps, five times over for a k-fold
estimate, cannot fit in minutes. Instead the network is cut at a block boundary (`cut`): the
lower blocks stay frozen, and each labelled cell is pushed through them once per augmented copy
(flips, quarter turns, scale, blur, colour and stain jitter, all applied in pixel space, before
the trunk). Training and every k-fold repeat then run on the cached trunk outputs, through the
upper blocks only (~10x cheaper a step). BatchNorm statistics of the frozen trunk can be
re-estimated on unlabelled local crops first (AdaBN), so that the trunk sees local colours as
it saw PBC's.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from edge_bloodcls.edge_runtime.preprocess import resize


@dataclass(frozen=True)
class AdaptConfig:
    cut: str = "block_12_add"  # last frozen layer of the backbone ("" or "none": train every layer)
    copies: int = 16  # augmented copies of each labelled cell pushed through the trunk
    steps: int = 150
    batch: int = 32
    lr: float = 3e-4
    local_share: float = 0.5  # share of each batch drawn from local cells, the rest PBC
    pbc_cells: int = 600  # PBC training cells mixed in (stratified), so unlabelled classes survive
    balance: bool = True  # local cells drawn class-balanced (a class with one cell is not drowned)
    # Colour/stain jitter (0: none). Off by default: with AdaBN it cost 7 points of k-fold accuracy
    # on bccd_site (eosinophils are told apart by the colour of their granules).
    colour: float = 0.0
    scale: float = 0.15  # random zoom in/out (0: none)
    blur: float = 1.0  # largest Gaussian blur sigma, px at model size (0: none)
    adabn: bool = True  # re-estimate the trunk's BatchNorm statistics on unlabelled local crops
    # Share of PBC cells among the AdaBN crops (0: local crops only). A PBC share keeps more of PBC
    # (50%: PBC test 84 -> 94.5%) but costs the site (k-fold 75.6 -> 65.9%); the site comes first.
    bn_pbc: float = 0.0
    # Tight crops pasted into real local neighbourhoods (adapt_data.paste) rather than padded with
    # a flat colour: +2.4 points k-fold (held-out cells are cut from their fields as capture cuts).
    paste: bool = True
    # Self-training: unlabelled local crops classified this surely join training (0: off); +4.9
    # points k-fold and +6.7 points PBC test on bccd_site (scripts/adapt_experiments.py).
    pseudo: float = 0.9
    pseudo_steps: int = 75  # further steps with them
    seed: int = 0

    def to_json(self) -> dict:
        return asdict(self)


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


def augment(img: np.ndarray, rng, cfg: AdaptConfig) -> np.ndarray:
    """One random, label-preserving variant of a uint8 crop at model size."""
    import cv2

    x = np.rot90(img, rng.integers(4))
    if rng.random() < 0.5:
        x = x[:, ::-1]
    h, w = x.shape[:2]
    if cfg.scale:
        # Zoom out pads with the crop's border colour (capture pads with the field's background).
        z = rng.uniform(1 - cfg.scale, 1 + cfg.scale)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(0, 360)), z)
        fill = np.median(np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]]), 0)
        x = cv2.warpAffine(np.ascontiguousarray(x), m, (w, h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=[float(v) for v in fill])
    if cfg.blur and rng.random() < 0.5:
        x = cv2.GaussianBlur(np.ascontiguousarray(x), (0, 0), float(rng.uniform(0.3, cfg.blur)))
    if cfg.colour:
        x = _stain_jitter(x.astype(np.float32) / 255, rng, cfg.colour) * 255
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def augmented(pixels: np.ndarray, copies: int, rng, cfg: AdaptConfig) -> np.ndarray:
    """(N, H, W, 3) -> (N * copies, H, W, 3): the first copy of each cell is the cell itself."""
    out = np.empty((len(pixels) * copies, *pixels.shape[1:]), np.uint8)
    for i, p in enumerate(pixels):
        out[i * copies] = p
        for c in range(1, copies):
            out[i * copies + c] = augment(p, rng, cfg)
    return out


def augment_variants(variants: np.ndarray, rng, cfg: AdaptConfig) -> np.ndarray:
    """(N, C, H, W, 3) framings of each cell (e.g. pasted into C neighbourhoods) -> (N * C, H, W, 3):
    copy 0 as framed, the others augmented as `augmented` does."""
    n, c = variants.shape[:2]
    out = variants.reshape(n * c, *variants.shape[2:]).copy()
    for i in range(n * c):
        if i % c:
            out[i] = augment(out[i], rng, cfg)
    return out


# --- the network cut in two --------------------------------------------------------------------

def backbone(model):
    """The nested application model inside the training head (archs.build)."""
    import tf_keras

    nested = [l for l in model.layers if isinstance(l, tf_keras.Model)]
    if len(nested) != 1 or not _has(model, "pool") or not _has(model, "probs"):
        raise ValueError(f"{model.name}: not a model built by `edge-bloodcls train` (backbone + pool + probs)")
    return nested[0]


def _has(model, name) -> bool:
    return any(l.name == name for l in model.layers)


def split(model, cut: str):
    """(trunk, top, trainable layers): trunk maps the model input to the cut tensor, top maps that
    tensor to probabilities. Both share their layers (and weights) with `model`, so training `top`
    trains `model`. cut "none": the trunk is the identity and the whole network trains."""
    import tf_keras

    base = backbone(model)
    pool, drop, probs = model.get_layer("pool"), model.get_layer("dropout"), model.get_layer("probs")
    if cut in ("", "none"):
        trunk = None
        upper = base
        shape = model.input_shape[1:]
    else:
        try:
            t = base.get_layer(cut).output
        except ValueError:
            raise ValueError(f"{base.name} has no layer {cut!r}") from None
        trunk = tf_keras.Model(base.input, t, name="trunk")
        upper = tf_keras.Model(t, base.output, name="upper")
        shape = tuple(t.shape[1:])
    inp = tf_keras.Input(shape)
    top = tf_keras.Model(inp, probs(drop(pool(upper(inp)))), name="top")
    return trunk, top


def normalise(pixels: np.ndarray, spec) -> np.ndarray:
    from edge_bloodcls.edge_runtime.preprocess import normalise as norm

    return norm(pixels, spec)


def trunk_outputs(trunk, pixels: np.ndarray, spec, batch: int = 64) -> np.ndarray:
    if trunk is None:
        return normalise(pixels, spec)
    out = [trunk(normalise(pixels[i:i + batch], spec), training=False).numpy() for i in range(0, len(pixels), batch)]
    return np.concatenate(out) if out else np.zeros((0, *trunk.output_shape[1:]), np.float32)


def adabn(trunk, pixels: np.ndarray, spec, batch: int = 32, passes: int = 2) -> int:
    """Re-estimate the trunk's BatchNorm moving statistics on local crops (AdaBN). Returns the
    number of BatchNorm layers updated. Cumulative averages, so the result does not depend on a
    momentum: every local crop counts once per pass."""
    import tf_keras

    if trunk is None or not len(pixels):
        return 0
    bns = [l for l in trunk.layers if isinstance(l, tf_keras.layers.BatchNormalization)]
    saved = [(l.trainable, l.momentum) for l in bns]
    for l in bns:
        l.trainable = True  # frozen BatchNorm ignores training=True
    x = normalise(pixels, spec)
    step = 0
    for _ in range(passes):
        for i in range(0, len(x) - batch + 1, batch):
            step += 1
            for l in bns:  # running mean of the batch statistics seen so far
                l.momentum = 1 - 1 / step if step > 1 else 0.0
            trunk(x[i:i + batch], training=True)
    for l, (tr, mom) in zip(bns, saved):
        l.trainable, l.momentum = tr, mom
    return len(bns)


def bn_set(local: np.ndarray, pbc: np.ndarray, share: float, rng) -> np.ndarray:
    """The crops AdaBN averages over: all local crops plus PBC cells making up `share` of the set,
    shuffled so every batch is a mix (batch variances then include the gap between the domains,
    as one set of statistics serving both must)."""
    n = min(len(pbc), int(round(len(local) * share / max(1e-9, 1 - share)))) if share > 0 else 0
    if not n:
        return local
    x = np.concatenate([local, pbc[rng.permutation(len(pbc))[:n]]])
    return x[rng.permutation(len(x))]


def reset_bn_momentum(model, momentum: float = 0.9):
    import tf_keras

    for l in backbone(model).layers:
        if isinstance(l, tf_keras.layers.BatchNormalization):
            l.momentum = momentum


def train_top(top, local_x, local_y, pbc_x, pbc_y, cfg: AdaptConfig, progress=None):
    """Adam on the top: each batch is local_share local copies (class-balanced when cfg.balance)
    and the rest PBC cells."""
    import tensorflow as tf
    import tf_keras

    rng = np.random.default_rng(cfg.seed)
    opt = tf_keras.optimizers.Adam(cfg.lr)
    loss_fn = tf_keras.losses.SparseCategoricalCrossentropy()
    n_local = int(round(cfg.batch * cfg.local_share)) if len(pbc_y) else cfg.batch
    classes = np.unique(local_y)
    by_class = [np.flatnonzero(local_y == c) for c in classes]

    @tf.function(reduce_retracing=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, top(x, training=True))
        grads = tape.gradient(loss, top.trainable_variables)
        opt.apply_gradients(zip(grads, top.trainable_variables))
        return loss

    losses = []
    for s in range(cfg.steps):
        if cfg.balance:
            cls = rng.integers(len(classes), size=n_local)
            li = np.array([rng.choice(by_class[c]) for c in cls], np.int64)
        else:
            li = rng.integers(len(local_y), size=n_local)
        xs, ys = [local_x[li]], [local_y[li]]
        if n_local < cfg.batch:
            pi = rng.integers(len(pbc_y), size=cfg.batch - n_local)
            xs.append(pbc_x[pi])
            ys.append(pbc_y[pi])
        losses.append(float(step(np.concatenate(xs), np.concatenate(ys))))
        if progress:
            progress(s + 1, losses[-1])
    return losses


def self_train(top, x, y, ux, pbc_x, pbc_y, cfg: AdaptConfig) -> np.ndarray:
    """One round of self-training after train_top: the unlabelled local crops the top classifies
    with at least cfg.pseudo confidence, as one of the labelled classes, join the local cells
    with that label for cfg.pseudo_steps more steps. They are capture's own crops of the site's
    cells (real neighbourhoods, every stain variation of the slides), which the few labelled
    cells are not. Returns the pseudo-label of each unlabelled crop, -1 where it did not join."""
    if not cfg.pseudo or not len(ux):
        return np.full(len(ux), -1, np.int64)
    p = predict_top(top, ux)
    lab = p.argmax(1)
    keep = (p.max(1) >= cfg.pseudo) & np.isin(lab, np.unique(y))
    if keep.any():
        train_top(top, np.concatenate([x, ux[keep]]), np.concatenate([y, lab[keep]]), pbc_x, pbc_y,
                  replace(cfg, steps=cfg.pseudo_steps, seed=cfg.seed + 1))
    return np.where(keep, lab, -1)


def predict_top(top, x: np.ndarray, batch: int = 64) -> np.ndarray:
    out = [top(x[i:i + batch], training=False).numpy() for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0, top.output_shape[-1]), np.float32)


def folds(y: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Stratified fold index per cell: each class dealt round-robin after a shuffle."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(y), np.int64)
    offset = 0
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        out[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)  # small classes do not all land in fold 0
    return out


def foreign_images(n: int, size, seed: int = 0) -> np.ndarray:
    """Images that are no blood cell (noise, smooth colour blobs, stripes, flat colours), uint8 at
    model size: the new bundle's OOD statistics should flag them."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for i in range(n):
        kind = i % 4
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
    Here the local cells count with their out-of-fold k-fold probabilities (each from a model that
    never saw that cell: honest, if a little pessimistic) beside PBC val through the int8 bundle.
    The same rule as convert's (trust_fit.review_operating_point: lowest threshold whose accepted,
    in-distribution cells reach `target` at the one-sided 90% Wilson bound)."""
    from edge_bloodcls.convert import trust_fit
    from edge_bloodcls.edge_runtime.trust import apply_temperature, ece

    raw = np.concatenate([pbc_raw, local_raw])
    y = np.concatenate([pbc_y, local_y])
    ood = np.concatenate([pbc_ood, local_ood]).astype(bool)
    t = trust_fit.fit_temperature(raw, y)
    if ece(apply_temperature(raw, t), y) >= ece(raw, y):
        t = 1.0
    probs = apply_temperature(raw, t)
    op = trust_fit.review_operating_point(probs, y, ood, target)
    accept = (probs.max(1) >= op["review_threshold"]) & ~ood
    right = probs.argmax(1) == y
    part = {}
    is_pbc = np.arange(len(y)) < len(pbc_y)
    for name, m in (("pbc_val", is_pbc), ("local_out_of_fold", ~is_pbc)):
        a = accept & m
        part[name] = {"n": int(m.sum()), "accuracy": float(right[m].mean()) if m.any() else None,
                      "coverage": float(a.sum() / max(1, m.sum())),
                      "accepted_accuracy": float(right[a].mean()) if a.any() else None,
                      "ood_flagged": float(ood[m].mean()) if m.any() else None}
    return {"temperature": round(float(t), 6), "review_threshold": op["review_threshold"], "operating_point": op,
            "by_set": part}

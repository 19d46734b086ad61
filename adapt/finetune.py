"""The training of `adapt`: every layer of the base model fine-tuned on the site's labelled cells,
each batch half site cells and half PBC cells (rehearsal, so the home site and the classes the
site did not label keep what the model learnt), all augmented on the fly.

Why the whole network: the frozen-trunk top with AdaBN that adapt trained before scored 49% on
BCCD cells it never saw (capture's crops), where this plain fine-tune reached 82% on withheld
tight crops (issue 29). What is added to it is only what scripts/adapt_experiments.py showed to
help on natural-proportion validation cells (docs/adapt.md).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace

import numpy as np

from edge_bloodcls.edge_runtime.core.preprocess import normalise
from edge_bloodcls.train import infer

from . import core
from .core import augment, site_look


@dataclass
class FinetuneConfig:
    steps: int = 400
    lr: float = 1e-4
    batch: int = 32
    local_share: float = 0.5  # share of each batch drawn from the site's cells, the rest PBC
    colour: float = 1.0  # colour jitter strength (0: none)
    colour_mode: str = "stain"  # adapt/core.py: "stain" (hue mix), "light" (brightness/contrast only), "hed"
    scale: float = 0.15  # random zoom in/out
    blur: float = 1.0  # largest Gaussian blur sigma (0: none)
    freeze: int = 0  # > 0: backbone layers finer than 1/freeze of the input keep the base's weights (set_bn)
    bn: str = "train"  # "train": BatchNorm statistics follow the mixed batches; "frozen": the base's
    distill: float = 0.0  # weight of the KL to the base model's answers on the PBC half (0: off)
    temperature: float = 2.0  # of the distillation
    anchor: float = 0.0  # L2-SP (Li et al. 2018): anchor / 2 * ||w - w_base||^2 over the kernels (0: off)
    pseudo: float = 0.0  # self-training: unlabelled site crops this sure join training (0: off)
    pseudo_steps: int = 200  # further steps with them
    pseudo_per_class: int = 0  # > 0: at most this many pseudo-labelled crops per class, the surest (balance)
    wise: float = 1.0  # weight-space ensemble: (1 - wise) * base + wise * fine-tuned (1: the fine-tuned model)
    prior: str = "none"  # "em": output bias shifted to the site's class proportions (evaluate.em_priors)
    transfer: float = 0.0  # share of the PBC cells given a site crop's look (core.site_look) before augmenting
    average: float = 0.0  # weights averaged over this last share of the steps (SWA/SWAD; 0: the last step's)
    average_every: int = 10  # steps between the snapshots averaged
    seed: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def _aug(px: np.ndarray, rng, cfg: FinetuneConfig) -> np.ndarray:
    return np.stack([augment(p, rng, cfg) for p in px])


def set_bn(model, cfg: FinetuneConfig) -> None:
    """All layers trainable; with bn "frozen", BatchNorm layers run on the base's statistics
    (a non-trainable tf_keras BatchNormalization runs in inference mode). cfg.freeze = N > 0: the
    backbone's first layers, up to the first whose output is at 1/N of the input's resolution or
    coarser, keep the base's weights and statistics: the high-resolution stem is where most of a
    step's time goes (backward through it included), and nothing before it trains, so no gradient
    runs through it at all."""
    import tf_keras  # [train] extra: loaded only when a model is built (the CLI starts without TensorFlow)

    model.trainable = True
    for layer in _all_layers(model):
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.trainable = cfg.bn != "frozen"
    if cfg.freeze > 0:
        for layer in frozen_stem(model, cfg.freeze):
            layer.trainable = False


def trained_layers(cfg: FinetuneConfig) -> str:
    """What the fine-tune trains, in words (the log and the bundle's `site.method`)."""
    return f"every layer coarser than 1/{cfg.freeze} of the input" if cfg.freeze else "every layer"


def frozen_stem(model, n: int) -> list:
    """The backbone's layers before the first whose output is no finer than 1/n of the input."""
    size = model.input_shape[1]
    stem: list = []
    for layer in core.backbone(model).layers:
        shape = layer.output_shape[0] if isinstance(layer.output_shape, list) else layer.output_shape
        if len(shape) == 4 and shape[1] is not None and shape[1] * n <= size:
            return stem
        stem.append(layer)
    raise ValueError(f"{model.name}: no backbone layer at 1/{n} of the input's resolution")


def _all_layers(model):
    import tf_keras  # [train] extra: loaded only when a model is built (the CLI starts without TensorFlow)

    for layer in model.layers:
        yield layer
        if isinstance(layer, tf_keras.Model):
            yield from _all_layers(layer)


class WeightAverage:
    """Running mean of a model's weights, BatchNorm statistics included (stochastic weight
    averaging, Izmailov et al. 2018; dense along the trajectory, as SWAD, Cha et al. 2021, does for
    domain generalisation): the average of the last part of a fine-tune sits in a flatter region
    than its last step, which generalises better to data from elsewhere."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: list[np.ndarray] = []

    def add(self, weights: list[np.ndarray]) -> None:
        self.n += 1
        if self.n == 1:
            self.mean = [w.astype(np.float64) for w in weights]
        else:
            for m, w in zip(self.mean, weights):
                m += (w - m) / self.n

    def weights(self, like: list[np.ndarray]) -> list[np.ndarray]:
        return [m.astype(w.dtype) for m, w in zip(self.mean, like)]


def train(
    model,
    spec,
    local_px: np.ndarray,
    local_y: np.ndarray,
    pbc_px: np.ndarray,
    pbc_y: np.ndarray,
    cfg: FinetuneConfig,
    pbc_soft: np.ndarray | None = None,
    progress=None,
    steps: int | None = None,
    seed_offset: int = 0,
    base_weights: list | None = None,
    site_looks: np.ndarray | None = None,
    averager: WeightAverage | None = None,
) -> list[float]:
    """Adam on every layer. local_px/pbc_px: uint8 at model size; each step draws local cells
    uniformly (the site's own proportions) and PBC cells, and augments both. pbc_soft: the base
    model's probabilities on pbc_px, for distillation (cfg.distill > 0). base_weights: the base
    model's get_weights(), the anchor of cfg.anchor (taken before the first call: a later call,
    e.g. self-training, still pulls towards the base and not towards where the last one ended).
    site_looks: core.lab_stats of the site's crops, drawn from for cfg.transfer. cfg.average > 0:
    snapshots of the last cfg.average of the steps are averaged into `averager`, or, without one,
    into a new one whose mean the model takes at the end (a caller that passes its own decides)."""
    import tensorflow as tf  # [train] extra: loaded only when a model is trained
    import tf_keras  # [train] extra: loaded only when a model is built (the CLI starts without TensorFlow)

    rng = np.random.default_rng(cfg.seed + seed_offset)
    set_bn(model, cfg)
    opt = tf_keras.optimizers.Adam(cfg.lr)
    # At least one site cell a batch, however small the batch and share (none would train nothing).
    n_local = max(1, int(round(cfg.batch * cfg.local_share))) if len(pbc_y) else cfg.batch
    n_pbc = cfg.batch - n_local
    t = cfg.temperature
    use_kd = cfg.distill > 0 and pbc_soft is not None and n_pbc > 0
    anchored = []
    if cfg.anchor > 0 and base_weights is not None:
        where = {id(w): i for i, w in enumerate(model.weights)}
        anchored = [
            (v, tf.constant(base_weights[where[id(v)]]))
            for v in model.trainable_variables
            if "kernel" in v.name and id(v) in where
        ]

    @tf.function(reduce_retracing=True, jit_compile=JIT)
    def step(x, y, soft, kd_mask):
        with tf.GradientTape() as tape:
            p = model(x, training=True)
            ce = tf.reduce_mean(tf_keras.losses.sparse_categorical_crossentropy(y, p))
            loss = ce
            if use_kd:
                # KL(base || model) at temperature t on the PBC part: the base's answers on the home
                # site, not only its labels (their dark knowledge keeps the confusions it avoided).
                logp = tf.math.log(tf.clip_by_value(p, 1e-7, 1.0)) / t
                logp = logp - tf.reduce_logsumexp(logp, axis=1, keepdims=True)
                kl = tf.reduce_sum(soft * (tf.math.log(tf.clip_by_value(soft, 1e-7, 1.0)) - logp), axis=1)
                loss = ce + cfg.distill * t * t * tf.reduce_sum(kl * kd_mask) / tf.maximum(tf.reduce_sum(kd_mask), 1.0)
            if anchored:
                # Pull towards the base model's weights: what PBC taught stays unless the site needs it moved.
                loss = loss + cfg.anchor / 2 * tf.add_n([tf.reduce_sum(tf.square(v - w0)) for v, w0 in anchored])
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    soft_t = None
    if use_kd:
        assert pbc_soft is not None, "use_kd needs the teacher's soft targets"
        logit = np.log(np.clip(pbc_soft, 1e-7, 1)) / t
        soft_t = np.exp(logit - logit.max(1, keepdims=True))
        soft_t = (soft_t / soft_t.sum(1, keepdims=True)).astype(np.float32)
    k = pbc_y.shape[0]
    n_cls = model.output_shape[-1]
    total = steps if steps is not None else cfg.steps

    def batches():
        # Drawn and augmented in order from one generator: the same batches whether or not they are
        # made ahead (below), so a seed gives the same run.
        for _ in range(total):
            li = rng.integers(len(local_y), size=n_local)
            xs, ys = [_aug(local_px[li], rng, cfg)], [local_y[li]]
            soft = np.zeros((cfg.batch, n_cls), np.float32)
            mask = np.zeros(cfg.batch, np.float32)
            if n_pbc:
                pi = rng.integers(k, size=n_pbc)
                home = pbc_px[pi]
                if cfg.transfer and site_looks is not None and len(site_looks):
                    home = home.copy()
                    for j in np.flatnonzero(rng.random(n_pbc) < cfg.transfer):
                        home[j] = site_look(home[j], site_looks[rng.integers(len(site_looks))])
                xs.append(_aug(home, rng, cfg))
                ys.append(pbc_y[pi])
                if soft_t is not None:
                    soft[n_local:] = soft_t[pi]
                    mask[n_local:] = 1.0
            yield normalise(np.concatenate(xs), spec), np.concatenate(ys), soft, mask

    own_average = cfg.average > 0 and averager is None
    if own_average:
        averager = WeightAverage()
    average_from = total - int(round(cfg.average * total)) if cfg.average > 0 else total
    losses = []
    for s, (x, y, soft, mask) in enumerate(_ahead(batches()) if MAKE_AHEAD else batches()):
        losses.append(float(step(x, y, soft, mask)))
        if averager is not None and s + 1 > average_from and (total - s - 1) % cfg.average_every == 0:
            averager.add(model.get_weights())
        if progress:
            progress(s + 1, total, losses[-1])
    if own_average and averager is not None and averager.n:
        model.set_weights(averager.weights(model.get_weights()))
    return losses


# Make the next batch in a worker thread while a step trains? Measured on the project's 2-core
# machine, idle (scripts/adapt_step_time.py, benchmarks/results/adapt_step_time.json): 2.22 s a
# step made ahead against 1.95 s made in turn: TensorFlow's step already keeps both cores busy, and
# the thread only competes with it. Off; the same batches either way (tests/test_adapt_ft.py).
MAKE_AHEAD = False
# XLA compilation of the step (scripts/adapt_step_time.py `xla`): 10.8 s a step against 1.54 s
# without it on the project's 2-core machine (no AVX2; benchmarks/results/adapt_step_time_xla.json); off.
JIT = False


def _ahead(it):
    """Items of `it`, the next one made in a worker thread while the caller works on this one: the
    augmentation (NumPy, OpenCV: both release the GIL) runs beside the training step instead of
    before it."""
    end = object()
    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(next, it, end)
        while (item := nxt.result()) is not end:
            nxt = pool.submit(next, it, end)
            yield item


def predict(model, spec, px: np.ndarray, batch: int = 64) -> np.ndarray:
    """Probabilities of the float model (a routed model's first output) for uint8 pixels."""
    return infer.outputs(model, px, spec, batch)


def pseudo_labels(probs: np.ndarray, threshold: float, allowed, per_class: int = 0) -> np.ndarray:
    """Label of each unlabelled crop the model is at least `threshold` sure of, as one of the
    `allowed` classes (those the site labelled); -1 elsewhere. per_class > 0: only the `per_class`
    surest crops of each class keep theirs, so the majority class (a neutrophil-rich site) does not
    drown the others in the pseudo-labelled set."""
    lab = probs.argmax(1)
    conf = probs.max(1)
    keep = (conf >= threshold) & np.isin(lab, list(allowed))
    if per_class > 0:
        for c in np.unique(lab[keep]):
            idx = np.flatnonzero(keep & (lab == c))
            keep[idx[np.argsort(-conf[idx], kind="stable")[per_class:]]] = False
    return np.where(keep, lab, -1)


def wise(model, base_weights: list, alpha: float) -> list:
    """Weight-space ensemble (WiSE-FT, Wortsman et al. 2022): the model's weights become
    (1 - alpha) * base + alpha * fine-tuned, BatchNorm statistics included, in place. Returns the
    fine-tuned weights (to put back with model.set_weights)."""
    tuned = model.get_weights()
    if alpha != 1.0:
        model.set_weights([((1 - alpha) * b + alpha * t).astype(t.dtype) for b, t in zip(base_weights, tuned)])
    return tuned


def self_train(
    model,
    spec,
    local_px,
    local_y,
    unl_px,
    pbc_px,
    pbc_y,
    cfg: FinetuneConfig,
    pbc_soft=None,
    progress=None,
    base_weights: list | None = None,
    site_looks: np.ndarray | None = None,
) -> np.ndarray:
    """One round after `train`: unlabelled site crops the model is sure of join the labelled ones
    with that label for cfg.pseudo_steps more steps. Returns their pseudo-labels (-1: not used).
    The caller keeps the cells it scores on out of unl_px."""
    if not cfg.pseudo or not len(unl_px):
        return np.full(len(unl_px), -1, np.int64)
    lab = pseudo_labels(predict(model, spec, unl_px), cfg.pseudo, np.unique(local_y), cfg.pseudo_per_class)
    keep = lab >= 0
    if keep.any():
        train(
            model,
            spec,
            np.concatenate([local_px, unl_px[keep]]),
            np.concatenate([local_y, lab[keep]]),
            pbc_px,
            pbc_y,
            # cfg.average applies to the fine-tune before: self-training starts from its averaged
            # weights and ends on its own last step.
            replace(cfg, average=0.0),
            pbc_soft,
            progress,
            steps=cfg.pseudo_steps,
            seed_offset=1,
            base_weights=base_weights,
            site_looks=site_looks,
        )
    return lab


def training_prior(local_y: np.ndarray, pbc_y: np.ndarray, n_classes: int, cfg: FinetuneConfig) -> np.ndarray:
    """The class proportions the model was trained under: local_share of the site's cells (drawn
    uniformly) and the rest PBC's."""
    loc = np.bincount(local_y, minlength=n_classes) / max(1, len(local_y))
    if not len(pbc_y):
        return loc
    pbc = np.bincount(pbc_y, minlength=n_classes) / len(pbc_y)
    return cfg.local_share * loc + (1 - cfg.local_share) * pbc


def shift_output_bias(model, shift: np.ndarray) -> None:
    """Add a per-class constant to the logits (the `probs` Dense layer's bias): the exported model
    then answers under the site's class proportions with no change to the runtime."""
    layer = model.get_layer("probs")
    w, b = layer.get_weights()
    layer.set_weights([w, (b + shift).astype(b.dtype)])

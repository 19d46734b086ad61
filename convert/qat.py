"""Quantization-aware fine-tuning with tensorflow-model-optimization.

tfmot quantizes the layers of one functional model and refuses a model nested in another,
which is how train/archs.py builds every network (backbone model inside image -> head). The
model is therefore flattened first: the backbone's layers are spliced into the outer graph
(same names, same weights), giving a graph tfmot's Conv-BN-ReLU patterns can match.
"""

from __future__ import annotations

import copy
import logging
import time

import numpy as np

from edge_bloodcls.train.pipeline import Augment, class_weights, eval_dataset, train_dataset

_log = logging.getLogger(__name__)


def _is_model(entry: dict) -> bool:
    return entry["class_name"] in ("Functional", "Model", "Sequential") and "layers" in entry["config"]


def _flatten_config(cfg: dict) -> dict:
    """A functional model's config with nested functional models inlined (recursively)."""
    layers, outputs_of = [], {}
    for entry in cfg["layers"]:
        if not _is_model(entry):
            layers.append(entry)
            continue
        if entry["class_name"] == "Sequential":
            raise ValueError(f"{entry['name']}: nested Sequential models are not supported; build it functionally")
        if len(entry["inbound_nodes"]) != 1:
            raise ValueError(f"{entry['name']}: a nested model called more than once cannot be flattened")
        inner = _flatten_config(entry["config"])
        call_args = entry["inbound_nodes"][0]  # [[layer, node, tensor, kwargs], ...] per input
        input_names = [ref[0] for ref in inner["input_layers"]]
        for sub in inner["layers"]:
            if sub["name"] in input_names:
                continue  # the outer tensor takes the place of the inner Input
            for node in sub["inbound_nodes"]:
                for ref in node:
                    if ref[0] in input_names:
                        ref[:3] = call_args[input_names.index(ref[0])][:3]
            layers.append(sub)
        outputs_of[entry["name"]] = inner["output_layers"]
    for entry in layers:
        for node in entry["inbound_nodes"]:
            for ref in node:
                if ref[0] in outputs_of:
                    ref[:3] = outputs_of[ref[0]][ref[2]][:3]
    names = [e["name"] for e in layers]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"cannot flatten: layer names {sorted(dup)} occur in more than one nested model")
    out = dict(cfg, layers=layers)
    out["output_layers"] = [outputs_of[o[0]][o[2]] if o[0] in outputs_of else o for o in cfg["output_layers"]]
    return out


def flatten(model):
    """The same network as one flat functional model, weights copied by layer name."""
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tf_keras

    if not any(isinstance(layer, tf_keras.Model) for layer in model.layers):
        return model
    flat = tf_keras.Model.from_config(_flatten_config(copy.deepcopy(model.get_config())))
    source = {}

    def collect(m):
        for layer in m.layers:
            if isinstance(layer, tf_keras.Model):
                collect(layer)
            else:
                source[layer.name] = layer

    collect(model)
    for layer in flat.layers:
        layer.set_weights(source[layer.name].get_weights())
    return flat


def quantize(model):
    """Flatten and wrap every layer with tfmot's default 8-bit fake quantization."""
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tensorflow_model_optimization as tfmot

    return tfmot.quantization.keras.quantize_model(flatten(model))


def fine_tune(
    qmodel,
    train: tuple,
    val: tuple,
    spec,
    epochs: int = 2,
    batch_size: int = 64,
    lr: float = 1e-4,
    augment=None,
    class_weight: dict | None = None,
    seed: int = 0,
) -> list[dict]:
    """A few epochs on the training split with the training pipeline (same augmentation and class
    weights); train/val are (uint8 pixels, labels). Returns one history row an epoch."""
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tf_keras

    pixels, labels = train
    batch_size = max(1, min(batch_size, len(labels)))
    ds, steps = train_dataset(pixels, labels, spec, batch_size, augment or Augment(), seed, 0, epochs)
    # Cosine decay to zero: the float model sits in a minimum already; QAT only adapts it to
    # the quantization grid, and a large step throws away what the float training found.
    sched = tf_keras.optimizers.schedules.CosineDecay(lr, max(1, epochs * steps))
    qmodel.compile(
        optimizer=tf_keras.optimizers.Adam(sched),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    x_val = eval_dataset(val[0], val[1], spec, batch_size)
    times = []

    def epoch_end(epoch, logs):
        times.append(time.time())
        _log.info(
            f"qat epoch {epoch + 1}/{epochs}: loss {logs['loss']:.4f} acc {logs['accuracy']:.4f} "
            f"val_loss {logs['val_loss']:.4f} val_acc {logs['val_accuracy']:.4f} ({times[-1] - times[-2]:.0f}s)"
        )

    times.append(time.time())
    # One fit over the whole stream: fit() per epoch on a shared iterator loses the batches
    # its prefetching pulled past the end of each epoch.
    h = qmodel.fit(
        ds,
        steps_per_epoch=steps,
        epochs=epochs,
        validation_data=x_val,
        class_weight=class_weight,
        verbose=0,
        callbacks=[tf_keras.callbacks.LambdaCallback(on_epoch_end=epoch_end)],
    )
    rows = []
    for e in range(len(h.history["loss"])):
        rows.append(
            {
                "epoch": e + 1,
                **{k: float(h.history[k][e]) for k in ("loss", "accuracy", "val_loss", "val_accuracy")},
                "lr": float(sched((e + 1) * steps).numpy()),
                "seconds": round(times[e + 1] - times[e], 1),
            }
        )
    return rows


def class_weight_from_config(config: dict, labels: np.ndarray, n_classes: int) -> dict | None:
    """The training run's class weights (as recorded), else balanced ones from these labels."""
    if config.get("train", {}).get("balance") == "none":
        return None
    recorded = config.get("class_weights")
    if recorded:
        return {int(k): float(v) for k, v in recorded.items()}

    return class_weights(labels, n_classes)

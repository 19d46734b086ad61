"""A Keras model's inference as one traced graph, for every part that runs a float model on arrays
(convert's gate, adapt's checks and router, the teacher's scores).

Why not `model(x, training=False)`: called eagerly, tf_keras runs a functional model op by op,
and on the project's 2-core machine that took 18.2 and 19.2 ms a MobileNetV2-160 image against
9.3 and 9.7 ms for the same batches of 64 through a tf.function, with identical outputs
(scripts/infer_speed.py, benchmarks/results/infer_speed.json). `Model.predict` is not used: it
builds a tf.data pipeline on each call.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from edge_bloodcls.edge_runtime.core.preprocess import normalise
from edge_bloodcls.edge_runtime.core.spec import InputSpec

# model -> {output layer name or "" -> traced function}; weak, so a model dropped by its caller
# (a cross-validation fold, say) takes its graphs with it.
_TRACED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def forward(model, layer: str | None = None) -> Callable[[np.ndarray], Any]:
    """f(x) = model(x, training=False), or the output of its layer `layer`, traced once per model
    and layer for any batch size (float32 input of the model's shape)."""
    import tensorflow as tf  # [train] extra
    import tf_keras  # [train] extra

    per_model = _TRACED.setdefault(model, {})
    key = layer or ""
    if key not in per_model:
        # The cached function must not hold the model, the cache's key (it would never leave); a
        # sub-model to a layer holds the layers only.
        net = tf_keras.Model(model.inputs, model.get_layer(layer).output) if layer else None
        ref = weakref.ref(model)

        def call(x):
            m = net if net is not None else ref()
            assert m is not None, "a model's traced call runs only while the model lives"
            return m(x, training=False)

        signature = [tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)]
        per_model[key] = tf.function(call, input_signature=signature)
    return per_model[key]


def outputs(model, pixels: np.ndarray, spec: InputSpec, batch: int = 64, layer: str | None = None) -> np.ndarray:
    """The first output (the probabilities of a two-output routed model), or layer `layer`'s, for
    uint8 pixels at model size, normalised a batch at a time (the runtime's own normalise)."""
    if not len(pixels):
        shape = model.get_layer(layer).output_shape if layer else model.output_shape
        width = (shape[0] if isinstance(shape, list) else shape)[-1]  # a routed model: [probs, features]
        return np.zeros((0, width), np.float32)
    f = forward(model, layer)
    out = []
    for i in range(0, len(pixels), batch):
        y = f(np.ascontiguousarray(normalise(np.asarray(pixels[i : i + batch]), spec)))
        out.append((y[0] if isinstance(y, (list, tuple)) else y).numpy())
    return np.concatenate(out)

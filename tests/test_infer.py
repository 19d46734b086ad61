"""train/infer.py: a float model's inference through one traced graph gives what the eager call
gives, for any batch size, traced once per model and layer."""

from __future__ import annotations

import gc

import numpy as np
import pytest

tf_keras = pytest.importorskip("tf_keras")

from edge_bloodcls.edge_runtime.core.preprocess import normalise  # noqa: E402
from edge_bloodcls.edge_runtime.core.spec import InputSpec  # noqa: E402
from edge_bloodcls.train import infer  # noqa: E402


def _model():
    layers = tf_keras.layers
    tf_keras.utils.set_random_seed(0)
    x = layers.Input((16, 16, 3), name="image")
    h = layers.Conv2D(4, 3, activation="relu")(x)
    h = layers.BatchNormalization()(h)
    pool = layers.GlobalAveragePooling2D(name="pool")(h)
    probs = layers.Dense(3, activation="softmax")(pool)
    return tf_keras.Model(x, probs)


def test_outputs_match_the_eager_call_for_any_batch_and_are_traced_once():
    model = _model()
    spec = InputSpec.named((16, 16), "symmetric")
    px = np.random.default_rng(0).integers(0, 256, (37, 16, 16, 3), dtype=np.uint8)
    eager = model(normalise(px, spec), training=False).numpy()
    got = infer.outputs(model, px, spec, batch=8)  # batches of 8 and a last one of 5
    assert got.shape == (37, 3)
    assert np.allclose(got, eager, atol=1e-6)
    f = infer.forward(model)
    assert infer.forward(model) is f  # cached per model
    assert len(f._list_all_concrete_functions()) == 1  # one trace for every batch size
    pooled = infer.outputs(model, px, spec, batch=16, layer="pool")
    sub = tf_keras.Model(model.inputs, model.get_layer("pool").output)
    assert np.allclose(pooled, sub(normalise(px, spec), training=False).numpy(), atol=1e-6)
    assert infer.forward(model, "pool") is not f


def test_a_dropped_model_leaves_the_cache():
    model = _model()
    spec = InputSpec.named((16, 16), "symmetric")
    infer.outputs(model, np.zeros((2, 16, 16, 3), np.uint8), spec)
    infer.outputs(model, np.zeros((2, 16, 16, 3), np.uint8), spec, layer="pool")
    n = len(infer._TRACED)
    del model
    gc.collect()
    assert len(infer._TRACED) == n - 1

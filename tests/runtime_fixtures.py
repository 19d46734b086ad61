"""Tiny model bundles for the runtime tests, committed under tests/fixtures/bundles.

The runtime tests load them without TensorFlow, so that they run where the runtime runs (the
edge install, the Pi's root file system in `make pi-check`). `python tests/runtime_fixtures.py`
rebuilds them (needs the train extra). A 32x32 conv net is trained for a few seconds on the
synthetic cells of cell_images.py (each class a disc of its own colour), so that a working pipeline
gets them right and a broken one (labels out of order, wrong normalisation, colour swapped) does
not. Converted to float32 and full-int8 TFLite and written with edge_runtime.core.bundle.write_bundle.
TensorFlow is imported here only.

The `bundles` fixture (conftest.py) copies the committed bundles to pytest's base temp, so that a
test may write beside them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from cell_images import make_dataset

from edge_bloodcls.edge_runtime.core.bundle import write_bundle
from edge_bloodcls.edge_runtime.core.preprocess import load_rgb, normalise, resize
from edge_bloodcls.edge_runtime.core.spec import LABELS, InputSpec
from edge_bloodcls.tfenv import configure

SIZE = 32
SPEC = InputSpec.named(SIZE)
REPO = Path(__file__).resolve().parents[1]
COMMITTED = Path(__file__).resolve().parent / "fixtures" / "bundles"


def _training_data(root: Path):
    make_dataset(root, n_per_class=10, size=64, seed=123)
    xs, ys = [], []
    for i, lab in enumerate(LABELS):
        for f in sorted((root / lab).glob("*.jpg")):
            xs.append(normalise(resize(load_rgb(f), SPEC.size), SPEC))
            ys.append(i)
    return np.stack(xs).astype(np.float32), np.array(ys)


def build_bundles(out: Path) -> dict[str, Path]:
    configure()  # conftest has, unless this module is used on its own
    import tensorflow as tf
    import tf_keras as keras

    tf.random.set_seed(0)
    keras.utils.set_random_seed(0)
    x, y = _training_data(out / "train_cells")
    model = keras.Sequential(
        [
            keras.layers.Input((SIZE, SIZE, 3)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(len(LABELS), activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(0.03), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=60, batch_size=16, verbose=0, shuffle=True)
    train_acc = float(model.evaluate(x, y, verbose=0)[1])

    paths = {}
    for quant in ("float32", "int8"):
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if quant == "int8":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = lambda: ([x[i : i + 1]] for i in range(len(x)))
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
        manifest = {
            "name": f"tiny_{quant}",
            "arch": "tiny",
            "labels": list(LABELS),
            "input": SPEC.to_json(),
            "output": {"dtype": "float32" if quant == "float32" else "int8"},
            "quantization": quant,
            "metrics": {"float": {"accuracy": train_acc}},
        }
        b = write_bundle(conv.convert(), manifest, out / "bundles")
        paths[quant] = b.tflite
    (out / "done.json").write_text(json.dumps({k: str(v) for k, v in paths.items()}))
    return paths


def cli_env() -> dict:
    """Environment for running the CLI in a subprocess from the source tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


PYTHON = sys.executable


if __name__ == "__main__":  # rebuild the committed bundles (after a change to the bundle format)
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        built = build_bundles(Path(tmp))
        COMMITTED.mkdir(parents=True, exist_ok=True)
        for p in built.values():
            for f in (p, p.with_suffix(".json")):
                shutil.copy(f, COMMITTED / f.name)
                print(COMMITTED / f.name)

"""A tiny trained run and its exports, for the converter's tests (test_convert*.py).

Needs TensorFlow: imported by the conftest fixtures `run_dir` and `exports` only when a test asks
for them, so that a test without TensorFlow (an edge install) skips instead of failing."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

tf_keras = pytest.importorskip("tf_keras")

from cell_images import make_dataset  # noqa: E402

from edge_bloodcls.cli import main  # noqa: E402
from edge_bloodcls.edge_runtime.core.bundle import load_bundle  # noqa: E402
from edge_bloodcls.edge_runtime.core.preprocess import normalise  # noqa: E402
from edge_bloodcls.edge_runtime.core.spec import LABELS, InputSpec  # noqa: E402
from edge_bloodcls.train.data import make_split, read_split, scan, write_split  # noqa: E402
from edge_bloodcls.train.pipeline import load_pixels  # noqa: E402

SIZE = 32


def _tiny_model():
    """conv-bn-relu, average and max pooling, softmax: learns the synthetic cells in seconds
    with wide margins, so a one-image flip on the small val split means a real error."""
    inp = tf_keras.Input((SIZE, SIZE, 3), name="image")
    h = tf_keras.layers.Conv2D(16, 3, strides=2, use_bias=False)(inp)
    h = tf_keras.layers.BatchNormalization()(h)
    h = tf_keras.layers.ReLU()(h)
    # Named "pool" as the training head names its pooled features: convert exports them as a
    # second output and fits the trust statistics on them.
    h = tf_keras.layers.Concatenate(name="pool")(
        [tf_keras.layers.GlobalAveragePooling2D()(h), tf_keras.layers.GlobalMaxPooling2D()(h)]
    )
    out = tf_keras.layers.Dense(len(LABELS), activation="softmax", name="probs")(h)
    return tf_keras.Model(inp, out, name="tiny")


def train_run(tmp_path_factory):
    """A training run as `edge-bloodcls train` leaves it: split.csv, model.keras, config.json."""
    base = tmp_path_factory.mktemp("convert")
    cells = make_dataset(base / "cells", n_per_class=30, size=64)
    rows, report = make_split(scan(cells), (0.5, 0.25, 0.25), seed=0)
    digest = write_split(rows, report, base / "split.csv", cells)
    split = read_split(base / "split.csv")
    spec = InputSpec.named(SIZE)
    paths, y = split.items("train")
    x = normalise(load_pixels(paths, spec.size), spec)
    tf_keras.utils.set_random_seed(0)
    model = _tiny_model()
    model.compile(tf_keras.optimizers.Adam(5e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=60, batch_size=16, verbose=0)
    run = base / "run"
    run.mkdir()
    model.save(run / "model.keras")
    (run / "config.json").write_text(
        json.dumps(
            {
                "train": {"arch": "tiny"},
                "input": spec.to_json(),
                "labels": list(LABELS),
                "params": int(model.count_params()),
                "split": {"csv": str(base / "split.csv"), "sha256": digest},
            }
        )
    )
    return run


def convert(run_dir, out, *args):
    res = CliRunner().invoke(main, ["convert", str(run_dir / "model.keras"), "--out", str(out), *args])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res


def export_each(run_dir, tmp_path_factory):
    """Each plain format exported once, on demand, into one directory."""
    out = tmp_path_factory.mktemp("exports")
    done = {}

    def get(mode):
        if mode not in done:
            res = convert(run_dir, out, "--quantize", mode, "--eval-test")
            assert res.exit_code == 0, res.output
            done[mode] = load_bundle(out / f"tiny_{SIZE}_{mode}")
        return done[mode]

    return get


def _val_images(run_dir):
    split = read_split(run_dir.parent / "split.csv")
    return split.items("val")

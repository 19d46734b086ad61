"""Distillation: a D4-averaged teacher, its stored soft targets, and a student trained on them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from train_fixtures import _split, _train

from edge_bloodcls.cli import main

pytest.importorskip("tf_keras")


def test_d4_views_are_the_eight_symmetries():
    from edge_bloodcls.train.teacher import d4_views

    x = np.arange(2 * 3 * 3 * 1).reshape(2, 3, 3, 1)
    views = d4_views(x)
    assert len(views) == 8
    assert len({v.tobytes() for v in views}) == 8  # all distinct on an asymmetric image
    # The set of views of a rotated image is the same set: averaged targets are invariant.
    rotated = {v.tobytes() for v in d4_views(np.rot90(x, 1, axes=(1, 2)))}
    assert rotated == {v.tobytes() for v in views}


def test_distill_loss_reduces_to_its_parts():
    import tensorflow as tf

    from edge_bloodcls.train.distill import distill_objects, distill_targets

    loss_cls, acc = distill_objects()
    p = tf.constant([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    y = distill_targets([0, 2], np.log(p.numpy()))
    ce = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy([0, 2], p)).numpy()
    # A teacher equal to the student: the KL term is zero, only the weighted hard term remains.
    assert float(loss_cls(2.0, 0.7)(y, p)) == pytest.approx(0.3 * ce, rel=1e-4)
    assert float(loss_cls(2.0, 0.0)(y, p)) == pytest.approx(ce, rel=1e-4)
    # A different teacher costs more.
    other = distill_targets([0, 2], np.log([[0.1, 0.8, 0.1], [0.8, 0.1, 0.1]]))
    assert float(loss_cls(2.0, 0.7)(other, p)) > float(loss_cls(2.0, 0.7)(y, p)) + 0.1
    assert acc(y, p).numpy().tolist() == [1.0, 1.0]


def test_teacher_then_student_trains_and_resumes(tmp_path):
    split = _split(tmp_path, 12)
    t_run = tmp_path / "teacher_run"
    assert _train(split, t_run, "--epochs", "2").exit_code == 0
    r = CliRunner().invoke(
        main, ["teacher", "--model", str(t_run / "model.keras"), "--split", str(split), "--out", str(tmp_path / "t")]
    )
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "t.json").read_text())
    assert rep["tta"].startswith("D4") and {"train", "val", "test"} <= set(rep)
    with np.load(tmp_path / "t.npz") as z:
        assert z["train_logits"].shape[1] == 8 and np.isfinite(z["train_logits"]).all()

    student = tmp_path / "student"
    r = _train(split, student, "--epochs", "2", "--teacher", str(tmp_path / "t.npz"), "--time-budget", "0.0001")
    assert r.exit_code == 0, r.output
    cfg = json.loads((student / "config.json").read_text())
    assert cfg["loss"].startswith("distillation") and cfg["train"]["teacher"].endswith("t.npz")
    # The checkpoint holds the distillation loss: it resumes by name and finishes.
    r = CliRunner().invoke(main, ["train", "--resume", "--out", str(student)])
    assert r.exit_code == 0, r.output
    m = json.loads((student / "metrics.json").read_text())
    assert m["epochs_run"] == 2 and m["test"]["n"] > 0

    # Soft targets are only valid under augmentations they are invariant to.
    r = _train(split, tmp_path / "bad", "--teacher", str(tmp_path / "t.npz"), "--augment", "full")
    assert r.exit_code == 2 and "geometric" in r.output

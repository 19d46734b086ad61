"""A tiny real training run through the CLI: it must learn, record everything, and resume."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from train_fixtures import _split, _train

from edge_bloodcls.cli import main

pytest.importorskip("tf_keras")


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    return _split(tmp_path_factory.mktemp("small"), 10)


def test_tiny_training_beats_chance(tmp_path):
    split = _split(tmp_path, 40)
    out = tmp_path / "run"
    r = _train(split, out, "--epochs", "12", "--patience", "12")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["test"]["n"] == 64
    # Chance is 1/8 (measured here: about 0.85 after 12 epochs).
    assert m["test"]["accuracy"] >= 0.5, m["test"]
    assert set(m["test"]["macro"]) == {"precision", "recall", "f1"}
    assert len(m["test"]["confusion_matrix"]) == 8
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["split"]["sha256"] == m["split_sha256"]
    # The defaults are the protocol of the final model: flips and quarter turns, unweighted loss.
    assert cfg["train"]["bn_momentum"] == 0.9 and cfg["class_weights"] is None
    assert cfg["augment"]["flips"] and cfg["augment"]["rot90"] and cfg["augment"]["hue"] == 0
    assert {"tensorflow", "tf_keras", "numpy"} <= set(cfg["versions"])
    assert (out / "model.keras").exists()
    with open(out / "history.csv") as f:
        assert len(list(csv.DictReader(f))) == m["epochs_run"]


def test_killed_run_resumes_exactly(small_split, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    # Dropout masks come from a generator whose state is not checkpointed; without dropout,
    # everything else (weights, optimizer and BatchNorm state, data order, augmentation,
    # learning-rate schedule) must continue as if never interrupted.
    # Full augmentation and class weights: the most state a resume has to restore.
    common = ["--epochs", "4", "--dropout", "0", "--augment", "full", "--balance", "class_weights"]
    assert _train(small_split, full, *common).exit_code == 0
    cmd = [
        sys.executable,
        "-m",
        "edge_bloodcls.cli",
        "train",
        "--arch",
        "mobilenetv2",
        "--split",
        str(small_split),
        "--out",
        str(part),
        "--img-size",
        "32",
        "--batch-size",
        "8",
        "--width",
        "0.35",
        "--lr",
        "0.002",
        *common,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = part / "ckpt" / "state.json"
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    killed_at = json.loads(state.read_text())["epoch"]
    assert 1 <= killed_at < 4, "the run must be killed part-way"
    r = CliRunner().invoke(main, ["train", "--resume", "--out", str(part)])
    assert r.exit_code == 0, r.output
    with open(full / "history.csv") as f:
        a = list(csv.DictReader(f))
    with open(part / "history.csv") as f:
        b = list(csv.DictReader(f))
    assert len(a) == len(b) == 4
    # Each chunk says which epochs it trained and on what (runs are resumed on other machines).
    chunks = json.loads((part / "metrics.json").read_text())["chunks"]
    assert [c["epochs"] for c in chunks] == [[1, killed_at], [killed_at + 1, 4]]
    assert all(c["seconds"] > 0 and "cores" in c["machine"] for c in chunks)
    for ra, rb in zip(a, b):
        assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), rel=2e-3, abs=2e-3)
        assert float(ra["lr"]) == pytest.approx(float(rb["lr"]), rel=1e-5)


def test_time_budget_stops_cleanly_mid_epoch(small_split, tmp_path):
    out = tmp_path / "run"
    r = _train(small_split, out, "--epochs", "3", "--time-budget", "0.0001")
    assert r.exit_code == 0, r.output
    assert "time budget" in r.output and "--resume continues" in r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs_run"] == 1 and "time budget" in m["stop_reason"]
    with open(out / "history.csv") as f:
        [row] = list(csv.DictReader(f))
    assert int(row["steps"]) < 12  # 96 training images / batch 8: the epoch was cut short


def test_refuses_to_overwrite_and_offline_imagenet_is_clear(small_split, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert _train(small_split, out, "--epochs", "1").exit_code == 0
    r = _train(small_split, out, "--epochs", "1")
    assert r.exit_code == 2 and "--resume" in r.output
    # Simulate being offline: any download fails as it would without a network.
    import tf_keras

    def offline(*a, **k):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3]")

    monkeypatch.setattr(tf_keras.utils, "get_file", offline)
    monkeypatch.setattr("tf_keras.src.applications.mobilenet_v2.data_utils.get_file", offline, raising=False)
    r = _train(small_split, tmp_path / "img", "--epochs", "1", "--weights", "imagenet")
    assert r.exit_code == 2
    assert "--weights none" in r.output

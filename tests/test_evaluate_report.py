"""evaluate on a folder of one class, its per-image JSON, and the progress count on stderr."""

from __future__ import annotations

import io
import json
import shutil
import warnings

import pytest
from cell_images import make_dataset
from click.testing import CliRunner

from edge_bloodcls.edge_runtime.core.progress import Progress
from edge_bloodcls.edge_runtime.core.spec import LABELS


def run(*args):
    from edge_bloodcls.cli import main

    return CliRunner().invoke(main, list(map(str, args)))


def test_single_class_folder_macro_is_over_the_class_present(bundles, tmp_path):
    data = make_dataset(tmp_path / "all", n_per_class=6, seed=5)
    for lab in LABELS:
        if lab != "lymphocyte":
            shutil.rmtree(data / lab)
    out = tmp_path / "eval.json"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = run("evaluate", data, "--model", bundles["int8"], "--json", out)
    assert r.exit_code == 0, r.output
    assert not [w for w in caught if "sklearn" in str(w.filename)], [str(w.message) for w in caught]
    assert "macro over the 1 of 8 classes present: lymphocyte" in r.stdout
    m = json.loads(out.read_text())["metrics"]
    assert m["macro_over"] == ["lymphocyte"] and m["n"] == 6
    # one class: its recall is the accuracy, and the macro recall is that recall, not a 1/8 of it
    assert m["macro"]["recall"] == pytest.approx(m["per_class"]["lymphocyte"]["recall"]) == pytest.approx(m["accuracy"])
    assert set(m["per_class"]) == set(LABELS)  # the table still has every label


def test_evaluate_json_has_every_prediction(bundles, tmp_path):
    data = make_dataset(tmp_path / "cells", n_per_class=3, seed=8)
    out = tmp_path / "eval.json"
    r = run("evaluate", data, "--model", bundles["float32"], "--json", out)
    assert r.exit_code == 0, r.output
    assert "\r" not in r.output  # not a terminal: no progress count
    rep = json.loads(out.read_text())
    preds, m = rep["predictions"], rep["metrics"]
    assert sorted(p["path"] for p in preds) == sorted(str(f) for f in data.rglob("*.jpg"))
    for p in preds:
        assert set(p) == {"path", "true", "predicted", "confidence", "ood", "review"}
        assert p["true"] == p["path"].split("/")[-2] and p["predicted"] in LABELS and 0 < p["confidence"] <= 1
        assert isinstance(p["ood"], bool) and isinstance(p["review"], bool)
    assert sum(p["true"] == p["predicted"] for p in preds) == round(m["accuracy"] * m["n"])
    cm = m["confusion_matrix"]
    for p in preds[:5]:
        assert cm[LABELS.index(p["true"])][LABELS.index(p["predicted"])] >= 1


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_only_on_a_terminal_and_for_long_runs():
    tty = _Terminal()
    assert list(Progress(150, "evaluate", tty).iterate(range(150))) == list(range(150))
    text = tty.getvalue()
    assert "evaluate 150/150 (100%)" in text and text.endswith("\r\033[K")  # the line is erased at the end
    short = _Terminal()
    list(Progress(100, "evaluate", short).iterate(range(100)))
    assert short.getvalue() == ""
    pipe = io.StringIO()
    list(Progress(1000, "evaluate", pipe).iterate(range(1000)))
    assert pipe.getvalue() == ""


def test_bench_accuracy_pass_counts_on_the_terminal(bundles, tmp_path):
    import os
    import pty

    import numpy as np

    from edge_bloodcls.benchmarks import child
    from edge_bloodcls.edge_runtime.core.bundle import load_bundle

    size = load_bundle(bundles["int8"]).spec.size
    pixels = tmp_path / "pixels.npy"
    np.save(pixels, np.random.default_rng(0).integers(0, 255, (150, *size, 3), dtype=np.uint8))
    img = tmp_path / "cell.png"
    from cell_images import synthetic_cell

    synthetic_cell(1, np.random.default_rng(1)).save(img)
    master, slave = pty.openpty()  # a terminal, as the parent passes its stderr when it is one
    try:
        out = child.run_tflite(
            {
                "path": str(bundles["int8"]),
                "threads": 1,
                "warmup": 1,
                "runs": 2,
                "latency_image": str(img),
                "pixels": str(pixels),
                "indices": None,
                "progress_fd": slave,
                "progress_label": "tiny int8: accuracy",
            }
        )
        shown = os.read(master, 65536).decode()
    finally:
        os.close(master)
        os.close(slave)
    assert len(out["predictions"]) == 150
    assert "tiny int8: accuracy 150/150 (100%)" in shown
    # no terminal (progress_fd None): the same predictions, nothing else
    again = child.run_tflite(
        {
            "path": str(bundles["int8"]),
            "threads": 1,
            "warmup": 1,
            "runs": 2,
            "latency_image": str(img),
            "pixels": str(pixels),
            "indices": None,
        }
    )
    assert again["predictions"] == out["predictions"]

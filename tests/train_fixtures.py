"""A small split and a tiny training run through the CLI (test_train.py, test_distill.py)."""

from __future__ import annotations

from cell_images import make_dataset
from click.testing import CliRunner

from edge_bloodcls.cli import main


def _split(root_dir, n_per_class):
    root = make_dataset(root_dir / "cells", n_per_class=n_per_class, size=48)
    out = root_dir / "split.csv"
    r = CliRunner().invoke(main, ["data", "split", str(root), "--out", str(out), "--ratios", "0.6,0.2,0.2"])
    assert r.exit_code == 0, r.output
    return out


def _train(split, out, *extra):
    args = [
        "train",
        "--arch",
        "mobilenetv2",
        "--split",
        str(split),
        "--out",
        str(out),
        "--img-size",
        "32",
        "--batch-size",
        "8",
        "--width",
        "0.35",
        "--lr",
        "0.002",
        *extra,
    ]
    return CliRunner().invoke(main, args)

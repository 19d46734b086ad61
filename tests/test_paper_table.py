"""The paper table (issue 30): one table for REPORT.md and the README, rows grouped by the
Table 2 network each registered architecture stands for, with how each run was trained."""

import json

import pytest
from click.testing import CliRunner

from edge_bloodcls.benchmarks.report import README_MARK, paper_table
from edge_bloodcls.benchmarks.results import SCHEMA, Results
from edge_bloodcls.train import archs


def _metrics(acc):
    return {"accuracy": acc, "balanced_accuracy": acc - 0.01, "macro": {"precision": acc, "recall": acc, "f1": acc}}


def _results(run_dir):
    training = {
        "epochs_run": 17,
        "epochs_planned": 30,
        "best_epoch": 11,
        "train_seconds": 7200.0,
        "stop_reason": "early stopping: validation loss did not improve for 6 epochs",
        "initialisation": "from scratch",
        "converged": True,
        "convergence": "early-stopped",
        "chunks": [{"epochs": [1, 17], "seconds": 7200.0, "machine": "AMD EPYC, 2 cores"}],
    }
    models = {
        "vgg16_bn_64": {
            "arch": "vgg16_bn",
            "size": 64,
            "role": "model",
            "trained": True,
            "source": str(run_dir / "model.keras"),
            "training": training,
            "params": 14_731_464,
            "macs": 313_000_000,
        },
        "resnet50_64": {
            "arch": "resnet50",
            "size": 64,
            "role": "model",
            "trained": False,
            "params": 23_604_104,
            "macs": 315_000_000,
        },
    }
    configs = [{"model": "vgg16_bn_64", "format": "int8", "threads": "1", "size_bytes": 15_000_000}]
    accuracy = {"vgg16_bn_64|keras": {"metrics": _metrics(0.9712)}, "vgg16_bn_64|int8": {"metrics": _metrics(0.9705)}}
    return Results(models=models, configs=configs, accuracy=accuracy)


def test_bn_variant_stands_for_its_paper_row(tmp_path):
    assert archs.get("vgg16_bn").paper == "vgg16" and archs.get("vgg19_bn").paper == "vgg19"
    assert archs.get("resnet50").paper == "resnet50"
    rows = paper_table(_results(tmp_path))
    vgg16 = next(r for r in rows if "`vgg16_bn_64`" in r).split(" | ")
    assert vgg16[0] == "| VGG16-BN" and vgg16[1].startswith("90.53")
    assert "64 px" in vgg16 and "from scratch" in vgg16
    assert "17 of 30 (best 11); converged: early-stopped" in vgg16
    assert "2.0 h on AMD EPYC, 2 cores" in vgg16 and "97.12" in vgg16 and "97.05" in vgg16 and "15.00 MB" in vgg16
    resnet = next(r for r in rows if "`resnet50_64`" in r)
    assert "not trained" in resnet and "96.34" in resnet
    # a network with no run at all still has its paper row
    assert any(r.startswith("| VGG19 | 89.01") and "not benchmarked" in r for r in rows)
    assert all(r.count(" | ") == rows[0].count(" | ") for r in rows if r.startswith("| "))


def test_readme_table_is_written_between_its_markers(tmp_path):
    results = tmp_path / "bench.json"
    results.write_text(json.dumps({"schema": SCHEMA, **_results(tmp_path).to_json()} | {"schema": SCHEMA}))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_MARK[0]}\nstale row\n{README_MARK[1]}\noutro\n")
    from edge_bloodcls.benchmarks.report import update_readme

    update_readme(readme, Results.load(results))
    text = readme.read_text()
    assert "stale row" not in text and "`vgg16_bn_64`" in text
    assert text.startswith("intro\n") and text.endswith(f"{README_MARK[1]}\noutro\n")
    update_readme(readme, Results.load(results))
    assert readme.read_text() == text  # idempotent


def test_readme_without_markers_is_one_line_and_exit_1(tmp_path):
    from edge_bloodcls.cli import main

    results = tmp_path / "bench.json"
    results.write_text(json.dumps(_results(tmp_path).to_json()))
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    res = CliRunner().invoke(
        main, ["bench-report", str(results), "--out", str(tmp_path / "r"), "--readme", str(readme)]
    )
    assert res.exit_code == 2 and "no paper-table markers" in res.output and "Traceback" not in res.output
    assert readme.read_text() == "no markers here\n"


@pytest.mark.parametrize("arch", ["vgg16_bn", "vgg19_bn"])
def test_vgg_bn_has_batchnorm_after_every_convolution(arch):
    pytest.importorskip("tf_keras")
    model = archs.build(arch, 32)
    base = model.layers[1]
    kinds = [type(layer).__name__ for layer in base.layers]
    convs = [i for i, k in enumerate(kinds) if k == "Conv2D"]
    assert len(convs) == {"vgg16_bn": 13, "vgg19_bn": 16}[arch]
    assert all(kinds[i + 1] == "BatchNormalization" for i in convs)
    with pytest.raises(archs.WeightsUnavailable, match="from scratch"):
        archs.build(arch, 32, weights="imagenet")

"""The benchmark harness end to end on its --quick tiny model, and its arithmetic on its own."""

from __future__ import annotations

import csv
import json
import os
import time

import numpy as np
import pytest
from click.testing import CliRunner

from edge_bloodcls.benchmarks import harness, report
from edge_bloodcls.benchmarks.child import percentiles
from edge_bloodcls.benchmarks.results import ConfigRow, Results
from edge_bloodcls.edge_runtime.core.spec import LABELS

FORMATS = ["keras", "float32", "float16", "dynamic", "int8", "qat-int8"]


def _bench(*args):
    from edge_bloodcls.cli import main

    res = CliRunner().invoke(main, ["bench", *args])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf_keras")
    out = tmp_path_factory.mktemp("bench")
    _bench("--quick", "--out", str(out))
    return out, json.loads((out / "bench.json").read_text())


def test_quick_measures_every_format_and_thread_count(quick):
    out, r = quick
    assert r["schema"] == harness.SCHEMA
    m = r["machine"]
    assert m["cpu_model"] and m["cores_logical"] >= 1 and m["interpreter_backend"]
    assert "numpy" in m["libraries"] and isinstance(m["cpu_flags"], list)
    assert {(c["format"], c["threads"]) for c in r["configs"]} == {(f, t) for f in FORMATS for t in ("1", "all")}
    for c in r["configs"]:
        lat = c["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"], c
        assert lat["n"] == c["runs"] > 0
        assert c["images_per_s"] == pytest.approx(1000 / lat["mean"])
        assert c["load_s"] > 0 and c["peak_rss_mb"] > 10
        assert c["size_bytes"] == os.path.getsize(c["file"]) > 0
        assert c["threads_n"] == (1 if c["threads"] == "1" else os.cpu_count())
        # A TFLite configuration runs without TensorFlow, as on the Pi; Keras needs it.
        assert c["tensorflow_imported"] == (c["format"] == "keras")
        if c["format"] != "keras":
            assert c["interpreter"]["interpreter"] == m["interpreter_backend"]
            assert c["invoke_ms"]["p50"] <= lat["p50"] * 1.5
    # int8 models are integer end to end, with int8 input
    assert {c["io_dtype"] for c in r["configs"] if c["format"] in ("int8", "qat-int8")} == {"int8"}


def test_quick_params_and_macs_match_the_network(quick):
    _, r = quick
    info = r["models"]["tiny_32"]
    # benchmarks/quick.py: 32x32x3 -> conv 3x3/2 to 16x16x8 -> depthwise 3x3 -> conv 1x1 to 16 -> dense 8
    conv = 16 * 16 * 8 * (3 * 3 * 3) + 16 * 16 * 16 * 8
    assert info["macs_by_op"] == {"CONV_2D": conv, "DEPTHWISE_CONV_2D": 16 * 16 * 8 * 9, "FULLY_CONNECTED": 16 * 8}
    assert info["macs"] == sum(info["macs_by_op"].values())
    bn = 4 * (8 + 8 + 16)
    assert info["params"] == 3 * 3 * 3 * 8 + bn + 3 * 3 * 8 + 8 * 16 + 16 * 8 + 8
    # the graph count does not depend on the format
    int8 = next(c for c in r["configs"] if c["format"] == "int8")
    assert harness.graph_macs(int8["file"])["macs"] == info["macs"]


def test_quick_accuracy_on_the_same_test_images(quick):
    out, r = quick
    n = r["data"]["n"]
    with open(out / "quick_inputs" / "split.csv") as f:
        test_rows = [row for row in csv.DictReader(f) if row["split"] == "test"]
    assert r["data"]["per_class"] == {lab: sum(row["label"] == lab for row in test_rows) for lab in LABELS}
    assert n == len(test_rows) > 0
    for fmt in FORMATS:
        a = r["accuracy"][f"tiny_32|{fmt}"]
        m = a["metrics"]
        assert a["n"] == m["n"] == n and a["threads"] == "all"
        # rows of the confusion matrix are the test split's classes, image for image
        assert np.asarray(m["confusion_matrix"]).sum(1).tolist() == list(r["data"]["per_class"].values())
        assert set(m["per_class"]) == set(LABELS)
        # the generated classes are easy: a working pipeline gets them, a broken one is at chance
        assert m["accuracy"] > 0.8, (fmt, m["accuracy"])
        assert 0 <= m["macro"]["f1"] <= 1 and 0 <= m["balanced_accuracy"] <= 1


def test_quick_ratios(quick):
    _, r = quick
    by = {(c["format"], c["threads"]): c for c in r["configs"]}
    assert r["baseline"] == "tiny_32"
    for (_, th), c in by.items():
        f32, base = by[("float32", th)], by[("int8", th)]
        rat = c["ratios"]
        assert rat["speedup_vs_float32"] == pytest.approx(f32["latency_ms"]["p50"] / c["latency_ms"]["p50"])
        assert rat["size_vs_float32"] == pytest.approx(c["size_bytes"] / f32["size_bytes"])
        assert rat["speedup_vs_baseline_int8"] == pytest.approx(base["latency_ms"]["p50"] / c["latency_ms"]["p50"])
        assert rat["size_vs_baseline_int8"] == pytest.approx(c["size_bytes"] / base["size_bytes"])
    assert by[("float32", "1")]["ratios"]["speedup_vs_float32"] == 1.0
    assert by[("int8", "all")]["ratios"]["accuracy_points_vs_baseline_int8"] == 0.0


def test_quick_report_files(quick):
    out, r = quick
    md = (out / "REPORT.md").read_text()
    for name in report.PLOTS.values():
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"]({name})" in md
    for fmt in FORMATS:
        assert f"| tiny_32 | {fmt} |" in md
    for text in (
        "Table 2",
        "97.89",
        "specificity",
        "Edge targets (estimates, not measurements)",
        "Pareto",
        r["machine"]["cpu_model"],
    ):
        assert text in md
    # the report can be rebuilt from the JSON alone, elsewhere
    other = out / "again"
    from edge_bloodcls.cli import main

    res = CliRunner().invoke(main, ["bench-report", str(out / "bench.json"), "--out", str(other)])
    assert res.exit_code == 0, res.output
    assert (other / "REPORT.md").read_text() == md


def test_rerun_resumes_without_measuring_again(quick):
    out, r = quick
    t = time.time()
    _bench("--quick", "--out", str(out), "--no-report")
    again = json.loads((out / "bench.json").read_text())
    assert [c["measured"] for c in again["configs"]] == [c["measured"] for c in r["configs"]]
    assert again["accuracy"] == r["accuracy"]
    assert len(again["sessions"]) == len(r["sessions"]) + 1
    assert time.time() - t < 30


# --- the arithmetic alone -------------------------------------------------------------------


def test_percentiles_are_ordered_and_numpy_exact():
    rng = np.random.default_rng(0)
    ms = list(rng.lognormal(1.0, 0.5, 501))
    p = percentiles(ms)
    assert p["p50"] == pytest.approx(np.median(ms))
    assert p["p99"] == pytest.approx(np.percentile(ms, 99))
    assert p["min"] <= p["p50"] <= p["p90"] <= p["p99"] <= p["max"] and p["n"] == 501


def test_pareto_front():
    pts = [(10, 0.9), (5, 0.8), (20, 0.95), (12, 0.85), (5, 0.7), (30, 0.94)]
    assert report.pareto(pts) == [1, 0, 2]


def test_training_machine_named_per_chunk():
    one = {"chunks": [{"epochs": [1, 6], "seconds": 7920.0, "machine": "AMD EPYC, 2 cores"}]}
    assert report._machines(one) == "AMD EPYC, 2 cores"
    two = {"chunks": [*one["chunks"], {"epochs": [7, 20], "seconds": 1800.0, "machine": "Xeon, 16 cores, 1 GPU"}]}
    assert report._machines(two) == (
        "AMD EPYC, 2 cores (epochs 1-6, 2.2 h); Xeon, 16 cores, 1 GPU (epochs 7-20, 0.5 h)"
    )
    assert "not recorded" in report._machines({})


def _config(model, fmt, th, p50, size):
    return {"model": model, "format": fmt, "threads": th, "size_bytes": size, "latency_ms": {"p50": p50}}


def test_derive_ratios_against_float32_and_baseline():
    r = Results()
    r.configs = [
        _config("mobilenetv2_96", "float32", "1", 8.0, 9_000_000),
        _config("mobilenetv2_96", "int8", "1", 2.0, 2_700_000),
        _config("vgg16_96", "float32", "1", 80.0, 59_000_000),
        _config("vgg16_96", "int8", "1", 20.0, 15_000_000),
        _config("vgg16_96", "int8", "all", 11.0, 15_000_000),
    ]
    r.set_accuracy("mobilenetv2_96", "int8", {"metrics": {"accuracy": 0.95}})
    r.set_accuracy("vgg16_96", "int8", {"metrics": {"accuracy": 0.90}})
    r.set_accuracy("vgg16_96", "float32", {"metrics": None, "note": "not trained"})
    r.derive("mobilenetv2_96")
    v = r.configs[3]["ratios"]
    assert v["speedup_vs_float32"] == 4.0 and v["size_vs_float32"] == pytest.approx(15 / 59)
    assert v["speedup_vs_baseline_int8"] == 0.1 and v["size_vs_baseline_int8"] == pytest.approx(15 / 2.7)
    assert v["accuracy_points_vs_baseline_int8"] == -5.0
    assert "accuracy_points_vs_baseline_int8" not in r.configs[2]["ratios"]
    # no float32 and no baseline at 'all' threads: no ratio rather than a wrong one
    assert r.configs[4]["ratios"] == {}
    assert r.metrics("vgg16_96", "float32") is None and r.metrics("vgg16_96", "int8") == {"accuracy": 0.90}


def test_resolve_model_untrained_run_and_names(tmp_path):
    runs = tmp_path / "runs"
    (runs / "resnet50_96").mkdir(parents=True)
    (runs / "resnet50_96" / "config.json").write_text(json.dumps({"train": {"arch": "resnet50", "img_size": 96}}))
    opts = harness.BenchOptions(out=str(tmp_path / "out"), runs_dir=str(runs))
    src = harness.resolve_model("resnet50", opts)
    assert (src.key, src.arch, src.size, src.kind, src.trained) == ("resnet50_96", "resnet50", 96, "untrained", False)
    assert "not trained" in src.note
    trained = runs / "vgg16_96"
    trained.mkdir()
    (trained / "model.keras").write_bytes(b"stand-in")
    (trained / "metrics.json").write_text(
        json.dumps({"epochs_run": 2, "epochs_planned": 30, "stop_reason": "time budget of 10 min reached"})
    )
    src = harness.resolve_model("vgg16_96", opts)
    assert (src.kind, src.trained, src.arch, src.size) == ("run", True, "vgg16", 96)
    assert "time budget" in src.note and src.training["epochs_run"] == 2
    ref = harness.resolve_model(harness.REFERENCE, opts)
    assert (ref.role, ref.size, ref.trained, ref.formats) == ("reference", 224, False, ("float32", "int8"))


def test_a_second_writer_of_the_same_results_is_refused(tmp_path, monkeypatch):
    import threading

    inside = threading.Event()
    release = threading.Event()

    def hold(opts, log):
        inside.set()
        release.wait(10)

    monkeypatch.setattr(harness, "_run_bench", hold)
    first = threading.Thread(target=harness.run_bench, args=(harness.BenchOptions(out=str(tmp_path)), print))
    first.start()
    try:
        assert inside.wait(10)
        with pytest.raises(harness.BenchError, match="another bench"):
            harness.run_bench(harness.BenchOptions(out=str(tmp_path)), print)
    finally:
        release.set()
        first.join()


def test_a_bundle_as_a_model_compares_with_the_run_it_came_from(quick, tmp_path):
    out, r = quick
    int8 = next(c for c in r["configs"] if c["format"] == "int8")
    bundle = int8["file"].replace(".tflite", ".json")
    _bench(
        "--models",
        bundle,
        "--data",
        r["data"]["source"].rsplit(":", 1)[0],
        "--formats",
        "int8",
        "--threads",
        "1",
        "--runs",
        "5",
        "--warmup",
        "1",
        "--no-shipped",
        "--baseline",
        "tiny_32",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(out),
        "--no-report",
    )
    again = json.loads((out / "bench.json").read_text())
    key = "tiny_32_int8"
    info = again["models"][key]
    assert (info["kind"], info["source_sha256"]) == ("bundle", r["models"]["tiny_32"]["source_sha256"])
    row = next(c for c in again["configs"] if c["model"] == key)
    f32 = next(
        c for c in again["configs"] if c["model"] == "tiny_32" and c["format"] == "float32" and c["threads"] == "1"
    )
    assert row["bundle_sha256"] == int8["bundle_sha256"]
    assert row["ratios"]["size_vs_float32"] == pytest.approx(row["size_bytes"] / f32["size_bytes"])
    # the same file on the same images (decoded afresh here, into another cache): the same predictions
    assert (
        again["accuracy"][f"{key}|int8"]["metrics"]["confusion_matrix"]
        == r["accuracy"]["tiny_32|int8"]["metrics"]["confusion_matrix"]
    )


def test_results_file_round_trip_and_rows_keyed_by_their_fields(quick, tmp_path):
    out, _ = quick
    r = json.loads((out / "bench.json").read_text())  # as the tests before this one left it
    res = Results.load(out / "bench.json")
    # every configuration in the file has exactly ConfigRow's fields: one definition of its keys
    for c in r["configs"]:
        assert list(c) == [f for f in ConfigRow.__dataclass_fields__]
        assert res.config(c["model"], c["format"], c["threads"]) == c
    assert res.to_json() == r
    bad = tmp_path / "bench.json"
    bad.write_text(json.dumps({**r, "schema": 99}))
    with pytest.raises(harness.BenchError, match="schema 99"):
        Results.load(bad)

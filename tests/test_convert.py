"""The converter on a tiny trained model: every format runs in the runtime, int8 is integer
throughout, bundles are tamper-evident, and the gate catches a real quantization failure."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tf_keras = pytest.importorskip("tf_keras")

from convert_fixtures import SIZE, _val_images, convert  # noqa: E402

from edge_bloodcls.convert import calibrate, edgetpu, formats, gate  # noqa: E402
from edge_bloodcls.edge_runtime.core.bundle import BundleError, load_bundle  # noqa: E402
from edge_bloodcls.edge_runtime.core.classifier import Classifier  # noqa: E402
from edge_bloodcls.edge_runtime.core.preprocess import load_rgb, normalise, resize  # noqa: E402
from edge_bloodcls.edge_runtime.core.spec import LABELS, InputSpec  # noqa: E402


@pytest.mark.parametrize("mode", ["float32", "float16", "dynamic", "int8"])
def test_each_format_exports_and_runs_in_the_runtime(exports, run_dir, mode):
    bundle = exports(mode)
    m = bundle.manifest
    assert m["quantization"] == mode and m["arch"] == "tiny" and m["labels"] == list(LABELS)
    assert m["input"]["size"] == [SIZE, SIZE] and m["input"]["mean"] == [127.5] * 3
    assert m["split_sha256"] and m["interpreter"]["interpreter"] and m["params"] > 0
    met = m["metrics"]
    assert met["eval_split"] == "val" and met["n"] == 64 and met["test"]["n"] > 0
    assert met["float"]["accuracy"] >= 0.95  # the tiny model really learned the cells
    assert met["drop"] <= 1.0 and m["gate"]["passed"]
    # The runtime end to end, from image files: its accuracy is the one the manifest records.
    clf = Classifier.load(bundle.tflite)
    paths, y = _val_images(run_dir)
    pred = [LABELS.index(clf.classify(str(p)).label) for p in paths]
    assert np.mean(np.array(pred) == y) == pytest.approx(met["exported"]["accuracy"])


def test_int8_is_integer_throughout(exports):
    bundle = exports("int8")
    data = bundle.tflite.read_bytes()
    assert gate.float_ops(data) == []
    for op in gate.ops(data):
        assert set(op["inputs"] + op["outputs"]) <= {"int8", "int32"}, op
    m = bundle.manifest
    assert m["input"]["dtype"] == "int8" and m["output"]["dtype"] == "int8"
    # Calibrated on the runtime's pixels: the int8 input covers (nearly) all of [-1, 1].
    assert calibrate.input_coverage(m["input"]["quant"], "int8", bundle.spec) > 0.9
    assert m["output"]["quant"]["scale"] == pytest.approx(1 / 256)  # softmax output, int8
    assert m["calibration"]["source"] == "split.csv:train"
    assert set(m["calibration"]["per_class"]) == set(LABELS)
    # The float-op detector is not vacuous: the float32 export is all float ops.
    assert len(gate.float_ops(exports("float32").tflite.read_bytes())) >= 4


def _weight_scales(tflite_path) -> int:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(tflite_path))
    return max(len(d["quantization_parameters"]["scales"]) for d in it.get_tensor_details())


def test_per_tensor_int8_has_one_scale_a_tensor(exports, run_dir, tmp_path):
    res = convert(run_dir, tmp_path, "--quantize", "int8", "--per-tensor")
    assert res.exit_code == 0, res.output
    b = load_bundle(tmp_path / f"tiny_{SIZE}_int8_pt")
    assert b.manifest["converter"]["per_channel_weights"] is False and gate.float_ops(b.tflite.read_bytes()) == []
    assert _weight_scales(b.tflite) == 1 and _weight_scales(exports("int8").tflite) == 16  # the conv's channels
    assert b.manifest["size_bytes"] < exports("int8").manifest["size_bytes"]


def test_sizes_follow_the_format(exports):
    sizes = {mode: exports(mode).manifest["size_bytes"] for mode in ("float32", "float16", "int8")}
    assert sizes["int8"] < sizes["float16"] < sizes["float32"]


def test_modified_model_file_is_rejected(exports, tmp_path):
    src = exports("int8")
    for ext in (".tflite", ".json"):
        shutil.copy(src.tflite.with_suffix(ext), tmp_path / f"m{ext}")
    data = bytearray((tmp_path / "m.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "m.tflite").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(tmp_path / "m")
    with pytest.raises(BundleError, match="sha256"):
        Classifier.load(tmp_path / "m.tflite")


def _unit_scaled(source, spec, name=None):
    """The classic calibration bug: pixels / 255 instead of the model's (x - 127.5) / 127.5."""
    return resize(load_rgb(source), spec.size).astype(np.float32) / 255.0


def test_calibration_preprocessing_mismatch_fails_the_gate_and_writes_nothing(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(calibrate, "prepare", _unit_scaled)
    out = tmp_path / "out"
    res = convert(run_dir, out, "--quantize", "int8")
    assert res.exit_code == 1, res.output
    assert "exceeds --max-drop 1" in res.output
    assert "quantized to [0," in res.output  # the input-range check names the cause
    drop = float(res.output.split("drop ")[1].split(" points")[0])
    assert drop > 10  # a real loss, measured by the runtime on the val split
    assert not list(out.glob("*.tflite")) and not list(out.glob("*.json"))
    report = out / f"tiny_{SIZE}_int8.quant_debug.csv"
    assert report.exists() and "rmse/scale" in report.read_text().splitlines()[0]

    forced = convert(run_dir, out, "--quantize", "int8", "--force")
    assert forced.exit_code == 0, forced.output
    m = load_bundle(out / f"tiny_{SIZE}_int8").manifest
    assert m["gate"]["passed"] is False and m["gate"]["forced"] and m["metrics"]["drop"] > 10


def test_calibration_range_checks():
    spec = InputSpec.named(SIZE)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    assert calibrate.check_samples(normalise(pixels, spec), spec) is None
    assert "not prepared with the model's preprocessing" in calibrate.check_samples(pixels.astype(np.float32), spec)
    # int8 input quantized for [0, 1] data cannot represent half of what the runtime feeds.
    assert calibrate.input_coverage({"scale": 1 / 255, "zero_point": -128}, "int8", spec) == pytest.approx(0.5)
    assert calibrate.coverage_problem({"scale": 1 / 255, "zero_point": -128}, "int8", spec)
    assert calibrate.coverage_problem({"scale": 2 / 255, "zero_point": -1}, "int8", spec) is None
    assert calibrate.coverage_problem(None, "float32", spec) is None


def test_stratified_sample_keeps_every_class():
    y = np.repeat(np.arange(8), [50, 10, 5, 100, 20, 20, 3, 30])
    idx = calibrate.stratified(y, 40, seed=1)
    assert len(idx) == 40 and len(set(idx)) == 40
    assert set(y[idx]) == set(range(8))
    assert np.array_equal(idx, calibrate.stratified(y, 40, seed=1))
    assert len(calibrate.stratified(y, None)) == len(y)


def test_qat_fine_tunes_and_exports_integer_only(run_dir, tmp_path):
    res = convert(
        run_dir, tmp_path, "--quantize", "int8", "--qat", "--qat-epochs", "1", "--batch-size", "16", "--qat-lr", "1e-4"
    )
    assert res.exit_code == 0, res.output
    bundle = load_bundle(tmp_path / f"tiny_{SIZE}_qat_int8")
    assert bundle.quantization == "qat-int8" and bundle.manifest["gate"]["passed"]
    assert gate.float_ops(bundle.tflite.read_bytes()) == []
    assert bundle.manifest["input"]["dtype"] == "int8"
    history = (tmp_path / f"tiny_{SIZE}_qat_int8.history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,loss,accuracy,val_loss,val_accuracy") and len(history) == 2


def test_nested_backbone_is_flattened_for_qat():
    from edge_bloodcls.convert import qat
    from edge_bloodcls.train import archs

    model = archs.build("mobilenetv2", SIZE, "none", width=0.35)
    flat = qat.flatten(model)
    assert not any(isinstance(layer, tf_keras.Model) for layer in flat.layers)
    x = np.random.default_rng(0).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(flat(x).numpy(), model(x).numpy(), atol=1e-6)


def test_edgetpu_without_compiler_says_how_to_install(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(edgetpu, "find_compiler", lambda: None)
    cells = run_dir.parent / "cells"
    res = convert(
        run_dir, tmp_path, "--quantize", "int8", "--edgetpu", "--calibration", str(cells), "--eval-samples", "24"
    )
    assert res.exit_code == 2, res.output
    assert "apt-get install edgetpu-compiler" in res.output
    assert not list(tmp_path.glob("*_edgetpu*"))  # no pretend compilation
    base = load_bundle(tmp_path / f"tiny_{SIZE}_int8_uint8io")  # the CPU model, ready to compile
    m = base.manifest
    assert m["input"]["dtype"] == "uint8" and m["output"]["dtype"] == "uint8"
    assert m["calibration"]["source"] == str(cells) and m["metrics"]["n"] == 24
    assert gate.io_details(base.tflite.read_bytes())["input"]["shape"] == [1, SIZE, SIZE, 3]  # static for the TPU
    assert gate.float_ops(base.tflite.read_bytes()) == []


def test_edgetpu_log_parsing():
    # The layout of `edgetpu_compiler -s` (coral.ai/docs/edgetpu/compiler), abridged.
    text = """Edge TPU Compiler version 16.0.384591198
Model compiled successfully in 412 ms.
Number of Edge TPU subgraphs: 1
Total number of operations: 6
Operator                       Count      Status

CONV_2D                        1          Mapped to Edge TPU
MEAN                           1          Mapped to Edge TPU
FULLY_CONNECTED                1          Mapped to Edge TPU
SOFTMAX                        1          Mapped to Edge TPU
REDUCE_MAX                     1          Operation not supported
CONCATENATION                  1          More than one subgraph is not supported
"""
    info = edgetpu.parse_log(text)
    assert info["compiler_version"] == "16.0.384591198" and info["subgraphs"] == 1
    assert info["mapped_ops"] == 4 and info["cpu_ops"] == 2
    assert info["ops"][4] == {"op": "REDUCE_MAX", "count": 1, "status": "Operation not supported"}


def test_option_errors_exit_2(run_dir, tmp_path):
    for args in (
        ["--quantize", "float16", "--io", "int8"],
        ["--quantize", "dynamic", "--qat"],
        ["--quantize", "float32", "--edgetpu"],
        ["--quantize", "int8", "--qat", "--per-tensor"],
    ):
        res = convert(run_dir, tmp_path, *args)
        assert res.exit_code == 2, (args, res.output)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError):
        formats.resolve("float16", qat=True)
    assert set(formats.FORMATS) == {"float32", "float16", "dynamic", "int8", "qat-int8", "edgetpu"}


def test_summary_and_shipping_acceptance(exports, tmp_path):
    from edge_bloodcls.convert import summary

    for mode in ("float32", "float16", "dynamic", "int8"):
        exports(mode)
    export_dir = exports("int8").tflite.parent
    models = tmp_path / "models"
    rc = summary.main([str(export_dir), "--out", str(tmp_path / "res" / "convert_tiny"), "--ship", str(models)])
    s = json.loads((tmp_path / "res" / "convert_tiny.json").read_text())
    assert [r["quantization"] for r in s["rows"]][:4] == ["float32", "float16", "dynamic", "int8"]
    assert all(r["test"] is not None for r in s["rows"])
    acc = s["acceptance"]
    assert acc["int8"] == f"tiny_{SIZE}_int8" and acc["max_drop"] == summary.MAX_SHIP_DROP
    assert "| tiny_32_int8 | int8 | int8 |" in (tmp_path / "res" / "convert_tiny.md").read_text()
    # A 760-parameter model is mostly flatbuffer overhead: int8 is far above the size limit of
    # float32, so it is not shipped.
    assert acc["size_ratio"] > summary.MAX_SIZE_RATIO and not acc["passed"] and rc == 1 and not models.exists()
    shipped = summary.ship(exports("int8"), exports("float32"), models)
    assert [p.name for p in shipped] == [f"tiny_{SIZE}_int8.tflite", f"tiny_{SIZE}_float32.tflite"]
    b = load_bundle(models / f"tiny_{SIZE}_int8")
    assert b.sha256 == exports("int8").sha256 and b.manifest["metrics"] == exports("int8").manifest["metrics"]

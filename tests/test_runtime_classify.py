"""classify / evaluate / models: outputs, bad inputs, exit codes."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from cell_images import make_dataset, synthetic_cell
from click.testing import CliRunner
from PIL import Image

from edge_bloodcls.edge_runtime import cli as commands
from edge_bloodcls.edge_runtime.core.bundle import DEFAULT_MODEL
from edge_bloodcls.edge_runtime.core.spec import LABELS

# name -> should it be classified (True) or fail with a reason containing the text
BAD_INPUTS = {
    "corrupt.png": "corrupt",
    "truncated.jpg": "truncated",
    "empty.jpg": "empty file",
    "notes.jpg": "not an image",
    "tiny.png": "too small",
    "bomb.png": "too large",
    "huge.png": "too large",
    "gray.png": True,
    "alpha.png": True,
    "sixteen.png": True,
}


def _png(im: Image.Image) -> bytes:
    b = io.BytesIO()
    im.save(b, "PNG")
    return b.getvalue()


def _patch_png_size(png: bytes, w: int, h: int) -> bytes:
    """Claim w x h in the header (with a valid CRC) while the data stays small: a decompression bomb."""
    i = png.index(b"IHDR")
    data = bytearray(png)
    data[i + 4 : i + 12] = struct.pack(">II", w, h)
    data[i + 17 : i + 21] = struct.pack(">I", zlib.crc32(bytes(data[i : i + 17])) & 0xFFFFFFFF)
    return bytes(data)


def make_bad_inputs(d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    cell = synthetic_cell(0, rng)
    noise = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    png = bytearray(_png(noise))
    i = png.index(b"IDAT")
    png[i + 20 : i + 200] = rng.integers(0, 255, 180, dtype=np.uint8).tobytes()
    b = io.BytesIO()
    cell.save(b, "JPEG", quality=90)
    jpg = b.getvalue()
    files = {
        "corrupt.png": bytes(png),
        "truncated.jpg": jpg[: len(jpg) // 2],
        "empty.jpg": b"",
        "notes.jpg": b"patient notes, not a picture\n",
        "tiny.png": _png(cell.resize((8, 8))),
        "bomb.png": _patch_png_size(_png(cell), 100_000, 100_000),
        "huge.png": _png(Image.new("1", (7000, 6000))),  # really decodable, 42 Mpx
        "gray.png": _png(cell.convert("L")),
        "alpha.png": _png(cell.convert("RGBA")),
        "sixteen.png": _png(Image.fromarray(np.asarray(cell.convert("L"), np.uint16) * 257)),
    }
    out = {}
    for name, data in files.items():
        (d / name).write_bytes(data)
        out[name] = d / name
    assert Image.open(out["sixteen.png"]).mode.startswith("I;16")
    return out


def run(*args):
    from edge_bloodcls.cli import main

    return CliRunner().invoke(main, list(map(str, args)))


def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_classify_jsonl_fields_and_correct_labels(bundles, tmp_path):
    data = make_dataset(tmp_path / "cells", n_per_class=3, seed=11)
    r = run("classify", data, "--model", bundles["float32"], "--format", "jsonl", "--top-k", "2")
    assert r.exit_code == 0, r.output
    rows = _jsonl(r.stdout)
    assert len(rows) == 3 * len(LABELS)
    for row in rows:
        assert {"path", "label", "confidence", "probs", "latency_ms", "review", "interpreter"} <= set(row)
        assert set(row["probs"]) == set(LABELS)
        assert abs(sum(row["probs"].values()) - 1) < 1e-3
        assert row["label"] == max(row["probs"], key=row["probs"].get)
        assert row["confidence"] == pytest.approx(row["probs"][row["label"]], abs=1e-5)
        assert row["review"] == (row["confidence"] < 0.8)
        assert row["interpreter"] in ("ai_edge_litert", "tflite_runtime", "tensorflow.lite")
        assert row["latency_ms"] > 0
        assert len(row["top"]) == 2
    # The tiny model learnt the synthetic classes: labels must come out in the manifest's order.
    correct = sum(Path(row["path"]).parent.name == row["label"] for row in rows)
    assert correct >= 0.8 * len(rows)


def test_bad_inputs_never_stop_the_run(bundles, tmp_path):
    files = make_bad_inputs(tmp_path / "bad")
    good = tmp_path / "good.jpg"
    synthetic_cell(3, np.random.default_rng(1)).save(good)
    r = run("classify", *files.values(), good, "--model", bundles["int8"], "--format", "jsonl")
    assert r.exit_code == 1
    rows = {Path(row["path"]).name: row for row in _jsonl(r.stdout)}
    assert set(rows) == set(files) | {"good.jpg"}
    err_lines = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    for name, expect in BAD_INPUTS.items():
        row = rows[name]
        if expect is True:
            assert "error" not in row, row
            assert row["label"] in LABELS
        else:
            assert expect in row["error"], row
            # one line on stderr naming the file and the reason
            assert sum(name in line and expect in line for line in err_lines) == 1, r.stderr
    assert rows["good.jpg"]["label"] == LABELS[3]
    assert "3 failed" not in r.stderr and "7 failed" in r.stderr


def test_classify_exit_zero_when_all_good_and_csv_table(bundles, tmp_path):
    rng = np.random.default_rng(2)
    for i in range(3):
        synthetic_cell(i, rng).save(tmp_path / f"c{i}.png")
    r = run("classify", tmp_path / "*.png", "--model", bundles["float32"], "--format", "csv")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith(
        "path,label,confidence,review,latency_ms,interpreter,error,ood_score,ood,review_reason,p_basophil"
    )
    assert len(lines) == 4
    r = run("classify", tmp_path, "--model", bundles["float32"])
    assert r.exit_code == 0
    assert sum(line.endswith(".png") for line in r.stdout.splitlines()) == 3


def test_missing_inputs_and_unmatched_glob_fail(bundles, tmp_path):
    r = run("classify", tmp_path / "nope.jpg", tmp_path / "*.tif", "--model", bundles["float32"], "--format", "jsonl")
    assert r.exit_code == 1
    errs = [row["error"] for row in _jsonl(r.stdout)]
    assert errs == ["no such file or folder", "no file matches this pattern"]


def test_missing_default_model_and_invalid_bundle_exit_2(bundles, tmp_path, monkeypatch):
    img = tmp_path / "c.png"
    synthetic_cell(0, np.random.default_rng(0)).save(img)
    monkeypatch.setattr(commands, "MODELS_DIR", tmp_path / "no_models")
    monkeypatch.setattr("edge_bloodcls.edge_runtime.core.bundle.MODELS_DIR", tmp_path / "no_models")
    r = run("classify", img)
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and f"bundled default {DEFAULT_MODEL} is not installed" in r.stderr

    broken = tmp_path / "broken"
    broken.mkdir()
    for suffix in (".tflite", ".json"):
        shutil.copy(bundles["float32"].with_suffix(suffix), broken / f"m{suffix}")
    with open(broken / "m.tflite", "ab") as f:
        f.write(b"\0")
    r = run("classify", img, "--model", broken / "m.tflite")
    assert r.exit_code == 2 and "does not match the manifest" in r.stderr
    assert r.stderr.count("\n") == 1


def test_evaluate_reports_metrics_and_interpreter(bundles, tmp_path):
    data = make_dataset(tmp_path / "eval", n_per_class=4, seed=21)
    (data / "neutrophil" / ".DS_0001.jpg").write_bytes(b"\0\0\0\1Bud1")  # as in the PBC archive
    (data / "unknown_class").mkdir()
    out = tmp_path / "eval.json"
    r = run("evaluate", data, "--model", bundles["int8"], "--json", out)
    assert r.exit_code == 1, r.output  # one unreadable image: reported, metrics of the rest, exit 1
    assert "accuracy=" in r.stdout and "confusion matrix" in r.stdout
    rep = json.loads(out.read_text())
    m = rep["metrics"]
    assert rep["interpreter"] in ("ai_edge_litert", "tflite_runtime", "tensorflow.lite")
    assert rep["n_failed"] == 1 and rep["failed"][0]["path"].endswith(".DS_0001.jpg")
    assert rep["ignored_folders"] == ["unknown_class"]
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (8, 8) and cm.sum() == m["n"] == 4 * len(LABELS)
    assert cm.sum(axis=1).tolist() == [4] * len(LABELS)
    assert m["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert m["accuracy"] >= 0.75
    assert set(m["per_class"]) == set(LABELS) and {"precision", "recall", "f1"} <= set(m["macro"])
    assert 0 <= m["balanced_accuracy"] <= 1


def test_models_lists_bundles_and_says_when_none(bundles, tmp_path, monkeypatch):
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    monkeypatch.setattr(commands, "MODELS_DIR", models_dir)
    r = run("models")
    assert r.exit_code == 0 and "no usable bundled model" in r.stderr and "edge-bloodcls convert" in r.stderr
    for suffix in (".tflite", ".json"):
        shutil.copy(bundles["int8"].with_suffix(suffix), models_dir / f"tiny_int8{suffix}")
    (models_dir / "stale.json").write_text('{"schema": 99}')
    r = run("models", "--json")
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    good = rows["tiny_int8"]
    assert good["quantization"] == "int8" and good["input_size"] == [32, 32]
    assert len(good["sha256"]) == 64 and good["accuracy"]["unstated"] > 0.5
    assert "schema" in rows["stale"]["error"]
    r = run("models")
    assert "tiny_int8" in r.stdout and "INVALID" in r.stdout and "val acc" in r.stdout

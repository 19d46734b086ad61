"""The manifest decides the answer as much as the weights: it is hashed, validated on its own and
checked against the model at load. Every bad manifest is one line and exit 2, never a wrong answer."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from edge_bloodcls.edge_runtime import cli as commands
from edge_bloodcls.edge_runtime.core.bundle import BundleError, load_bundle, manifest_sha256
from edge_bloodcls.edge_runtime.core.classifier import Classifier


def _copy(src, dest, name=None):
    dest.mkdir(parents=True, exist_ok=True)
    name = name or src.stem
    shutil.copy(src, dest / f"{name}.tflite")
    shutil.copy(src.with_suffix(".json"), dest / f"{name}.json")
    return dest / f"{name}.tflite"


def _edit(p, change, rehash=True):
    j = p.with_suffix(".json")
    m = json.loads(j.read_text())
    m = change(m) or m
    if rehash and isinstance(m, dict):
        m["manifest_sha256"] = manifest_sha256(m)  # consistent with itself, wrong about the model
    j.write_text(json.dumps(m))


def _refused(p, match):
    with pytest.raises(BundleError, match=match):
        Classifier(load_bundle(p), threads=1)
    res = CliRunner().invoke(commands.classify, ["nothing.jpg", "--model", str(p)])
    assert res.exit_code == 2, res.output
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_edited_manifest_is_refused_by_its_hash(bundles, tmp_path):
    p = _copy(bundles["int8"], tmp_path)
    _edit(p, lambda m: m.update(labels=m["labels"][::-1]), rehash=False)
    _refused(p, "edited after export")


def test_label_count_must_match_the_model_output(bundles, tmp_path):
    p = _copy(bundles["int8"], tmp_path)
    _edit(p, lambda m: m.update(labels=m["labels"][:7]))
    _refused(p, "no model output has 7 values")


def test_input_size_must_match_the_model(bundles, tmp_path):
    p = _copy(bundles["float32"], tmp_path)
    _edit(p, lambda m: m["input"].update(size=[48, 48]))
    _refused(p, r"'input.size' \[48, 48\] does not match")


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda m: m["input"].update(std=[127.5, 0, 127.5]), "'input.std' has a zero"),
        (lambda m: m["input"].update(color="BRG"), "'input.color'"),
        (lambda m: m.update(labels=None), "'labels' must be a list"),
        (lambda m: m.update(labels=["a", "a", "b", "c", "d", "e", "f", "g"]), "'labels' must be a list of distinct"),
        (lambda m: m.update(input={}), "'input.size'"),
        (lambda m: [m], "JSON list, not an object"),
    ],
)
def test_invalid_manifest_fields_are_named(bundles, tmp_path, change, match):
    p = _copy(bundles["int8"], tmp_path)
    _edit(p, change)
    _refused(p, match)


def test_dotted_bundle_name_loads_itself_not_a_prefix(bundles, tmp_path):
    _copy(bundles["int8"], tmp_path, "net")
    dotted = _copy(bundles["float32"], tmp_path, "net.v2")
    assert load_bundle(dotted).tflite.name == "net.v2.tflite"
    assert load_bundle(tmp_path / "net.v2").tflite.name == "net.v2.tflite"
    assert load_bundle(tmp_path / "net.tflite").tflite.name == "net.tflite"

"""Trust statistics travel with every exported bundle: OOD score, temperature, review threshold,
all covered by the bundle's hashes and checked against the model at load."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("tensorflow")

from convert_fixtures import _val_images  # noqa: E402

from edge_bloodcls.edge_runtime import cli as commands  # noqa: E402
from edge_bloodcls.edge_runtime.core.bundle import BundleError, load_bundle, manifest_sha256  # noqa: E402
from edge_bloodcls.edge_runtime.core.classifier import Classifier  # noqa: E402


def _copy(bundle, dest):
    dest.mkdir(parents=True, exist_ok=True)
    for p in bundle.tflite.parent.glob(f"{bundle.name}.*"):
        shutil.copy(p, dest / p.name)
    return dest / bundle.tflite.name


def _foreign_cells(n=12, seed=3):
    """Cells of another 'lab': a different background, stain and scale than the training set."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = np.full((64, 64, 3), (60, 160, 90), np.float32) + rng.normal(0, 25, (64, 64, 3))
        a[16:48, 16:48] = (250, 250, 40)
        out.append(np.clip(a, 0, 255).astype(np.uint8))
    return out


@pytest.mark.parametrize("mode", ["float32", "int8"])
def test_export_carries_trust_and_flags_foreign_cells(exports, run_dir, mode):
    b = exports(mode)
    t = b.manifest["trust"]
    assert b.trust is not None and b.manifest["features"]["dim"] == b.trust.feature_dim == t["feature_dim"]
    assert t["ood_threshold"] > 0 and t["temperature"] > 0 and 0 <= t["review_threshold"] <= 1
    assert b.trust_path.stat().st_size < 1_000_000
    # The features come out of the same graph: int8 for the int8 export.
    assert b.manifest["features"]["dtype"] == ("int8" if mode == "int8" else "float32")
    clf = Classifier(b, threads=1)
    paths, _ = _val_images(run_dir)
    home = [clf.classify(str(p)) for p in paths]
    foreign = [clf.classify(x) for x in _foreign_cells()]
    assert sum(p.ood for p in home) <= 0.2 * len(home)
    assert all(p.ood and p.review and "out of distribution" in p.review_reason for p in foreign)
    assert all(p.ood_score is not None for p in home + foreign)


def test_tampered_statistics_or_manifest_are_refused(exports, tmp_path):
    src = exports("int8")
    p = _copy(src, tmp_path / "a")
    npz = p.with_suffix(".trust.npz")
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="trust.npz: sha256 does not match"):
        load_bundle(p)

    p = _copy(src, tmp_path / "b")
    j = p.with_suffix(".json")
    m = json.loads(j.read_text())
    m["labels"] = m["labels"][::-1]
    j.write_text(json.dumps(m))
    with pytest.raises(BundleError, match="edited after export"):
        load_bundle(p)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("temperature", -1.0, "trust field 'temperature'"),
        ("ood_threshold", "high", "trust field 'ood_threshold'"),
        ("review_threshold", 1.5, "trust field 'review_threshold'"),
    ],
)
def test_invalid_trust_fields_refused_naming_the_field(exports, tmp_path, field, value, match):
    p = _copy(exports("int8"), tmp_path / field)
    j = p.with_suffix(".json")
    m = json.loads(j.read_text())
    m["trust"][field] = value
    m["manifest_sha256"] = manifest_sha256(m)  # a consistent but invalid manifest
    j.write_text(json.dumps(m))
    with pytest.raises(BundleError, match=match):
        load_bundle(p)


def test_statistics_that_do_not_match_the_feature_size_are_refused(exports, tmp_path):
    p = _copy(exports("int8"), tmp_path / "dim")
    npz = p.with_suffix(".trust.npz")
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["mean"] = np.zeros(arrays["mean"].shape[0] + 3, np.float32)
    arrays["proj"] = np.zeros((arrays["mean"].shape[0], arrays["proj"].shape[1]), np.float16)
    np.savez(npz, **arrays)
    j = p.with_suffix(".json")
    m = json.loads(j.read_text())
    from edge_bloodcls.edge_runtime.core.bundle import sha256_file

    m["trust"]["sha256"] = sha256_file(npz)
    m["manifest_sha256"] = manifest_sha256(m)
    j.write_text(json.dumps(m))
    with pytest.raises(BundleError, match="trust field 'mean' has .* features"):
        Classifier(load_bundle(p), threads=1)


def test_old_bundle_without_trust_still_works_and_says_so_once(exports, run_dir, tmp_path):
    p = _copy(exports("int8"), tmp_path / "old")
    j = p.with_suffix(".json")
    m = json.loads(j.read_text())
    for k in ("trust", "manifest_sha256", "features"):
        m.pop(k, None)
    m["manifest_sha256"] = manifest_sha256(m)  # an older export: hashed, without trust statistics
    j.write_text(json.dumps(m))
    p.with_suffix(".trust.npz").unlink()
    clf = Classifier(load_bundle(p), threads=1)
    assert clf.trust is None
    pred = clf.classify(str(_val_images(run_dir)[0][0]))
    assert pred.ood_score is None and pred.ood is False
    img = tmp_path / "cell.png"
    Image.fromarray(_foreign_cells(1)[0]).save(img)
    res = CliRunner().invoke(commands.classify, [str(img), str(img), "--model", str(p), "--format", "jsonl"])
    assert res.exit_code == 0
    assert res.stderr.count("has no trust statistics") == 1
    assert json.loads(res.stdout.splitlines()[0])["ood_score"] is None


def test_classify_and_evaluate_report_ood(exports, tmp_path):
    p = exports("int8").tflite
    d = tmp_path / "foreign" / "neutrophil"
    d.mkdir(parents=True)
    for i, x in enumerate(_foreign_cells(6)):
        Image.fromarray(x).save(d / f"{i}.png")
    res = CliRunner().invoke(commands.classify, [str(d), "--model", str(p), "--format", "jsonl"])
    assert res.exit_code == 0
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert all(r["ood"] and r["review"] and r["ood_score"] > 0 for r in recs)
    assert "6 out of distribution" in res.stderr and "do not look like" in res.stderr
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(commands.evaluate, [str(d.parent), "--model", str(p), "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "out of distribution 6 of 6" in res.stdout and "UNVALIDATED" in res.stdout
    rep = json.loads(out.read_text())["trust"]
    assert rep["ood"] == 6 and rep["coverage"] == 0.0 and 0.0 <= rep["ece"] <= 1.0

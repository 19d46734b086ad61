"""Data audit and split: defects found, invariants held."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter

import pytest
from cell_images import make_dataset
from click.testing import CliRunner

from edge_bloodcls.cli import main
from edge_bloodcls.train.data import audit, make_split, read_split, scan, write_split


@pytest.fixture
def defective(tmp_path):
    """A small class-folder set with the PBC archive's kinds of defects."""
    root = make_dataset(tmp_path / "cells", n_per_class=10)
    (root / "neutrophil" / ".DS_000001.jpg").write_bytes(b"\x00\x05\x16\x07Bud1" * 50)  # macOS metadata
    (root / "basophil" / "truncated.jpg").write_bytes((root / "basophil" / "BAS_0000.jpg").read_bytes()[:300])
    (root / "ig" / "empty.jpg").write_bytes(b"")
    shutil.copy(root / "monocyte" / "MON_0001.jpg", root / "monocyte" / "MON_copy1.jpg")
    shutil.copy(root / "monocyte" / "MON_0001.jpg", root / "monocyte" / "MON_copy2.jpg")
    shutil.copy(root / "platelet" / "PLA_0003.jpg", root / "platelet" / "PLA_copy.jpg")
    shutil.copy(root / "eosinophil" / "EOS_0002.jpg", root / "neutrophil" / "NEU_conflict.jpg")
    return root


def test_audit_finds_every_defect(defective):
    a = audit(scan(defective))
    bad = {u["path"]: u["reason"] for u in a["unreadable"]}
    assert set(bad) == {"neutrophil/.DS_000001.jpg", "basophil/truncated.jpg", "ig/empty.jpg"}
    assert "not an image" in bad["neutrophil/.DS_000001.jpg"]
    assert "empty" in bad["ig/empty.jpg"]
    assert a["redundant_copies"] == 3  # two extra monocytes, one extra platelet
    assert len(a["duplicate_groups"]) == 3  # the monocyte trio, the platelet pair, the conflict
    [conflict] = a["conflicting_duplicates"]
    assert {f["label"] for f in conflict["files"]} == {"eosinophil", "neutrophil"}
    assert a["size_histogram"] == {"64x64": a["readable"]}


def test_audit_cli_writes_json_and_never_crashes(defective, tmp_path):
    out = tmp_path / "audit.json"
    r = CliRunner().invoke(main, ["data", "audit", str(defective), "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "neutrophil/.DS_000001.jpg: not an image" in r.output
    assert json.loads(out.read_text())["files"] == 8 * 10 + 7


def test_split_invariants(defective, tmp_path):
    records = scan(defective)
    rows, report = make_split(records, (0.7, 0.2, 0.1), seed=3)
    # No content in two splits, and duplicates travel together.
    splits_of = {}
    for r in rows:
        splits_of.setdefault(r["sha256"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits_of.values())
    paths = {r["path"] for r in rows}
    assert {"monocyte/MON_0001.jpg", "monocyte/MON_copy1.jpg", "monocyte/MON_copy2.jpg"} <= paths
    # Conflicts dropped and reported; unreadable excluded.
    assert "neutrophil/NEU_conflict.jpg" not in paths and "eosinophil/EOS_0002.jpg" not in paths
    assert {d["path"] for d in report["dropped_conflicts"]} == {
        "neutrophil/NEU_conflict.jpg",
        "eosinophil/EOS_0002.jpg",
    }
    assert not paths & {"ig/empty.jpg", "basophil/truncated.jpg", "neutrophil/.DS_000001.jpg"}
    # Stratified: every class in every split, near the requested shares.
    for label in {r["label"] for r in rows}:
        c = Counter(r["split"] for r in rows if r["label"] == label)
        n = sum(c.values())
        assert set(c) == {"train", "val", "test"}
        assert abs(c["train"] / n - 0.7) <= 0.15 and abs(c["test"] / n - 0.1) <= 0.1


def test_split_is_deterministic_and_readable(defective, tmp_path):
    records = scan(defective)
    a = write_split(*make_split(records, seed=1), tmp_path / "a.csv", defective)
    b = write_split(*make_split(records, seed=1), tmp_path / "b.csv", defective)
    c = write_split(*make_split(records, seed=2), tmp_path / "c.csv", defective)
    assert a == b != c
    s = read_split(tmp_path / "a.csv")
    assert s.root == defective.resolve() and s.sha256 == a
    paths, y = s.items("train")
    assert all(p.exists() for p in paths) and len(paths) == len(y) > 0
    with open(tmp_path / "a.csv") as f:
        assert next(csv.reader(f)) == ["path", "label", "split", "sha256"]


def test_split_cli(defective, tmp_path):
    out = tmp_path / "split.csv"
    r = CliRunner().invoke(main, ["data", "split", str(defective), "--out", str(out), "--ratios", "0.6,0.2,0.2"])
    assert r.exit_code == 0, r.output
    assert "dropped neutrophil/NEU_conflict.jpg" in r.output
    assert json.loads(out.with_suffix(".json").read_text())["ratios"] == [0.6, 0.2, 0.2]
    bad = CliRunner().invoke(main, ["data", "split", str(defective), "--out", str(out), "--ratios", "0.5,0.5"])
    assert bad.exit_code != 0 and "three" in bad.output


def test_shared_pbc_audit(pbc_dir):
    """The shared PBC copy: the non-image file, 16 redundant copies, the one cross-label pair."""
    a = audit(scan(pbc_dir))
    assert [u["path"] for u in a["unreadable"]] == ["neutrophil/.DS_169665.jpg"]
    assert a["redundant_copies"] == 16
    [conflict] = a["conflicting_duplicates"]
    assert {f["path"] for f in conflict["files"]} == {"eosinophil/EO_225902.jpg", "neutrophil/BNE_191112.jpg"}

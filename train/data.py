"""Data audit and deduplicated, stratified splits of a class-folder image set.

The split CSV (path, label, split, sha256) is the record every later step cites by its hash.
Paths in it are relative to the data root, which a sidecar JSON records with the report.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_bloodcls.edge_runtime.core.bundle import sha256_file as file_sha256
from edge_bloodcls.edge_runtime.core.preprocess import ImageError, load_rgb
from edge_bloodcls.edge_runtime.core.spec import LABELS

SPLITS = ("train", "val", "test")


@dataclass
class FileRecord:
    path: str  # relative to the root, with forward slashes
    label: str
    sha256: str
    size: tuple[int, int] | None  # (width, height) when readable
    error: str | None


def _inspect(root: Path, rel: str, label: str) -> FileRecord:
    full = root / rel
    try:
        data = full.read_bytes()
    except OSError as e:
        return FileRecord(rel, label, "", None, f"cannot read file ({e.strerror or e})")
    digest = hashlib.sha256(data).hexdigest()
    try:
        rgb = load_rgb(data, name=str(full))
    except ImageError as e:
        return FileRecord(rel, label, digest, None, e.reason)
    return FileRecord(rel, label, digest, (int(rgb.shape[1]), int(rgb.shape[0])), None)


def scan(root, labels=None, workers: int | None = None) -> list[FileRecord]:
    """Every file (hidden ones too) under root/<class>/, hashed and test-decoded."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    classes = labels or sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    jobs = []
    for label in classes:
        for dirpath, _, files in os.walk(root / label):
            for f in sorted(files):
                rel = os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
                jobs.append((rel, label))
    jobs.sort()
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) * 2)) as ex:
        return list(ex.map(lambda j: _inspect(root, *j), jobs))


def audit(records: list[FileRecord]) -> dict:
    by_hash: dict[str, list[FileRecord]] = defaultdict(list)
    for r in records:
        if r.error is None:
            by_hash[r.sha256].append(r)
    groups = [g for g in by_hash.values() if len(g) > 1]
    conflicts = [g for g in groups if len({r.label for r in g}) > 1]
    sizes = Counter(f"{r.size[0]}x{r.size[1]}" for r in records if r.size)
    return {
        "files": len(records),
        "readable": sum(r.error is None for r in records),
        "per_class": dict(sorted(Counter(r.label for r in records).items())),
        "per_class_readable": dict(sorted(Counter(r.label for r in records if r.error is None).items())),
        "unreadable": [{"path": r.path, "reason": r.error} for r in records if r.error],
        "duplicate_groups": [sorted(r.path for r in g) for g in sorted(groups, key=lambda g: g[0].sha256)],
        # Copies that add nothing (same content, same label); a cross-label group is reported
        # apart because it is a labelling conflict, not redundancy.
        "redundant_copies": sum(len(g) - 1 for g in groups if g not in conflicts),
        "conflicting_duplicates": [
            {
                "sha256": g[0].sha256,
                "files": [{"path": r.path, "label": r.label} for r in sorted(g, key=lambda r: r.path)],
            }
            for g in conflicts
        ],
        "size_histogram": dict(sizes.most_common()),
    }


def format_audit(a: dict) -> str:
    out = [f"files: {a['files']}  readable: {a['readable']}"]
    out += [f"  {k:<14}{v:>6}" for k, v in a["per_class"].items()]
    out.append(f"unreadable: {len(a['unreadable'])}")
    out += [f"  {u['path']}: {u['reason']}" for u in a["unreadable"]]
    out.append(
        f"exact duplicates: {len(a['duplicate_groups'])} groups; {a['redundant_copies']} redundant same-label copies"
    )
    out.append(f"cross-label duplicates: {len(a['conflicting_duplicates'])}")
    for c in a["conflicting_duplicates"]:
        out.append("  " + " == ".join(f"{f['path']} ({f['label']})" for f in c["files"]))
    out.append("image sizes: " + ", ".join(f"{k} x{v}" for k, v in list(a["size_histogram"].items())[:8]))
    return "\n".join(out)


def make_split(records: list[FileRecord], ratios=(0.7, 0.2, 0.1), seed: int = 0) -> tuple[list[dict], dict]:
    """Assign content-hash groups to splits, stratified per class.

    Exact duplicates travel together, so no image content is in two splits; groups with
    conflicting labels are dropped (their true label is unknown); unreadable files are excluded.
    """
    if len(ratios) != 3 or abs(sum(ratios) - 1.0) > 1e-6 or min(ratios) < 0:
        raise ValueError(f"ratios must be three non-negative numbers summing to 1, got {ratios}")
    by_hash: dict[str, list[FileRecord]] = defaultdict(list)
    for r in records:
        if r.error is None:
            by_hash[r.sha256].append(r)
    dropped: list[dict] = []
    by_class: dict[str, list[list[FileRecord]]] = defaultdict(list)
    for digest in sorted(by_hash):
        g = sorted(by_hash[digest], key=lambda r: r.path)
        if len({r.label for r in g}) > 1:
            dropped.extend(
                {"path": r.path, "label": r.label, "sha256": digest, "reason": "cross-label duplicate"} for r in g
            )
            continue
        by_class[g[0].label].append(g)
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    for label in sorted(by_class):
        groups = by_class[label]
        order = rng.permutation(len(groups))
        n_files = sum(len(g) for g in groups)
        targets = np.array(ratios) * n_files
        given = np.zeros(3)
        for gi in order:
            g = groups[gi]
            # Give the group to the split furthest below its target share of this class.
            k = int(np.argmax(targets - given))
            given[k] += len(g)
            rows.extend({"path": r.path, "label": label, "split": SPLITS[k], "sha256": r.sha256} for r in g)
    rows.sort(key=lambda r: (SPLITS.index(r["split"]), r["label"], r["path"]))
    counts = {s: dict(sorted(Counter(r["label"] for r in rows if r["split"] == s).items())) for s in SPLITS}
    report = {
        "seed": seed,
        "ratios": list(ratios),
        "counts": counts,
        "totals": {s: sum(c.values()) for s, c in counts.items()},
        "excluded_unreadable": [{"path": r.path, "reason": r.error} for r in records if r.error],
        "dropped_conflicts": dropped,
        "deduplication": "exact duplicates (sha256 of file bytes) kept in one split",
    }
    return rows, report


def write_split(rows: list[dict], report: dict, out, root) -> str:
    """Write split.csv and split.json beside it; return the CSV's sha256."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split", "sha256"], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    digest = file_sha256(out)
    meta = {"csv": out.name, "csv_sha256": digest, "root": str(Path(root).resolve()), **report}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return digest


@dataclass
class Split:
    csv: Path
    root: Path
    sha256: str
    rows: list[dict]

    def items(self, split: str) -> tuple[list[Path], np.ndarray]:
        sel = [r for r in self.rows if r["split"] == split]
        return [self.root / r["path"] for r in sel], np.array([LABELS.index(r["label"]) for r in sel], dtype=np.int64)


def read_split(csv_path, root=None) -> Split:
    """Read a split CSV; the data root is `root`, else the sidecar's, else the CSV's folder."""
    csv_path = Path(csv_path)
    if root is None:
        side = csv_path.with_suffix(".json")
        if side.exists():
            recorded = Path(json.loads(side.read_text()).get("root", csv_path.parent))
            root = recorded if recorded.exists() else csv_path.parent
        else:
            root = csv_path.parent
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"path", "label", "split"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{csv_path}: not a split CSV (missing columns {sorted(missing)})")
    unknown = {r["label"] for r in rows} - set(LABELS)
    if unknown:
        raise ValueError(f"{csv_path}: labels not in the model's label set: {sorted(unknown)}")
    return Split(csv_path, Path(root), file_sha256(csv_path), rows)

"""Model bundles: NAME.tflite + NAME.json (the manifest), verified before use.

The manifest says everything the runtime needs to feed the model the pixels it was trained on
(labels in output order, input size, colour order, normalisation, quantization of input and
output) and ties the file to its training record (split hash, metrics).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_bloodcls import __version__

from .cellhead import CellHead, CellHeadError
from .spec import LABELS, InputSpec
from .trust import TrustError, TrustStats

SCHEMA = 1
# Schema 2: a manifest with a cell-feature head (core/cellhead.py). Its temperature, review
# threshold and figures are the fused answer's, so a runtime that would ignore the head must refuse
# the bundle instead: toolkits that read schema 1 only do.
SCHEMA_HEAD = 2
SCHEMAS = (SCHEMA, SCHEMA_HEAD)
# resolve(): under a strict editable install __file__ is a link; name the real folder.
MODELS_DIR = Path(__file__).resolve().parent / "models"
# The most accurate bundled model, and the fastest one that is still accurate (issue 13; their
# accuracies are in each bundle's manifest, speeds in benchmarks/results/pareto/PARETO.md).
# `--model default` and `--model fast` name them.
DEFAULT_MODEL = "mobilenetv2_160_int8"
FAST_MODEL = "mobilenetv2_a035_112_int8"
ALIASES = {"default": DEFAULT_MODEL, "fast": FAST_MODEL}
COLOR_ORDERS = ("RGB", "BGR")


class BundleError(ValueError):
    """A bundle that must not be used; str() names the file and the reason."""


@dataclass
class Bundle:
    tflite: Path
    manifest: dict
    trust: TrustStats | None = None  # None: an older bundle, without OOD statistics or calibration
    head: CellHead | None = None  # the cell-feature head of an adapted bundle (core/cellhead.py)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def spec(self) -> InputSpec:
        return InputSpec.from_json(self.manifest["input"])

    @property
    def sha256(self) -> str:
        return self.manifest["tflite_sha256"]

    @property
    def quantization(self) -> str:
        return self.manifest.get("quantization", "unknown")

    @property
    def trust_path(self) -> Path | None:
        t = self.manifest.get("trust")
        return self.tflite.parent / t["file"] if t else None


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_sha256(manifest: dict) -> str:
    """The hash of everything in the manifest but itself: labels, input spec, temperature and
    thresholds decide the answer as much as the weights do, so they are covered too."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _paths(path) -> tuple[Path, Path]:
    p = Path(ALIASES.get(str(path), path))
    # Strip only our own suffixes: `net.v2.tflite` is the bundle `net.v2`, not `net`.
    stem = p.parent / p.name[: -len(p.suffix)] if p.suffix in (".tflite", ".json") else p
    tflite, manifest = stem.parent / f"{stem.name}.tflite", stem.parent / f"{stem.name}.json"
    if (
        not manifest.exists()
        and not tflite.exists()
        and p.parent == Path(".")
        and (MODELS_DIR / f"{stem.name}.json").exists()
    ):
        # A bare name: one of the bundled models.
        return MODELS_DIR / f"{stem.name}.tflite", MODELS_DIR / f"{stem.name}.json"
    return tflite, manifest


def _check_manifest(m, where: Path) -> None:
    """The manifest's own consistency; its agreement with the model is checked by the Classifier."""
    if not isinstance(m, dict):
        raise BundleError(f"{where}: the manifest is a JSON {type(m).__name__}, not an object")
    if m.get("schema") not in SCHEMAS:
        raise BundleError(
            f"{where}: manifest schema {m.get('schema')!r} is not supported (this toolkit reads schemas "
            f"{', '.join(map(str, SCHEMAS))})"
        )
    if (m.get("cell_head") is not None) != (m.get("schema") == SCHEMA_HEAD):
        raise BundleError(f"{where}: manifest schema {m.get('schema')!r} and its cell_head section disagree")
    missing = [k for k in ("name", "labels", "input", "output", "tflite_sha256") if k not in m]
    if missing:
        raise BundleError(f"{where}: manifest lacks {', '.join(missing)}")
    labels = m["labels"]
    if (
        not isinstance(labels, list)
        or not labels
        or not all(isinstance(x, str) and x for x in labels)
        or len(set(labels)) != len(labels)
    ):
        raise BundleError(f"{where}: manifest field 'labels' must be a list of distinct names, not {labels!r}")
    foreign = [x for x in labels if x not in LABELS]
    if foreign:
        # a label reaches the report, the review page and the log: only the known set may
        raise BundleError(
            f"{where}: manifest label {foreign[0][:40]!r} is not one of the label set ({', '.join(LABELS)})"
        )
    inp = m["input"]
    if not isinstance(inp, dict):
        raise BundleError(f"{where}: manifest field 'input' must be an object")
    size = inp.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise BundleError(f"{where}: manifest field 'input.size' must be [height, width], not {size!r}")
    if inp.get("color", "RGB") not in COLOR_ORDERS:
        raise BundleError(
            f"{where}: manifest field 'input.color' is {inp.get('color')!r}, not one of {', '.join(COLOR_ORDERS)}"
        )
    for key in ("mean", "std"):
        v = inp.get(key)
        if not (
            isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)
        ):
            raise BundleError(f"{where}: manifest field 'input.{key}' must be three numbers, not {v!r}")
    if any(x == 0 for x in inp["std"]):
        raise BundleError(f"{where}: manifest field 'input.std' has a zero: {inp['std']!r}")


def _load_trust(m: dict, tflite: Path, where: Path, verify: bool) -> TrustStats | None:
    t = m.get("trust")
    if t is None:
        return None
    if not isinstance(t, dict) or not isinstance(t.get("file"), str) or "/" in t["file"]:
        raise BundleError(f"{where}: manifest field 'trust' must name a statistics file beside the model")
    path = tflite.parent / t["file"]
    if not path.is_file():
        raise BundleError(f"{where}: its trust statistics {t['file']} are missing")
    if verify and sha256_file(path) != t.get("sha256"):
        raise BundleError(f"{path}: sha256 does not match the manifest's (modified or corrupt file); refusing to load")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return TrustStats.from_arrays(arrays, t, str(where), len(m["labels"]))
    except TrustError as e:
        raise BundleError(str(e)) from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise BundleError(f"{path}: unreadable trust statistics ({e})") from None


def _load_head(m: dict, where: Path) -> CellHead | None:
    if m.get("cell_head") is None:
        return None
    try:
        return CellHead.from_json(m["cell_head"], list(m["labels"]), str(where))
    except CellHeadError as e:
        raise BundleError(str(e)) from None


def load_bundle(path=None, verify: bool = True) -> Bundle:
    """Read and check a bundle: NAME.tflite, NAME.json, NAME, or None for the bundled default."""
    tflite, manifest_path = _paths(path if path is not None else MODELS_DIR / DEFAULT_MODEL)
    if not manifest_path.exists():
        if tflite.exists():
            raise BundleError(
                f"{tflite}: no manifest {manifest_path.name} beside it; "
                "export with `edge-bloodcls convert`, which writes both"
            )
        raise BundleError(f"{path if path is not None else manifest_path}: no such model bundle")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{manifest_path}: unreadable manifest ({e})") from None
    _check_manifest(manifest, manifest_path)
    if not tflite.exists():
        raise BundleError(f"{manifest_path}: its model file {tflite.name} is missing")
    if verify:
        if not isinstance(manifest.get("manifest_sha256"), str):
            raise BundleError(
                f"{manifest_path}: the manifest has no manifest_sha256 (not written by `edge-bloodcls "
                "convert`, or edited); refusing to load"
            )
        if manifest_sha256(manifest) != manifest["manifest_sha256"]:
            raise BundleError(
                f"{manifest_path}: the manifest was edited after export (its manifest_sha256 "
                "does not match its content); refusing to load"
            )
        actual = sha256_file(tflite)
        if actual != manifest["tflite_sha256"]:
            raise BundleError(
                f"{tflite}: sha256 {actual[:12]}… does not match the manifest's "
                f"{manifest['tflite_sha256'][:12]}… (modified or corrupt file); refusing to load"
            )
    return Bundle(
        tflite, manifest, _load_trust(manifest, tflite, manifest_path, verify), _load_head(manifest, manifest_path)
    )


def _write_atomic(path: Path, data: bytes) -> None:
    # A killed export or adapt leaves the old file or none, never half of one.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_bundle(
    tflite_bytes: bytes, manifest: dict, out_dir, name: str | None = None, trust_bytes: bytes | None = None
) -> Bundle:
    """Write NAME.tflite, NAME.trust.npz (when given) and NAME.json; the manifest gets schema,
    name, hashes and time. The manifest goes last: a bundle is complete once it exists."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or manifest["name"]
    if "/" in name or name.startswith("."):
        raise BundleError(f"{name!r}: a bundle name cannot hold '/' or start with '.'")
    if manifest.get("cell_head") is not None:  # refused here, before any file is written
        _load_head(manifest, Path(out_dir) / f"{name or manifest['name']}.json")
    m = {
        **{k: v for k, v in manifest.items() if k != "manifest_sha256"},
        "schema": SCHEMA_HEAD if manifest.get("cell_head") is not None else SCHEMA,
        "name": name,
        "tflite_sha256": hashlib.sha256(tflite_bytes).hexdigest(),
        "size_bytes": len(tflite_bytes),
        "toolkit": __version__,
        "created": manifest.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if trust_bytes is not None:
        if not isinstance(m.get("trust"), dict):
            raise BundleError(f"{name}: trust statistics given without their manifest section")
        m["trust"] = {
            **m["trust"],
            "file": f"{name}.trust.npz",
            "sha256": hashlib.sha256(trust_bytes).hexdigest(),
            "size_bytes": len(trust_bytes),
        }
        _write_atomic(out_dir / f"{name}.trust.npz", trust_bytes)
    else:
        m.pop("trust", None)
    m["manifest_sha256"] = manifest_sha256(m)
    tflite = out_dir / f"{name}.tflite"
    _write_atomic(tflite, tflite_bytes)
    _write_atomic(out_dir / f"{name}.json", (json.dumps(m, indent=2) + "\n").encode())
    return load_bundle(tflite)

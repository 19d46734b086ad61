"""Model bundles: NAME.tflite + NAME.json (the manifest), verified before use.

The manifest says everything the runtime needs to feed the model the pixels it was trained on
(labels in output order, input size, colour order, normalisation, quantization of input and
output) and ties the file to its training record (split hash, metrics).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .spec import InputSpec

SCHEMA = 1
MODELS_DIR = Path(__file__).parent / "models"
# The most accurate bundled model; mobilenetv2_96_int8 is the faster, less accurate one, at about
# a third of the compute per cell (accuracies in each bundle's manifest and the README, Export).
DEFAULT_MODEL = "mobilenetv2_160_int8"


class BundleError(ValueError):
    """A bundle that must not be used; str() names the file and the reason."""


@dataclass
class Bundle:
    tflite: Path
    manifest: dict

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


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _paths(path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".tflite", ".json"):
        stem = p.with_suffix("")
    else:
        stem = p
    if not stem.parent.exists() or (not stem.with_suffix(".json").exists() and not p.exists()):
        # A bare name: look among the bundled models.
        if p.parent == Path(".") and (MODELS_DIR / p.name).with_suffix(".json").exists():
            stem = MODELS_DIR / stem.name
    return stem.with_suffix(".tflite"), stem.with_suffix(".json")


def load_bundle(path=None, verify: bool = True) -> Bundle:
    """Read and check a bundle: NAME.tflite, NAME.json, NAME, or None for the bundled default."""
    tflite, manifest_path = _paths(path if path is not None else MODELS_DIR / DEFAULT_MODEL)
    if not manifest_path.exists():
        if tflite.exists():
            raise BundleError(f"{tflite}: no manifest {manifest_path.name} beside it; "
                              "export with `edge-bloodcls convert`, which writes both")
        raise BundleError(f"{path if path is not None else manifest_path}: no such model bundle")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"{manifest_path}: unreadable manifest ({e})") from None
    if manifest.get("schema") != SCHEMA:
        raise BundleError(f"{manifest_path}: manifest schema {manifest.get('schema')!r} is not supported "
                          f"(this toolkit reads schema {SCHEMA})")
    missing = [k for k in ("name", "labels", "input", "output", "tflite_sha256") if k not in manifest]
    if missing:
        raise BundleError(f"{manifest_path}: manifest lacks {', '.join(missing)}")
    if not tflite.exists():
        raise BundleError(f"{manifest_path}: its model file {tflite.name} is missing")
    if verify:
        actual = sha256_file(tflite)
        if actual != manifest["tflite_sha256"]:
            raise BundleError(f"{tflite}: sha256 {actual[:12]}… does not match the manifest's "
                              f"{manifest['tflite_sha256'][:12]}… (modified or corrupt file); refusing to load")
    return Bundle(tflite, manifest)


def write_bundle(tflite_bytes: bytes, manifest: dict, out_dir, name: str | None = None) -> Bundle:
    """Write NAME.tflite and NAME.json; the manifest gets schema, name, sha256 and time."""
    from .. import __version__

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or manifest["name"]
    m = {"schema": SCHEMA, **manifest, "name": name,
         "tflite_sha256": hashlib.sha256(tflite_bytes).hexdigest(),
         "size_bytes": len(tflite_bytes), "toolkit": __version__,
         "created": manifest.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tflite = out_dir / f"{name}.tflite"
    tmp = tflite.with_suffix(".tflite.tmp")
    tmp.write_bytes(tflite_bytes)
    os.replace(tmp, tflite)
    (out_dir / f"{name}.json").write_text(json.dumps(m, indent=2) + "\n")
    return Bundle(tflite, m)


def bundled_models() -> list[Bundle]:
    out = []
    for j in sorted(MODELS_DIR.glob("*.json")):
        try:
            out.append(load_bundle(j))
        except BundleError:
            continue
    return out

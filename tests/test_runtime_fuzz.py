"""Damaged images of every format Pillow writes: preprocessing raises ImageError and nothing
else; classify and evaluate report one error line per bad file and never a traceback.

A fixed, deterministic slice of scripts/fuzz_images.py (the long run: `python
scripts/fuzz_images.py --seconds 600`). The preprocessing part needs no model; the CLI part uses
the bundled default model (no TensorFlow).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from cell_images import synthetic_cell
from click.testing import CliRunner

from edge_bloodcls.edge_runtime.core.bundle import DEFAULT_MODEL, MODELS_DIR
from edge_bloodcls.edge_runtime.core.spec import LABELS, InputSpec

REPO = Path(__file__).resolve().parents[1]
PREPROCESS_CASES = 3000  # about 5 s here; every seed format is damaged about 50 times
CLI_CASES = 2  # damaged files per seed format in the classify / evaluate folder

_spec = importlib.util.spec_from_file_location("fuzz_images", REPO / "scripts" / "fuzz_images.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

# The folder walk lists image suffixes only; the content, not the name, picks the decoder, so
# formats without a listed suffix are named .png (a misnamed file is a case of its own).
SUFFIX = {"jpeg": ".jpg", "mpo": ".jpg", "png": ".png", "bmp": ".bmp", "dib": ".bmp", "tiff": ".tif", "webp": ".webp"}


def test_runtime_fuzz_seeds_cover_the_formats():
    names = {name.split("-")[0] for name, _ in fuzz.seed_images()}
    assert {"jpeg", "png", "bmp", "gif", "tiff", "webp", "ppm", "ico", "tga"} <= names
    assert len(names) >= 15


def test_runtime_fuzz_preprocess_raises_only_image_error():
    spec = InputSpec.named(32)
    failures = []
    for name, data in itertools.islice(fuzz.cases(seed=0), PREPROCESS_CASES):
        problem = fuzz.check(data, spec)
        if problem:
            failures.append(f"{name}: {problem}")
    assert not failures, f"{len(failures)} of {PREPROCESS_CASES} damaged files escaped ImageError:\n" + "\n".join(
        failures[:20]
    )


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> Path:
    """A folder of damaged files, CLI_CASES per seed format, plus two good cells."""
    d = tmp_path_factory.mktemp("fuzz") / "neutrophil"
    d.mkdir()
    seeds = fuzz.seed_images()
    rng = np.random.default_rng(1)
    bodies = [data for _, data in seeds]
    for i, (name, data) in enumerate(seeds * CLI_CASES):
        kind, bad = fuzz.mutate(data, rng, bodies)
        (d / f"{i:03d}-{name}-{kind}{SUFFIX.get(name.split('-')[0], '.png')}").write_bytes(bad)
    for j in range(2):
        synthetic_cell(LABELS.index("neutrophil"), np.random.default_rng(j)).save(d / f"good{j}.png")
    return d


@pytest.fixture(scope="module")
def model() -> str:
    if not (MODELS_DIR / f"{DEFAULT_MODEL}.json").exists():
        pytest.skip(f"the bundled model {DEFAULT_MODEL} is not installed")
    return DEFAULT_MODEL


def _run(*args):
    from edge_bloodcls.cli import main

    r = CliRunner().invoke(main, list(map(str, args)))
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.stderr
    return r


def _error_names(stderr: str) -> list[str]:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    return sorted(Path(line[len("error: ") :].split(": ")[0]).name for line in lines)


def test_runtime_fuzz_classify_folder_reports_each_bad_file_once(model, damaged):
    files = sorted(p.name for p in damaged.iterdir())
    r = _run("classify", damaged, "--model", model, "--format", "jsonl")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted(Path(row["path"]).name for row in rows) == files  # every file: a result or an error
    bad = sorted(Path(row["path"]).name for row in rows if "error" in row)
    assert bad and {"good0.png", "good1.png"}.isdisjoint(bad)
    assert _error_names(r.stderr) == bad
    assert r.exit_code == 1


def test_runtime_fuzz_evaluate_reports_each_bad_file_once(model, damaged, tmp_path):
    out = tmp_path / "eval.json"
    r = _run("evaluate", damaged.parent, "--model", model, "--json", out)
    assert r.exit_code == 1, r.output  # some images failed: reported, and the exit status says so
    rep = json.loads(out.read_text())
    assert rep["n_images"] == len(list(damaged.iterdir()))
    assert sorted(Path(x["path"]).name for x in rep["failed"]) == _error_names(r.stderr)
    assert rep["n_failed"] == len(rep["failed"]) > 0 and rep["not_read"] == []

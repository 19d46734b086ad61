"""Shared fixtures, used by the test modules without importing them: generated images (no data
set needed), the shared PBC and BCCD copies when present, the committed tiny bundles, the
bundled default model, a headless browser, and a tiny trained run and its exports.

Plain helpers live in modules named for what they make: cell_images, capture_fixtures,
session_fixtures, cli_fixtures, convert_fixtures, train_fixtures, runtime_fixtures,
report_fixtures, review_client. No test module imports another (test_test_layout.py checks)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from edge_bloodcls.tfenv import configure

# Tests import TensorFlow directly (fixtures build models, test_train imports tf_keras), not
# only through the CLI that sets its environment: set it before any of them can.
configure()

# make_dataset and synthetic_cell stay importable from here (`from conftest import ...`).
from cell_images import make_dataset, synthetic_cell  # noqa: E402,F401
from runtime_fixtures import COMMITTED  # noqa: E402

from edge_bloodcls.edge_runtime.core.bundle import DEFAULT_MODEL, MODELS_DIR, load_bundle  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EDGE_BLOODCLS_DATA", REPO.parent / "shared" / "data"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "cells")


@pytest.fixture
def pbc_dir() -> Path:
    d = SHARED_DATA / "pbc256"
    if not d.is_dir():
        pytest.skip(f"shared PBC data not found at {d}")
    return d


@pytest.fixture
def bccd_dir() -> Path:
    d = SHARED_DATA / "bccd"
    if not d.is_dir():
        pytest.skip(f"shared BCCD data not found at {d}")
    return d


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """{"float32": Path, "int8": Path} of NAME.tflite with NAME.json beside (no TensorFlow):
    the committed bundles (runtime_fixtures.py) copied to pytest's base temp, so that a test may
    write beside them."""
    out = tmp_path_factory.getbasetemp() / "runtime_bundles"
    if not out.exists():
        shutil.copytree(COMMITTED, out)
    paths = {q: out / f"tiny_{q}.tflite" for q in ("float32", "int8")}
    for p in paths.values():
        load_bundle(p)
    return paths


@pytest.fixture(scope="module")
def model() -> str:
    """The bundled default model's name (TensorFlow-free); skips where it is not installed."""
    if not (MODELS_DIR / f"{DEFAULT_MODEL}.json").exists():
        pytest.skip(f"the bundled model {DEFAULT_MODEL} is not installed")
    return DEFAULT_MODEL


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from the system packages, driven by Selenium, which is given both paths
    so that it never downloads a browser or a driver."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            f"no headless Chromium ({CHROMIUM}, {CHROMEDRIVER}): install the Debian packages chromium "
            "and chromium-driver (`make browser`)"
        )
    pytest.importorskip("selenium", reason="selenium is in the dev extra: pip install -e '.[dev]'")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never fetch anything
    # Selenium is optional (the dev extra; checked just above): imported only when a test asks.
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1100,800",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A training run as `edge-bloodcls train` leaves it: split.csv, model.keras, config.json."""
    # TensorFlow is optional (not on an edge install): convert_fixtures needs it, so it is
    # imported only when a test asks for a trained run, and skips that test where TF is missing.
    import convert_fixtures

    return convert_fixtures.train_run(tmp_path_factory)


@pytest.fixture(scope="session")
def exports(run_dir, tmp_path_factory):
    """Each plain format exported once, on demand, into one directory."""
    import convert_fixtures  # TensorFlow, as in run_dir

    return convert_fixtures.export_each(run_dir, tmp_path_factory)

"""stderr carries the toolkit's messages, not the libraries' notices: the TFLite runtime's
INFO line only with --verbose, a missing Edge TPU runtime in one line without the
"Exception ignored in Delegate.__del__" that a half-built delegate used to print."""

from __future__ import annotations

import subprocess

import numpy as np
from cell_images import synthetic_cell
from runtime_fixtures import PYTHON, cli_env

XNNPACK = "Created TensorFlow Lite XNNPACK delegate"


def _cli(*args, env=None):
    return subprocess.run(
        [PYTHON, "-m", "edge_bloodcls.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env or cli_env(),
        timeout=120,
    )


def test_interpreter_info_line_only_with_verbose(bundles, tmp_path):
    img = tmp_path / "cell.png"
    synthetic_cell(2, np.random.default_rng(3)).save(img)
    env = {k: v for k, v in cli_env().items() if k != "EDGE_BLOODCLS_VERBOSE"}
    quiet = _cli("classify", img, "--model", bundles["int8"], "--format", "jsonl", env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert XNNPACK not in quiet.stderr
    # what is left is the toolkit's own (the fixture's bundles have no trust statistics)
    assert all(line.startswith("note: ") for line in quiet.stderr.splitlines()), quiet.stderr
    assert '"label"' in quiet.stdout
    for args in (("-v", "classify", img), ("classify", img, "-v")):
        loud = _cli(*args, "--model", bundles["int8"], "--format", "jsonl", env=env)
        assert loud.returncode == 0 and XNNPACK in loud.stderr, loud.stderr


def test_other_stderr_output_is_kept(tmp_path, capfd):
    import os

    from edge_bloodcls.edge_runtime.core.interpreter import _without_info_lines

    with _without_info_lines():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\nERROR: a real problem\n")
    err = capfd.readouterr().err
    assert err == "ERROR: a real problem\n"


def test_missing_edgetpu_runtime_is_one_line(bundles, tmp_path):
    img = tmp_path / "cell.png"
    synthetic_cell(2, np.random.default_rng(3)).save(img)
    r = _cli("classify", img, "--model", bundles["int8"], "--device", "edgetpu")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Edge TPU delegate"), r.stderr
    assert "Exception ignored" not in r.stderr and "Traceback" not in r.stderr

"""The edge runtime works where TensorFlow cannot be imported (a Pi with only the interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
from capture_fixtures import synthetic_field
from cell_images import make_dataset, synthetic_cell
from runtime_fixtures import cli_env

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys

    BLOCKED = ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")

    sys.meta_path.insert(0, Block())
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker failed: tensorflow imported")
""")

SCRIPT = BLOCKER + textwrap.dedent("""
    import json, pkgutil, importlib
    from click.testing import CliRunner
    import edge_bloodcls.edge_runtime as er
    from edge_bloodcls.edge_runtime.cli import COMMANDS

    # every runtime module, in every room, imports without TensorFlow
    for m in pkgutil.walk_packages(er.__path__, prefix="edge_bloodcls.edge_runtime."):
        importlib.import_module(m.name)
    cmds = {c.name: c for c in COMMANDS}
    img, bundle, cells, fields, db = sys.argv[1:6]
    results = {}
    r = CliRunner().invoke(cmds["classify"], [img, "--model", bundle, "--format", "jsonl"])
    results["classify"] = [r.exit_code, r.stdout]
    r = CliRunner().invoke(cmds["evaluate"], [cells, "--model", bundle])
    results["evaluate"] = [r.exit_code, r.stdout]
    r = CliRunner().invoke(cmds["capture"], ["--camera", fields, "--model", bundle, "--db", db, "--no-preview"])
    results["capture"] = [r.exit_code, r.stdout]
    results["tf_modules"] = sorted(k for k in sys.modules if k.split(".")[0] in BLOCKED)
    print("RESULT " + json.dumps(results))
""")


def test_runtime_runs_with_tensorflow_unimportable(bundles, tmp_path):
    img = tmp_path / "cell.png"
    synthetic_cell(5, np.random.default_rng(9)).save(img)
    cells = make_dataset(tmp_path / "cells", n_per_class=2, seed=4)
    fields = tmp_path / "fields"
    fields.mkdir()
    from PIL import Image

    Image.fromarray(synthetic_field()[0]).save(fields / "f.png")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(img),
            str(bundles["int8"]),
            str(cells),
            str(fields),
            str(tmp_path / "log.sqlite"),
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT ") :])
    assert res["tf_modules"] == []
    code, out = res["classify"]
    row = json.loads(out)
    assert code == 0 and row["label"] == "monocyte"
    assert row["interpreter"] in ("ai_edge_litert", "tflite_runtime")
    code, out = res["evaluate"]
    assert code == 0 and "accuracy=" in out
    code, out = res["capture"]
    assert code == 0 and "frames 1, cells 4" in out

"""Each list the toolkit keys on is defined once: the export formats (convert/formats.py), the
architectures (train/archs.py's registry) and the labels (edge_runtime/core/spec.py). Everything
else derives its list from those, so a new format, network or class reaches every command."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from edge_bloodcls.convert.formats import FORMATS
from edge_bloodcls.edge_runtime.core.spec import LABELS
from edge_bloodcls.train.archs import REGISTRY

REPO = Path(__file__).resolve().parents[1]
if not (REPO / "pyproject.toml").exists():
    # Inside pi-check's root file system only tests/, scripts/ and demo/ sit beside the wheel.
    pytest.skip("needs the source checkout (pyproject.toml)", allow_module_level=True)
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _package_dirs() -> tuple[str, ...]:
    """The source folders of the installed package, as pyproject.toml maps them (app/ is
    edge_bloodcls itself): the real package, not a list kept by hand."""
    mapping = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    tops = {folder.split("/")[0] for folder in mapping.values()}
    return tuple(sorted(tops))


SOURCE_DIRS = (*_package_dirs(), "scripts")


def _literals(min_hits: int, names: set[str]) -> list[str]:
    """file:line of every list, tuple or set literal holding at least min_hits of names."""
    found = []
    for d in SOURCE_DIRS:
        for f in sorted((REPO / d).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
                    hits = {e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in names}
                    if len(hits) >= min_hits:
                        found.append(f"{f.relative_to(REPO)}:{node.lineno}")
    return found


def test_the_source_tree_is_scanned():
    # A scan that reads nothing (or a folder that is not there) would pass every test below.
    assert set(SOURCE_DIRS) == {"adapt", "app", "benchmarks", "convert", "edge_runtime", "scripts", "train"}
    assert all((REPO / d).is_dir() for d in SOURCE_DIRS)
    assert (REPO / "app" / "cli.py") in set((REPO / "app").rglob("*.py"))
    assert len([f for d in SOURCE_DIRS for f in (REPO / d).rglob("*.py")]) > 40


def test_format_names_are_listed_only_in_the_formats_table():
    # The table builds its rows one by one (Format("int8", ...)): no literal list of names at all.
    assert _literals(3, set(FORMATS)) == []


def test_architecture_names_are_listed_only_by_the_registry():
    # The registry fills itself through @register("name", ...): no literal list anywhere.
    assert _literals(2, set(REGISTRY)) == []


def test_the_label_list_is_written_out_once():
    found = _literals(len(LABELS), set(LABELS))
    assert [f.rsplit(":", 1)[0] for f in found] == ["edge_runtime/core/spec.py"], found


def test_the_lists_reach_the_commands():
    from edge_bloodcls.benchmarks import harness
    from edge_bloodcls.benchmarks import report_common as report
    from edge_bloodcls.convert import commands as convert_commands
    from edge_bloodcls.convert import summary
    from edge_bloodcls.train import commands as train_commands

    quantize = next(p for p in convert_commands.convert_cmd.params if p.name == "quantize")
    assert list(quantize.type.choices) == [n for n, f in FORMATS.items() if not f.qat and not f.compiler]
    assert list(summary.ORDER) == list(FORMATS)
    assert harness.FORMATS == ("keras", *(n for n, f in FORMATS.items() if not f.compiler))
    assert report.FORMAT_ORDER == ["keras", *FORMATS]
    arch = next(p for p in train_commands.train_cmd.params if p.name == "arch")
    assert list(arch.type.choices) == list(REGISTRY) == list(harness.DEFAULT_ARCHS) == report.TABLE_ORDER


def test_pi_compare_takes_the_runtime_labels_even_without_the_package(tmp_path):
    import subprocess
    import sys

    script = REPO / "scripts" / "pi_compare.py"
    if not (REPO / "edge_runtime" / "core" / "spec.py").exists():
        # Inside pi-check's root file system only tests/, scripts/ and demo/ are copied beside
        # the installed wheel; this test is about the source checkout.
        pytest.skip("needs the source checkout (edge_runtime/core/spec.py beside scripts/)")
    # -I -S: no site-packages, no current directory: edge_bloodcls cannot be imported, as with
    # the machine's own python3 in scripts/pi_check.sh.
    code = (
        "import runpy, sys; g = runpy.run_path(sys.argv[1]); print(list(g['LABELS']), 'edge_bloodcls' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(script)], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert out.stdout.strip() == f"{list(LABELS)} False"

"""The tests' own layout (issue 24): no test module imports another test module, and fixtures
shared between modules live in conftest.py, where pytest finds them without an import. Plain
helpers live in modules named for what they make (cell_images.py, session_fixtures.py, ...)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _imported_modules(tree: ast.AST) -> set[str]:
    """Top-level names of every module imported anywhere in the tree (inside functions too)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _test_module_imports(source: str, test_modules: set[str]) -> set[str]:
    return _imported_modules(ast.parse(source)) & test_modules


def _defines_fixture(source: str) -> bool:
    for node in ast.walk(ast.parse(source)):
        for dec in getattr(node, "decorator_list", []):
            target = dec.func if isinstance(dec, ast.Call) else dec
            if ast.unparse(target) in ("pytest.fixture", "fixture"):
                return True
    return False


def test_no_module_in_tests_imports_a_test_module():
    files = sorted(TESTS.glob("*.py"))
    test_modules = {p.stem for p in files if p.stem.startswith("test_")}
    assert len(test_modules) > 20  # the scan sees the real suite
    offenders = {
        p.name: sorted(found)
        for p in files
        if (found := _test_module_imports(p.read_text(encoding="utf-8"), test_modules))
    }
    assert offenders == {}, f"import shared helpers from a helper module or conftest.py instead: {offenders}"


def test_shared_fixtures_live_in_conftest():
    helpers = [p for p in sorted(TESTS.glob("*.py")) if not p.stem.startswith("test_") and p.stem != "conftest"]
    assert {"cell_images", "session_fixtures"} <= {p.stem for p in helpers}
    defining = [p.name for p in helpers if _defines_fixture(p.read_text(encoding="utf-8"))]
    assert defining == [], f"a helper module's fixture must be imported to be used; put it in conftest.py: {defining}"


def test_the_checks_catch_what_they_look_for():
    mods = {"test_a", "test_b"}
    assert _test_module_imports("from test_a import x\nimport os\n", mods) == {"test_a"}
    assert _test_module_imports("def f():\n    import test_b.sub\n", mods) == {"test_b"}
    assert _test_module_imports("from cell_images import make_dataset\nfrom . import test_a\n", mods) == set()
    assert _defines_fixture("import pytest\n@pytest.fixture(scope='module')\ndef f():\n    pass\n")
    assert _defines_fixture("from pytest import fixture\n@fixture\ndef f():\n    pass\n")
    assert not _defines_fixture("def f():\n    pass\n")

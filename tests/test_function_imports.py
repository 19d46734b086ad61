"""Imports live at the top of a module, where a reader (and import-linter) sees them. An import
inside a function is allowed only for a module that may be missing at run time (an optional
extra, the Pi's camera, a newer standard library), and it says why in a comment.

Scanned: the whole package (app/, edge_runtime/, train/, convert/, adapt/, benchmarks/)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("app", "edge_runtime", "train", "convert", "adapt", "benchmarks")

# Top-level names of the modules that may be imported inside a function: each is optional at
# run time (pyproject.toml's extras, or not on PyPI at all).
OPTIONAL = {
    "cv2",  # OpenCV: the [edge] extra
    "picamera2",  # the Pi's camera module, from apt
    "starlette",
    "uvicorn",
    "h11",
    "anyio",  # the web pages' server: the [edge] extra
    "sklearn",  # scikit-learn: the [edge] and [train] extras
    "tomllib",
    "tomli",  # the standard library from Python 3.11, tomli before
    "tensorflow",
    "tf_keras",
    "keras",
    "tensorflow_model_optimization",  # the [train] extra
    "ai_edge_litert",
    "tflite_runtime",
    "pycoral",  # interpreters, one of which is installed
    "matplotlib",
    "tqdm",  # plots and progress bars: the [train] extra
    "fcntl",  # Unix only
}


# One of our own modules imported inside a function, where the reason is what the process may
# hold in memory: the benchmark's TFLite child measures the edge runtime alone.
OWN_EXCEPTIONS = {
    ("benchmarks/child.py", "edge_bloodcls.convert.gate"),
}


def _function_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    found += [(node.lineno, a.name) for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    found.append((node.lineno, "." * node.level + (node.module or "")))
    return sorted(set(found))


def _has_why(lines: list[str], lineno: int) -> bool:
    """A comment on the import's line, or on the line above the run of imports it belongs to."""
    i = lineno - 1
    if "#" in lines[i]:
        return True
    while i > 0 and lines[i - 1].strip().startswith(("import ", "from ")):
        i -= 1
    return i > 0 and lines[i - 1].strip().startswith("#")


def _files():
    for top in SCANNED:
        yield from sorted((REPO / top).rglob("*.py"))


def test_function_level_imports_are_optional_modules_with_a_reason():
    wrong, silent = [], []
    for path in _files():
        lines = path.read_text(encoding="utf-8").splitlines()
        for lineno, module in _function_imports(path):
            where = f"{path.relative_to(REPO)}:{lineno}: {module}"
            own = (str(path.relative_to(REPO)), module) in OWN_EXCEPTIONS
            if not own and (module.startswith(".") or module.split(".")[0] not in OPTIONAL):
                wrong.append(where)
            elif not _has_why(lines, lineno):
                silent.append(where)
    assert wrong == [], "move these to the top of the module (not optional at run time)"
    assert silent == [], "say why this import is inside a function (a comment on it or above it)"


def test_the_scan_finds_function_level_imports(tmp_path):
    """The scanner on a small module: a wrong scanner would pass any package."""
    src = tmp_path / "m.py"
    src.write_text(
        "import os\n\n\ndef f():\n    # OpenCV: optional\n    import cv2\n    from . import x\n"
        "    return cv2, x\n\n\nclass C:\n    async def g(self):\n        import json\n"
    )
    found = _function_imports(src)
    assert found == [(6, "cv2"), (7, "."), (13, "json")]
    lines = src.read_text().splitlines()
    assert _has_why(lines, 6) and _has_why(lines, 7) is True  # 7 continues the commented run
    assert not _has_why(lines, 13)
    assert sum(1 for _ in _files()) > 40  # the package is really there

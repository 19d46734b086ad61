"""Interpreter selection: a package that imports but cannot start gives a clear error, not a traceback."""

from __future__ import annotations

import sys
import types

import pytest

from edge_bloodcls.edge_runtime.core import interpreter


def _fake_tflite_runtime(monkeypatch, error):
    class Interpreter:
        def __init__(self, **kw):
            raise error

    pkg = types.ModuleType("tflite_runtime")
    pkg.__version__ = "2.14.0"
    sub = types.ModuleType("tflite_runtime.interpreter")
    sub.Interpreter = Interpreter
    pkg.interpreter = sub
    monkeypatch.setitem(sys.modules, "tflite_runtime", pkg)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", sub)
    monkeypatch.setenv("EDGE_BLOODCLS_INTERPRETER", "tflite_runtime")


def test_numpy2_abi_failure_at_construction_names_the_fix(monkeypatch, tmp_path):
    # What tflite-runtime 2.14 raises under NumPy 2 when it first touches an array.
    _fake_tflite_runtime(monkeypatch, SystemError("<built-in method> returned NULL without setting an exception"))
    with pytest.raises(interpreter.InterpreterUnavailable) as e:
        interpreter.make_interpreter(tmp_path / "m.tflite")
    msg = str(e.value)
    assert "tflite_runtime could not start" in msg and "numpy<2" in msg and "ai-edge-litert" in msg
    assert "\n" not in msg


def test_bad_model_file_names_the_file(monkeypatch, tmp_path):
    _fake_tflite_runtime(monkeypatch, ValueError("Could not open 'm.tflite'"))
    with pytest.raises(interpreter.InterpreterUnavailable, match=r"m\.tflite: the interpreter cannot load this model"):
        interpreter.make_interpreter(tmp_path / "m.tflite")


def test_forced_backend_that_is_missing_lists_install_commands(monkeypatch):
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    monkeypatch.setenv("EDGE_BLOODCLS_INTERPRETER", "tflite_runtime")
    with pytest.raises(interpreter.InterpreterUnavailable, match="pip install ai-edge-litert"):
        interpreter.backend_name()

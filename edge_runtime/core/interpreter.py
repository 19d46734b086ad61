"""Which TFLite interpreter runs the model: ai_edge_litert, else tflite_runtime, else
tensorflow.lite (imported only when neither package is installed). Edge TPU via its delegate."""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import platform
import sys
import tempfile

import numpy as np

# (name reported, module, how to install)
BACKENDS = (
    ("ai_edge_litert", "ai_edge_litert.interpreter", "pip install ai-edge-litert"),
    ("tflite_runtime", "tflite_runtime.interpreter", "pip install tflite-runtime 'numpy<2'"),
    ("tensorflow.lite", "tensorflow.lite.python.interpreter", "pip install tensorflow"),
)
EDGETPU_LIB = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


_log = logging.getLogger(__name__)


class InterpreterUnavailable(RuntimeError):
    pass


def verbose() -> bool:
    """-v on the CLI (edge_bloodcls.logs) puts this logger at DEBUG: the runtime's own INFO lines
    are then let through. Without the CLI, logging's default (WARNING) keeps them off."""
    return _log.isEnabledFor(logging.DEBUG)


@contextlib.contextmanager
def _without_info_lines():
    """Keep the TFLite C++ runtime's INFO lines ("INFO: Created TensorFlow Lite XNNPACK delegate
    for CPU.") off stderr. The runtime prints them from C++ straight to file descriptor 2 and
    neither ai_edge_litert nor tflite_runtime offers a log level (TF_CPP_MIN_LOG_LEVEL does not
    reach it), so fd 2 goes to a file for the duration and everything else in it (warnings,
    errors) is written back to stderr afterwards."""
    if verbose():
        yield
        return
    capture = tempfile.TemporaryFile()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no fd 2 (a closed or replaced stderr): nothing to filter
        capture.close()
        yield
        return
    os.dup2(capture.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        capture.seek(0)
        kept = [line for line in capture.read().splitlines(keepends=True) if not line.startswith(b"INFO: ")]
        capture.close()
        if kept:
            os.write(2, b"".join(kept))


def _module(allowed=None):
    """First importable backend; EDGE_BLOODCLS_INTERPRETER=name restricts the choice."""
    forced = os.environ.get("EDGE_BLOODCLS_INTERPRETER")
    errors = []
    for name, module, _hint in BACKENDS:
        if forced and name != forced:
            continue
        if allowed and name not in allowed:
            continue
        try:
            return name, importlib.import_module(module)
        except Exception as e:  # ImportError, or tflite_runtime's numpy-2 ABI crash
            errors.append(f"{name}: {type(e).__name__}: {e}".splitlines()[0])
    raise InterpreterUnavailable(
        "no TFLite interpreter could be imported (" + "; ".join(errors) + "). "
        "Install one: `pip install ai-edge-litert` (64-bit Raspberry Pi OS, Python 3.10-3.14), "
        "or `pip install tflite-runtime 'numpy<2'` (32-bit or Python <= 3.11)"
    )


def backend_name() -> str:
    return _module()[0]


def _edgetpu_delegate(mod):
    lib = EDGETPU_LIB.get(platform.system(), "libedgetpu.so.1")
    load_delegate = getattr(mod, "load_delegate", None)
    if load_delegate is None:
        raise InterpreterUnavailable(
            "this interpreter package cannot load delegates; install ai-edge-litert or tflite-runtime"
        )
    try:
        # Loaded here first: a library load_delegate cannot open leaves it a half-built
        # Delegate whose __del__ then prints "Exception ignored in Delegate.__del__".
        ctypes.CDLL(lib)
        return load_delegate(lib)
    except (ValueError, OSError, RuntimeError) as e:
        raise InterpreterUnavailable(
            f"Edge TPU delegate {lib} could not be loaded ({e}). Install the Edge TPU runtime "
            "(`sudo apt-get install libedgetpu1-std` from Coral's apt repository) and plug the Coral in; "
            "or run on the CPU with --device cpu (or --device auto to fall back)"
        ) from None


def make_interpreter(model_path, threads: int | None = None, device: str = "cpu"):
    """Return (interpreter with tensors allocated, description dict). device: cpu|edgetpu|auto."""
    name, mod = _module()
    threads = threads or os.cpu_count() or 1
    delegates = []
    used = "cpu"
    if device in ("edgetpu", "auto"):
        try:
            delegates = [_edgetpu_delegate(mod)]
            used = "edgetpu"
        except InterpreterUnavailable:
            if device == "edgetpu":
                raise
    try:
        with _without_info_lines():
            interp = mod.Interpreter(
                model_path=str(model_path), num_threads=threads, experimental_delegates=delegates or None
            )
            interp.allocate_tensors()
    except ValueError as e:
        raise InterpreterUnavailable(f"{model_path}: the interpreter cannot load this model ({e})") from None
    except (SystemError, ImportError) as e:
        # tflite_runtime 2.14 imports under NumPy 2 but fails here, when it first builds an array.
        first = (str(e).splitlines() or [""])[0]
        raise InterpreterUnavailable(
            f"{name} could not start ({type(e).__name__}: {first}) with NumPy {np.__version__}; "
            + (
                "tflite-runtime needs `pip install 'numpy<2'`, or install ai-edge-litert instead"
                if name == "tflite_runtime"
                else "reinstall it or try another interpreter package"
            )
        ) from None
    version = getattr(importlib.import_module(name.split(".")[0]), "__version__", "?")
    return interp, {"interpreter": name, "interpreter_version": version, "threads": threads, "device": used}

"""Run by `scripts/pi_check.sh` with the Python of an installed edge runtime (emulated arm64 or native).

    python pi_probe.py info [--model M] > info.json     versions, CPU features, interpreter, no-TF check
    python pi_probe.py session capture.sqlite > cells.json   the last capture session read back

Only the installed package (`edge_bloodcls`) and what it depends on are imported; never TensorFlow.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.metadata as md
import importlib.util
import json
import os
import platform
import sys

# AT_HWCAP / AT_HWCAP2 bits of arm64 Linux (asm/hwcap.h): which kernels XNNPACK may pick.
AT_HWCAP, AT_HWCAP2 = 16, 26
HWCAP = {
    "fp": 0,
    "asimd": 1,
    "aes": 3,
    "crc32": 7,
    "atomics": 8,
    "fphp": 9,
    "asimdhp": 10,
    "asimdrdm": 12,
    "asimddp": 20,
    "sve": 22,
}
HWCAP2 = {"sve2": 1, "i8mm": 13, "bf16": 14}


def _os_release() -> dict:
    out = {}
    try:
        with open("/etc/os-release") as f:
            for line in f:
                k, _, v = line.strip().partition("=")
                if k:
                    out[k] = v.strip('"')
    except OSError:
        pass
    return out


def _version(dist: str):
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _cpu_features() -> list[str] | None:
    if platform.machine() not in ("aarch64", "arm64"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.getauxval.restype = ctypes.c_ulong
        hw, hw2 = libc.getauxval(AT_HWCAP), libc.getauxval(AT_HWCAP2)
    except (OSError, AttributeError):
        return None
    return [k for k, b in HWCAP.items() if hw >> b & 1] + [k for k, b in HWCAP2.items() if hw2 >> b & 1]


def info(model: str | None) -> dict:
    from edge_bloodcls.edge_runtime.core.classifier import Classifier

    osr = _os_release()
    d = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "os": osr.get("PRETTY_NAME", platform.platform()),
        "os_codename": osr.get("VERSION_CODENAME"),
        "libc": "-".join(platform.libc_ver()),
        "kernel": platform.release(),
        "qemu_cpu": os.environ.get("QEMU_CPU"),
        "cpu_features": _cpu_features(),
        "cpu_count": os.cpu_count(),
        "packages": {
            p: _version(p)
            for p in (
                "edge-bloodcls",
                "ai-edge-litert",
                "tflite-runtime",
                "numpy",
                "opencv-python-headless",
                "pillow",
                "scikit-learn",
                "scipy",
                "click",
            )
        },
    }
    import cv2
    import numpy
    import PIL

    d["modules"] = {
        "numpy": numpy.__version__,
        "cv2": cv2.__version__,
        "cv2_file": cv2.__file__,
        "PIL": PIL.__version__,
    }
    # The edge install must not have brought TensorFlow in any form.
    tf_dists = sorted(
        {
            dist.metadata["Name"]
            for dist in md.distributions()
            if (dist.metadata["Name"] or "").lower().replace("_", "-").startswith(("tensorflow", "tf-"))
        }
    )
    d["tensorflow"] = {"importable": importlib.util.find_spec("tensorflow") is not None, "distributions": tf_dists}
    # What the interpreter says while it starts (on stderr, from C++): whether LiteRT applied its
    # XNNPACK delegate, and any complaint of the cpuinfo library about the CPU it runs on.
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            clf = Classifier.load(model)
            clf.predict(numpy.zeros((*clf.spec.size, 3), numpy.float32))
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        said = tmp.read().decode(errors="replace")
    sys.stderr.write(said)
    d["interpreter_log"] = [line for line in said.splitlines() if line.strip()]
    d["xnnpack_delegate"] = "XNNPACK delegate" in said
    out = clf.interpreter.get_output_details()[0]
    scale, zero = out["quantization"]
    d["model"] = {
        **clf.describe(),
        "output_dtype": numpy.dtype(out["dtype"]).name,
        "output_quant": {"scale": float(scale), "zero_point": int(zero)},
    }
    d["tensorflow"]["imported"] = "tensorflow" in sys.modules
    return d


def session(db: str) -> dict:
    from edge_bloodcls.edge_runtime.lab.session import read_session

    s = read_session(db)
    keep = ("frames", "cells", "end_reason", "model", "model_sha256", "interpreter", "device", "threads", "mode")
    return {
        "session": {k: s[k] for k in keep},
        "summary": json.loads(s["summary"]) if s.get("summary") else None,
        "frames": [{k: f[k] for k in ("frame_index", "name", "width", "height", "n_cells")} for f in s["frames_list"]],
        "cells": [
            {
                "frame_index": c["frame_index"],
                "box": [c["x0"], c["y0"], c["x1"], c["y1"]],
                "label": c["label"],
                "confidence": c["confidence"],
                "review": c["review"],
                "probs": json.loads(c["probs"]),
            }
            for c in s["cells_list"]
        ],
    }


def main(argv: list[str]) -> int:
    if len(argv) >= 1 and argv[0] == "info":
        model = argv[argv.index("--model") + 1] if "--model" in argv else None
        print(json.dumps(info(model), indent=1))
        return 0
    if len(argv) == 2 and argv[0] == "session":
        print(json.dumps(session(argv[1]), indent=1))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Compiling a full-integer model for the Coral Edge TPU with Google's `edgetpu_compiler`.

The compiler is a closed x86-64 Linux binary; nothing here imitates it. Without it on PATH the
caller gets CompilerMissing with the installation steps, and no _edgetpu file exists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

COMPILER = "edgetpu_compiler"
INSTALL = (
    "edgetpu_compiler is not on PATH. It runs on x86-64 Debian/Ubuntu only; install it with:\n"
    "  curl https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add -\n"
    '  echo "deb https://packages.cloud.google.com/apt coral-edgetpu-stable main" | '
    "sudo tee /etc/apt/sources.list.d/coral-edgetpu.list\n"
    "  sudo apt-get update && sudo apt-get install edgetpu-compiler\n"
    "(on other machines, Coral's Colab notebook compiles in the browser: https://coral.ai/docs/edgetpu/compiler/)"
)
# "CONV_2D                 35         Mapped to Edge TPU" in the -s (show operations) table.
_OP_LINE = re.compile(r"^([A-Z][A-Z0-9_]+)\s+(\d+)\s+(\S.*?)\s*$")


class CompilerMissing(RuntimeError):
    pass


class CompileFailed(RuntimeError):
    pass


def find_compiler() -> str | None:
    return shutil.which(COMPILER)


def parse_log(text: str) -> dict:
    """The compiler's summary: version, subgraphs, and per-op mapping (op, count, status)."""
    ops: list[dict[str, Any]] = []
    for line in text.splitlines():
        m = _OP_LINE.match(line.strip())
        if m:
            ops.append({"op": m.group(1), "count": int(m.group(2)), "status": m.group(3)})
    version = re.search(r"Edge TPU Compiler version (\S+)", text)
    subgraphs = re.search(r"Number of Edge TPU subgraphs:\s*(\d+)", text)
    total = re.search(r"Total number of operations:\s*(\d+)", text)
    mapped = sum(o["count"] for o in ops if o["status"].startswith("Mapped to Edge TPU"))
    return {
        "compiler_version": version.group(1) if version else None,
        "subgraphs": int(subgraphs.group(1)) if subgraphs else None,
        "total_ops": int(total.group(1)) if total else None,
        "mapped_ops": mapped,
        "cpu_ops": sum(o["count"] for o in ops) - mapped,
        "ops": ops,
    }


def compile_model(tflite: Path, timeout: int = 600) -> tuple[bytes, str, dict]:
    """Run the compiler on a copy of `tflite`; returns (compiled bytes, its log text, parse_log)."""
    exe = find_compiler()
    if exe is None:
        raise CompilerMissing(INSTALL)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / tflite.name
        shutil.copyfile(tflite, src)
        proc = subprocess.run([exe, "-s", "-o", tmp, str(src)], capture_output=True, text=True, timeout=timeout)
        text = proc.stdout + proc.stderr
        out = Path(tmp) / f"{src.stem}_edgetpu.tflite"
        if proc.returncode != 0 or not out.exists():
            raise CompileFailed(f"{COMPILER} failed (exit {proc.returncode}):\n{text.strip()}")
        info = parse_log(text)  # the -s table on stdout; the .log file repeats it per op
        log = Path(tmp) / f"{src.stem}_edgetpu.log"
        if log.exists():
            text += "\n" + log.read_text()
        return out.read_bytes(), text, info

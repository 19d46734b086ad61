"""The machine a benchmark ran on: CPU, its flags, memory, OS, library versions, load."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

from edge_bloodcls import __version__
from edge_bloodcls.edge_runtime.core.interpreter import backend_name

# cpu_model, usable_cores: re-exported for the benchmarks that name them here.
from edge_bloodcls.host import cpu_model, cpuinfo, usable_cores  # noqa: F401

from .options import one_line

CPU_FLAGS_OF_INTEREST = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "fphp",
    "i8mm",
)


def machine_info() -> dict:
    cpu = cpuinfo()
    flags = (cpu.get("flags") or cpu.get("Features") or "").split()
    os_name = platform.platform()
    try:
        rel = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
        os_name = rel.get("PRETTY_NAME", os_name).strip('"')
    except OSError:
        pass
    mem_gb = None
    try:
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem_gb = round(kb / 1024**2, 1)
    except (OSError, IndexError, ValueError):
        pass
    libs = {}
    for dist in (
        "numpy",
        "ai-edge-litert",
        "tflite-runtime",
        "tensorflow",
        "tensorflow-cpu",
        "tf-keras",
        "tensorflow-model-optimization",
        "scikit-learn",
        "pillow",
        "matplotlib",
    ):
        try:
            libs[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        backend = backend_name()
    except Exception as e:  # recorded, not fatal: the children report what they used
        backend = f"unavailable ({one_line(e)})"
    return {
        "cpu_model": cpu_model(cpu),
        "cpu_mhz": cpu.get("cpu MHz"),
        "machine": platform.machine(),
        "cpu_flags_of_interest": [f for f in CPU_FLAGS_OF_INTEREST if f in flags],
        "cpu_flags": flags,
        "cores_logical": os.cpu_count(),
        "cores_usable": usable_cores(),
        "memory_gb": mem_gb,
        "os": os_name,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "libraries": libs,
        "edge_bloodcls": __version__,
        "interpreter_backend": backend,
        "nice": os.nice(0) if hasattr(os, "nice") else None,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }

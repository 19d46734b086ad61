"""The machine this runs on, in words: what a benchmark result or a training run records.
Here, not in benchmarks/, because training records it too and benchmarks import train.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpuinfo() -> dict:
    cpu = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            k, v = k.strip(), v.strip()
            if k in ("model name", "flags", "Features", "cpu MHz", "Model") and k not in cpu:
                cpu[k] = v
    except OSError:
        pass
    return cpu


def cpu_model(cpu: dict | None = None) -> str:
    cpu = cpuinfo() if cpu is None else cpu
    return cpu.get("model name") or cpu.get("Model") or platform.processor() or platform.machine()


def usable_cores() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

"""The benchmark's options, names and the small helpers every part of it shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_bloodcls.convert.formats import CPU_FORMATS
from edge_bloodcls.train.archs import names as arch_names

# "keras" (the float model itself, the reference) and every export format a CPU runs.
FORMATS = ("keras", *CPU_FORMATS)
DEFAULT_ARCHS = arch_names()
BASELINE = "mobilenetv2_96"  # the "vs MobileNetV2 int8" ratios
REFERENCE = "mobilenetv2@224"  # the ImageNet-size network published edge figures are quoted for
RESULTS_NAME = "bench.json"
# An untrained build is measured for speed and size only: a few calibration and gate images do.
UNTRAINED_CALIBRATION = 32
UNTRAINED_EVAL = 16


class BenchError(RuntimeError):
    pass


@dataclass
class BenchOptions:
    out: str
    models: list = field(default_factory=lambda: list(DEFAULT_ARCHS))
    formats: list = field(default_factory=lambda: list(FORMATS))
    threads: list = field(default_factory=lambda: ["1", "all"])
    data: str | None = None  # split CSV (its test rows) or a class-folder directory [runs/split.csv]
    data_root: str | None = None
    calibration: str | None = None  # split CSV for exports made here [--data when a CSV, else runs/split.csv]
    runs: int = 200
    warmup: int = 20
    max_images: int | None = None  # stratified subset of the test images for accuracy; 0: no accuracy
    size: int = 96
    runs_dir: str = "runs"
    exports_dir: str | None = "runs/exports"
    cache_dir: str = ".cache"
    qat_epochs: int = 1
    export_eval_samples: int | None = 256
    calibration_samples: int = 300
    baseline: str = BASELINE
    shipped: bool = True
    reference: bool = False
    redo: bool = False  # latency and accuracy again
    redo_latency: bool = False  # latency again, accuracy kept (e.g. on a machine now idle)
    timeout: float = 3 * 3600
    seed: int = 0
    quick: bool = False
    report: bool = True


def rel(p) -> str:
    """A path relative to the working directory when under it: results get committed."""
    try:
        return str(Path(p).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[-1] if s else ''}"

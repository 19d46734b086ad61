"""The results of a benchmark: one typed object that the harness fills and the report reads,
saved as one JSON file (bench.json) after every configuration.

Results holds the file's parts as fields; its methods are the only place that knows how an
entry is found (a configuration by model, format and threads, an accuracy by model and
format), so neither side rebuilds keys by hand. A configuration is made as a ConfigRow, whose
fields are its keys in the file, and kept in its JSON form (a dict) so that the file and the
object read the same.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .options import BenchError

SCHEMA = 1


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class ConfigRow:
    """One model x format x thread count, as measured by benchmarks/child.py."""

    model: str
    format: str
    threads: str  # "1", "4", "all"
    threads_n: int
    arch: str
    trained: bool
    role: str
    file: str
    bundle_sha256: str
    size_bytes: int
    params: int | None
    macs: int | None
    quantization: str | None  # as the manifest records it (None: it records none); "keras" for the Keras model
    io_dtype: str
    load_s: float
    import_s: float | None
    latency_ms: dict  # benchmarks.child.percentiles
    invoke_ms: dict | None
    images_per_s: float
    peak_rss_mb: float
    peak_rss_mb_with_accuracy: float
    tensorflow_imported: bool
    interpreter: dict
    runs: int
    warmup: int
    loadavg: list | None
    measured: str
    wall_s: float
    ratios: dict = field(default_factory=dict)  # Results.derive

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Results:
    schema: int = SCHEMA
    created: str = field(default_factory=now)
    sessions: list = field(default_factory=list)
    machine: dict | None = None
    data: dict | None = None  # testset.TestImages.describe()
    models: dict = field(default_factory=dict)  # key -> what it is (harness._model_info)
    configs: list = field(default_factory=list)  # ConfigRow.to_json() of each configuration
    accuracy: dict = field(default_factory=dict)  # Results.key(model, format) -> metrics or a note
    errors: list = field(default_factory=list)
    shipped: dict | None = None
    baseline: str | None = None
    updated: str | None = None

    # --- the file -------------------------------------------------------------------------

    @classmethod
    def from_json(cls, d: dict) -> Results:
        if d.get("schema") != SCHEMA:
            raise BenchError(f"results schema {d.get('schema')} is not {SCHEMA}")
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    @classmethod
    def load(cls, path: Path) -> Results:
        """The results in path, or new ones where there is no file yet."""
        path = Path(path)
        if not path.exists():
            return cls()
        try:
            return cls.from_json(json.loads(path.read_text()))
        except BenchError as e:
            raise BenchError(f"{path}: {e}; use another --out") from None

    def to_json(self) -> dict:
        return asdict(self)

    def save(self, path: Path, baseline: str):
        self.derive(baseline)
        self.updated = now()
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        os.replace(tmp, path)

    # --- finding entries ----------------------------------------------------------------------

    @staticmethod
    def key(model: str, fmt: str) -> str:
        return f"{model}|{fmt}"

    def accuracy_entry(self, model: str, fmt: str) -> dict | None:
        return self.accuracy.get(self.key(model, fmt))

    def metrics(self, model: str, fmt: str) -> dict | None:
        """classification_metrics of a model in a format, None where it has none (untrained...)."""
        a = self.accuracy_entry(model, fmt)
        return a["metrics"] if a and a.get("metrics") else None

    def scored(self, model: str, fmt: str) -> dict:
        """metrics() of a configuration already known to have them (selected by metrics())."""
        m = self.metrics(model, fmt)
        if m is None:
            raise KeyError(f"{model} {fmt}: no accuracy in these results")
        return m

    # The harness records the machine and the test images before it measures anything, so a
    # saved run has both; the report reads them through these.

    @property
    def machine_info(self) -> dict:
        if self.machine is None:
            raise BenchError("these results record no machine (nothing was measured)")
        return self.machine

    @property
    def test_data(self) -> dict:
        if self.data is None:
            raise BenchError("these results record no test images (nothing was measured)")
        return self.data

    def set_accuracy(self, model: str, fmt: str, entry: dict):
        self.accuracy[self.key(model, fmt)] = entry

    def config(self, model: str, fmt: str, threads: str) -> dict | None:
        return next((c for c in self.configs if (c["model"], c["format"], c["threads"]) == (model, fmt, threads)), None)

    def by_key(self) -> dict:
        """(model, format, threads) -> configuration."""
        return {(c["model"], c["format"], c["threads"]): c for c in self.configs}

    # --- changing them ------------------------------------------------------------------------

    def put_config(self, row: ConfigRow, replaces: dict | None = None):
        self.configs = [c for c in self.configs if c is not replaces] + [row.to_json()]

    def drop_model(self, model: str):
        """Forget a model's measurements (another network now goes by its name)."""
        self.configs = [c for c in self.configs if c["model"] != model]
        self.accuracy = {k: v for k, v in self.accuracy.items() if not k.startswith(model + "|")}

    def record_error(self, model: str, fmt: str | None, stage: str, message: str):
        self.errors = [x for x in self.errors if (x["model"], x["format"], x["stage"]) != (model, fmt, stage)]
        self.errors.append({"model": model, "format": fmt, "stage": stage, "error": message, "when": now()})

    def clear_errors(self, models: tuple, formats: list):
        """What failed or was skipped before is decided again now."""
        self.errors = [e for e in self.errors if not (e["model"] in models and e["format"] in (None, *formats))]

    def derive(self, baseline: str):
        """Ratios of every configuration: against the float32 TFLite of the same model at the same
        thread count, and against the baseline's (MobileNetV2's) int8. Speed-up > 1 is faster."""
        by = self.by_key()
        self.baseline = baseline
        models = self.models
        # A bundle measured on its own (the shipped one) compares with the float32 export of the
        # run it came from.
        run_of = {
            m["source_sha256"]: k for k, m in models.items() if m.get("kind") != "bundle" and m.get("source_sha256")
        }
        for c in self.configs:
            r = {}
            p50 = c["latency_ms"]["p50"]
            info = models.get(c["model"]) or {}
            own = run_of.get(info.get("source_sha256"), c["model"]) if info.get("kind") == "bundle" else c["model"]
            f32 = by.get((own, "float32", c["threads"]))
            if f32:
                r["speedup_vs_float32"] = f32["latency_ms"]["p50"] / p50
                r["size_vs_float32"] = c["size_bytes"] / f32["size_bytes"]
            base = by.get((baseline, "int8", c["threads"]))
            if base:
                r["speedup_vs_baseline_int8"] = base["latency_ms"]["p50"] / p50
                r["size_vs_baseline_int8"] = c["size_bytes"] / base["size_bytes"]
                a, b = self.metrics(c["model"], c["format"]), self.metrics(baseline, "int8")
                if a and b:  # an untrained model has a note instead
                    r["accuracy_points_vs_baseline_int8"] = round((a["accuracy"] - b["accuracy"]) * 100, 3)
            c["ratios"] = r

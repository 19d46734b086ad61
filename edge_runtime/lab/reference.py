"""Reference intervals (H/L marks) and the thresholds of the report's rules.

The defaults are a documented example, not a validated table: adult percentages from UC San Diego
Health's laboratory reference page (health.ucsd.edu/labref/P421.html) and absolute counts from
the HL7 CTC Adverse Events FHIR guide's example report (build.fhir.org/ig/standardhealth/fsh-ae).
A laboratory sets its own with `report --ranges FILE` (JSON or TOML, same keys as DEFAULTS; any
key left out keeps its default):

    [percent]            # of the white cells
    neutrophil = [40, 75]
    [absolute]           # x10^9/L, used when the analyser's WBC count is given
    neutrophil = [1.8, 7.7]
    [rules]
    min_wbc = 200
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..core.spec import WBC_LABELS

DEFAULT_PERCENT: dict[str, tuple[float, float]] = {
    "neutrophil": (45.0, 70.0),
    "lymphocyte": (20.0, 40.0),
    "monocyte": (1.0, 10.0),
    "eosinophil": (1.0, 3.0),
    "basophil": (0.0, 2.0),
}
DEFAULT_ABSOLUTE: dict[str, tuple[float, float]] = {
    "neutrophil": (2.0, 7.5),
    "lymphocyte": (1.1, 4.0),
    "monocyte": (0.2, 1.0),
    "eosinophil": (0.04, 0.4),
    "basophil": (0.0, 0.21),
}
# min_wbc: fewer white cells than this is a short count (a manual differential counts 100), unless
# the session set its own target. ig_percent / nrbc_per_100: above these, a flag. eosinophilia:
# absolute count above eosinophil_abs (x10^9/L) or, with no WBC count, share above eosinophil_pct.
DEFAULT_RULES: dict[str, float] = {
    "min_wbc": 100,
    "ig_percent": 0.0,
    "nrbc_per_100": 0.0,
    "eosinophil_abs": 0.5,
    "eosinophil_pct": 7.0,
}


class RangesError(Exception):
    """A ranges file that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class Intervals:
    percent: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PERCENT))
    absolute: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_ABSOLUTE))
    rules: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_RULES))
    source: str = "default (example adult intervals; set your laboratory's own with --ranges)"

    def mark(self, label: str, value: float | None, absolute: bool = False) -> str:
        """'H' above the interval, 'L' below it, '' inside it or without an interval."""
        if value is None:
            return ""
        lo_hi = (self.absolute if absolute else self.percent).get(label)
        if lo_hi is None:
            return ""
        lo, hi = lo_hi
        return "H" if value > hi else "L" if value < lo else ""

    def interval(self, label: str, absolute: bool = False) -> tuple[float, float] | None:
        return (self.absolute if absolute else self.percent).get(label)


def load_intervals(path: Path | None) -> Intervals:
    if path is None:
        return Intervals()
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise RangesError(f"{path}: cannot read ({e.strerror})") from None
    try:
        if path.suffix.lower() == ".toml":
            data = _toml(raw)
        else:
            data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise RangesError(f"{path}: not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'} ({e})") from None
    if not isinstance(data, dict):
        raise RangesError(f"{path}: expected a table with 'percent', 'absolute' and/or 'rules'")
    unknown = set(data) - {"percent", "absolute", "rules"}
    if unknown:
        raise RangesError(f"{path}: unknown section(s) {', '.join(sorted(unknown))} (percent, absolute, rules)")
    percent, absolute = dict(DEFAULT_PERCENT), dict(DEFAULT_ABSOLUTE)
    for name, table in (("percent", percent), ("absolute", absolute)):
        for label, pair in (data.get(name) or {}).items():
            if label not in WBC_LABELS:
                raise RangesError(f"{path}: [{name}] {label}: not a white-cell class ({', '.join(WBC_LABELS)})")
            if (
                not isinstance(pair, (list, tuple))
                or len(pair) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
                or pair[0] > pair[1]
            ):
                raise RangesError(f"{path}: [{name}] {label}: expected [low, high] numbers, low <= high")
            table[label] = (float(pair[0]), float(pair[1]))
    rules = dict(DEFAULT_RULES)
    for key, value in (data.get("rules") or {}).items():
        if key not in DEFAULT_RULES:
            raise RangesError(f"{path}: [rules] {key}: unknown ({', '.join(DEFAULT_RULES)})")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise RangesError(f"{path}: [rules] {key}: expected a number >= 0")
        rules[key] = float(value)
    return Intervals(percent, absolute, rules, source=str(path))


def _toml(raw: bytes) -> dict:
    if sys.version_info >= (3, 11):
        # standard library from Python 3.11; tomli before
        import tomllib
    else:  # pragma: no cover - Python 3.9/3.10: tomli if installed, else JSON only
        try:
            # standard library from Python 3.11; tomli before
            import tomli as tomllib
        except ImportError:
            raise ValueError("TOML needs Python 3.11 or the tomli package; use a .json file") from None
    return tomllib.loads(raw.decode("utf-8"))

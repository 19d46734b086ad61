#!/usr/bin/env python3
"""Size and time of `edge-bloodcls report` on a synthetic 10,000-cell session (README, "Report").

    .venv/bin/python scripts/report_scale.py [--cells 10000] [--out runs/report_scale]

Builds the session once (tests/report_fixtures.py: 360 px crops, a normal differential's class
shares, 5% flagged), then runs the report as a user would (a fresh process each time): html,
html with --full-crops, pdf (when headless Chromium is installed). Prints wall seconds, the size
of each output and the machine's load, since wall time on a shared machine depends on it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from headless import chromium  # scripts/headless.py (this script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*")) if p.is_dir() else p.stat().st_size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "report_scale")
    a = ap.parse_args()
    from report_fixtures import make_big_session

    a.out.mkdir(parents=True, exist_ok=True)
    db = a.out / f"session_{a.cells}.db"
    if not db.exists():
        t = time.perf_counter()
        make_big_session(db, n=a.cells)
        print(f"built {db} ({a.cells} cells) in {time.perf_counter() - t:.1f} s")
    cli = [sys.executable, "-m", "edge_bloodcls.cli", "report", str(db)]
    runs = [
        ("html", ["--out", str(a.out / "report.html")], [a.out / "report.html"]),
        (
            "html --full-crops",
            ["--out", str(a.out / "full.html"), "--full-crops"],
            [a.out / "full.html", a.out / "full_crops"],
        ),
        ("pdf", ["--format", "pdf", "--out", str(a.out / "report.pdf")], [a.out / "report.pdf"]),
    ]
    for name, args, outputs in runs:
        for p in outputs:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        load = os.getloadavg()[0]
        t = time.perf_counter()
        r = subprocess.run(cli + args, capture_output=True, text=True)
        took = time.perf_counter() - t
        if r.returncode != 0:
            print(f"{name}: failed ({r.stderr.strip()})")
            continue
        sizes = ", ".join(f"{p.name} {_size(p) / 1e6:.1f} MB" for p in outputs)
        inner = r.stdout.split(", ", 1)[1].split(";", 1)[0] if ", " in r.stdout else "?"  # "3.1 s": the report's own
        print(
            f"{name}: {inner} in the report command, {took:.2f} s with the process start; {sizes}; "
            f"load average {load:.1f} on {os.cpu_count()} CPUs"
        )
    _browser_load(a.out / "report.html")
    return 0


def _browser_load(page: Path) -> None:
    """Seconds headless Chromium takes to load and lay out the page (load event, then layout)."""
    try:
        driver = chromium(1100, 800)
    except ImportError:
        print("browser: selenium not installed (dev extra): not measured")
        return
    except Exception as e:  # no browser here: say so, the other figures stand
        print(f"browser: not measured ({type(e).__name__})")
        return
    try:
        driver.set_page_load_timeout(120)
        t = time.perf_counter()
        driver.get(page.as_uri())
        h = driver.execute_script("return document.body.scrollHeight")
        print(
            f"browser: {page.name} loaded and laid out in {time.perf_counter() - t:.2f} s "
            f"(page {h} px tall); load average {os.getloadavg()[0]:.1f}"
        )
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())

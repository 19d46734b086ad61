#!/usr/bin/env python3
"""The README's picture of a printed report page, from the `make demo` session.

    make demo && .venv/bin/python scripts/report_print.py [runs/demo/capture.db]

Prints the report to PDF (`report --format pdf`, headless Chromium) and renders its first page
with pdftoppm (poppler-utils) to docs/report-print.png. As in scripts/screenshots.py no cell is
reviewed or relabelled: the demo's BCCD cells carry no labels we may assign by hand, so the page
shows the analyser's counts, unsigned, under the trust gate's warning.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(db: Path) -> None:
    cli = str(REPO / ".venv" / "bin" / "edge-bloodcls")
    pdf = db.with_name("report.pdf")
    t = time.perf_counter()
    subprocess.run([cli, "report", str(db), "--format", "pdf", "--out", str(pdf)], check=True)
    print(f"pdf: {time.perf_counter() - t:.1f} s with the process start")
    out = REPO / "docs" / "report-print"
    subprocess.run(
        ["pdftoppm", "-png", "-r", "60", "-f", "1", "-l", "1", "-singlefile", str(pdf), str(out)], check=True
    )
    print(f"{out}.png")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "runs" / "demo" / "capture.db"))

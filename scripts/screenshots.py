"""The README's screenshots of the report and the review page, from the `make demo` session.

    make demo && .venv/bin/python scripts/screenshots.py [runs/demo/capture.db]

No cell is reviewed or relabelled here: BCCD cells carry no labels we may assign by hand, so the
pages are shown as the analyser left them (the trust gate's banner, the analyser's counts).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from headless import chromium  # scripts/headless.py (this script's folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]


def main(db: Path) -> None:
    cli = str(REPO / ".venv" / "bin" / "edge-bloodcls")
    report = Path(tempfile.mkdtemp()) / "report.html"
    subprocess.run([cli, "report", str(db), "--out", str(report)], check=True)
    server = subprocess.Popen([cli, "review", str(db), "--port", "8799"], stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().split()[1]  # "review http://127.0.0.1:8799/?token=... (session ..."
    driver = chromium(1040, 760)
    try:
        driver.get(report.as_uri())
        driver.save_screenshot(str(REPO / "docs" / "report.png"))
        time.sleep(1.5)
        driver.get(url)
        time.sleep(2)
        driver.save_screenshot(str(REPO / "docs" / "review.png"))
    finally:
        driver.quit()
        server.terminate()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "runs" / "demo" / "capture.db"))

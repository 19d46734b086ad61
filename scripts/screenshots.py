"""The README's screenshots of the report and the review page, from the `make demo` session.

    make demo && .venv/bin/python scripts/screenshots.py [runs/demo/capture.db]

No cell is reviewed or relabelled here: BCCD cells carry no labels we may assign by hand, so the
pages are shown as the analyser left them (the trust gate's banner, the analyser's counts).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(db: Path) -> None:
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    profile = tempfile.mkdtemp(prefix="chromium-")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1040,760",
    ):
        opts.add_argument(arg)
    cli = str(REPO / ".venv" / "bin" / "edge-bloodcls")
    report = Path(tempfile.mkdtemp()) / "report.html"
    subprocess.run([cli, "report", str(db), "--out", str(report)], check=True)
    server = subprocess.Popen([cli, "review", str(db), "--port", "8799"], stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().split()[1]  # "review http://127.0.0.1:8799/?token=... (session ..."
    driver = webdriver.Chrome(service=Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")), options=opts)
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
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "runs" / "demo" / "capture.db"))

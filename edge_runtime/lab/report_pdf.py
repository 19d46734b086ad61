"""`report --format pdf`: the HTML report printed by headless Chromium (--print-to-pdf).

Why Chromium rather than WeasyPrint: the browser tests already use the system's Chromium (Debian
and Raspberry Pi OS package it: `apt install chromium`), so nothing is added to the Pi's Python
install; it prints the same page a technologist sees, CSS margin boxes included (the research-use
statement on every page, since Chromium 131). WeasyPrint would add Pango and a dozen Python
packages to the edge install for the same page.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_S = 300


class PdfError(Exception):
    """No way to print, or the print failed; the message is one line for the user."""


def find_chromium() -> str | None:
    """$CHROMIUM if set (an empty value: none), else the first browser on PATH or in /usr/bin."""
    env = os.environ.get("CHROMIUM")
    if env is not None:
        return env if env and Path(env).is_file() and os.access(env, os.X_OK) else None
    for name in CANDIDATES:
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
        if found:
            return found
    return None


def html_to_pdf(page: str, out: Path, timeout: float = TIMEOUT_S) -> None:
    browser = find_chromium()
    if browser is None:
        raise PdfError(
            "no PDF route: headless Chromium not found (install it: apt install chromium; "
            "or set CHROMIUM=/path/to/chromium)"
        )
    with tempfile.TemporaryDirectory(prefix="edge-report-") as tmp:
        src = Path(tmp) / "report.html"
        src.write_text(page, encoding="utf-8")
        target = Path(tmp) / "report.pdf"
        # A private profile and no network: the print reads only the local page.
        cmd = [
            browser,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={Path(tmp) / 'profile'}",
            "--no-pdf-header-footer",
            f"--print-to-pdf={target}",
            src.as_uri(),
        ]
        try:
            r = subprocess.run(cmd, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PdfError(f"{browser}: printing took longer than {timeout:g} s") from None
        except OSError as e:
            raise PdfError(f"{browser}: cannot run ({e.strerror})") from None
        if r.returncode != 0 or not target.is_file() or target.stat().st_size == 0:
            last = (r.stderr.decode("utf-8", "replace").strip().splitlines() or ["no output"])[-1]
            raise PdfError(f"{browser}: print to PDF failed (exit {r.returncode}: {last[:200]})")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(target), str(out))

"""Headless system Chromium driven by Selenium, for the scripts that take screenshots or time a
page (screenshots.py, review_screenshots.py, report_scale.py): the system's browser and driver
(CHROMIUM, CHROMEDRIVER override them), a throwaway profile, nothing fetched from the network."""

from __future__ import annotations

import os
import shutil
import tempfile

# Selenium Manager must never fetch a browser or driver (this machine has no internet).
os.environ.setdefault("SE_OFFLINE", "true")

ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def chromium(width: int, height: int, *extra: str):
    """A started webdriver.Chrome with a width x height window (selenium: the dev extra). Its
    quit() also removes the throwaway profile."""
    from selenium import webdriver  # the dev extra: imported when a script needs a browser
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for arg in (*ARGS, *extra, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    try:
        driver = webdriver.Chrome(
            service=Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")), options=opts
        )
    except BaseException:
        shutil.rmtree(profile, ignore_errors=True)
        raise
    quit_browser = driver.quit

    def quit_and_clean() -> None:
        try:
            quit_browser()
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    driver.quit = quit_and_clean  # the scripts call quit() in their finally blocks
    return driver

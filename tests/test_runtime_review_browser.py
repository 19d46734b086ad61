"""The report and the review page in a real browser: headless Chromium from the system packages
(Debian: chromium, chromium-driver; `make browser` installs them), driven by Selenium, which is
given both paths so that it never downloads a browser or a driver.

EDGE_BLOODCLS_SCREENSHOTS=DIR saves report.png and review.png there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from session_fixtures import REPO, make_session, run_cli

from edge_bloodcls.edge_runtime.lab.store import SessionStore

SHOTS = os.environ.get("EDGE_BLOODCLS_SCREENSHOTS")


def _wait(driver, cond, timeout=20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(cond)


def _text(driver, css):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def test_report_shows_differential_gallery_and_warning(browser, tmp_path):
    from selenium.webdriver.common.by import By

    db = tmp_path / "s.db"
    make_session(db, unvalidated=True)
    out = tmp_path / "report.html"
    assert run_cli("report", db, "--out", out).exit_code == 0
    browser.get(out.as_uri())
    banner = browser.find_element(By.ID, "trust-warning")
    assert banner.is_displayed() and banner.text.startswith("UNVALIDATED differential")
    assert banner.value_of_css_property("background-color") == "rgba(198, 40, 40, 1)"
    assert _text(browser, "tr[data-label=neutrophil]").split()[:4] == ["neutrophil", "5", "50.0%", "23.7-76.3%"]
    assert _text(browser, "#wbc-machine") == "10"
    imgs = browser.find_elements(By.CSS_SELECTOR, "#gallery img")
    assert len(imgs) == 3
    # every inline crop decodes (a broken data URI has naturalWidth 0)
    assert all(browser.execute_script("return arguments[0].naturalWidth", im) == 96 for im in imgs)
    if SHOTS:
        browser.save_screenshot(str(Path(SHOTS) / "report.png"))


def test_review_page_keys_reclassify_undo_and_survive_kill_9(browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    db = tmp_path / "s.db"
    make_session(db)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_bloodcls.cli", "review", str(db), "--port", "0", "--reviewer", "ann"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("review http://127.0.0.1:"), line + proc.stderr.read()
        browser.get(line.split()[1])
        # the flagged cells, by class: eosinophil #10, monocyte #9, platelet #11
        _wait(browser, lambda d: d.find_element(By.ID, "cell-id").get_attribute("data-cell") == "10")
        assert "analyser: eosinophil" in _text(browser, "#info")

        def press(key, status):
            ActionChains(browser).send_keys(key).perform()
            _wait(browser, lambda d: d.find_element(By.ID, "status").text == status)

        browser.find_element(By.ID, "crop").click()  # focus on the page, not in the name field
        press(Keys.ENTER, "saved: cell 10 confirmed eosinophil")
        assert browser.find_element(By.ID, "cell-id").get_attribute("data-cell") == "9"  # moved on
        press("u", "undone: cell 10")
        assert _db(db, 10) == (None, None)
        press("6", "saved: cell 10 eosinophil → monocyte")
        assert _text(browser, "#progress").startswith("1/3 flagged reviewed")
        if SHOTS:
            browser.save_screenshot(str(Path(SHOTS) / "review.png"))
        proc.send_signal(signal.SIGKILL)  # right after the page said saved
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    assert _db(db, 10) == ("monocyte", "ann")
    with SessionStore(db) as store:
        assert store.integrity_check() == "ok"
    out = tmp_path / "report.html"
    assert run_cli("report", db, "--out", out).exit_code == 0
    browser.get(out.as_uri())
    # analyser: monocyte 1, eosinophil 1; after review: monocyte 2, eosinophil 0
    assert _text(browser, "tr[data-label=eosinophil]").split()[:2] == ["eosinophil", "1"]
    assert _text(browser, "tr[data-label=eosinophil] td.final") == "0"
    assert _text(browser, "tr[data-label=monocyte] td.final") == "2"
    assert "→ monocyte (ann)" in _text(browser, "#gallery")


def test_review_page_refuses_sign_off_with_cells_left(browser, tmp_path):
    from selenium.webdriver.common.by import By

    from edge_bloodcls.edge_runtime.lab import review

    db = tmp_path / "s.db"
    sid = make_session(db)
    server = review.make_server(db, sid, port=0, reviewer="ann").start()
    try:
        browser.get(server.url)
        _wait(browser, lambda d: d.find_element(By.ID, "cell-id"))
        browser.find_element(By.ID, "signoff").click()  # the confirmation screen states the rules
        _wait(browser, lambda d: d.find_element(By.ID, "confirm").is_displayed())
        assert "✗" not in _text(browser, "#confirm-rules")  # marks are CSS, the text is the rule
        assert "every flagged cell reviewed (0 of 3)" in _text(browser, "#confirm-rules")
        browser.find_element(By.ID, "confirm-sign").click()  # the server refuses
        _wait(
            browser,
            lambda d: d.find_element(By.ID, "confirm-status").text.startswith(
                "Refused: 3 flagged cell(s) not reviewed yet; short count: 10 white cells after review"
            ),
        )
        assert _db_signed(db) is None
    finally:
        server.stop()


def _db(db, cell_id):
    with SessionStore(db) as store:
        c = store.cell(1, cell_id)
    return c.reviewed_label, c.reviewer


def _db_signed(db):
    with SessionStore(db) as store:
        return store.session().signed_by

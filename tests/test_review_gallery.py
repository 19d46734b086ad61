"""The review page as a lab uses it (issue 27), in headless Chromium on loopback: the gallery at
800x480 and 1366x768 without horizontal scrolling; crops loaded lazily (a 10,000-cell session
opens in seconds); reclassifying a cell to artefact changes the differential on the page and in
the report; sign-off refused until the rules hold (flagged, UNVALIDATED, short count); read-only
after sign-off; an amendment with a reason signed as version 2, both versions in the report; a
100-cell session reviewed and signed with the keyboard alone."""

from __future__ import annotations

import json
import time
import urllib.error
from urllib.parse import urlsplit

import pytest
from review_client import ReviewClient
from session_fixtures import CELLS, make_session

from edge_bloodcls.edge_runtime.core.spec import LABELS
from edge_bloodcls.edge_runtime.lab import review
from edge_bloodcls.edge_runtime.lab.session import CellRecord, SessionLog
from edge_bloodcls.edge_runtime.lab.store import SessionStore


def _by():
    from selenium.webdriver.common.by import By

    return By


def _wait(driver, cond, timeout=20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(cond)


def _text(driver, css):
    return driver.find_element(_by().CSS_SELECTOR, css).text


def _viewport(driver, w, h):
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": w, "height": h, "deviceScaleFactor": 1, "mobile": False}
    )


def _keys(driver, *keys):
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*keys).perform()


def _status(driver, text, timeout=20):
    _wait(driver, lambda d: d.find_element(_by().ID, "status").text.startswith(text), timeout)


def _open(driver, server):
    driver.get(server.url)
    _wait(driver, lambda d: d.find_element(_by().ID, "cell-id"))


@pytest.fixture
def served(tmp_path):
    """A review server on a session of its own, made by the test: (db, server)."""
    made = []

    def start(cells=CELLS, unvalidated=False, reviewer="ann", count_target="cells"):
        db = tmp_path / f"s{len(made)}.db"
        sid = make_session(db, cells=cells, unvalidated=unvalidated)
        if count_target != "cells":
            import sqlite3  # a session with another target than make_session's

            con = sqlite3.connect(db)
            con.execute("UPDATE sessions SET count_target = ?", (count_target,))
            con.commit()
            con.close()
        server = review.make_server(db, sid, port=0, reviewer=reviewer).start()
        made.append(server)
        return db, sid, server

    yield start
    for s in made:
        s.stop()


def _signed(db):
    with SessionStore(db) as store:
        return [(a.reviewer, a.reason) for a in store.audit(store.session().id) if a.action == "signoff"]


def test_gallery_fits_800x480_and_a_desktop_without_horizontal_scrolling(browser, served):
    db, sid, server = served()
    try:
        for w, h in ((800, 480), (1366, 768)):
            _viewport(browser, w, h)
            _open(browser, server)
            _wait(browser, lambda d: len(d.find_elements(_by().CSS_SELECTOR, ".tile")) == 3)  # the flagged cells
            sizes = browser.execute_script(
                "const g = document.getElementById('gallery'), s = document.getElementById('side');"
                "return [document.documentElement.scrollWidth, document.documentElement.clientWidth,"
                " document.documentElement.scrollHeight, window.innerHeight, g.scrollWidth, g.clientWidth,"
                " s.scrollWidth, s.clientWidth, innerWidth]"
            )
            page_w, client_w, page_h, inner_h, g_sw, g_cw, s_sw, s_cw, inner_w = sizes
            assert inner_w == w
            assert page_w <= client_w and g_sw <= g_cw and s_sw <= s_cw, (w, sizes)  # no horizontal scrolling
            assert page_h <= inner_h, (w, sizes)  # the page does not scroll: gallery and panel do
            for css in ("#gallery .tile", "#signoff", "#filter", "#reviewed"):
                r = browser.find_element(_by().CSS_SELECTOR, css).rect
                assert r["x"] >= 0 and r["x"] + r["width"] <= w and r["y"] + r["height"] <= h, (css, w, r)
            # grouped by class: the headings are classes, in the spec's order
            heads = [e.get_attribute("data-class") for e in browser.find_elements(_by().CSS_SELECTOR, "#gallery h3")]
            assert heads == ["eosinophil", "monocyte", "platelet"]
            browser.find_element(_by().ID, "filter").send_keys("all cells")
            _wait(browser, lambda d: len(d.find_elements(_by().CSS_SELECTOR, ".tile")) == len(CELLS))
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_ten_thousand_cells_open_in_seconds_and_crops_load_lazily(browser, tmp_path):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (96, 96), (200, 120, 160)).save(buf, "JPEG")
    db = tmp_path / "big.db"
    log = SessionLog(db, "fields/", "field", {"model": "m", "model_sha256": "ab"}, 0.8, sample="big", count_target=100)
    probs = {k: 1 / 8 for k in LABELS}
    cells = [
        CellRecord((0, 0, 9, 9), LABELS[k % 6 if k % 6 != 2 else 4], 0.9, k % 50 == 0, probs, crop_jpeg=buf.getvalue())
        for k in range(10_000)
    ]
    log.log_frame(0, time.time(), "f0.png", (100, 100), len(cells), cells)  # one transaction
    log.finish("end", {})
    sid = log.id
    log.close()
    server = review.make_server(db, sid, port=0, reviewer="ann", all_cells=True).start()
    try:
        _viewport(browser, 1366, 768)
        t0 = time.monotonic()
        browser.get(server.url)
        _wait(browser, lambda d: d.execute_script("return document.querySelectorAll('.tile').length") == 10_000, 60)
        opened = time.monotonic() - t0
        assert opened < 15, opened  # measured 1.1 s here (2 shared cores), 1 s of it the 3 MB state
        time.sleep(0.5)
        asked = browser.execute_script(
            "return performance.getEntriesByType('resource').filter(e => e.name.includes('/crop/')).length"
        )
        loaded = browser.execute_script("return document.querySelectorAll('.tile img[src]').length")
        assert 0 < loaded < 400 and asked < 400, (loaded, asked)  # the visible tiles, not 10,000
        browser.execute_script("document.getElementById('gallery').scrollTop = 400000")
        _wait(
            browser,
            lambda d: d.execute_script(  # the last tile's crop, once scrolled to
                "return [...document.querySelectorAll('.tile img')].pop().hasAttribute('src')"
            ),
        )
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        server.stop()


def test_artefact_changes_the_differential_on_the_page_and_in_the_report(browser, served):
    db, sid, server = served()
    _open(browser, server)
    assert _text(browser, "#wbc-final") == "10"
    browser.find_element(_by().ID, "filter").send_keys("all cells")
    browser.find_element(_by().CSS_SELECTOR, ".tile[data-cell='1']").click()  # a neutrophil
    _wait(browser, lambda d: d.find_element(_by().ID, "cell-id").get_attribute("data-cell") == "1")
    _keys(browser, "a")
    _status(browser, "saved: cell 1 neutrophil → artefact")
    assert _text(browser, "#wbc-final") == "9"
    assert _text(browser, "#counts tr[data-label=neutrophil]").split() == ["neutrophil", "5", "4", "44.4%"]
    assert _text(browser, "#counts tr[data-label=artefact]").split()[-1] == "1"
    heads = [e.get_attribute("data-class") for e in browser.find_elements(_by().CSS_SELECTOR, "#gallery h3")]
    assert heads[-1] == "artefact"
    # the report the server serves, as a person opens it from the page
    browser.get(urlsplit(server.url)._replace(query="").geturl() + "report")
    assert _text(browser, "#wbc-final") == "9"
    assert _text(browser, "tr[data-label=neutrophil] td.final") == "4"
    assert "artefact (removed from the count)" in _text(browser, "tr[data-label=artefact]")
    with SessionStore(db) as store:
        c = store.cell(sid, 1)
    assert (c.reviewed_label, c.reviewer) == ("artefact", "ann")


def test_sign_off_is_refused_until_the_rules_hold_then_read_only(browser, served):
    db, sid, server = served(unvalidated=True)  # target 11 cells: 10 white cells is a short count

    def try_sign(expect, ack=False):
        browser.find_element(_by().ID, "signoff").click()
        _wait(browser, lambda d: d.find_element(_by().ID, "confirm").is_displayed())
        if ack:
            browser.find_element(_by().ID, "short-ack").click()
        browser.find_element(_by().ID, "confirm-sign").click()
        if expect is None:
            _wait(browser, lambda d: not d.find_element(_by().ID, "confirm").is_displayed())
            return
        _wait(browser, lambda d: d.find_element(_by().ID, "confirm-status").text.startswith("Refused"))
        assert expect in _text(browser, "#confirm-status")
        browser.find_element(_by().ID, "confirm-cancel").click()

    _open(browser, server)
    assert browser.find_element(_by().ID, "filter").get_attribute("value") == "all"  # UNVALIDATED: every cell
    assert "UNVALIDATED differential" in _text(browser, "#banner")
    try_sign("3 flagged cell(s) not reviewed yet")
    # review the flagged cells (the confirmation lists the rules as the server counts them)
    browser.find_element(_by().ID, "filter").send_keys("flagged")
    browser.find_element(_by().ID, "crop").click()  # the keys to the page, not to the filter
    for k in range(1, 4):
        _keys(browser, "c")
        _wait(browser, lambda d, k=k: f"{k}/3 flagged" in d.find_element(_by().ID, "progress").text)
    try_sign("UNVALIDATED session: every cell must be reviewed (8 not reviewed yet)")
    assert _signed(db) == []
    # every cell: select all shown and confirm
    browser.find_element(_by().ID, "filter").send_keys("all cells")
    _wait(browser, lambda d: len(d.find_elements(_by().CSS_SELECTOR, ".tile")) == len(CELLS))
    browser.find_element(_by().ID, "crop").click()
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ActionChains(browser).key_down(Keys.CONTROL).send_keys("a").key_up(Keys.CONTROL).perform()
    _wait(browser, lambda d: d.find_element(_by().ID, "selection").text.startswith("11 selected"))
    _keys(browser, "c")
    _status(browser, "saved: 11 cells confirmed")
    try_sign("short count: 10 white cells after review, below the session's target of 11")
    assert _signed(db) == []
    # the confirmation screen: the final differential and what the review changed
    browser.find_element(_by().ID, "signoff").click()
    _wait(browser, lambda d: d.find_element(_by().ID, "confirm").is_displayed())
    assert _text(browser, "#confirm-wbc") == "10"
    assert "11 confirmed, 0 reclassified" in _text(browser, "#confirm-changes")
    assert browser.find_element(_by().ID, "short-row").is_displayed()
    browser.find_element(_by().ID, "confirm-cancel").click()
    try_sign(None, ack=True)
    _status(browser, "signed off by ann (version 1)")
    assert _signed(db) == [("ann", "short count acknowledged: 10 of 11 white cells")]
    # read-only: no active control, keys do nothing, and the server refuses (409)
    assert browser.find_elements(_by().CSS_SELECTOR, "#labels button") == []
    assert not browser.find_element(_by().ID, "signoff").is_displayed()
    assert browser.find_element(_by().ID, "amend").is_displayed()
    assert "read-only" in _text(browser, "#banner")
    _keys(browser, "2")
    _status(browser, "signed off by ann: read-only")
    c = ReviewClient(server.url)
    with pytest.raises(urllib.error.HTTPError) as e:
        c.post("api/decide", {"cell": 1, "label": "eosinophil", "version": 1})
    assert e.value.code == 409 and "signed off by ann" in json.loads(e.value.read())["error"]
    with pytest.raises(urllib.error.HTTPError) as e:
        c.post("api/signoff", {"short_count": 1})
    assert e.value.code == 409 and "read-only" in json.loads(e.value.read())["error"]
    with SessionStore(db) as store:
        assert store.cell(sid, 1).reviewed_label == "neutrophil"


def test_amendment_with_a_reason_is_signed_as_version_2_and_both_are_in_the_report(browser, served):
    db, sid, server = served(count_target=None)
    with SessionStore(db) as store:
        for cid in (9, 10, 11):
            store.decide(sid, cid, store.cell(sid, cid).label, "ann", 0)
        store.sign_off(sid, "ann")
    _open(browser, server)
    assert browser.find_elements(_by().CSS_SELECTOR, "#labels button") == []
    browser.find_element(_by().ID, "amend").click()
    _wait(browser, lambda d: d.find_element(_by().ID, "amend-dialog").is_displayed())
    browser.find_element(_by().ID, "amend-start").click()  # no reason: refused on the page
    assert _text(browser, "#amend-status") == "An amendment needs a reason."
    browser.find_element(_by().ID, "amend-reason").send_keys("cell 10 is a smudge cell on a second look")
    browser.find_element(_by().ID, "amend-start").click()
    _wait(browser, lambda d: d.find_elements(_by().CSS_SELECTOR, "#labels button"))
    browser.find_element(_by().CSS_SELECTOR, ".tile[data-cell='10']").click()
    _wait(browser, lambda d: d.find_element(_by().ID, "cell-id").get_attribute("data-cell") == "10")
    _keys(browser, "s")
    _status(browser, "saved: cell 10 eosinophil → smudge")
    assert _text(browser, "#wbc-final") == "9"
    assert browser.find_element(_by().ID, "signoff").text == "Sign version 2…"
    browser.find_element(_by().ID, "signoff").click()
    _wait(browser, lambda d: d.find_element(_by().ID, "confirm").is_displayed())
    assert _text(browser, "#confirm-title") == "Sign version 2 (amended)"
    assert "#10 eosinophil → smudge" in _text(browser, "#confirm-changes")
    browser.find_element(_by().ID, "confirm-sign").click()
    _status(browser, "signed off by ann (version 2)")
    browser.get(urlsplit(server.url)._replace(query="").geturl() + "report")
    v1 = _text(browser, "#versions tr[data-version='1']")
    v2 = _text(browser, "#versions tr[data-version='2']")
    assert "superseded by version 2" in v1 and "eosinophil 10.0%" in v1 and " 10 " in f" {v1} "
    assert "cell 10 is a smudge cell on a second look" in v2 and "smudge 1" in v2 and "eosinophil" not in v2
    assert _text(browser, "#signed-version") == "2"
    assert _text(browser, "[data-field='report status']") == "amended"
    assert "smudge (reported apart, not in the differential)" in _text(browser, "tr[data-label=smudge]")
    with SessionStore(db) as store:
        trail = [(a.action, a.reason) for a in store.audit(sid)][-3:]
    assert trail == [("signoff", None), ("amend", "cell 10 is a smudge cell on a second look"), ("signoff", None)]


def test_keyboard_only_review_of_a_100_cell_session(browser, served):
    from selenium.webdriver.common.keys import Keys

    cells = [(LABELS[[0, 1, 3, 4, 5, 6][k % 6]], 0.9, k % 4 == 0, False) for k in range(100)]
    db, sid, server = served(cells=cells, count_target=100)
    browser.get(server.url)
    _wait(browser, lambda d: d.find_element(_by().ID, "cell-id"))
    # counts every pointer event a mouse or a finger makes (a click a key makes has detail 0)
    browser.execute_script(
        "window.mouse = 0; ['mousedown', 'mouseup', 'click', 'pointerdown', 'touchstart']"
        ".forEach(t => document.addEventListener(t, e => {"
        " if (e.isTrusted && e.detail !== 0) window.mouse++; }, true));"
    )
    while browser.find_element(_by().ID, "filter").get_attribute("value") != "all":
        _keys(browser, "f")  # the "show" filter, by key: on to "all cells"
    _wait(browser, lambda d: len(d.find_elements(_by().CSS_SELECTOR, ".tile")) == 100)
    _keys(browser, Keys.HOME)
    plan = {}  # cell id -> what the keys made of it
    for n in range(100):
        cid = int(browser.find_element(_by().ID, "cell-id").get_attribute("data-cell"))
        key, label = (
            ("a", "artefact")
            if n == 10
            else ("d", "duplicate")
            if n == 20
            else ("b", "blast")
            if n == 30
            else ("x", "unidentified")
            if n == 40
            else (Keys.ENTER, None)
        )
        _keys(browser, key)
        _status(browser, f"saved: cell {cid} ")
        plan[cid] = label
        _wait(
            browser,
            lambda d, cid=cid, n=n: (
                d.find_element(_by().ID, "cell-id").get_attribute("data-cell") != str(cid) or n == 99
            ),
        )
    assert len(plan) == 100
    _wait(browser, lambda d: "100/100 cells" in d.find_element(_by().ID, "progress").text)
    # 98 white cells after review (artefact and duplicate out; the blast and the unidentified in):
    # short count against 100; the confirmation screen by keys: S, Shift+Tab to the acknowledgement,
    # Space, Tab back to Sign, Enter
    assert _text(browser, "#wbc-final") == "98"
    _keys(browser, "S")
    _wait(browser, lambda d: d.find_element(_by().ID, "confirm").is_displayed())
    _keys(browser, Keys.ENTER)  # Sign has the focus: refused, the short count is not acknowledged
    _wait(browser, lambda d: "short count" in d.find_element(_by().ID, "confirm-status").text)
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
    assert browser.switch_to.active_element.get_attribute("id") == "short-ack"
    _keys(browser, Keys.SPACE, Keys.TAB, Keys.ENTER)
    _status(browser, "signed off by ann (version 1)")
    assert browser.execute_script("return window.mouse") == 0
    with SessionStore(db) as store:
        got = {c.id: c for c in store.cells(sid)}
    assert all(c.reviewer == "ann" and c.reviewed_label == (plan[c.id] or c.label) for c in got.values())
    assert _signed(db) == [("ann", "short count acknowledged: 98 of 100 white cells")]

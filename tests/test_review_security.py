"""The review server as a hostile page and user would try it (issue 25), against a running
`edge-bloodcls review` on loopback: framing headers, a foreign Host, no token, a cross-site write,
huge and malformed bodies, wrong JSON types, a slow client, markup in names and in labels. Each
gets a 4xx, the server keeps serving, prints no traceback, and in headless Chromium no injected
script runs. Also: the live capture view's headers and token, bundles with markup labels or no
manifest hash."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest
from review_client import ReviewClient
from session_fixtures import REPO, make_session, run_cli

from edge_bloodcls.edge_runtime.capture.webserve import allowed_hosts, json_for_html

EVIL = '</script><script>document.title="pwned"</script><img src=x onerror="document.title=\'pwned\'">\u2028&'
TIMEOUT_S = 1.0  # EDGE_BLOODCLS_HTTP_TIMEOUT_S of the server under test


def raw(port: int, data: bytes, read_timeout: float = 10) -> tuple[int, dict, bytes]:
    """One request as bytes (a client that obeys no library): status, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(data)
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            buf += chunk
            head, sep, body = buf.partition(b"\r\n\r\n")
            if sep:
                hdrs = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (ln.decode("latin-1").partition(":") for ln in head.split(b"\r\n")[1:])
                }
                if len(body) >= int(hdrs.get("content-length", "0")):
                    return int(head.split()[1]), hdrs, body
    head, _, body = buf.partition(b"\r\n\r\n")
    return (int(head.split()[1]) if head else 0), {}, body


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`edge-bloodcls review` with a reviewer name full of markup, on a session whose sample and
    operator are markup too; its output is read at the end (no traceback)."""
    tmp = tmp_path_factory.mktemp("hostile")
    db = tmp / "s.db"
    make_session(db, sample=EVIL)
    env = dict(os.environ, PYTHONPATH=str(REPO), EDGE_BLOODCLS_HTTP_TIMEOUT_S=str(TIMEOUT_S))
    out, err = tmp / "out.txt", tmp / "err.txt"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_bloodcls.cli", "review", str(db), "--port", "0", "--reviewer", EVIL],
            stdout=o,
            stderr=e,
            env=env,
        )
    deadline = time.monotonic() + 60
    while "review http" not in out.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    line = out.read_text().splitlines()[0]
    url = line.split()[1]
    yield {"url": url, "port": urlsplit(url).port, "token": url.split("token=")[1], "db": db, "proc": proc}
    proc.terminate()
    proc.wait(30)
    for f in (out, err):
        assert "Traceback" not in f.read_text(), f.read_text()
    assert "Exception" not in err.read_text(), err.read_text()


def _get(port, path, host="127.0.0.1", extra=b""):
    return raw(port, f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n".encode() + extra + b"Connection: close\r\n\r\n")


def _security_headers(h: dict) -> None:
    csp = h["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp.split("script-src")[-1].split(";")[0]
    assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff"
    assert h["referrer-policy"] == "no-referrer"


def test_every_answer_carries_the_security_headers(server):
    port, tok = server["port"], server["token"]
    cookie = f"Cookie: edge_bloodcls_{port}={tok}\r\n".encode()
    answers = [
        _get(port, f"/?token={tok}"),
        _get(port, "/api/state", extra=cookie),
        _get(port, "/"),
        _get(port, "/nothing", extra=cookie),
        _get(port, "/static/review.js", extra=cookie),
        _get(port, "/", host="evil.example"),
        _get(port, "/report", extra=cookie),
    ]
    assert [a[0] for a in answers] == [200, 200, 403, 404, 200, 421, 200]
    for _, h, _ in answers:
        _security_headers(h)
    assert "script-src" not in answers[-1][1]["content-security-policy"]  # the report: no script at all
    assert answers[0][1]["set-cookie"].startswith(f"edge_bloodcls_{port}={tok}; Path=/; HttpOnly; SameSite=Strict")


def test_foreign_host_and_missing_or_wrong_token_are_refused(server):
    port, tok = server["port"], server["token"]
    for host in ("evil.example", "127.0.0.1.evil.example", "localhost.evil"):  # DNS rebinding
        assert _get(port, f"/?token={tok}", host=host)[0] == 421
    wrong = tok[:-1] + ("y" if tok[-1] != "y" else "z")  # one character off
    for path in ("/", "/api/state", "/crop/9", "/report", "/static/review.js", f"/?token={wrong}"):
        status, _, body = _get(port, path)
        assert status == 403 and b"token" in body
    post = (
        f"POST /api/decide HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Origin: http://127.0.0.1:{port}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    ).encode()
    assert raw(port, post)[0] == 403


def test_writes_from_another_origin_are_refused(server):
    c = ReviewClient(server["url"])
    for origin in ("http://evil.example", "null", ""):
        with pytest.raises(urllib.error.HTTPError) as e:
            c.post("api/decide", {"cell": 9, "label": "monocyte", "version": 0}, {"Origin": origin})
        assert e.value.code == 403 and "Origin" in json.loads(e.value.read())["error"]


def test_huge_malformed_and_mistyped_bodies_get_4xx_with_a_reason(server):
    port, c = server["port"], ReviewClient(server["url"])
    cookie = f"edge_bloodcls_{port}={server['token']}"

    def post(body: bytes, length: str | None = None, ctype="application/json", chunked=False):
        head = (
            f"POST /api/decide HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\n"
            f"Cookie: {cookie}\r\nContent-Type: {ctype}\r\nConnection: close\r\n"
        )
        if chunked:
            head += "Transfer-Encoding: chunked\r\n\r\n"
            data = (
                b"".join(
                    b"%x\r\n%s\r\n" % (len(body[i : i + 8192]), body[i : i + 8192]) for i in range(0, len(body), 8192)
                )
                + b"0\r\n\r\n"
            )
            return raw(port, head.encode() + data)
        head += f"Content-Length: {length if length is not None else len(body)}\r\n\r\n"
        return raw(port, head.encode() + body)

    assert post(b"", length="100000000000")[0] == 413  # refused on the header: nothing read
    assert post(b"x" * 1000, length=str(200 * 2**20))[0] == 413
    assert post(b'{"cell": 9, "label": "' + b"a" * 70000 + b'", "version": 0}', chunked=True)[0] == 413
    assert post(b"", length="-1")[0] in (400, 413)
    cases = [
        (b"[1, 2]", "JSON object"),
        (b'"x"', "JSON object"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 5000 + b"]" * 5000, ""),
        (b'{"cell": true, "label": "monocyte", "version": 0}', "integer"),
        (b'{"cell": 9.0, "label": "monocyte", "version": 0}', "integer"),
        (b'{"cell": "9", "label": "monocyte", "version": 0}', "integer"),
        (b'{"cell": -1, "label": "monocyte", "version": 0}', "in 1.."),
        (b'{"cell": 99999999999999, "label": "monocyte", "version": 0}', "in 1.."),
        (b'{"cell": 9, "label": "<img src=x onerror=alert(1)>", "version": 0}', "one of"),
        (b'{"cell": 9, "label": ["monocyte"], "version": 0}', "string"),
        (b'{"cell": 9, "label": "monocyte"}', "missing field 'version'"),
        (b'{"cell": 9, "label": "monocyte", "version": 0, "reviewer": "mallory"}', "unexpected"),
    ]
    for body, reason in cases:
        status, _, answer = post(body)
        assert status == 400, (body[:40], status, answer)
        assert reason in json.loads(answer)["error"]
    assert post(b"cell=9&label=monocyte", ctype="application/x-www-form-urlencoded")[0] == 415
    assert c.json("api/state")["tally"]["flagged_reviewed"] == 0  # none of it decided anything


def test_slow_clients_are_cut_off_and_the_server_keeps_serving(server):
    port, c = server["port"], ReviewClient(server["url"])
    slow = socket.create_connection(("127.0.0.1", port), timeout=10)
    slow.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the end of the head
    body_slow = socket.create_connection(("127.0.0.1", port), timeout=10)
    body_slow.sendall(
        (
            f"POST /api/decide HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\n"
            f"Cookie: edge_bloodcls_{port}={server['token']}\r\nContent-Type: application/json\r\n"
            "Content-Length: 40\r\n\r\n{"
        ).encode()
    )  # 1 of 40 bytes
    t0 = time.monotonic()
    assert c.json("api/state")["session"]["id"] == 1  # served meanwhile
    assert slow.recv(100) == b""  # closed by the server, not by us
    assert TIMEOUT_S * 0.5 <= time.monotonic() - t0 < TIMEOUT_S + 5
    answer = b""
    while chunk := body_slow.recv(4096):  # until the server closes it
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"not received within" in answer
    slow.close()
    body_slow.close()
    assert c.json("api/state")["session"]["id"] == 1


def test_markup_in_names_stays_text_and_no_injected_script_runs(server, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    page = ReviewClient(server["url"]).page.decode()
    assert EVIL not in page and "\\u003c/script\\u003e" in page and "\u2028" not in page  # escaped JSON
    browser.get(server["url"])
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "cell-id"))
    browser.find_element(By.CSS_SELECTOR, "button[data-label=lymphocyte]").click()  # decided by EVIL
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "status").text.startswith("saved"))
    browser.find_element(By.ID, "crop").click()
    ActionChains(browser).send_keys(Keys.ARROW_LEFT).perform()  # back to cell 9: its decision
    WebDriverWait(browser, 20).until(lambda d: "by" in d.find_element(By.ID, "decision").text)
    assert browser.title == "edge-bloodcls review"
    assert (
        browser.execute_script(
            "return document.querySelectorAll('img[src=x], script:not([src]):not([type=\"application/json\"])').length"
        )
        == 0
    )
    assert browser.find_element(By.ID, "reviewer").get_attribute("textContent") == EVIL
    assert EVIL in browser.find_element(By.ID, "decision").get_attribute("textContent")
    assert EVIL in browser.find_element(By.ID, "title").get_attribute("textContent")  # the sample
    browser.get(urlsplit(server["url"])._replace(query="").geturl() + "report")
    assert browser.title == f"White-cell differential: sample {EVIL}"  # as text
    assert browser.execute_script("return document.querySelectorAll('img[src=x], script').length") == 0


def test_labels_with_markup_are_refused_at_load(tmp_path, bundles):
    import sqlite3

    db = tmp_path / "s.db"
    make_session(db)
    con = sqlite3.connect(db)  # a tampered log
    con.execute("UPDATE cells SET label = ? WHERE id = 2", ("<img src=x onerror=alert(1)>",))
    con.commit()
    con.close()
    r = run_cli("review", db, "--port", "0", "--reviewer", "ann")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr == (
        f"error: {db}: cell 2 has label '<img src=x onerror=alert(1)>', not one of the label set; "
        "refusing to serve it\n"
    )
    # a bundle whose labels are not the label set, hash and all
    from edge_bloodcls.edge_runtime.core.bundle import manifest_sha256

    for change, match in [
        (lambda m: m["labels"].__setitem__(0, "<b>x</b>"), "is not one of the label set"),
        (lambda m: m.pop("manifest_sha256"), "has no manifest_sha256"),
    ]:
        d = tmp_path / f"b{len(match)}"
        d.mkdir()
        shutil.copy(bundles["int8"], d / "m.tflite")
        m = json.loads(bundles["int8"].with_suffix(".json").read_text())
        change(m)
        if "manifest_sha256" in m:
            m["manifest_sha256"] = manifest_sha256(m)
        (d / "m.json").write_text(json.dumps(m))
        r = run_cli("classify", "x.jpg", "--model", d / "m.tflite")
        assert r.exit_code == 2 and r.stderr.count("\n") == 1 and match in r.stderr, r.output


def test_live_view_has_token_host_check_and_headers():
    import numpy as np

    from edge_bloodcls.edge_runtime.capture.preview import LiveView

    live = LiveView(port=0, max_fps=100)
    try:
        live.publish(np.zeros((8, 8, 3), np.uint8), '<img src=x onerror="alert(1)">')
        port = urlsplit(live.base).port
        assert _get(port, "/status.json")[0] == 403
        assert _get(port, f"/status.json?token={live.token}", host="evil.example")[0] == 421
        status, h, body = _get(port, f"/status.json?token={live.token}")
        assert status == 200 and json.loads(body)["text"] == '<img src=x onerror="alert(1)">'
        _security_headers(h)
        assert "textContent" in (REPO / "edge_runtime" / "capture" / "web" / "live.js").read_text()
    finally:
        live.close()


def test_allowed_hosts_and_json_for_html():
    assert {"127.0.0.1", "localhost", "::1"} <= allowed_hosts("127.0.0.1")
    assert "evil.example" not in allowed_hosts("0.0.0.0")
    assert socket.gethostname().lower() in allowed_hosts("0.0.0.0")
    assert "pi.lab" in allowed_hosts("0.0.0.0", ("pi.lab",))
    s = json_for_html({"a": "</script>&\u2028\u2029"})
    assert not any(ch in s for ch in "<>&\u2028\u2029") and json.loads(s) == {"a": "</script>&\u2028\u2029"}

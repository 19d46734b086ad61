"""The report a lab files and the exports a laboratory system takes (issue 28): the sample and
sign-off block, absolute counts, reference intervals and rule flags, the audit trail, PDF by
headless Chromium, FHIR R4 validated with fhir.resources (R4B models), the CSV summary row,
formula injection, text that is not UTF-8, and a 10,000-cell session's size and time."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
import subprocess
import time

import pytest
from report_fixtures import make_big_session
from session_fixtures import CELLS, make_session, run_cli

from edge_bloodcls.edge_runtime.lab.reference import Intervals
from edge_bloodcls.edge_runtime.lab.report import load
from edge_bloodcls.edge_runtime.lab.report_adapt import from_store
from edge_bloodcls.edge_runtime.lab.report_csv import neutralise
from edge_bloodcls.edge_runtime.lab.report_fhir import bundle
from edge_bloodcls.edge_runtime.lab.report_html import render
from edge_bloodcls.edge_runtime.lab.report_model import RESEARCH_USE, differential
from edge_bloodcls.edge_runtime.lab.report_pdf import find_chromium
from edge_bloodcls.edge_runtime.lab.store import SessionStore

# 10 white cells before review: neutrophil 5, lymphocyte 3, monocyte 1, eosinophil 1 (+ a platelet),
# then 2 immature granulocytes and 1 erythroblast
MORE = CELLS + [("ig", 0.9, False, False)] * 2 + [("erythroblast", 0.9, False, False)]


def _decide(db, sid, cell, label, who):
    with SessionStore(db) as store:
        store.decide(sid, cell, label, who, store.cell(sid, cell).version)


def _signed(db, sample="S-42") -> int:
    sid = make_session(db, cells=MORE, sample=sample)
    _decide(db, sid, 9, "monocyte", "ann")  # confirm
    _decide(db, sid, 10, "neutrophil", "ann")  # eosinophil -> neutrophil
    _decide(db, sid, 11, "platelet", "bo")
    with SessionStore(db) as store:  # 12 white cells of a target of 14: signed as a short count
        store.sign_off(sid, "ann", short_count=True)
    return sid


def test_report_has_sample_block_absolute_counts_flags_and_research_use(tmp_path):
    db = tmp_path / "s.db"
    _signed(db)
    out = tmp_path / "r.html"
    r = run_cli("report", db, "--out", out, "--wbc-count", "6.5", "--full-crops")
    assert r.exit_code == 0, r.output
    assert "final" in r.stdout and "full crops in" in r.stdout
    page = out.read_text()
    assert page.count(RESEARCH_USE) >= 2  # on screen at the top, and in every printed page's margin (CSS)
    assert "@bottom-left{content:\"Research use only" in page and "size:A4" in page
    assert "<td data-field='sample'>S-42</td>" in page and "<td data-field='reviewer (signed by)'>ann</td>" in page
    assert "<td data-field='report status'>final</td>" in page
    signed_at = load(db).session.signed_at
    iso = page.split("<td data-field='signed at'>")[1].split("<")[0]
    assert iso[19] in "+-" and abs(time.mktime(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S")) - signed_at) < 1
    # after review: neutrophil 6 of 12 white cells (5 + the reclassified eosinophil; 2 ig), x 6.5
    d = differential(from_store(load(db), 6.5))
    assert d.wbc_final == 12 and d.row("neutrophil").final == 6
    assert abs(d.row("neutrophil").absolute - 6.5 * 6 / 12) < 1e-9
    assert f"<td class='abs'>{6.5 * 6 / 12:.2f}</td>" in page
    # eosinophil 0 of 12: below the default 1-3% -> L; immature granulocytes and NRBC flagged by their rules
    assert "<tr data-label='eosinophil' class='changed'>" in page
    eos_row = page.split("<tr data-label='eosinophil'")[1].split("</tr>")[0]
    assert "<td class='hl mark'>L</td>" in eos_row
    for rule in ("IG_PRESENT", "NRBC", "SHORT_COUNT"):
        assert f"data-rule='{rule}'" in page
    assert "8.3 per 100 white cells" in page  # 1 erythroblast / 12 white cells
    assert "id='signature'" in page and "<b id='signed-by'>ann</b>" in page
    # the gallery: a contact sheet per class after review, linking each cell to its full crop beside the page
    assert "href='r_crops/1.jpg'" in page and (tmp_path / "r_crops" / "1.jpg").read_bytes()[:2] == b"\xff\xd8"


def test_ranges_file_json_and_toml_override_defaults_and_bad_files_are_one_line(tmp_path):
    db = tmp_path / "s.db"
    _signed(db)
    js = tmp_path / "ranges.json"
    js.write_text(json.dumps({"percent": {"eosinophil": [0, 1]}, "rules": {"min_wbc": 5}}))
    toml = tmp_path / "ranges.toml"
    toml.write_text("[percent]\neosinophil = [0, 1]\n[rules]\nmin_wbc = 5\n")
    for f in (js, toml):
        r = run_cli("report", db, "--out", tmp_path / "r.html", "--ranges", f)
        assert r.exit_code == 0, r.output
        page = (tmp_path / "r.html").read_text()
        eos_row = page.split("<tr data-label='eosinophil'")[1].split("</tr>")[0]
        assert "<td class='hl mark'></td>" in eos_row and "0-1</td>" in eos_row  # 0% inside [0, 1]
        assert str(f) in page and not (tmp_path / "r_crops").exists()
    bad = {
        "b1.json": "{not json",
        "b2.json": json.dumps({"percent": {"platelet": [1, 2]}}),
        "b3.toml": "[rules]\nmin_wbc = -1\n",
        "b4.json": json.dumps({"percent": {"neutrophil": [70, 40]}}),
    }
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        r = run_cli("report", db, "--out", tmp_path / "x.html", "--ranges", tmp_path / name)
        assert r.exit_code == 2 and r.stderr.startswith(f"error: {tmp_path / name}: ") and r.stderr.count("\n") == 1
        assert "Traceback" not in r.output
    assert not (tmp_path / "x.html").exists()


def test_rules_eosinophilia_by_share_and_by_absolute_count():
    from edge_bloodcls.edge_runtime.lab.report_model import CellRow, ReportData, SessionMeta
    from edge_bloodcls.edge_runtime.lab.report_rules import flags

    meta = SessionMeta(
        id=1,
        path="x",
        sample="S",
        operator="o",
        started=0.0,
        ended=1.0,
        model="m",
        model_sha256="h",
        counting="tracked",
    )
    cells = [CellRow(i, "eosinophil" if i < 10 else "neutrophil", 0.9, False) for i in range(100)]
    data = ReportData(meta, cells)
    rules = {f.rule: f.message for f in flags(data, differential(data), Intervals())}
    assert "EOSINOPHILIA" in rules and "10.0% eosinophils" in rules["EOSINOPHILIA"]
    assert "SHORT_COUNT" not in rules  # 100 white cells: the default minimum
    low = ReportData(meta, cells, wbc_count=4.0)  # 10% of 4.0 = 0.40 x10^9/L: not above 0.5
    assert "EOSINOPHILIA" not in {f.rule for f in flags(low, differential(low), Intervals())}
    high = ReportData(meta, cells, wbc_count=8.0)  # 0.80 x10^9/L
    msg = {f.rule: f.message for f in flags(high, differential(high), Intervals())}["EOSINOPHILIA"]
    assert "0.80 x10^9/L" in msg


def test_audit_trail_and_amended_status_from_typed_records():
    from edge_bloodcls.edge_runtime.lab.report_model import (
        AMENDED,
        FINAL,
        AuditEntry,
        CellRow,
        ReportData,
        SessionMeta,
        SignOff,
    )

    meta = SessionMeta(
        id=1,
        path="x",
        sample="S<1>",
        operator="o",
        started=0.0,
        ended=1.0,
        model="m",
        model_sha256="h",
        counting="tracked",
    )
    cells = [CellRow(1, "monocyte", 0.5, True, reviewed_label="lymphocyte", reviewer="ann", reviewed_at=5.0)]
    trail = [AuditEntry(5.0, "ann", "reclassify", 1, "monocyte", "lymphocyte")]
    signed = ReportData(meta, cells, SignOff("ann", 10.0), trail)
    assert signed.status == FINAL
    page = render(signed)
    assert "<table id='audit'" in page and "<td>reclassify</td><td>1</td><td>monocyte</td><td>lymphocyte</td>" in page
    assert "S&lt;1&gt;" in page and "S<1>" not in page  # escaped
    later = ReportData(
        meta,
        cells,
        SignOff("ann", 10.0),
        trail + [AuditEntry(20.0, "bo", "amend", 1, "lymphocyte", "monocyte", "second look")],
    )
    assert later.status == AMENDED and "second look" in render(later)
    assert bundle(later)["entry"][0]["resource"]["status"] == "amended"


def test_fhir_bundle_validates_and_round_trips(tmp_path):
    pytest.importorskip("fhir.resources", reason="fhir.resources is in the fhir extra: pip install -e '.[fhir]'")
    from fhir.resources.R4B.bundle import Bundle

    db = tmp_path / "s.db"
    _signed(db)
    out = tmp_path / "r.fhir.json"
    r = run_cli("report", db, "--format", "fhir", "--out", out, "--wbc-count", "6.5")
    assert r.exit_code == 0, r.output
    raw = json.loads(out.read_text())
    b = Bundle.model_validate(raw)  # raises on any R4 structure error
    again = Bundle.model_validate_json(b.model_dump_json())
    assert again == b
    res = {e.resource.id: e.resource for e in b.entry}
    report = b.entry[0].resource
    assert report.__resource_type__ == "DiagnosticReport" and report.status == "final"
    assert report.code.coding[0].code == "69738-3" and RESEARCH_USE in report.conclusion
    obs = [res[ref.reference.removeprefix("urn:uuid:")] for ref in report.result]
    by_code = {c.code: o for o in obs for c in o.code.coding if c.system == "http://loinc.org"}
    neut, neut_abs = by_code["770-8"], by_code["751-8"]
    assert float(neut.valueQuantity.value) == round(100 * 6 / 12, 1) and neut.valueQuantity.code == "%"
    assert abs(float(neut_abs.valueQuantity.value) - 6.5 * 6 / 12) < 1e-3 and neut_abs.valueQuantity.code == "10*9/L"
    assert by_code["26450-7"].interpretation[0].coding[0].code == "L"  # eosinophils 0% < 1%
    assert "58413-6" in by_code and "71695-1" in by_code  # NRBC per 100 WBC, immature granulocytes
    specimen = res[report.specimen[0].reference.removeprefix("urn:uuid:")]
    assert specimen.identifier[0].value == "S-42"
    assert [p.display for p in report.performer] == ["ann (operator)", "ann (reviewer)"]
    full_urls = [e.fullUrl for e in b.entry]
    assert len(full_urls) == len(set(full_urls))  # one Practitioner for ann, operator and reviewer
    device = res[neut.device.reference.removeprefix("urn:uuid:")]
    assert device.deviceName[0].name == "tiny_int8" and device.version[0].value == "ab" * 32
    # the same session exported again: the same resources (a laboratory system updates, not duplicates)
    assert bundle(from_store(load(db), 6.5))["entry"][1:] == raw["entry"][1:]
    # no WBC count: no absolute counts; an unsigned session is preliminary
    db2 = tmp_path / "s2.db"
    make_session(db2)
    b2 = Bundle.model_validate(bundle(from_store(load(db2))))
    codes = {c.code for e in b2.entry if e.resource.__resource_type__ == "Observation" for c in e.resource.code.coding}
    assert "770-8" in codes and "751-8" not in codes
    assert b2.entry[0].resource.status == "preliminary"


def _pdf_tools():
    if find_chromium() is None or not shutil.which("pdftotext"):
        pytest.skip("no headless Chromium or pdftotext: `make browser` installs chromium and poppler-utils")


def test_pdf_has_sample_differential_signature_and_research_use_on_every_page(tmp_path):
    _pdf_tools()
    db = tmp_path / "s.db"
    _signed(db)
    out = tmp_path / "r.pdf"
    r = run_cli("report", db, "--format", "pdf", "--out", out, "--paper", "letter")
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:5] == b"%PDF-"
    info = subprocess.run(["pdfinfo", str(out)], capture_output=True, text=True, timeout=60).stdout
    pages = int(info.split("Pages:")[1].split()[0])
    assert "612 x 792 pts" in info and pages >= 2  # Letter
    text = subprocess.run(["pdftotext", "-layout", str(out), "-"], capture_output=True, text=True, timeout=60).stdout
    assert "sample S-42" in text and "Differential" in text
    assert "neutrophil" in text and "50.0%" in text and "41.7%" in text  # 6 of 12 after review, 5 before
    assert "Reviewed and signed by: ann" in text
    for p in range(1, pages + 1):
        page = subprocess.run(
            ["pdftotext", "-f", str(p), "-l", str(p), str(out), "-"], capture_output=True, text=True, timeout=60
        ).stdout
        assert RESEARCH_USE in " ".join(page.split()), f"page {p} lacks the research-use statement"


def test_pdf_without_a_browser_says_so_in_one_line(tmp_path, monkeypatch):
    db = tmp_path / "s.db"
    make_session(db)
    monkeypatch.setenv("CHROMIUM", "")
    r = run_cli("report", db, "--format", "pdf", "--out", tmp_path / "r.pdf")
    assert r.exit_code == 2 and r.stderr.startswith("error: no PDF route:") and r.stderr.count("\n") == 1
    assert not (tmp_path / "r.pdf").exists()


def test_csv_neutralises_formulas_and_report_survives_text_that_is_not_utf8(tmp_path):
    for v in ("=1+1", "+cmd", "-cmd", "@SUM(A1)", "\t=x", "-1+1"):
        assert neutralise(v) == "'" + v
    for v in ("-1.5", "+2", "S-42", "ann", 3, ""):
        assert neutralise(v) == v
    db = tmp_path / "s.db"
    sid = make_session(db, sample="=HYPERLINK(\"http://x\")")
    _decide(db, sid, 9, "monocyte", "@evil")
    con = sqlite3.connect(db)  # another tool wrote bytes that are not UTF-8
    con.execute("UPDATE sessions SET operator = CAST(X'616EFF6E' AS TEXT)")
    con.commit()
    con.close()
    out, cells = tmp_path / "sum.csv", tmp_path / "cells.csv"
    r = run_cli("report", db, "--format", "csv", "--out", out, "--csv", cells)
    assert r.exit_code == 0, r.output
    row = next(csv.DictReader(out.open(encoding="utf-8")))
    assert row["sample"] == "'=HYPERLINK(\"http://x\")" and row["operator"] == "an\\xffn"
    assert row["status"] == "preliminary" and row["pct_neutrophil"] == "50.0" and row["flags"]
    per_cell = list(csv.DictReader(cells.open(encoding="utf-8")))
    assert per_cell[8]["reviewer"] == "'@evil" and per_cell[0]["confidence"] == "0.950000"
    r = run_cli("report", db, "--out", tmp_path / "r.html")
    assert r.exit_code == 0, r.output
    assert "an\\xffn" in (tmp_path / "r.html").read_text()


def test_10000_cell_session_gives_a_report_under_20_mb_without_runaway_work(tmp_path):
    db = tmp_path / "big.db"
    make_big_session(db)
    out = tmp_path / "big.html"
    t0, c0 = time.perf_counter(), time.process_time()
    r = run_cli("report", db, "--out", out)
    took, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert r.exit_code == 0, r.output
    size = out.stat().st_size
    page = out.read_text()
    # every cell is in the gallery: a hover title over its thumbnail, in a contact sheet of its class
    assert page.count("<a title='#") == 10_000 and page.count("<img alt='cell ") == 500
    assert size <= 20e6, f"{size / 1e6:.1f} MB"
    # Not a timing test: the figure the README gives (about 5 s on 2 cores) is measured by
    # scripts/report_scale.py. CPU seconds depend on the machine (one of this project's took 5.2 s
    # where another took under 4), so the bound here is three times that, loose enough for a slow
    # or shared machine and tight enough to catch what a regression costs: full-size crops,
    # a decode per thumbnail per class, or work that grows with the square of the cells.
    assert cpu <= 15.0, f"{cpu:.1f} s of CPU"
    print(f"10,000-cell report: {size / 1e6:.1f} MB, {took:.2f} s wall, {cpu:.2f} s CPU, load {os.getloadavg()[0]:.1f}")

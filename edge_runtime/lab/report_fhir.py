"""FHIR R4 export: a Bundle with one DiagnosticReport, one Observation per reported class (% of the
white cells; absolute counts when the analyser's WBC count is given), the Specimen (sample ID),
the Practitioners (operator, signing reviewer) and the Device (model name and sha256).

Plain dicts and json, no FHIR library: this runs on the Pi, whose install stays small; the tests
validate the output with fhir.resources (R4B models) from the `fhir` extra.

Codes: LOINC only where a code was checked against a public page (README, "Handing results to a
laboratory system", lists each with its source). A class without a checked LOINC code
(lymphocytes in %, and of the classes a reviewer adds: band neutrophils, reactive lymphocytes,
plasma cells, unidentified white cells; blasts have one) carries this toolkit's own code (system
CLASS_SYSTEM) and a text; a
laboratory maps it to its own catalogue. Ids are derived from the session (uuid5), so exporting
the same session again gives the same resources: a laboratory system updates instead of
duplicating, and sees status 'amended' when a decision changed after the sign-off.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from ..core.spec import OTHER, WBC
from .reference import Intervals
from .report_model import RESEARCH_USE, ClassRow, ReportData, differential, iso
from .report_rules import flags

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CLASS_SYSTEM = "urn:edge-bloodcls:class"
_NS = uuid.UUID("6f1c7d0e-2b7a-4f0e-9a53-5d0c1f7e8a10")  # this toolkit's namespace for uuid5 ids

# label -> (LOINC code, display) of the share of the white cells; NRBC per 100 white cells.
PERCENT_CODES: dict[str, tuple[str, str]] = {
    "neutrophil": ("770-8", "Neutrophils/100 leukocytes in Blood by Automated count"),
    "monocyte": ("26485-3", "Monocytes/100 leukocytes in Blood"),
    "eosinophil": ("26450-7", "Eosinophils/100 leukocytes in Blood"),
    "basophil": ("30180-4", "Basophils/100 leukocytes in Blood"),
    "ig": ("71695-1", "Immature granulocytes/100 leukocytes in Blood by Automated count"),
    "erythroblast": ("58413-6", "Nucleated erythrocytes/100 leukocytes in Blood by Automated count"),
    "blast": ("26446-5", "Blasts/100 leukocytes in Blood"),
}
# label -> (LOINC code, display) of the absolute count, x10^9/L.
ABSOLUTE_CODES: dict[str, tuple[str, str]] = {
    "neutrophil": ("751-8", "Neutrophils [#/volume] in Blood by Automated count"),
    "lymphocyte": ("731-0", "Lymphocytes [#/volume] in Blood by Automated count"),
    "monocyte": ("742-7", "Monocytes [#/volume] in Blood by Automated count"),
    "eosinophil": ("711-2", "Eosinophils [#/volume] in Blood by Automated count"),
    "basophil": ("704-7", "Basophils [#/volume] in Blood by Automated count"),
    "ig": ("51584-1", "Immature granulocytes [#/volume] in Blood"),
    "blast": ("30376-8", "Blasts [#/volume] in Blood"),
}
PANEL = ("69738-3", "Differential panel, method unspecified - Blood")
NAMES = {
    "neutrophil": "Neutrophils",
    "lymphocyte": "Lymphocytes",
    "monocyte": "Monocytes",
    "eosinophil": "Eosinophils",
    "basophil": "Basophils",
    "ig": "Immature granulocytes",
    "erythroblast": "Nucleated red cells",
    "band_neutrophil": "Band neutrophils",
    "reactive_lymphocyte": "Reactive lymphocytes",
    "blast": "Blasts",
    "plasma_cell": "Plasma cells",
    "unidentified": "Unidentified white cells",
}


def _id(*parts: Any) -> str:
    return str(uuid.uuid5(_NS, "|".join(str(p) for p in parts)))


def _ref(rid: str) -> dict:
    return {"reference": f"urn:uuid:{rid}"}


def _code(label: str, absolute: bool) -> dict:
    table = ABSOLUTE_CODES if absolute else PERCENT_CODES
    name = NAMES[label]
    text = f"{name} [#/volume] in Blood" if absolute else (f"{name}/100 leukocytes in Blood")
    coding = [{"system": CLASS_SYSTEM, "code": f"{label}-{'absolute' if absolute else 'percent'}", "display": text}]
    if label in table:
        code, display = table[label]
        coding.insert(0, {"system": LOINC, "code": code, "display": display})
    return {"coding": coding, "text": text}


def _interp(mark: str) -> list[dict]:
    if not mark:
        return []
    return [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                    "code": mark,
                    "display": "High" if mark == "H" else "Low",
                }
            ]
        }
    ]


def bundle(data: ReportData, iv: Intervals | None = None, now: float | None = None) -> dict:
    iv = iv or Intervals()
    now = time.time() if now is None else now
    m = data.meta
    d = differential(data)
    key = (m.started, m.id, m.model_sha256, m.sample)
    status = data.status
    issued = iso(data.signoff.at if data.signoff else now)
    effective = iso(m.started)
    entries: list[dict] = []

    def add(resource: dict) -> str:
        if all(e["resource"]["id"] != resource["id"] for e in entries):  # fullUrls are unique in a Bundle
            entries.append({"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource})
        return resource["id"]

    specimen: dict[str, Any] = {
        "resourceType": "Specimen",
        "id": _id("specimen", *key),
        "type": {"text": "Peripheral blood smear"},
    }
    if m.sample:
        specimen["identifier"] = [{"system": "urn:edge-bloodcls:sample", "value": m.sample}]
        specimen["accessionIdentifier"] = {"value": m.sample}
    specimen_id = add(specimen)
    device: dict[str, Any] = {
        "resourceType": "Device",
        "id": _id("device", m.model_sha256 or m.model),
        "type": {"text": "White-cell image classifier (edge-bloodcls), research use only"},
        "deviceName": [{"name": m.model or "unknown model", "type": "model-name"}],
    }
    if m.model_sha256:
        device["version"] = [{"type": {"text": "sha256"}, "value": m.model_sha256}]
    device_id = add(device)
    performers = []
    for role, name in (("operator", m.operator), ("reviewer", data.signoff.by if data.signoff else None)):
        if name:
            pid = add({"resourceType": "Practitioner", "id": _id("practitioner", name), "name": [{"text": name}]})
            performers.append({**_ref(pid), "display": f"{name} ({role})"})
    reviewer_ref = performers[-1:] if data.signoff else []

    results = []
    for r in d.rows:
        # platelets: a count only; smudge cells, artefacts, duplicates: not a result (the conclusion
        # says how many); a class the reviewer adds: only when a cell was put in it (a 0 % of a
        # class the model cannot see would look like a finding)
        if (
            r.label == "platelet"
            or r.role not in (WBC, OTHER)
            or r.per_100_wbc is None
            or (not r.model and not r.final)
        ):
            continue
        results.append(
            add(
                _observation(
                    r,
                    False,
                    iv,
                    d.wbc_final,
                    status,
                    effective,
                    issued,
                    specimen_id,
                    device_id,
                    performers,
                    key,
                    m.unvalidated,
                )
            )
        )
        if r.absolute is not None and r.in_differential:
            results.append(
                add(
                    _observation(
                        r,
                        True,
                        iv,
                        d.wbc_final,
                        status,
                        effective,
                        issued,
                        specimen_id,
                        device_id,
                        performers,
                        key,
                        m.unvalidated,
                        data.wbc_count,
                    )
                )
            )
    review = []
    if d.apart:
        review.append(f"Smudge cells: {d.apart} (reported apart, not in the differential).")
    if d.removed:
        review.append(f"Removed by the reviewer from the count: {d.removed} (artefacts, duplicates).")
    conclusion = [f.message for f in flags(data, d, iv)] + review + [RESEARCH_USE]
    report = {
        "resourceType": "DiagnosticReport",
        "id": _id("report", *key),
        "status": status,
        "identifier": [{"system": "urn:edge-bloodcls:session", "value": _id("session", *key)}],
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "HM", "display": "Hematology"}
                ]
            }
        ],
        "code": {
            "coding": [{"system": LOINC, "code": PANEL[0], "display": PANEL[1]}],
            "text": "White-cell differential (edge-bloodcls)",
        },
        "effectiveDateTime": effective,
        "issued": issued,
        "specimen": [_ref(specimen_id)],
        "result": [_ref(x) for x in results],
        "conclusion": " ".join(conclusion),
    }
    if performers:
        report["performer"] = performers
    if reviewer_ref:
        report["resultsInterpreter"] = reviewer_ref
    entries.insert(0, {"fullUrl": f"urn:uuid:{report['id']}", "resource": report})
    return {
        "resourceType": "Bundle",
        "id": _id("bundle", *key, status),
        "type": "collection",
        "timestamp": iso(now),
        "entry": entries,
    }


def _observation(
    r: ClassRow,
    absolute: bool,
    iv: Intervals,
    wbc_final: int,
    status: str,
    effective: str,
    issued: str,
    specimen_id: str,
    device_id: str,
    performers: list,
    key: tuple,
    unvalidated: bool,
    wbc_count: float | None = None,
) -> dict:
    if absolute:
        assert r.absolute is not None
        value = {"value": round(r.absolute, 3), "unit": "10*9/L", "system": UCUM, "code": "10*9/L"}
        mark, ref = iv.mark(r.label, r.absolute, True), iv.interval(r.label, True)
        note = f"{r.final} of {wbc_final} white cells after review x the analyser's WBC count {wbc_count:g} x10^9/L."
    else:
        assert r.per_100_wbc is not None
        value = {"value": round(r.per_100_wbc, 1), "unit": "%", "system": UCUM, "code": "%"}
        mark = iv.mark(r.label, r.per_100_wbc) if r.in_differential else ""
        ref = iv.interval(r.label) if r.in_differential else None
        note = f"{r.final} of {wbc_final} white cells after review (analyser: {r.machine})" + (
            f"; 95% Wilson interval {r.ci[0]:.1f}-{r.ci[1]:.1f}%." if r.in_differential else "."
        )
    if unvalidated:
        note += " UNVALIDATED differential: the model's trust gate tripped."
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": _id("obs", r.label, "abs" if absolute else "pct", *key),
        "status": status,
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                        "display": "Laboratory",
                    }
                ]
            }
        ],
        "code": _code(r.label, absolute),
        "effectiveDateTime": effective,
        "issued": issued,
        "valueQuantity": value,
        "specimen": _ref(specimen_id),
        "device": _ref(device_id),
        "note": [{"text": note}],
    }
    if performers:
        obs["performer"] = performers
    if mark:
        obs["interpretation"] = _interp(mark)
    if ref:
        unit = {k: value[k] for k in ("unit", "system", "code")}
        obs["referenceRange"] = [{"low": {"value": ref[0], **unit}, "high": {"value": ref[1], **unit}}]
    return obs

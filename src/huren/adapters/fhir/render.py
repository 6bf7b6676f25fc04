"""Domain → FHIR R4 JSON: DiagnosticReport, Observation, Patient, Bundles,
CapabilityStatement and OperationOutcome (checked against fhir.resources' R4B models in
tests/unit/test_fhir_mapping.py).

Logical ids: DiagnosticReport/{result id}; Observation/{result id}-{position}, stable
across versions (versionId is the report's version); Patient/{patient id}. An Observation
sent with components (R4 observation.html, Observation.component) is stored as a row per
value (model.py, ``component_code``) and read back as one Observation with its
``component`` array, as sent: its id is the position of its first row, and the positions
of its other rows name no Observation (``observation_holding`` says which holds them)."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from huren.adapters.db.results import StoredDocument
from huren.adapters.fhir import model as m
from huren.adapters.fhir import systems as sid
from huren.domain.errors import Problem
from huren.domain.identity import PatientIdentifier
from huren.domain.masterdata import Category
from huren.domain.results import (
    COMPARATORS,
    ObservationValue,
    ResultStatus,
    StoredResult,
    ValueType,
)
from huren.domain.text import is_digits

FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.0.1"

_OBS_STATUS = {
    ResultStatus.PARTIAL: "preliminary",
    ResultStatus.APPENDED: "amended",
}
_SECTION = {Category.LAB: "LAB", Category.IMAGING: "RAD", Category.OTHER: "OTH"}
_SECTION_DISPLAY = {Category.LAB: "检验", Category.IMAGING: "影像检查", Category.OTHER: "其他检查"}


# R4 decimals are rendered as Decimal holding the numerals reported ("7.40"), written as
# JSON numbers with their digits (datatypes.html#decimal), not as strings.
_JSON = msgspec.json.Encoder(decimal_format="number")


def to_json(body: Any) -> bytes:
    """A rendered resource (or any FHIR JSON body) as JSON."""
    return _JSON.encode(body)


def instant(at: datetime) -> str:
    return at.isoformat(timespec="seconds")


def observation_id(result_id: int, seq: int) -> str:
    return f"{result_id}-{seq}"


def parse_observation_id(text: str) -> tuple[int, int] | None:
    head, _, tail = text.partition("-")
    if is_digits(head) and is_digits(tail):
        return int(head), int(tail)
    return None


def _meta(version: int, updated: datetime) -> dict[str, Any]:
    return {"versionId": str(version), "lastUpdated": instant(updated)}


def _decimal(numerals: str) -> Decimal | None:
    """An R4 decimal with the precision reported (datatypes.html#decimal: "the precision
    of the decimal value has significance"): the numerals as a Decimal, which ``to_json``
    writes as the JSON number 7.40; None (null, as a float's infinity was written) for
    what no JSON number can hold."""
    exact = Decimal(numerals)
    return exact if exact.is_finite() else None


def _qty(value: Decimal | None, unit: str) -> dict[str, Any]:
    q: dict[str, Any] = {"value": value}
    if unit:
        q.update(unit=unit, system=sid.UCUM, code=unit)
    return q


_SN_RANGE = re.compile(r"^(-?\d+(?:\.\d+)?)-(-?\d+(?:\.\d+)?)$")
_SN_RATIO = re.compile(r"^(-?\d+(?:\.\d+)?):(-?\d+(?:\.\d+)?)$")


def _structured(text: str, unit: str) -> dict[str, Any] | None:
    """A structured numeric without a single number (HL7 v2 SN ``^3^-^5``, ``^1^:^40``;
    FHIR valueRange, valueRatio) as the FHIR value it is (R4 observation.html, Observation.value[x]):
    valueRange or valueRatio; None for any other text (kept as valueString)."""
    if m := _SN_RANGE.match(text):
        return {
            "valueRange": {
                "low": _qty(_decimal(m[1]), unit),
                "high": _qty(_decimal(m[2]), unit),
            }
        }
    if m := _SN_RATIO.match(text):
        numerator: dict[str, Any] = {"value": _decimal(m[1])}
        if unit:
            numerator["unit"] = unit
        return {"valueRatio": {"numerator": numerator, "denominator": {"value": _decimal(m[2])}}}
    return None


def binary_id(result_id: int, version: int, seq: int) -> str:
    """The FHIR Binary id of a version's original report document."""
    return f"{result_id}-{version}-{seq}"


def diagnostic_report(
    r: StoredResult, updated: datetime, documents: Sequence[StoredDocument] = ()
) -> dict[str, Any]:
    """``documents``: the version's original report documents (PDF, images), given as
    presentedForm Attachments pointing at their Binary (R4 diagnosticreport.html,
    DiagnosticReport.presentedForm; binary.html), after the findings' text form."""
    coding: list[dict[str, Any]] = [
        {"system": sid.LOCAL_CODE_PREFIX + r.institution, "code": r.local_code}
        | ({"display": r.local_name} if r.local_name else {})
    ]
    if r.item_code:
        coding.append({"system": sid.ITEM, "code": r.item_code})
    identifiers: list[dict[str, Any]] = [
        {"system": sid.REPORT_NO_PREFIX + r.institution, "value": r.report_no}
    ]
    if r.accession_number:
        identifiers.append(
            {
                "type": {"coding": [{"system": sid.V2_0203, "code": "ACSN"}]},
                "value": r.accession_number,
            }
        )
    if r.study_uid:
        identifiers.append({"system": sid.DICOM_UID, "value": f"urn:oid:{r.study_uid}"})
    performer: list[dict[str, Any]] = [
        {
            "identifier": {"system": sid.INSTITUTION, "value": r.institution},
            "display": r.institution,
        }
    ]
    if r.performer:
        performer.append({"display": r.performer})
    res: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": str(r.id),
        "meta": _meta(r.version, updated),
        "identifier": identifiers,
        "status": str(r.status),
        "category": [
            {
                "coding": [
                    {
                        "system": sid.V2_0074,
                        "code": _SECTION[r.category],
                        "display": _SECTION_DISPLAY[r.category],
                    }
                ]
            }
        ],
        "code": {"coding": coding, "text": r.local_name or r.local_code},
        "subject": {"reference": f"Patient/{r.patient_id}"},
        "effectiveDateTime": instant(r.performed_at),
        "issued": instant(r.issued_at),
        "performer": performer,
    }
    if r.mark_scope and r.mark_symbol:
        res["extension"] = [
            {
                "url": sid.MARK_EXTENSION,
                "valueCoding": {
                    "system": sid.SCOPE,
                    "code": r.mark_scope,
                    "display": r.mark_symbol,
                },
            }
        ]
    if r.comment:
        # R4 DiagnosticReport has no note: R5's, as its cross-version extension.
        res.setdefault("extension", []).append(
            {"url": sid.REPORT_NOTE_EXTENSION, "valueAnnotation": {"text": r.comment}}
        )
    if r.signer:
        res["resultsInterpreter"] = [{"display": r.signer}]
    if r.observations:
        res["result"] = [
            {"reference": f"Observation/{observation_id(r.id, g.start + 1)}"}
            for g in observation_groups(r)
        ]
    if r.conclusion:
        res["conclusion"] = r.conclusion
    forms: list[dict[str, Any]] = []
    if r.findings:
        forms.append(
            {
                "contentType": "text/plain; charset=utf-8",
                "language": "zh-CN",
                "data": base64.b64encode(r.findings.encode()).decode(),
                "title": "检查所见",
            }
        )
    forms.extend(
        {
            "contentType": d.content_type,
            "url": f"Binary/{binary_id(r.id, d.version, d.seq)}",
            "size": d.size,
            "title": d.title or "原始报告",
        }
        for d in documents
    )
    if forms:
        res["presentedForm"] = forms
    return res


def observation_groups(r: StoredResult) -> list[m.CodeGroup]:
    """The Observations a result's rows were sent as (``model.component_groups``)."""
    return m.component_groups([o.code for o in r.observations])


def observation_holding(r: StoredResult, seq: int) -> tuple[str, int] | None:
    """(id of the Observation, index of the component) holding the row at position
    ``seq`` when that row is a component, else None."""
    for g in observation_groups(r):
        for k, (i, _code) in enumerate(g.components):
            if i + 1 == seq and i != g.start:  # not the first row of an Observation
                return observation_id(r.id, g.start + 1), k
    return None


def _code(r: StoredResult, code: str, o: ObservationValue | None) -> dict[str, Any]:
    """A CodeableConcept: the local code (and the LOINC code, the name, of its row)."""
    coding: list[dict[str, Any]] = [
        {"system": sid.LOCAL_CODE_PREFIX + r.institution, "code": code}
        | ({"display": o.name} if o is not None and o.name else {})
    ]
    if o is not None and o.loinc:
        coding.append({"system": sid.LOINC, "code": o.loinc})
    return {"coding": coding, "text": (o.name if o is not None else "") or code}


def _value_elements(o: ObservationValue) -> dict[str, Any]:
    """value[x], referenceRange and interpretation of one row: an Observation's or a
    component's (R4 Observation.component has the same value[x], interpretation and
    referenceRange)."""
    res: dict[str, Any] = {}
    if o.value_type is ValueType.NM and o.value_num is not None:
        res["valueQuantity"] = _qty(_decimal(o.shown_value()), o.unit)
    elif o.value_type is ValueType.SN and o.value_num is not None:
        shown = o.shown_value()  # "<0.50": the comparator, then the numerals
        comparator = next((c for c in COMPARATORS if shown.startswith(c)), "")
        q = _qty(_decimal(shown.removeprefix(comparator)), o.unit)
        if comparator:
            q["comparator"] = comparator
        res["valueQuantity"] = q
    elif o.value_type is ValueType.SN and (structured := _structured(o.value_text, o.unit)):
        res.update(structured)
    elif o.value_type is ValueType.CE:
        res["valueCodeableConcept"] = {"text": o.value_text}
    elif o.value_text:
        res["valueString"] = o.value_text
    if o.ref_low is not None or o.ref_high is not None or o.ref_text:
        rr: dict[str, Any] = {}
        low, high = o.reference_numerals()  # as reported: "3.50", "5.30"
        if low:
            rr["low"] = _qty(_decimal(low), o.unit)
        if high:
            rr["high"] = _qty(_decimal(high), o.unit)
        if o.ref_text:
            rr["text"] = o.ref_text
        res["referenceRange"] = [rr]
    if o.flag:
        res["interpretation"] = [{"coding": [{"system": sid.INTERPRETATION, "code": o.flag}]}]
    return res


def observations(r: StoredResult, updated: datetime) -> list[dict[str, Any]]:
    """The result's Observations, one per Observation sent (its components in it)."""
    return [res for _, res in observation_resources(r, updated)]


def observation_resources(
    r: StoredResult, updated: datetime
) -> list[tuple[m.CodeGroup, dict[str, Any]]]:
    """(the stored rows, the Observation) of each of the result's Observations."""
    status = _OBS_STATUS.get(r.status, str(r.status))
    rows = r.observations
    out: list[tuple[m.CodeGroup, dict[str, Any]]] = []
    for g in observation_groups(r):
        own = rows[g.start] if g.own else None
        res: dict[str, Any] = {
            "resourceType": "Observation",
            "id": observation_id(r.id, g.start + 1),
            "meta": _meta(r.version, updated),
            "status": status,
            "code": _code(r, g.code, own),
            "subject": {"reference": f"Patient/{r.patient_id}"},
            "effectiveDateTime": instant(r.performed_at),
            "issued": instant(r.issued_at),
            "performer": [{"identifier": {"system": sid.INSTITUTION, "value": r.institution}}],
        }
        if r.category is Category.LAB:
            res["category"] = [
                {"coding": [{"system": sid.OBSERVATION_CATEGORY, "code": "laboratory"}]}
            ]
        if own is not None:
            res.update(_value_elements(own))
        if g.components:
            res["component"] = [
                {"code": _code(r, code, rows[i])} | _value_elements(rows[i])
                for i, code in g.components
            ]
        # R4 Observation.note (Annotation.text); a component has none: the notes of the
        # Observation sent were stored with its first value.
        comments = [c for c in (own, *(rows[i] for i, _ in g.components)) if c and c.comment]
        if comments:
            res["note"] = [{"text": c.comment} for c in comments]
        out.append((g, res))
    return out


def patient(
    patient_id: int,
    identifiers: Sequence[PatientIdentifier],
    name: str,
    sex: str,
    birth_date: str,
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Patient",
        "id": str(patient_id),
        "identifier": [
            {"system": sid.system_of(i.kind, i.assigner), "value": i.value} for i in identifiers
        ],
    }
    if name:
        res["name"] = [{"text": name}]
    gender = {"M": "male", "F": "female", "O": "other", "U": "unknown"}.get(sex)
    if gender:
        res["gender"] = gender
    if birth_date:
        res["birthDate"] = birth_date
    return res


def bundle(
    kind: str,
    entries: Iterable[dict[str, Any]],
    *,
    total: int | None = None,
    self_link: str = "",
    timestamp: datetime | None = None,
) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Bundle", "type": kind}
    if timestamp is not None:
        res["timestamp"] = instant(timestamp)
    if total is not None:
        res["total"] = total
    if self_link:
        res["link"] = [{"relation": "self", "url": self_link}]
    res["entry"] = list(entries)
    return res


def operation_outcome(
    problems: Sequence[Problem],
    *,
    severity: str = "error",
    code: str = "invalid",
    message: str = "",
) -> dict[str, Any]:
    """Each problem as an issue naming the element (``expression``) — FHIRPath for FHIR
    input, the field name otherwise."""
    issues: list[dict[str, Any]] = []
    for p in problems:
        issue: dict[str, Any] = {
            "severity": severity,
            "code": code,
            "diagnostics": p.message,
        }
        if p.field:
            issue["expression"] = [p.field]
        issues.append(issue)
    if not issues:
        issues.append({"severity": severity, "code": code, "diagnostics": message or "错误"})
    return {"resourceType": "OperationOutcome", "issue": issues}


def informational(notes: Sequence[str]) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "information", "code": "informational", "diagnostics": n} for n in notes
        ],
    }


_SEARCH = [
    (
        "patient",
        "reference",
        "患者: Patient/{id}（或本平台的患者地址）；按标识: patient:identifier=system|value"
        " 或 patient.identifier=system|value",
    ),
    (
        "subject",
        "reference",
        "同 patient（subject:Patient、subject:identifier、subject.identifier）",
    ),
    ("code", "token", "本院编码、统一项目编码或 LOINC（system|code）"),
    ("date", "date", "检查检验时间（ge/le/gt/lt/eq 前缀）"),
    ("_lastUpdated", "date", "最后更新时间"),
    ("identifier", "token", "报告单编号（DiagnosticReport）"),
    ("_id", "token", "报告 id（DiagnosticReport，可用逗号分隔多个）"),
]
# The references a search follows with _include (R4 search.html#include).
SEARCH_INCLUDES: dict[str, tuple[str, ...]] = {
    "DiagnosticReport": (
        "DiagnosticReport:result",
        "DiagnosticReport:subject",
        "DiagnosticReport:patient",
    ),
    "Observation": ("Observation:subject", "Observation:patient"),
}
# R4 observation.html#search: a component's code, and either code.
_COMPONENT_SEARCH = [
    ("component-code", "token", "组分（component）的编码（system|code）"),
    ("combo-code", "token", "Observation 或其组分的编码（system|code）"),
]


def capability_statement(base_url: str, now: datetime, software_version: str) -> dict[str, Any]:
    def resource(kind: str, interactions: Sequence[str], search: bool) -> dict[str, Any]:
        # Reports and their Observations keep every version (vread, _history); a Patient
        # and a Binary (a version's document, its id naming the version) have none.
        versioned = "vread" in interactions
        r: dict[str, Any] = {
            "type": kind,
            "interaction": [{"code": c} for c in interactions],
            "versioning": "versioned" if versioned else "no-version",
            "readHistory": versioned,
        }
        if search:
            params = _SEARCH if kind == "DiagnosticReport" else [*_SEARCH[:5], *_COMPONENT_SEARCH]
            r["searchParam"] = [{"name": n, "type": t, "documentation": d} for n, t, d in params]
            r["searchInclude"] = list(SEARCH_INCLUDES[kind])
        return r

    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": instant(now),
        "publisher": "HuRen 互认平台",
        "kind": "instance",
        "software": {"name": "HuRen", "version": software_version},
        "implementation": {
            "description": "医疗机构检查检验结果互认共享平台 FHIR R4 接口",
            "url": base_url,
        },
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "结果以 transaction Bundle（DiagnosticReport + Observation + Patient，"
                    "可含 ImagingStudy、Specimen、ServiceRequest）上传；"
                    "单个 DiagnosticReport 可把 Patient 与 Observation 放在 contained 中。"
                    "批量历史数据: POST /fhir/$import（NDJSON）。"
                ),
                "security": {
                    "description": "Authorization: ApiKey <key>（接口系统账号）或 Bearer 令牌"
                },
                "resource": [
                    resource(
                        "DiagnosticReport",
                        ["create", "read", "vread", "history-instance", "search-type"],
                        True,
                    ),
                    resource(
                        "Observation", ["read", "vread", "history-instance", "search-type"], True
                    ),
                    resource("Patient", ["read"], False),
                    # A report's original document (presentedForm.url): the bytes as
                    # sent, or a Binary resource when application/fhir+json is asked for.
                    resource("Binary", ["read"], False),
                ],
                "interaction": [{"code": "transaction"}, {"code": "history-system"}],
                "operation": [
                    {
                        "name": "import",
                        "definition": "https://huren.example/fhir/OperationDefinition/import",
                    }
                ],
            }
        ],
    }

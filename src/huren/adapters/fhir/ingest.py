"""FHIR R4 → the intake command: a transaction Bundle (or a self-contained
DiagnosticReport) becomes one ``InboundMessage`` of ``ResultSubmission``s.

One DiagnosticReport is one result (报告单): its identifier is the report number
(报告单编号), its code the institution's local code (LOINC only as a hint when no local
coding is sent), its performer Organization the producing institution, its ``result``
Observations the values, its ``conclusion`` the physician's conclusion and narrative
findings (LOINC 59776-5 / 18782-3 Observations, or a text/plain presentedForm) the
findings — kept apart (沪卫医〔2024〕135号: 检查检验结果不包括医师出具的诊断结论).

Every problem names the element as a FHIRPath expression (``Bundle.entry[2].resource
.identifier[0]``); the whole Bundle is refused when any problem is found."""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from typing import Literal, NamedTuple

import msgspec

from huren.adapters.fhir import model as m
from huren.adapters.fhir import systems as sid
from huren.domain.china_time import CHINA_TZ
from huren.domain.errors import Problem, ProblemCollector, ValidationFailed
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.domain.masterdata import Category
from huren.domain.results import (
    MAX_REPORT_COMMENT,
    ObservationValue,
    PatientDemographics,
    ReportDocument,
    ResultStatus,
    ResultSubmission,
    ValueType,
    number_text,
)
from huren.domain.text import json_text_problems
from huren.services.intake import (
    DOCUMENT_KINDS,
    MAX_DOCUMENT_TITLE,
    OBSERVATION_LIMITS,
    Channel,
    InboundMessage,
    checked_identifier,
    document_problem,
    new_observation,
    new_submission,
)

# A date or dateTime without a zone is China Standard Time (FHIR: local time of the sender).

_RESOURCE_DECODER = msgspec.json.Decoder(m.AnyResource)
_TYPED_DECODER = msgspec.json.Decoder(m.Typed)
_BUNDLE_DECODER = msgspec.json.Decoder(m.Bundle)


class _DecodedEntry(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """A Bundle entry whose resource is decoded with the Bundle (the fast path)."""

    fullUrl: str = ""
    # UNSET, not None: ``"resource": null`` is an error the generic path names.
    resource: m.AnyResource | msgspec.UnsetType = msgspec.UNSET
    request: m.BundleRequest | None = None


class _DecodedBundle(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    resourceType: Literal["Bundle"]
    type: str
    id: str = ""
    identifier: m.Identifier | None = None
    entry: list[_DecodedEntry] = msgspec.field(default_factory=list)


# One pass over the whole Bundle when every entry is of a type we read and decodes
# cleanly (the usual case, ~20% cheaper than decoding entry by entry); otherwise the
# generic path decodes each entry on its own so that every problem names its entry.
_DECODED_BUNDLE_DECODER = msgspec.json.Decoder(_DecodedBundle)


class _DecodedReport(
    m.DiagnosticReport,
    tag="DiagnosticReport",
    frozen=True,
    omit_defaults=True,
    gc=False,
    kw_only=True,
):
    """A self-contained DiagnosticReport whose contained resources are decoded with it
    (the fast path of ``parse_report``, as ``_DecodedBundle`` is of a Bundle)."""

    contained: tuple[m.AnyResource, ...] = ()  # type: ignore[assignment]


# ``AnyResource`` with the DiagnosticReport decoded in one pass (a line of ten
# Observations: ~17% cheaper to parse than decoding each contained resource on its own):
# a union, so that ``resourceType`` is required as on the generic path; any other
# resource, or any problem, goes the generic way, which names it.
_DECODED_REPORT_DECODER = msgspec.json.Decoder(
    _DecodedReport
    | m.Patient
    | m.Organization
    | m.Practitioner
    | m.Observation
    | m.ImagingStudy
    | m.Specimen
    | m.ServiceRequest
)

_SEX = {"male": "M", "female": "F", "other": "O", "unknown": "U"}

# HL7 v2 Table 0074 diagnostic service sections → category (used only while unmapped).
_SECTIONS: dict[str, Category] = {
    **dict.fromkeys(
        ("LAB", "CH", "HM", "MB", "IMM", "SR", "SP", "CP", "BLB", "TX", "VR", "MCB", "SER", "URN"),
        Category.LAB,
    ),
    **dict.fromkeys(("RAD", "CT", "MR", "NMR", "RX", "XRC", "NMS", "RT"), Category.IMAGING),
    **dict.fromkeys(("US", "EC", "CG", "EN", "PAT", "CUS", "OUS", "PF"), Category.OTHER),
}

EntryKind = Literal["report", "observation", "findings", "panel", "patient", "info"]

_PANEL_NOTE = "检验组合（hasMember）本身无结果值，其成员已作为报告的结果保存"


@dataclass(frozen=True, slots=True)
class EntryPlan:
    """What became of one Bundle entry, for the transaction-response."""

    kind: EntryKind
    submission: int = -1  # index into the message's submissions
    seq: int = 0  # observation position within its report (1-based)
    note: str = ""  # informational issue (Chinese)


@dataclass(frozen=True, slots=True)
class IfNoneExist:
    """A conditional create of a DiagnosticReport (R4 http.html#ccreate,
    ``Bundle.entry.request.ifNoneExist``) that names a report number other than the
    report's own: the report of that number of the sender's institution, when there is
    one, is answered instead of storing this one (looked up by the caller, which reaches
    the store)."""

    entry: int  # Bundle entry index; -1: the If-None-Exist header of a single report
    submission: int  # index into the message's submissions
    report_no: str


@dataclass(frozen=True, slots=True)
class ParsedBundle:
    message: InboundMessage
    entries: tuple[EntryPlan, ...]
    informational: tuple[str, ...] = ()
    if_none_exist: tuple[IfNoneExist, ...] = ()


@functools.lru_cache(maxsize=8192)
def _observation_entry(submission: int, seq: int) -> EntryPlan:
    """The plan of an Observation entry (immutable, so shared between Bundles)."""
    return EntryPlan("observation", submission, seq)


# A resolvable reference: (FHIRPath of the resource, the resource, its entry index or -1
# when it is contained in a DiagnosticReport).
_Found = tuple[str, m.Resource, int]


@dataclass
class _Ctx:
    errors: ProblemCollector = field(default_factory=ProblemCollector)
    by_ref: dict[str, _Found] = field(default_factory=dict)
    patients: dict[str, PatientDemographics] = field(default_factory=dict)
    # Entry index → plan of each Observation a DiagnosticReport took as a value or as
    # its findings.
    observation_plans: dict[int, EntryPlan] = field(default_factory=dict)
    # fullUrls of entries of a type that is not read (PractitionerRole, CareTeam …, R4
    # DiagnosticReport.performer may be one): present, so a reference to one resolves;
    # each with (FHIRPath of its resource, its resourceType), to name a misspelt type
    # ("Obsrvation") where an Observation or a Patient is referred to.
    unread_refs: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Submission index → informational notes on its report (a presentedForm not kept …).
    report_notes: dict[int, list[str]] = field(default_factory=dict)


def _decode_problem(exc: msgspec.ValidationError | msgspec.DecodeError, base: str) -> Problem:
    text = str(exc)
    where = base
    if " - at `$" in text:
        text, _, path = text.partition(" - at `$")
        where = base + path.rstrip("`")
    return Problem(where, f"不符合 FHIR R4 结构: {text}")


@dataclass(frozen=True, slots=True)
class _TooDeep:
    """JSON nested deeper than the decoder recurses (msgspec raises RecursionError; found
    by a fuzzer: a 500, and ``huren ingest`` stopped). No FHIR resource nests so deep."""

    message: str = "JSON 嵌套层次过深（数万层），不是 FHIR 资源"

    def at(self, where: str) -> Problem:
        return Problem(where, self.message)


_TOO_DEEP = _TooDeep()


def _utf8_problem(exc: UnicodeDecodeError, where: str) -> Problem:
    """msgspec reports bytes that are not UTF-8 inside a string as a UnicodeDecodeError,
    not as its own DecodeError (found by a fuzzer: a 500)."""
    return Problem(where, f"不是有效的 UTF-8 编码（第 {exc.start} 字节起）；FHIR JSON 应为 UTF-8")


_YEAR_OR_MONTH = re.compile(r"^\d{4}(-(0[1-9]|1[0-2]))?$")


def parse_datetime(value: str, where: str, errors: ProblemCollector, label: str) -> datetime | None:
    if not value:
        errors.add(where, f"缺少{label}")
        return None
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            return datetime(d.year, d.month, d.day, tzinfo=CHINA_TZ)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        if _YEAR_OR_MONTH.match(value):
            # Valid FHIR (R4 datatypes.html#dateTime: YYYY, YYYY-MM), but a time limit
            # counts days: a result known only to the month cannot be placed in it.
            errors.add(where, f"{label}只精确到年或月（{value}），平台需要至少精确到日")
        else:
            errors.add(where, f"{label}不是有效的 FHIR dateTime: {value}")
        return None
    if parsed.tzinfo is None:
        # FHIR R4 dateTime: 若给出时分，必须带时区
        errors.add(where, f"{label}带有时刻但缺少时区: {value}")
        return None
    return parsed


def _name(names: Sequence[m.HumanName]) -> str:
    for n in names:
        if n.text:
            return n.text
        if n.family or n.given:
            return n.family + "".join(n.given)
    return ""


def _ref_name(ctx: _Ctx, ref: m.Reference, base: str) -> str:
    found = ctx.by_ref.get(_ref_key(ref.reference, base))
    if found is not None and isinstance(found[1], m.Practitioner):
        return _name(found[1].name) or ref.display
    return ref.display


def _ref_key(reference: str, base: str) -> str:
    if reference.startswith("#"):
        return base + reference
    return reference


def _institution_code(org: m.Organization) -> str:
    for ident in org.identifier:
        if ident.system == sid.INSTITUTION and ident.value:
            return ident.value
    return ""


def _patient_identifiers(
    pat: m.Patient, where: str, institution: str, errors: ProblemCollector
) -> tuple[PatientIdentifier, ...]:
    out: list[PatientIdentifier] = []
    for j, ident in enumerate(pat.identifier):
        here = f"{where}.identifier[{j}]"
        kind = sid.IDENTIFIER_SYSTEMS.get(ident.system)
        assigner = ""
        if kind is None and ident.system.startswith(sid.MRN_PREFIX):
            kind, assigner = IdentifierKind.MRN, ident.system.removeprefix(sid.MRN_PREFIX)
        if kind is None and ident.type is not None:
            for c in ident.type.coding:
                if c.system in (sid.V2_0203, "") and c.code in sid.IDENTIFIER_TYPES:
                    kind = sid.IDENTIFIER_TYPES[c.code]
                    break
        if kind is None:
            continue  # an identifier we do not match on (e.g. a passport) is not an error
        if kind is IdentifierKind.MRN and not assigner:
            a = ident.assigner
            assigner = (a.identifier.value if a and a.identifier else "") or institution
        checked = checked_identifier(PatientIdentifier(kind, ident.value, assigner))
        if isinstance(checked, PatientIdentifier):
            out.append(checked)
        else:
            errors.problems.extend(Problem(f"{here}.value", message) for message in checked)
    if not out and not any(p.field.startswith(where) for p in errors.problems):
        errors.add(
            f"{where}.identifier",
            "缺少可用于匹配的患者标识（居民身份证、医保号、电子健康卡或院内病历号）",
        )
    return tuple(out)


def _conditional(
    ctx: _Ctx, ref: m.Reference, where: str, kind: type[m.Resource]
) -> m.Reference | None:
    """A conditional reference (R4 http.html#trules, conditional references: in a
    transaction a reference may be a search, ``Patient?identifier=system|value``, as HAPI
    clients and interface engines send it for the Patient, the performing Organization or
    Practitioner): the resource of this Bundle of that type with that identifier, else the
    identifier itself (a logical reference). Other searches are refused naming the
    reference."""
    query = urllib.parse.parse_qs(ref.reference.partition("?")[2])
    tokens = query.get("identifier", [])
    system, bar, value = tokens[0].partition("|") if len(tokens) == 1 else ("", "", "")
    if len(query) != 1 or not bar or not value:
        ctx.errors.add(
            where,
            f"条件引用仅支持 {kind.__name__}?identifier=system|value（一个标识）: " + ref.reference,
        )
        return None
    for key, (_, res, _index) in ctx.by_ref.items():
        if isinstance(res, kind) and any(
            i.system == system and i.value == value for i in getattr(res, "identifier", ())
        ):
            return m.Reference(reference=key, display=ref.display)
    return m.Reference(identifier=m.Identifier(system=system, value=value), display=ref.display)


def _unresolved(ctx: _Ctx, reference: str, where: str, kind: str, label: str) -> None:
    """A reference to a ``kind`` that does not resolve. When it names an entry of a type
    that is not read, that entry's resourceType is named: a misspelt type
    (\"Obsrvation\") is otherwise only a reference that is not in the Bundle."""
    unread = ctx.unread_refs.get(reference)
    if unread is not None:
        at, name = unread
        ctx.errors.add(
            f"{at}.resourceType",
            f"不支持的资源类型 {name[:40]}（{where} 引用该条目，应为 {kind}）",
        )
    else:
        ctx.errors.add(where, f"引用的{label}不在本 Bundle 中: {reference}")


def _patient(
    ctx: _Ctx, subject: m.Reference | None, where: str, base: str, institution: str
) -> tuple[PatientDemographics | None, str]:
    if subject is None:
        ctx.errors.add(f"{where}.subject", "缺少患者（subject）")
        return None, ""
    if subject.reference.startswith("Patient?"):
        conditional = _conditional(ctx, subject, f"{where}.subject.reference", m.Patient)
        if conditional is None:
            return None, ""
        subject = conditional
    key = _ref_key(subject.reference, base)
    found = ctx.by_ref.get(key)
    if found is None or not isinstance(found[1], m.Patient):
        if subject.identifier is not None:
            pat = m.Patient(identifier=(subject.identifier,))
            idents = _patient_identifiers(pat, f"{where}.subject", institution, ctx.errors)
            return PatientDemographics(idents, subject.display), ""
        _unresolved(ctx, subject.reference, f"{where}.subject", "Patient", "患者")
        return None, ""
    cached = ctx.patients.get(key)
    if cached is not None:
        return cached, key
    pwhere, pat = found[0], found[1]
    idents = _patient_identifiers(pat, pwhere, institution, ctx.errors)
    birth: date | None = None
    if pat.birthDate:
        try:
            birth = date.fromisoformat(pat.birthDate)
        except ValueError:
            ctx.errors.add(f"{pwhere}.birthDate", f"出生日期无效: {pat.birthDate}")
    demo = PatientDemographics(
        idents, _name(pat.name), _SEX.get(pat.gender or "", ""), birth_date=birth
    )
    ctx.patients[key] = demo
    return demo, key


_NM, _SN, _ST, _TX, _CE = ValueType.NM, ValueType.SN, ValueType.ST, ValueType.TX, ValueType.CE
_LOINC, _UCUM, _V3_FLAGS = sid.LOINC, sid.UCUM, sid.INTERPRETATION


def _codes(cc: m.CodeableConcept) -> tuple[str, str, str]:
    """(local code, its display, LOINC code) of a CodeableConcept: the first coding with
    a code in a local system, the first with a code in LOINC."""
    local = loinc = None
    for c in cc.coding:
        if not c.code:
            continue
        if c.system == _LOINC:
            if loinc is None:
                loinc = c
        elif local is None:
            local = c
    code = local.code if local else (loinc.code if loinc else "")
    name = (local.display if local else "") or (loinc.display if loinc else "") or cc.text
    return code, name or cc.text, loinc.code if loinc else ""


# A number as sent: (its value, its numerals, the numerals kept as an NM's value_text —
# "" when they are the value's own, ``number_text``). R4 datatypes.html#decimal: "the
# precision of the decimal value has significance", so 7.40 is kept as "7.40"; a value
# whose numerals are its own keeps value_text "" as before they were kept, and a
# resent Bundle hashes as it did (services/intake.py ``encode_submission``).
_Number = tuple[float, str, str]
_NUMBER_DECODER = msgspec.json.Decoder(float | None)


def _number(raw: msgspec.Raw, errors: ProblemCollector, where: str, element: str) -> _Number | None:
    """A Quantity.value (``m.Quantity``): None when absent or null, or when it is no
    number (named ``where.element`` in ``errors``)."""
    try:
        value = _NUMBER_DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        errors.add(f"{where}.{element}", f"不符合 FHIR R4 结构: {exc}")
        return None
    except msgspec.DecodeError:  # empty: absent
        return None
    if value is None:
        return None
    text = str(raw, "ascii")  # a JSON number
    if len(text) > 15 or "e" in text or "E" in text:
        return _numerals(text, value, errors, f"{where}.{element}")
    # Up to 15 digits (DBL_DIG): the float's shortest repr has these very digits, so the
    # numerals are its own unless they end in a zero after the point ("7.40", "56.0").
    return value, text, text if text[-1] == "0" and "." in text else ""


def _numerals(text: str, value: float, errors: ProblemCollector, where: str) -> _Number | None:
    """A number written with more digits than a float keeps, or with an exponent: its
    numerals in positional notation, its digits kept ("2.50e-3" → "0.00250")."""
    if "e" in text or "E" in text:
        exact = Decimal(text)
        if not -15 <= exact.adjusted() < 21:
            errors.add(where, f"数值超出检查检验结果的范围: {text}")
            return None
        text = format(exact, "f")
    return value, text, "" if text == number_text(value) else text


def _value_of(number: _Number | None) -> float | None:
    return None if number is None else number[0]


_NULL = msgspec.Raw(b"null")


def _range_text(low: _Number | None, high: _Number | None) -> str:
    """A reference range without text as "low-high", each limit as sent ("3.50-5.30")."""
    return f"{'' if low is None else low[1]}-{'' if high is None else high[1]}"


# HL7 v3 ObservationInterpretation is the R4 binding of Observation.interpretation
# (R4 observation.html, Observation.interpretation, extensible); the v2 Table 0078 systems carry the
# same codes in older feeds.
_INTERPRETATION_SYSTEMS = frozenset(
    {
        sid.INTERPRETATION,
        "http://terminology.hl7.org/CodeSystem/v2-0078",
        "http://hl7.org/fhir/v2/0078",
    }
)


def _flag(interpretations: Sequence[m.CodeableConcept]) -> tuple[str, int]:
    """(flag, index of its interpretation): the code of the first coding in the
    ObservationInterpretation system, else the first coded one (a LIS that sends its own
    sign first, '↑', and the v3 'H' after it is read as 'H')."""
    fallback: tuple[str, int] = ("", 0)
    for i, interp in enumerate(interpretations):
        for c in interp.coding:
            if not c.code:
                continue
            if c.system in _INTERPRETATION_SYSTEMS:
                return c.code, i
            if not fallback[0]:
                fallback = (c.code, i)
    return fallback


def _quantity_unit(q: m.Quantity) -> str:
    return q.code if q.system == _UCUM and q.code else (q.unit or q.code)


# Ages in referenceRange.age are UCUM durations (R4 observation.html, Observation.referenceRange.age).
_AGE_UNITS = {"a": 1.0, "mo": 1 / 12, "wk": 7 / 365.25, "d": 1 / 365.25}
# Observation.referenceRange.appliesTo: SNOMED CT or administrative-gender codes for sex.
_SEX_CODES = {"248153007": "M", "248152002": "F", "male": "M", "female": "F"}


def _age_years(
    q: m.Quantity | None, errors: ProblemCollector, where: str, upper: bool = False
) -> float | None:
    """An age bound in years; an upper bound includes its whole unit (``high`` 17 a: up to
    the 18th birthday)."""
    if q is None:
        return None
    number = _number(q.value, errors, where, "age.high.value" if upper else "age.low.value")
    if number is None:
        return None
    per = _AGE_UNITS.get(q.code or q.unit or "a", 1.0)
    return (number[0] + (1 if upper else 0)) * per


@dataclass(frozen=True, slots=True)
class _Subject:
    """What a reference range may depend on: the patient's age and sex on the day."""

    age: float | None  # years at the performed time
    sex: str  # M | F | ""


def _subject(patient: PatientDemographics | None, performed: datetime | None) -> _Subject:
    age: float | None = None
    if patient is not None and patient.birth_date is not None and performed is not None:
        age = (performed.date() - patient.birth_date).days / 365.25
    return _Subject(age, patient.sex if patient is not None else "")


def _range_applies(
    rr: m.ReferenceRange, ages: tuple[float | None, float | None] | None, subject: _Subject
) -> bool | None:
    """True or False when the patient's age and sex decide it, None when they cannot
    (no birth date, or appliesTo a condition such as pregnancy)."""
    decided = True
    if ages is not None:
        if subject.age is None:
            return None
        low, high = ages
        if (low is not None and subject.age < low) or (high is not None and subject.age >= high):
            return False
    for cc in rr.appliesTo:
        sexes = {_SEX_CODES[c.code] for c in cc.coding if c.code in _SEX_CODES}
        if not sexes:
            decided = False  # e.g. pregnancy, race: not known here
        elif not subject.sex or subject.sex not in ("M", "F"):
            return None
        elif subject.sex not in sexes:
            return False
    return True if decided else None


_RANGE_DECODER = msgspec.json.Decoder(m.ReferenceRange)


class _ReadRange(NamedTuple):
    """A reference range read. Ranges repeat from one Observation of an item to the
    next: each distinct one is read once."""

    low: float | None
    high: float | None
    text: str  # sent, or made of the limits as sent
    range: m.ReferenceRange
    ages: tuple[float | None, float | None] | None  # its age range in years
    codes: tuple[str, ...]  # the distinct UCUM codes of its limits (none: no limit has one)
    # Its text naming its unit(s), used when that is not the value's (``_other_unit``).
    with_units: str


_RANGES: dict[bytes, _ReadRange] = {}


def _ucum_code(q: m.Quantity | None) -> str:
    """The UCUM code of a Quantity (R4 datatypes.html#Quantity: ``system``
    http://unitsofmeasure.org, ``code``), "" when it has none."""
    return q.code if q is not None and q.system == _UCUM else ""


@functools.lru_cache(maxsize=1024)
def _ucum_key(code: str) -> str:
    """A UCUM code in the form its common spellings share: ``10^9/L`` is ``10*9/L``
    (UCUM writes a power of ten 10*9; LIS often write 10^9), case does not count (mmol/l,
    mmol/L; UCUM's case-insensitive form), the micro sign µ or μ is u."""
    return code.strip().replace("^", "*").casefold().replace("μ", "u")


def _with_units(rr: m.ReferenceRange, low: _Number | None, high: _Number | None) -> str:
    """A reference range as text naming its unit ("70-110 mg/dL"): the text sent, with
    its unit added when the text does not name it, else the limits as sent."""
    units = [
        q.unit.strip() or q.code.strip()
        for q in (rr.low, rr.high)
        if q is not None and (q.unit.strip() or q.code.strip())
    ]
    if rr.text:
        missing = [u for u in dict.fromkeys(units) if u not in rr.text]
        return " ".join([rr.text, *missing])
    if len(set(units)) > 1:  # each limit in its own unit (not seen sent, but allowed)
        lo = "" if low is None or rr.low is None else f"{low[1]} {rr.low.unit or rr.low.code}"
        hi = "" if high is None or rr.high is None else f"{high[1]} {rr.high.unit or rr.high.code}"
        return f"{lo}-{hi}"
    unit = f" {units[0]}" if units else ""
    if low is not None and high is not None:
        return f"{low[1]}-{high[1]}{unit}"
    if low is not None:
        return f">={low[1]}{unit}"
    return f"<={high[1]}{unit}" if high is not None else rr.text


def _read_range(
    raw: msgspec.Raw, errors: ProblemCollector, where: str, index: int
) -> _ReadRange | None:
    """An Observation.referenceRange[index] not read before; None when it is refused
    (named in ``errors``)."""
    at = f"{where}.referenceRange[{index}]"
    literal = bytes(raw)
    try:
        rr = _RANGE_DECODER.decode(literal)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        errors.problems.append(_decode_problem(exc, at))
        return None
    except UnicodeDecodeError as exc:
        errors.problems.append(_utf8_problem(exc, at))
        return None
    except RecursionError:
        errors.problems.append(_TOO_DEEP.at(at))
        return None
    before = len(errors.problems)
    low, high = _limits(rr, errors, at)
    ages = None
    if rr.age is not None:
        ages = (
            _age_years(rr.age.low, errors, at),
            _age_years(rr.age.high, errors, at, upper=True),
        )
    if len(errors.problems) > before:
        return None
    text = rr.text
    if not text and (low is not None or high is not None):
        text = _range_text(low, high)
    codes = tuple(dict.fromkeys(c for c in (_ucum_code(rr.low), _ucum_code(rr.high)) if c))
    with_units = _with_units(rr, low, high) if codes else ""
    read = _ReadRange(_value_of(low), _value_of(high), text, rr, ages, codes, with_units)
    if len(_RANGES) >= 4096:
        _RANGES.clear()
    _RANGES[literal] = read
    return read


def _reference_range(
    ranges: Sequence[msgspec.Raw], where: str, errors: ProblemCollector, subject: _Subject
) -> tuple[float | None, float | None, str, int, _ReadRange | None]:
    """(low, high, text, index, the range read) of the one reference range that is the
    patient's.
    Several ranges (R4 Observation.referenceRange 0..*: by age, by sex, normal and
    therapeutic) are narrowed to the normal ones that apply to the patient; when that
    still leaves different ranges, the Observation is refused rather than stored with
    another patient group's range (the platform keeps one range per value)."""
    if not ranges:
        return None, None, "", 0, None
    known = _RANGES.get
    maybe_read = [
        known(bytes(raw)) or _read_range(raw, errors, where, i) for i, raw in enumerate(ranges)
    ]
    read = [r for r in maybe_read if r is not None]
    if len(read) < len(ranges):  # each range refused is named
        return None, None, "", 0, None
    chosen = list(enumerate(read))
    if len(read) > 1:
        normal = [
            (i, r)
            for i, r in chosen
            if r.range.type is None or any(c.code == "normal" for c in r.range.type.coding)
        ]
        chosen = normal or chosen
        applies = [(i, r, _range_applies(r.range, r.ages, subject)) for i, r in chosen]
        sure = [(i, r) for i, r, ok in applies if ok is True]
        maybe = [(i, r) for i, r, ok in applies if ok is None]
        chosen = sure or maybe
        kinds = {(r.low, r.high, r.range.text) for _, r in chosen}
        if len(kinds) > 1:
            errors.add(
                f"{where}.referenceRange",
                "有多个参考范围，无法按患者的年龄、性别确定适用的一个"
                "（请提供患者出生日期与性别，或只发送适用于该患者的参考范围）",
            )
            return None, None, "", 0, None
        if not chosen:  # none applies to this patient: keep none rather than another's
            return None, None, "", 0, None
    index, chosen_range = chosen[0]
    return chosen_range.low, chosen_range.high, chosen_range.text, index, chosen_range


def _limits(
    rr: m.ReferenceRange | m.Range, errors: ProblemCollector, where: str
) -> tuple[_Number | None, _Number | None]:
    """The low and high limits of a reference range (or of a valueRange), as sent."""
    low, high = rr.low, rr.high
    return (
        None if low is None else _number(low.value, errors, where, "low.value"),
        None if high is None else _number(high.value, errors, where, "high.value"),
    )


_ABSENT = "未出结果"
_WITHDRAWN_NOTE = "该 Observation 状态为 entered-in-error（已撤回），未作为报告的结果保存"
# R4 Observation.status cancelled: "the observation is unavailable because the
# measurement was not started or not completed" (as HL7 OBX-11 X).
_CANCELLED = "无法获得结果"

# Where each field of an ObservationValue comes from, to name a value that is too long.
_FIELD_ELEMENT = {
    "code": "code.coding",
    "loinc": "code.coding",
    "name": "code",
    "unit": "value[x].unit",
    "ref_text": "referenceRange[{range}].text",
    "flag": "interpretation[{interp}]",
    "comment": "note",
}


_MAX = dict(OBSERVATION_LIMITS)
_CODE_MAX, _NAME_MAX, _UNIT_MAX = _MAX["code"], _MAX["name"], _MAX["unit"]
_REF_TEXT_MAX, _FLAG_MAX, _LOINC_MAX = _MAX["ref_text"], _MAX["flag"], _MAX["loinc"]
_COMMENT_MAX = _MAX["comment"]


def _note_text(notes: Sequence[m.Annotation]) -> str:
    """R4 Annotation.text of each note, one a line (empty ones left out)."""
    return "\n".join(t for n in notes if (t := n.text.strip()))


def _noted(
    value: ObservationValue, obs: m.Observation, where: str, errors: ProblemCollector
) -> ObservationValue:
    """``value`` with the Observation's notes (R4 Observation.note) as its comment."""
    comment = _note_text(obs.note)
    if not comment:
        return value
    if len(comment) > _COMMENT_MAX:
        errors.add(f"{where}.note", f"长度超过 {_COMMENT_MAX} 个字符，平台无法完整保存")
    return replace(value, comment=comment)


def _report_comment(r: m.DiagnosticReport, where: str, errors: ProblemCollector) -> str:
    """The report's comment: R5 DiagnosticReport.note sent as its R4 cross-version
    extension (``sid.REPORT_NOTE_EXTENSION``, valueAnnotation or valueString)."""
    texts: list[str] = []
    for k, ext in enumerate(r.extension):
        if ext.url != sid.REPORT_NOTE_EXTENSION:
            continue
        if ext.valueAnnotation is not None:
            text = ext.valueAnnotation.text.strip()
        else:
            text = (ext.valueString or "").strip()
        if text:
            texts.append(text)
        elif ext.valueAnnotation is None and ext.valueString is None:
            errors.add(f"{where}.extension[{k}]", "注释扩展缺少 valueAnnotation")
    comment = "\n".join(texts)
    if len(comment) > MAX_REPORT_COMMENT:
        errors.add(
            f"{where}.extension", f"报告注释长度超过 {MAX_REPORT_COMMENT} 个字符，平台无法完整保存"
        )
    return comment


def _value(
    v: m.Observation | m.ObservationComponent,
    where: str,
    errors: ProblemCollector,
    subject: _Subject,
    notes: list[str],
) -> ObservationValue:
    """One value: an Observation's own value[x], or one of its components (R4 observation.html,
    Observation.value[x] and Observation.component share the same value types). What is
    kept otherwise than sent (a reference range in another unit) is named in ``notes``."""
    code, name, loinc = _codes(v.code)
    if not code:
        errors.add(f"{where}.code.coding", "检验项目缺少编码（本院编码或 LOINC）")
    vt, num, text, unit = _ST, None, "", ""
    unit_at = ""
    q = v.valueQuantity
    if q is not None:
        number = _number(q.value, errors, where, "valueQuantity.value")
        if number is not None:
            num = number[0]
        elif not q.value or q.value == _NULL:
            errors.add(f"{where}.valueQuantity.value", "数值型结果缺少数值")
        unit, unit_at = _quantity_unit(q), "valueQuantity.unit"
        if q.comparator:
            vt, text = _SN, f"{q.comparator}{number[1]}" if number is not None else ""
        else:
            # The numerals as sent when they are not the value's own ("7.40").
            vt, text = _NM, "" if number is None else number[2]
    elif v.valueInteger is not None:
        vt, num = _NM, float(v.valueInteger)
    elif v.valueString is not None:
        text = v.valueString
        vt = _TX if ("\n" in text or len(text) > 200) else _ST
    elif v.valueCodeableConcept is not None:
        vc = v.valueCodeableConcept
        first = vc.coding[0] if vc.coding else None
        vt, text = _CE, vc.text or (first.display or first.code if first else "")
    elif v.valueBoolean is not None:
        text = "是" if v.valueBoolean else "否"
    elif v.valueRange is not None:
        # A range as a result (e.g. 3-5 /HPF): kept as HL7 v2 SN text, as an OBX of
        # type SN ^3^-^5 is.
        bounds = (v.valueRange.low, v.valueRange.high)
        lo, hi = _limits(v.valueRange, errors, f"{where}.valueRange")
        vt, unit_at = _SN, "valueRange"
        unit = next((_quantity_unit(b) for b in bounds if b is not None and (b.code or b.unit)), "")
        if lo is not None and hi is not None:
            text = f"{lo[1]}-{hi[1]}"
        elif lo is not None:
            text = f">={lo[1]}"
        elif hi is not None:
            text = f"<={hi[1]}"
        else:
            errors.add(f"{where}.valueRange", "范围型结果缺少 low 与 high 的数值")
    elif v.valueRatio is not None:
        # A titer (1:40) as a result: SN text, as an OBX of type SN ^1^:^40 is.
        nq, dq = v.valueRatio.numerator, v.valueRatio.denominator
        ratio_at = f"{where}.valueRatio"
        n = None if nq is None else _number(nq.value, errors, ratio_at, "numerator.value")
        d = None if dq is None else _number(dq.value, errors, ratio_at, "denominator.value")
        if n is None or d is None or nq is None or dq is None:
            errors.add(ratio_at, "比值型结果须有分子与分母的数值")
        else:
            vt, text, unit_at = _SN, f"{n[1]}:{d[1]}", "valueRatio"
            nu, du = _quantity_unit(nq), _quantity_unit(dq)
            unit = f"{nu}/{du}" if nu and du else nu or (f"1/{du}" if du else "")
    elif v.valueTime is not None:
        text = v.valueTime
    elif v.valueDateTime is not None:
        text = v.valueDateTime
    elif v.valuePeriod is not None:
        # ISO 8601 time interval notation start/end.
        text = f"{v.valuePeriod.start}/{v.valuePeriod.end}"
    elif v.valueSampledData:
        errors.add(
            f"{where}.valueSampledData",
            "不支持波形数据（SampledData）：平台按数值、文本或编码保存检查检验结果，"
            "波形请以报告文件或影像方式提供",
        )
    elif v.dataAbsentReason is not None:
        # R4 observation.html, Observation.dataAbsentReason: why the value is missing (obs-6: only
        # without a value). Kept as the value's text, not as an empty string.
        dar = v.dataAbsentReason
        first = dar.coding[0] if dar.coding else None
        reason = dar.text or (first.display or first.code if first else "")
        text = f"{_ABSENT}：{reason}" if reason else _ABSENT
    elif isinstance(v, m.Observation) and v.status == "cancelled":
        text = _CANCELLED
    ranges = v.referenceRange
    read = _RANGES.get(bytes(ranges[0])) if len(ranges) == 1 else None
    if read is not None:  # the usual single range, read before
        low, high, ref_text, range_index = read.low, read.high, read.text, 0
    else:
        low, high, ref_text, range_index, read = _reference_range(ranges, where, errors, subject)
    if read is not None and read.codes:  # the range's limits have UCUM codes
        codes, value_code = read.codes, _value_ucum_code(v)
        if (
            value_code
            and (len(codes) > 1 or codes[0] != value_code)  # the usual case: the same code
            and _other_unit(value_code, codes)
        ):
            # R4 observation.html, Observation.referenceRange.low/high: Quantities, each
            # in its own unit. Numbers in mg/dL beside a value in mmol/L would be shown,
            # and compared, as if in mmol/L: the range is kept as text naming its unit.
            low = high = None
            ref_text = read.with_units
            notes.append(
                f"{where}.referenceRange[{range_index}] 的单位与结果的单位（{value_code}）不同，"
                f"参考范围按文本「{ref_text}」保存，不作为数值范围比较高低"
            )
    interps, flag, interp_index = v.interpretation, "", 0
    if interps:
        first_coding = interps[0].coding
        if first_coding and first_coding[0].code and first_coding[0].system == _V3_FLAGS:
            flag = first_coding[0].code  # the usual case
        else:
            flag, interp_index = _flag(interps)
    # Positional: ObservationValue's field order (code, name, value_type, value_num,
    # value_text, unit, ref_low, ref_high, ref_text, flag, loinc).
    value = new_observation(code, name, vt, num, text, unit, low, high, ref_text, flag, loinc)
    if (
        len(code) > _CODE_MAX
        or len(name) > _NAME_MAX
        or len(unit) > _UNIT_MAX
        or len(ref_text) > _REF_TEXT_MAX
        or len(flag) > _FLAG_MAX
        or len(loinc) > _LOINC_MAX
    ):
        # Named here, by its element: the intake service would name its own field.
        for field_name, limit in OBSERVATION_LIMITS:
            if len(getattr(value, field_name)) > limit:
                element = _FIELD_ELEMENT[field_name].format(range=range_index, interp=interp_index)
                if field_name == "unit" and unit_at:
                    element = unit_at
                errors.add(f"{where}.{element}", f"长度超过 {limit} 个字符，平台无法完整保存")
    return value


def _value_ucum_code(v: m.Observation | m.ObservationComponent) -> str:
    """The UCUM code of a value's unit (``_value``: of its valueQuantity, or of the first
    limit of its valueRange that has a unit), "" when it has none."""
    if v.valueQuantity is not None:
        return _ucum_code(v.valueQuantity)
    if v.valueRange is not None:
        for q in (v.valueRange.low, v.valueRange.high):
            if q is not None and (q.code or q.unit):
                return _ucum_code(q)
    return ""


def _other_unit(value_code: str, range_codes: tuple[str, ...]) -> bool:
    """Whether a limit of a reference range is in another UCUM unit than the value: a
    code that differs, also as ``_ucum_key`` writes it (10^9/L is 10*9/L)."""
    return any(
        code != value_code and _ucum_key(code) != _ucum_key(value_code) for code in range_codes
    )


def _has_value(obs: m.Observation) -> bool:
    return (
        obs.valueQuantity is not None
        or obs.valueString is not None
        or obs.valueCodeableConcept is not None
        or obs.valueInteger is not None
        or obs.valueBoolean is not None
        or obs.valueRange is not None
        or obs.valueRatio is not None
        or obs.valueTime is not None
        or obs.valueDateTime is not None
        or obs.valuePeriod is not None
        or bool(obs.valueSampledData)
        or obs.dataAbsentReason is not None
    )


def _observation_values(
    obs: m.Observation,
    where: str,
    errors: ProblemCollector,
    subject: _Subject,
    notes: list[str],
    before: Sequence[ObservationValue],
) -> list[ObservationValue]:
    """The values an Observation holds: its own value[x] (or dataAbsentReason), then one
    per component (R4 observation.html#component: components are values of their own, e.g. systolic and
    diastolic blood pressure, the panel code itself having no value), their codes naming
    the Observation (``_as_components``; ``before``: the report's values so far). A panel
    that only groups other Observations (hasMember) has none of its own."""
    out: list[ObservationValue] = []
    if _has_value(obs) or not (obs.component or obs.hasMember):
        out.append(_value(obs, where, errors, subject, notes))
    for k, comp in enumerate(obs.component):
        out.append(_value(comp, f"{where}.component[{k}]", errors, subject, notes))
    if obs.component:
        out = _as_components(obs, out, before)
    if obs.note and out:
        # The Observation's notes go with its first value (its own, or its first
        # component's: R4 Observation.component has no note of its own).
        out[0] = _noted(out[0], obs, where, errors)
    return out


def _as_components(
    obs: m.Observation, values: list[ObservationValue], before: Sequence[ObservationValue]
) -> list[ObservationValue]:
    """``values`` (the Observation's own value, if any, then its components) with each
    component's code stored as ``model.component_code`` of the Observation's, so that it
    is read back as one Observation with its components (``model.component_groups``).
    Where the codes cannot say it — a code holding the separator, or too long together,
    components of one code twice, or the rows read back joining the Observation before
    (of the same code, sent without a value of its own) — the components keep their own
    codes and are read back as Observations of their own, as all components were before."""
    parent = _codes(obs.code)[0]
    n = len(obs.component)
    own = values[: len(values) - n]
    codes = [v.code for v in values[len(values) - n :]]
    if (
        not parent
        or m.COMPONENT_SEPARATOR in parent
        or len(set(codes)) < n
        or any(
            not c
            or m.COMPONENT_SEPARATOR in c
            or len(parent) + len(m.COMPONENT_SEPARATOR) + len(c) > _CODE_MAX
            for c in codes
        )
    ):
        return values
    out = [*own, *(replace(v, code=m.component_code(parent, v.code)) for v in values[len(own) :])]
    # Only the rows of the report's last Observation of this code could be joined: they
    # begin a group of their own wherever the rows of another code end (the report may
    # have hundreds of Observations, grouped one by one).
    start = len(before)
    while (
        start and (split := m.split_component_code(before[start - 1].code)) and split[0] == parent
    ):
        start -= 1
    if start and before[start - 1].code == parent:
        start -= 1
    tail = [v.code for v in before[start:]]
    last = m.component_groups([*tail, *(v.code for v in out)])[-1]
    if last.start != len(tail) or len(last.components) != n:
        return values
    return out


def _category(report: m.DiagnosticReport) -> Category | None:
    for cc in report.category:
        for c in cc.coding:
            if c.code in _SECTIONS:
                return _SECTIONS[c.code]
    return None


def _presented_form(
    report: m.DiagnosticReport, where: str, errors: ProblemCollector
) -> tuple[str, list[str], tuple[ReportDocument, ...]]:
    """(the text of the first text/plain presentedForm, notes on the forms not kept, the
    documents kept).

    R4 diagnosticreport.html, DiagnosticReport.presentedForm is an Attachment: ``data`` base64 in the
    charset of its ``contentType`` (Attachment.contentType: 'text/plain;
    charset=GB18030'), or a ``url``. A text the platform cannot decode is refused naming
    it. A PDF, JPEG or PNG with its ``data`` is kept as the report's original document
    (``ReportDocument``, as an HL7 OBX ED is), refused naming it when its data is no such
    document; a form of another type, or given only by ``url`` (nothing is fetched), is
    named in a note (the message as received, which holds it, is kept)."""
    text = ""
    notes: list[str] = []
    documents: list[ReportDocument] = []
    for i, att in enumerate(report.presentedForm):
        ctype, _, params = att.contentType.partition(";")
        ctype = ctype.strip().lower()
        if ctype == "text/plain" and att.data and not text:
            charset = "utf-8"
            for param in params.split(";"):
                key, _, value = param.partition("=")
                if key.strip().lower() == "charset" and value.strip():
                    charset = value.strip().strip('"')
            try:
                text = base64.b64decode(att.data, validate=True).decode(charset)
            except UnicodeDecodeError:  # before ValueError, of which it is a kind
                errors.add(
                    f"{where}.presentedForm[{i}].data",
                    f"文本不是 {charset} 编码（请在 contentType 中注明 charset）",
                )
            except LookupError:
                errors.add(f"{where}.presentedForm[{i}].contentType", f"不支持的字符集 {charset}")
            except (binascii.Error, ValueError):
                errors.add(f"{where}.presentedForm[{i}].data", "不是有效的 base64 编码")
            continue
        if ctype == "text/plain" and att.data:
            continue  # a second text form: the first is kept as the findings
        if ctype in DOCUMENT_KINDS and att.data:
            at = f"{where}.presentedForm[{i}].data"
            try:
                data = base64.b64decode(att.data, validate=True)
            except (binascii.Error, ValueError):
                errors.add(at, "不是有效的 base64 编码")
                continue
            if (why := document_problem(ctype, data)) is not None:
                errors.add(at, why)
                continue
            documents.append(ReportDocument(ctype, data, att.title[:MAX_DOCUMENT_TITLE]))
            continue
        kind = att.contentType or "未注明类型"
        title = f"「{att.title}」" if att.title else ""
        notes.append(
            f"presentedForm[{i}]{title}（{kind}）未单独保存：平台保存结果、检查所见与结论，"
            "报告原件保留在接收的原始消息中"
            + ("（只给出 url，平台不取回）" if att.url and not att.data else "")
        )
    return text, notes, tuple(documents)


def _conclusion_codes(report: m.DiagnosticReport) -> str:
    """R4 DiagnosticReport.conclusionCode, as text, when no conclusion text is sent."""
    texts = []
    for cc in report.conclusionCode:
        first = cc.coding[0] if cc.coding else None
        text = cc.text or (first.display or first.code if first else "")
        if text:
            texts.append(text)
    return "；".join(texts)


def _observations_effective(
    ctx: _Ctx, report: m.DiagnosticReport, where: str, base: str
) -> datetime | None:
    """The performed time of a report sent without effective[x] (R4 0..1; HAPI clients
    put it on the Observations only): the earliest effective[x] of its results."""
    times: list[datetime] = []
    for ref in report.result:
        found = ctx.by_ref.get(_ref_key(ref.reference, base))
        if found is None or not isinstance(found[1], m.Observation):
            continue  # named when the results are read
        owhere, obs = found[0], found[1]
        if obs.effectiveDateTime:
            value, element = obs.effectiveDateTime, "effectiveDateTime"
        elif obs.effectivePeriod is not None and obs.effectivePeriod.start:
            value, element = obs.effectivePeriod.start, "effectivePeriod.start"
        elif obs.effectiveInstant:
            value, element = obs.effectiveInstant, "effectiveInstant"
        else:
            continue
        at = parse_datetime(value, f"{owhere}.{element}", ctx.errors, "检查检验时间")
        if at is not None:
            times.append(at)
    if times:
        return min(times)
    ctx.errors.add(
        f"{where}.effective[x]",
        "缺少检查检验时间（DiagnosticReport.effective[x]，或其 Observation 的 effective[x]）",
    )
    return None


def _study_links(ctx: _Ctx, report: m.DiagnosticReport, base: str) -> tuple[str, str]:
    accession = study_uid = ""
    refs = [*report.imagingStudy, *report.basedOn]
    for ref in refs:
        found = ctx.by_ref.get(_ref_key(ref.reference, base))
        if found is None:
            continue
        res = found[1]
        idents = res.identifier if isinstance(res, m.ImagingStudy | m.ServiceRequest) else []
        for ident in idents:
            types = {c.code for c in ident.type.coding} if ident.type else set()
            if "ACSN" in types and not accession:
                accession = ident.value
            elif ident.system == sid.DICOM_UID and not study_uid:
                study_uid = ident.value.removeprefix("urn:oid:")
    return accession, study_uid


@dataclass
class _Report:
    index: int  # entry index (or -1 for a single resource)
    where: str
    base: str
    resource: m.DiagnosticReport


# DiagnosticReport.performer (R4): Practitioner | PractitionerRole | Organization | CareTeam.
_CONDITIONAL_PERFORMERS: dict[str, type[m.Resource]] = {
    "Organization": m.Organization,
    "Practitioner": m.Practitioner,
}


def _report_submission(
    ctx: _Ctx, rep: _Report, default_institution: str, sub_index: int
) -> tuple[ResultSubmission | None, str, str]:
    """The submission of one DiagnosticReport; returns (submission, institution, patient key)."""
    r, where, base = rep.resource, rep.where, rep.base
    errors = ctx.errors
    institution = department = performer = ""
    for k, ref in enumerate(r.performer):
        if "?" in ref.reference and (
            kind := _CONDITIONAL_PERFORMERS.get(ref.reference.partition("?")[0])
        ):
            resolved = _conditional(ctx, ref, f"{where}.performer[{k}].reference", kind)
            if resolved is None:
                continue
            if kind is m.Practitioner and not resolved.reference:
                performer = performer or ref.display  # named only by its identifier
                continue
            ref = resolved
        found = ctx.by_ref.get(_ref_key(ref.reference, base))
        res = found[1] if found else None
        if isinstance(res, m.Organization):
            code = _institution_code(res)
            if code:
                institution = institution or code
            elif res.partOf is not None:
                parent = ctx.by_ref.get(_ref_key(res.partOf.reference, base))
                if parent is not None and isinstance(parent[1], m.Organization):
                    institution = institution or _institution_code(parent[1])
                department = department or res.name
        elif isinstance(res, m.Practitioner):
            performer = performer or _name(res.name)
        elif ref.identifier is not None and ref.identifier.system == sid.INSTITUTION:
            institution = institution or ref.identifier.value
        elif (
            found is None
            and ref.reference
            and ref.reference not in ctx.unread_refs
            and not ref.reference.startswith(
                ("Organization/", "Practitioner/", "PractitionerRole/")
            )
        ):
            errors.add(f"{where}.performer[{k}]", f"引用无法解析: {ref.reference}")
        elif (
            not performer
            and ref.display
            and (ref.reference.startswith("Practitioner") or ref.reference in ctx.unread_refs)
        ):
            performer = ref.display
    institution = institution or default_institution
    if not institution:
        errors.add(
            f"{where}.performer",
            f"缺少检查检验机构: performer 应引用带 {sid.INSTITUTION} 标识的 Organization",
        )
    signer = next((_ref_name(ctx, ref, base) for ref in r.resultsInterpreter), "")

    report_no = accession_own = study_own = ""
    for ident in r.identifier:
        types = {c.code for c in ident.type.coding} if ident.type else set()
        if "ACSN" in types:
            accession_own = accession_own or ident.value
        elif ident.system == sid.DICOM_UID:
            study_own = study_own or ident.value.removeprefix("urn:oid:")
        elif ident.value and (ident.system == sid.REPORT_NO_PREFIX + institution or not report_no):
            report_no = ident.value
    if not report_no:
        errors.add(f"{where}.identifier", "缺少报告单编号（DiagnosticReport.identifier）")
    local_code, local_name, _loinc = _codes(r.code)
    if not local_code:
        errors.add(f"{where}.code.coding", "缺少检查检验项目编码")

    if r.effectiveDateTime:
        performed = parse_datetime(
            r.effectiveDateTime, f"{where}.effectiveDateTime", errors, "检查检验时间"
        )
    elif r.effectivePeriod is not None:
        # R4 diagnosticreport.html, DiagnosticReport.effective[x]: the clinically relevant time; of a
        # period, its start (the specimen collection or the examination began).
        start = r.effectivePeriod.start
        performed = parse_datetime(
            start or r.effectivePeriod.end,
            f"{where}.effectivePeriod.{'start' if start or not r.effectivePeriod.end else 'end'}",
            errors,
            "检查检验时间",
        )
    else:
        performed = _observations_effective(ctx, r, where, base)
    issued = parse_datetime(r.issued, f"{where}.issued", errors, "报告时间")

    patient, patient_key = _patient(ctx, r.subject, where, base, institution)
    subject = _subject(patient, performed)

    observations: list[ObservationValue] = []
    findings: list[str] = []
    range_notes: list[str] = []  # reference ranges kept as text (``_value``)
    by_ref, plans = ctx.by_ref, ctx.observation_plans
    # Observations already taken (a panel's member listed twice), by identity: contained
    # resources share the entry index -1.
    seen: set[int] = set()
    seen_add = seen.add

    def take(obs: m.Observation, owhere: str, index: int) -> None:
        """An Observation that is not a plain value: narrative findings, components, a
        panel whose members (R4 observation.html#gr-members, Observation.hasMember) follow it depth first."""
        stack: list[tuple[m.Observation, str, int]] = [(obs, owhere, index)]
        while stack:
            obs, owhere, index = stack.pop()
            if obs.valueString is not None and any(
                c.system == _LOINC and c.code in sid.FINDINGS_LOINC for c in obs.code.coding
            ):
                findings.append(obs.valueString)
                plans[index] = EntryPlan("findings", sub_index, note="已作为报告的检查所见保存")
                continue
            values = _observation_values(obs, owhere, errors, subject, range_notes, observations)
            if values:
                observations.extend(values)
                plans[index] = _observation_entry(sub_index, len(observations) - len(values) + 1)
            else:
                plans[index] = EntryPlan("panel", sub_index, note=_PANEL_NOTE)
            members: list[tuple[m.Observation, str, int]] = []
            for j, ref in enumerate(obs.hasMember):
                reference = ref.reference
                found = by_ref.get(base + reference if reference.startswith("#") else reference)
                if found is None or not isinstance(found[1], m.Observation):
                    _unresolved(
                        ctx, reference, f"{owhere}.hasMember[{j}]", "Observation", " Observation "
                    )
                elif id(found[1]) not in seen:
                    seen_add(id(found[1]))
                    members.append((found[1], found[0], found[2]))
            stack.extend(reversed(members))

    for k, ref in enumerate(r.result):
        reference = ref.reference
        found = by_ref.get(base + reference if reference.startswith("#") else reference)
        if found is None or not isinstance(found[1], m.Observation):
            _unresolved(ctx, reference, f"{where}.result[{k}]", "Observation", " Observation ")
            continue
        owhere, obs, index = found
        assert isinstance(obs, m.Observation)
        if id(obs) in seen:
            continue
        seen_add(id(obs))
        if obs.status == "entered-in-error":
            # R4 Observation.status: "the observation has been withdrawn following
            # previous final release" — no current value of the report (as HL7 OBX-11 W).
            plans[index] = EntryPlan("info", sub_index, note=_WITHDRAWN_NOTE)
            continue
        if obs.component or obs.hasMember or obs.valueString is not None:
            take(obs, owhere, index)
            continue
        value = _value(obs, owhere, errors, subject, range_notes)
        observations.append(_noted(value, obs, owhere, errors) if obs.note else value)
        plans[index] = _observation_entry(sub_index, len(observations))
    accession, study_uid = _study_links(ctx, r, base)
    accession, study_uid = accession_own or accession, study_own or study_uid
    presented, notes, documents = _presented_form(r, where, errors)
    notes = range_notes + notes
    if notes:
        ctx.report_notes[sub_index] = notes
    if patient is None or performed is None or issued is None:
        return None, institution, patient_key
    sub = new_submission(
        institution=institution,
        report_no=report_no,
        local_code=local_code,
        local_name=local_name,
        patient=patient,
        status=ResultStatus(r.status),
        performed_at=performed,
        issued_at=issued,
        category=_category(r),
        department=department,
        performer=performer,
        signer=signer,
        observations=tuple(observations),
        findings="\n".join(findings) or presented,
        conclusion=r.conclusion or _conclusion_codes(r),
        accession_number=accession,
        study_uid=study_uid,
        comment=_report_comment(r, where, errors) if r.extension else "",
        documents=documents,
    )
    return sub, institution, patient_key


def _decode_resource(raw: bytes, where: str, errors: ProblemCollector) -> m.Resource | str | None:
    """The resource, or its type name when it is a type we do not read, or None (error)."""
    try:
        res: m.Resource = _RESOURCE_DECODER.decode(raw)
        return res
    except msgspec.ValidationError as exc:
        if "at `$.resourceType`" in str(exc) or "missing required field `resourceType`" in str(exc):
            try:
                typed = _TYPED_DECODER.decode(raw)
            except RecursionError:
                errors.problems.append(_TOO_DEEP.at(where))
                return None
            except msgspec.ValidationError:  # not a string (null, a number …)
                errors.add(f"{where}.resourceType", "resourceType 应为资源类型名称（字符串）")
                return None
            if typed.resourceType:
                return typed.resourceType
            errors.add(f"{where}.resourceType", "缺少 resourceType")
            return None
        errors.problems.append(_decode_problem(exc, where))
        return None
    except msgspec.DecodeError as exc:
        errors.problems.append(_decode_problem(exc, where))
        return None
    except UnicodeDecodeError as exc:
        errors.problems.append(_utf8_problem(exc, where))
        return None
    except RecursionError:
        errors.problems.append(_TOO_DEEP.at(where))
        return None


def _index_contained(ctx: _Ctx, report: m.DiagnosticReport, where: str, base: str) -> None:
    decoded = isinstance(report, _DecodedReport)  # its contained resources already are
    for k, item in enumerate(report.contained):
        at = f"{where}.contained[{k}]"
        res = item if decoded else _decode_resource(bytes(item), at, ctx.errors)
        if isinstance(res, m.Resource) and res.id:
            ctx.by_ref[f"{base}#{res.id}"] = (at, res, -1)


def _reject_nul(raw: bytes, base: str) -> None:
    """No FHIR string may hold U+0000 (its ``string`` type is ``[ \\r\\n\\t\\S]+``), and
    PostgreSQL text cannot store it. Looked for in the bytes first (the escape can only
    be written ``\\u0000``; a search of a 90 KB Bundle costs microseconds), then each
    string holding one is named. (A lone surrogate never gets here: msgspec refuses it.)"""
    if b"\\u0000" not in raw:
        return
    problems = json_text_problems(json.loads(raw), base)
    if problems:
        raise ValidationFailed(f"{base} 未通过校验，未保存任何内容", problems=problems)


# Types of which nothing is kept on their own (each entry answers "不单独保存"): a
# conditional create of one creates nothing either way, so its condition is moot.
_NOT_KEPT = (m.Organization, m.Practitioner, m.ImagingStudy, m.Specimen, m.ServiceRequest)


def _conditions(
    ctx: _Ctx,
    conditions: dict[int, str],
    entries: Sequence[m.BundleEntry | _DecodedEntry],
    resources: Sequence[m.Resource | str | None],
) -> dict[int, tuple[str, str]]:
    """Check the conditional creates of a transaction (R4 http.html#ccreate,
    ``Bundle.entry.request.ifNoneExist``); returns {entry index: (system, value)} of the
    DiagnosticReports' conditions, checked against the report number by ``_assemble``.

    Served: ``identifier=system|value`` (one identifier), as in conditional references.
    A Patient's must be one of its own identifiers: the platform matches a patient by
    identifier (the one holding it is used, else a patient is created), which is that
    conditional create; another identifier could file the results under another person,
    so it is refused. An Observation's is refused: Observations are kept as the values
    of their report, without identifiers to match. Other types are not kept on their own,
    so nothing is created whatever the condition says."""
    out: dict[int, tuple[str, str]] = {}
    for i, text in conditions.items():
        where = f"Bundle.entry[{i}].request.ifNoneExist"
        request = entries[i].request
        res = resources[i]
        if request is None or res is None or isinstance(res, (str, *_NOT_KEPT)):
            continue
        if request.method != "POST":
            ctx.errors.add(where, f"ifNoneExist 仅用于 POST（条件创建），收到 {request.method}")
            continue
        query = urllib.parse.parse_qs(text.rpartition("?")[2], keep_blank_values=True)
        tokens = query.get("identifier", [])
        system, bar, value = tokens[0].partition("|") if len(tokens) == 1 else ("", "", "")
        if len(query) != 1 or not bar or not value:
            ctx.errors.add(
                where, f"条件创建仅支持 identifier=system|value（一个标识），收到: {text[:200]}"
            )
        elif isinstance(res, m.DiagnosticReport):
            out[i] = (system, value)
        elif isinstance(res, m.Patient):
            if not any(k.system == system and k.value == value for k in res.identifier):
                ctx.errors.add(
                    where,
                    "Patient 的条件创建须以该 Patient 自身的一个标识为条件（平台按标识匹配患者："
                    "已有该标识的患者即沿用，否则新建）；以其他标识为条件可能把结果归到另一位患者",
                )
        else:
            ctx.errors.add(
                where,
                f"{type(res).__name__} 不支持条件创建（结果按报告单保存，Observation 无可匹配的标识）；"
                "请去掉该条件，或以 DiagnosticReport 的报告单编号为条件",
            )
    return out


def _report_condition(
    ctx: _Ctx,
    rep: _Report,
    sub: ResultSubmission,
    sub_index: int,
    conditions: dict[int, tuple[str, str]],
) -> IfNoneExist | None:
    """A DiagnosticReport's condition: a report number of its institution. Its own number
    needs nothing (the platform identifies a report by institution and number, so a
    resend is answered as unchanged, a changed one as a new version); another number is
    looked up by the caller."""
    system, value = conditions[rep.index]
    own = {"", sid.REPORT_NO_PREFIX + sub.institution}
    own.update(i.system for i in rep.resource.identifier if i.value == sub.report_no)
    if system not in own:
        ctx.errors.add(
            f"Bundle.entry[{rep.index}].request.ifNoneExist",
            "DiagnosticReport 的条件创建仅支持以本机构的报告单编号为条件（identifier="
            f"{sid.REPORT_NO_PREFIX}{sub.institution}|编号），收到 system {system[:200]}",
        )
        return None
    if value == sub.report_no:
        return None
    return IfNoneExist(rep.index, sub_index, value)


def parse_transaction(
    raw: bytes,
    *,
    default_institution: str = "",
    channel: Channel = Channel.FHIR,
    keep_raw: bool = True,
) -> ParsedBundle:
    """A transaction Bundle → ``ParsedBundle``; raises ValidationFailed naming elements."""
    ctx = _Ctx()
    bundle: m.Bundle | _DecodedBundle
    try:
        try:
            bundle = _DECODED_BUNDLE_DECODER.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError):
            bundle = _BUNDLE_DECODER.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValidationFailed(
            "Bundle 不是有效的 FHIR R4 JSON", problems=[_decode_problem(exc, "Bundle")]
        ) from exc
    except UnicodeDecodeError as exc:
        raise ValidationFailed(
            "Bundle 不是有效的 FHIR R4 JSON", problems=[_utf8_problem(exc, "Bundle")]
        ) from exc
    except RecursionError as exc:
        raise ValidationFailed(
            "Bundle 不是有效的 FHIR R4 JSON", problems=[_TOO_DEEP.at("Bundle")]
        ) from exc
    _reject_nul(raw, "Bundle")
    if bundle.type != "transaction":
        raise ValidationFailed(
            "仅接受 transaction 类型的 Bundle",
            problems=[Problem("Bundle.type", f"应为 transaction，收到 {bundle.type}")],
        )
    entries: Sequence[m.BundleEntry | _DecodedEntry] = bundle.entry
    resources: list[m.Resource | str | None] = []
    by_ref = ctx.by_ref
    conditions: dict[int, str] = {}
    for i, entry in enumerate(entries):
        request = entry.request
        if request is not None and request.ifNoneExist:
            conditions[i] = request.ifNoneExist
        if request is None:
            ctx.errors.add(
                f"Bundle.entry[{i}].request", "transaction Bundle 的每个条目都必须有 request"
            )
        elif request.method not in ("POST", "PUT"):
            ctx.errors.add(
                f"Bundle.entry[{i}].request.method", f"仅支持 POST 与 PUT，收到 {request.method}"
            )
        rwhere = f"Bundle.entry[{i}].resource"
        res: m.Resource | str | None
        if isinstance(entry, _DecodedEntry):
            if entry.resource is msgspec.UNSET:
                ctx.errors.add(rwhere, "条目缺少 resource")
                resources.append(None)
                continue
            res = entry.resource
        elif not entry.resource:
            ctx.errors.add(rwhere, "条目缺少 resource")
            resources.append(None)
            continue
        else:
            res = _decode_resource(bytes(entry.resource), rwhere, ctx.errors)
        resources.append(res)
        if isinstance(res, str) and entry.fullUrl:
            ctx.unread_refs[entry.fullUrl] = (rwhere, res)
        if isinstance(res, m.Resource):
            found = (rwhere, res, i)
            if entry.fullUrl:
                by_ref[entry.fullUrl] = found
            if res.id:
                by_ref[f"{type(res).__name__}/{res.id}"] = found
            if isinstance(res, m.DiagnosticReport):
                _index_contained(ctx, res, rwhere, entry.fullUrl or f"DiagnosticReport/{res.id}")
    report_conditions = _conditions(ctx, conditions, entries, resources) if conditions else {}
    # Structural errors first: what follows (references, reports) would only echo them.
    ctx.errors.raise_if_any("Bundle 未通过校验，未保存任何内容")
    reports = [
        _Report(i, f"Bundle.entry[{i}].resource", e.fullUrl or f"DiagnosticReport/{res.id}", res)
        for i, (e, res) in enumerate(zip(entries, resources, strict=True))
        if isinstance(res, m.DiagnosticReport)
    ]
    control_id = (bundle.identifier.value if bundle.identifier else "") or bundle.id
    return _assemble(
        ctx,
        reports,
        entries,
        resources,
        default_institution,
        channel,
        control_id,
        raw if keep_raw else b"",
        report_conditions,
    )


UTF8_BOM = b"\xef\xbb\xbf"


def sniff_kind(head: bytes) -> str | None:
    """What the first bytes of a bulk file or body show it to be when that is not text
    to read line by line or message by message: "gzip", "zip" or "utf-16"; else "hl7",
    "json-array", "ndjson", "other" for UTF-8 text by its first character (a UTF-8 byte
    order mark and leading blanks skipped), or None when there is nothing but blanks.
    Pure, for ``huren ingest`` and ``POST /fhir/$import`` alike (a body or file read
    as the wrong format is one error per record)."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00\x00\x00\x00" in (
        head[0:8:2],
        head[1:8:2],
    ):
        return "utf-16"
    body = head.removeprefix(UTF8_BOM).lstrip(b" \t\r\n\x0b\x1c")
    if not body:
        return None
    if body[:3] in (b"MSH", b"FHS", b"BHS"):
        return "hl7"
    if body[:1] == b"[":
        return "json-array"
    return "ndjson" if body[:1] == b"{" else "other"


def parse_report(
    raw: bytes,
    *,
    default_institution: str = "",
    channel: Channel = Channel.FHIR,
    control_id: str = "",
    keep_raw: bool = True,
) -> ParsedBundle:
    """A single DiagnosticReport whose Patient, Observations and Organization are
    ``contained`` (POST /fhir/DiagnosticReport, NDJSON lines)."""
    ctx = _Ctx()
    res: m.Resource | str | None
    try:
        res = _DECODED_REPORT_DECODER.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        res = None
    except UnicodeDecodeError as exc:
        raise ValidationFailed(
            "DiagnosticReport 不是有效的 FHIR R4 JSON",
            problems=[_utf8_problem(exc, "DiagnosticReport")],
        ) from exc
    except RecursionError as exc:
        raise ValidationFailed(
            "DiagnosticReport 不是有效的 FHIR R4 JSON",
            problems=[_TOO_DEEP.at("DiagnosticReport")],
        ) from exc
    if not isinstance(res, _DecodedReport):
        res = _decode_resource(raw, "DiagnosticReport", ctx.errors)
    if isinstance(res, str):
        ctx.errors.add("DiagnosticReport.resourceType", f"应为 DiagnosticReport，收到 {res[:40]}")
    if not isinstance(res, m.DiagnosticReport):
        if not ctx.errors.problems:
            got = f"，收到 {type(res).__name__}" if isinstance(res, m.Resource) else ""
            ctx.errors.add("DiagnosticReport.resourceType", f"应为 DiagnosticReport{got}")
        ctx.errors.raise_if_any("DiagnosticReport 未通过校验，未保存任何内容")
        raise AssertionError("unreachable")  # pragma: no cover
    _reject_nul(raw, "DiagnosticReport")
    _index_contained(ctx, res, "DiagnosticReport", "")
    rep = _Report(-1, "DiagnosticReport", "", res)
    return _assemble(
        ctx,
        [rep],
        [],
        [],
        default_institution,
        channel,
        control_id or res.id,
        raw if keep_raw else b"",
    )


def _assemble(
    ctx: _Ctx,
    reports: list[_Report],
    entries: Sequence[m.BundleEntry | _DecodedEntry],
    resources: Sequence[m.Resource | str | None],
    default_institution: str,
    channel: Channel,
    control_id: str,
    raw: str | bytes,
    conditions: dict[int, tuple[str, str]] | None = None,
) -> ParsedBundle:
    if not reports:
        ctx.errors.add(
            "Bundle.entry", "Bundle 中没有 DiagnosticReport：结果按报告单（DiagnosticReport）保存"
        )
    patient_of: dict[str, int] = {}
    submissions: list[ResultSubmission] = []
    institutions: set[str] = set()
    if_none_exist: list[IfNoneExist] = []
    for rep in reports:
        sub, inst, patient_key = _report_submission(ctx, rep, default_institution, len(submissions))
        if inst:
            institutions.add(inst)
        if sub is not None:
            if patient_key:
                patient_of.setdefault(patient_key, len(submissions))
            if conditions and rep.index in conditions:
                condition = _report_condition(ctx, rep, sub, len(submissions), conditions)
                if condition is not None:
                    if_none_exist.append(condition)
            submissions.append(sub)
    if len(institutions) > 1:
        ctx.errors.add(
            "Bundle.entry",
            f"一个 Bundle 只能包含一个检查检验机构的结果，收到 {'、'.join(sorted(institutions))}",
        )
    plans: list[EntryPlan] = []
    notes: list[str] = []
    report_index = {rep.index: k for k, rep in enumerate(reports)}
    observation_plans = ctx.observation_plans
    for i, (entry, res) in enumerate(zip(entries, resources, strict=True)):
        if isinstance(res, m.Observation):
            planned = observation_plans.get(i)
            if planned is None:
                ctx.errors.add(
                    f"Bundle.entry[{i}]",
                    "Observation 必须由 DiagnosticReport.result 引用（结果按报告单保存）",
                )
                planned = EntryPlan("info")
            plans.append(planned)
            continue
        where = f"Bundle.entry[{i}]"
        if isinstance(res, m.DiagnosticReport):
            sub_i = report_index[i]
            report_notes = ctx.report_notes.get(sub_i, [])
            plans.append(EntryPlan("report", sub_i, note="；".join(report_notes)))
            notes.extend(f"{where}: {n}" for n in report_notes)
        elif isinstance(res, m.Patient):
            keys = [entry.fullUrl] if entry.fullUrl else []
            if res.id:
                keys.append(f"Patient/{res.id}")
            sub_i = next((patient_of[k] for k in keys if k in patient_of), -1)
            note = "" if sub_i >= 0 else "未被任何 DiagnosticReport 引用的患者，未保存"
            plans.append(EntryPlan("patient" if sub_i >= 0 else "info", sub_i, note=note))
            if note:
                notes.append(f"{where}: {note}")
        else:
            name = res if isinstance(res, str) else type(res).__name__
            note = {
                "Organization": "机构信息仅用于确定检查检验机构，不单独保存",
                "Practitioner": "医务人员信息仅用于报告人/审核人姓名，不单独保存",
                "ImagingStudy": "影像检查仅用于关联检查号与 Study UID，不单独保存",
                "Specimen": "标本信息已接收，不单独保存",
                "ServiceRequest": "检查检验申请已接收，仅用于关联检查号，不单独保存",
            }.get(name, f"不支持的资源类型 {name}，已忽略")
            plans.append(EntryPlan("info", note=note))
            notes.append(f"{where}: {note}")
    ctx.errors.raise_if_any(
        f"{'Bundle' if entries else 'DiagnosticReport'} 未通过校验，未保存任何内容"
    )
    if not entries:  # a single resource
        report_notes = ctx.report_notes.get(0, [])
        plans = [EntryPlan("report", 0, note="；".join(report_notes))]
        notes.extend(f"DiagnosticReport: {n}" for n in report_notes)
    institution = next(iter(institutions)) if institutions else default_institution
    message = InboundMessage(
        channel=channel,
        institution=institution,
        control_id=control_id[:64],
        raw=raw,
        submissions=tuple(submissions),
    )
    return ParsedBundle(message, tuple(plans), tuple(notes), tuple(if_none_exist))


def parse_line(
    line: bytes, *, default_institution: str = "", control_id: str = "", keep_raw: bool = True
) -> ParsedBundle:
    """One NDJSON line of a bulk load (``huren ingest``, ``POST /fhir/$import``): a
    transaction Bundle or a self-contained DiagnosticReport. A line of another resource
    (an ``Observation.ndjson`` of a FHIR bulk export, whose Observations refer to a Patient
    in another file) is answered with what to send instead: results are kept by report."""
    if b'"Bundle"' in line[:200] or b'"resourceType":"Bundle"' in line[:4000]:
        return parse_transaction(
            line, default_institution=default_institution, channel=Channel.BULK, keep_raw=keep_raw
        )
    try:
        return parse_report(
            line,
            default_institution=default_institution,
            channel=Channel.BULK,
            control_id=control_id,
            keep_raw=keep_raw,
        )
    except ValidationFailed as exc:
        if any(p.field == "DiagnosticReport.resourceType" for p in exc.problems):
            raise _not_a_report(line) from exc
        raise


_TYPED = msgspec.json.Decoder(m.Typed)


def _not_a_report(line: bytes) -> ValidationFailed:
    try:
        kind = _TYPED.decode(line).resourceType or "未知类型"
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        kind = "未知类型"
    return ValidationFailed(
        f"{kind[:40]} 不能单独导入",
        problems=[
            Problem(
                "resourceType",
                "结果按报告单保存：每行应为 DiagnosticReport（Patient、Organization、Observation "
                f"放在 contained 中）或 transaction Bundle，实际为 {kind[:40]}",
            )
        ],
    )

"""Results as the platform keeps them (R3): one report of one item, its observations,
its status and its versions. Every intake channel (FHIR, HL7 v2, bulk, manual) turns its
message into a ``ResultSubmission``; the intake service stores it."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum

from huren.domain.identity import PatientIdentifier
from huren.domain.masterdata import Category

# The times a result may carry (performed, issued). Outside them a time is a typing error
# or a placeholder (0001-01-01, 9999-12-31): a clear rejection, not a stored result, and
# the ends of the calendar cannot even be moved to UTC (year 0 or 10000: an overflow).
EARLIEST_RESULT_TIME = datetime(1900, 1, 1, tzinfo=UTC)
LATEST_RESULT_TIME = datetime(2200, 1, 1, tzinfo=UTC)


def plausible_result_time(value: datetime) -> bool:
    """Aware ``value`` within [1900, 2200) UTC (compared without converting it)."""
    return EARLIEST_RESULT_TIME <= value < LATEST_RESULT_TIME


def plausible_date(value: date) -> bool:
    """``value`` within the same years: a service date, a reporting month."""
    return EARLIEST_RESULT_TIME.date() <= value < LATEST_RESULT_TIME.date()


class ResultStatus(StrEnum):
    """FHIR R4 DiagnosticReport.status values (HL7 v2 OBR-25 maps onto them)."""

    REGISTERED = "registered"
    PARTIAL = "partial"
    PRELIMINARY = "preliminary"
    FINAL = "final"
    AMENDED = "amended"
    CORRECTED = "corrected"
    APPENDED = "appended"
    CANCELLED = "cancelled"
    ENTERED_IN_ERROR = "entered-in-error"
    UNKNOWN = "unknown"


STATUS_LABELS: Mapping[ResultStatus, str] = {
    ResultStatus.REGISTERED: "已登记",
    ResultStatus.PARTIAL: "部分结果",
    ResultStatus.PRELIMINARY: "初步报告",
    ResultStatus.FINAL: "最终报告",
    ResultStatus.AMENDED: "已修订",
    ResultStatus.CORRECTED: "已更正",
    ResultStatus.APPENDED: "已补充",
    ResultStatus.CANCELLED: "已取消",
    ResultStatus.ENTERED_IN_ERROR: "录入错误",
    ResultStatus.UNKNOWN: "未知",
}

# Statuses of a released result that may be recognized: final and its later versions.
RELEASED = frozenset(
    {ResultStatus.FINAL, ResultStatus.AMENDED, ResultStatus.CORRECTED, ResultStatus.APPENDED}
)


# How a comment is introduced where a value or a report is shown.
COMMENT_LABEL = "备注："
# The longest comments kept (characters): a value's, a report's. Longer ones are refused
# naming the field (services/intake.py), like every other text that has a limit.
MAX_OBSERVATION_COMMENT = 2000
MAX_REPORT_COMMENT = 4000


# A result is a document: the numerals the laboratory reported are what is shown, exported
# and corrected — "7.40" stays "7.40" (FHIR R4 datatypes.html#decimal: "the precision of
# the decimal value has significance"; the LIS writes the number of decimals of its
# method, which the printed report carries). HL7 v2.5.1 §2.A.47 NM calls trailing zeros
# not significant for the VALUE, which is unchanged: ``value_num`` is the number, the
# numerals are kept beside it as ``value_text``.
_NUMERALS = re.compile(r"([+-]?)(\d*)(?:\.(\d*))?", re.ASCII)
COMPARATORS = ("<=", ">=", "<", ">")  # longest first: "<=" is not "<" then "="
# Magnitudes written out in positional notation (lab values are far inside); beyond them
# the shortest round-trip repr, exponent and all, is still exact.
_POSITIONAL_MIN, _POSITIONAL_MAX = 1e-15, 1e21


def number_text(value: float) -> str:
    """``value`` as numerals without loss: the shortest digits that read back as the same
    float (``repr``), in positional notation ("2345678", not "2.34568e+06"; "0.1234567",
    not "0.123457"), an integral value without ".0", a negative zero as "0". Not ``:g``,
    which keeps 6 significant digits."""
    if value == 0:
        return "0"
    text = repr(value)
    if "e" in text:
        if not (_POSITIONAL_MIN <= abs(value) < _POSITIONAL_MAX and math.isfinite(value)):
            return text
        text = format(Decimal(text), "f")
    return text[:-2] if text.endswith(".0") else text


def reported_numerals(text: str, value: float) -> str | None:
    """``text`` as shown when it is numerals that write ``value`` (a plain decimal, after
    an optional comparator "<", "<=", ">", ">="), else None. The digits are kept as sent,
    trailing zeros too ("7.40"); only what carries nothing is dropped: a "+" sign, leading
    zeros ("007.4" → "7.4", ".5" → "0.5"), a bare point ("7." → "7")."""
    comparator = next((c for c in COMPARATORS if text.startswith(c)), "")
    m = _NUMERALS.fullmatch(text, len(comparator))
    if m is None:
        return None
    sign, whole, fraction = m.group(1), m.group(2), m.group(3) or ""
    if not whole and not fraction:
        return None
    if float(text[len(comparator) :]) != value:
        return None
    whole = whole.lstrip("0") or "0"
    numerals = f"{whole}.{fraction}" if fraction else whole
    return f"{comparator}{'-' if sign == '-' else ''}{numerals}"


# A number inside a reference-range text: "3.50-5.30", "3.50～5.30", "<5.0", "男 3.5-5.3".
# A "-" right after a digit separates the limits; elsewhere it is a sign.
_RANGE_NUMERALS = re.compile(r"(?<![\d.])-?\d+(?:\.\d+)?", re.ASCII)


class ValueType(StrEnum):
    """HL7 v2 OBX-2 value types we keep (FHIR value[x] maps onto them)."""

    NM = "NM"  # numeric → valueQuantity
    ST = "ST"  # string
    TX = "TX"  # text
    CE = "CE"  # coded (CE/CWE) → valueCodeableConcept
    SN = "SN"  # structured numeric, e.g. "<0.5", "1:40" → kept as text + comparator


@dataclass(frozen=True, slots=True)
class ObservationValue:
    code: str  # local code
    name: str
    value_type: ValueType
    value_num: float | None = None
    value_text: str = ""
    unit: str = ""  # UCUM where the sender gives it
    ref_low: float | None = None
    ref_high: float | None = None
    ref_text: str = ""
    flag: str = ""  # H, L, N, A, HH, LL (HL7 Table 0078 / FHIR interpretation)
    loinc: str = ""
    # The sender's comment on this value (HL7 v2 NTE after the OBX, v2.5.1 §7.3.1;
    # FHIR R4 Observation.note): "标本溶血" changes whether the value may be accepted.
    # The LAST field: ``new_observation`` builds the value positionally.
    comment: str = ""

    def shown_value(self) -> str:
        """The value as the laboratory reported it, wherever it is shown or exported: the
        numerals sent ("7.40"; kept as ``value_text`` beside ``value_num``), or, when none
        were kept or they do not write ``value_num``, the number without loss
        (``number_text``); a value without a number is its text ("阴性", "<0.5")."""
        num = self.value_num
        if num is None:
            return self.value_text
        if self.value_text:
            shown = reported_numerals(self.value_text, num)
            if shown is not None:
                return shown
        return number_text(num)

    def reference_numerals(self) -> tuple[str, str]:
        """(low, high) of the reference range as reported — the numerals of ``ref_text``
        that write ``ref_low`` and ``ref_high`` ("3.50-5.30" → "3.50", "5.30"), else the
        numbers without loss; "" for a limit that is not set."""
        tokens = _RANGE_NUMERALS.findall(self.ref_text) if self.ref_text else []
        return (
            _limit_numerals(self.ref_low, tokens),
            _limit_numerals(self.ref_high, tokens[::-1]),
        )

    def display(self) -> str:
        """The value as a line, without its comment: the form the EMR text takes
        (domain/decisions.py), which the policy fixes."""
        unit = display_unit(self.unit)
        return f"{self.name} {self.shown_value()}{(' ' + unit) if unit else ''}" + (
            f" ({self.flag})" if self.flag and self.flag != "N" else ""
        )


# UCUM (https://ucum.org/ucum) is how FHIR senders code a unit: "10*9/L", "umol/L",
# "[IU]/L". Kept as sent; shown as Chinese laboratory reports print it ("10^9/L",
# "μmol/L", "IU/L"), which is also how HL7 senders and the item list write it.
_UCUM_POWER = re.compile(r"10\*([+-]?\d+)")
_UCUM_MICRO = re.compile(r"(?<![A-Za-z0-9])u(?=[A-Za-z\[])")
_UCUM_BRACKETS = re.compile(r"[\[\]{}]")


def display_unit(unit: str) -> str:
    """A unit as a clinician reads it: UCUM's ``10*9`` as ``10^9``, its ``u`` prefix as
    ``μ``, its brackets dropped; a unit already written for people is left alone."""
    if not unit or unit.isalpha():
        return unit
    return _UCUM_BRACKETS.sub("", _UCUM_MICRO.sub("μ", _UCUM_POWER.sub(r"10^\1", unit)))


# An abnormal flag (HL7 table 0078 / FHIR v3 ObservationInterpretation) as Chinese
# reports mark it beside the value; other flags are shown as sent.
FLAG_MARKS: Mapping[str, str] = {"H": "↑", "HH": "↑↑", "L": "↓", "LL": "↓↓", "N": ""}


def flag_mark(flag: str) -> str:
    return FLAG_MARKS.get(flag, flag)


def _limit_numerals(limit: float | None, tokens: list[str]) -> str:
    """The first of ``tokens`` that writes ``limit`` (as reported), else ``limit``'s own."""
    if limit is None:
        return ""
    for token in tokens:
        if (shown := reported_numerals(token, limit)) is not None:
            return shown
    return number_text(limit)


@dataclass(frozen=True, slots=True)
class PatientDemographics:
    identifiers: tuple[PatientIdentifier, ...]
    name: str = ""
    sex: str = ""  # M | F | O | U
    birth_date: date | None = None


@dataclass(frozen=True, slots=True)
class ReportDocument:
    """The laboratory's original report as a document (the signed, printed 报告单 as a
    PDF or an image): HL7 v2 OBX of value type ED (encapsulated data, v2.5.1 §2.A.24),
    FHIR R4 DiagnosticReport.presentedForm (an Attachment). Kept with the version of the
    result it came with, served as sent."""

    content_type: str  # application/pdf, image/jpeg or image/png
    data: bytes  # decoded
    title: str = ""
    # Its digest, computed once: the submission hash and the stored row both need it, and
    # a document may be 20 MB.
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", hashlib.sha256(self.data).hexdigest())


@dataclass(frozen=True, slots=True)
class ResultSubmission:
    """One report of one item as sent by a producing institution (检查检验机构).

    ``findings`` hold what was observed; ``conclusion`` the reporting physician's
    diagnostic conclusion, which is shared but not what is recognized
    (沪卫医〔2024〕135号: 检查检验结果不包括医师出具的诊断结论)."""

    institution: str
    report_no: str  # 报告单编号
    local_code: str
    local_name: str
    patient: PatientDemographics
    status: ResultStatus
    performed_at: datetime
    issued_at: datetime
    category: Category | None = None  # None: taken from the unified item once mapped
    department: str = ""
    performer: str = ""
    signer: str = ""
    observations: tuple[ObservationValue, ...] = ()
    findings: str = ""
    conclusion: str = ""
    accession_number: str = ""
    study_uid: str = ""
    # The sender's comment on the whole report (HL7 v2 NTE after the OBR, v2.5.1
    # §7.3.1). ``new_submission`` builds the submission positionally.
    comment: str = ""
    # The original report document(s) sent with it (``ReportDocument``). The LAST field.
    documents: tuple[ReportDocument, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A result as stored, for reading: recognition, cards, retrieval."""

    id: int
    patient_id: int
    institution: str
    report_no: str
    local_code: str
    local_name: str
    item_code: str | None
    category: Category
    status: ResultStatus
    performed_at: datetime
    issued_at: datetime
    version: int
    mark_scope: str | None = None
    mark_symbol: str | None = None
    department: str = ""
    performer: str = ""
    signer: str = ""
    findings: str = ""
    conclusion: str = ""
    accession_number: str = ""
    study_uid: str = ""
    observations: tuple[ObservationValue, ...] = field(default=())
    comment: str = ""  # the report's comment (``ResultSubmission.comment``)

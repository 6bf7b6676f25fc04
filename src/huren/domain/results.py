"""Results as the platform keeps them (R3): one report of one item, its observations,
its status and its versions. Every intake channel (FHIR, HL7 v2, bulk, manual) turns its
message into a ``ResultSubmission``; the intake service stores it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
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

    def display(self) -> str:
        """The value as a line, without its comment: the form the EMR text takes
        (domain/decisions.py), which the policy fixes."""
        value = f"{self.value_num:g}" if self.value_num is not None else self.value_text
        return f"{self.name} {value}{(' ' + self.unit) if self.unit else ''}" + (
            f" ({self.flag})" if self.flag and self.flag != "N" else ""
        )


@dataclass(frozen=True, slots=True)
class PatientDemographics:
    identifiers: tuple[PatientIdentifier, ...]
    name: str = ""
    sex: str = ""  # M | F | O | U
    birth_date: date | None = None


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
    # §7.3.1). The LAST field: ``new_submission`` builds the submission positionally.
    comment: str = ""

    def content_hash(self) -> str:
        """Stable hash of the clinical content: a resend with the same content is a no-op."""
        data = asdict(self)
        # Comments count only when given: a report without any hashes as it did before
        # comments were kept (a resend after the upgrade stays a no-op).
        if not data["comment"]:
            del data["comment"]
        for o in data["observations"]:
            if not o["comment"]:
                del o["comment"]
        blob = json.dumps(data, sort_keys=True, default=str, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


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

"""Code tables the HL7 v2 adapter reads: what each sender's value means for HuRen.

Kept as data (one row per value, with the HL7 table it comes from) rather than as ``if``
chains, so that a new sender's dialect is one line here. HL7 v2.5.1 chapter and table
numbers are cited next to each table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from huren.domain.identity import IdentifierKind
from huren.domain.masterdata import Category
from huren.domain.results import ResultStatus

# Message types and versions this endpoint accepts (v2.5.1 §7.3.1 ORU^R01).
SUPPORTED_VERSIONS = frozenset({"2.3", "2.3.1", "2.4", "2.5", "2.5.1"})
# Versions whose ERR segment is the 2.5 layout (ERR-2 location, ERR-3 code, ERR-8 text);
# 2.3 / 2.4 have only ERR-1 (ELD: segment^sequence^field^code).
ERR_25_VERSIONS = frozenset({"2.5", "2.5.1"})
# MSH-11 processing id (Table 0103): only production data is stored; T / D are refused
# so that a test feed pointed at the platform never mixes with real patients.
ACCEPTED_PROCESSING_IDS = frozenset({"P", ""})

# MSH-18 character set (Table 0211) → Python codec. Chinese senders also write the codec
# name itself (GBK, GB2312, UTF-8), so those spellings are accepted too.
CHARSETS: Mapping[str, str] = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",  # v2.3's "UNICODE" is in practice sent as UTF-8
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
    "GB 18030-2000": "gb18030",
    "GB18030-2000": "gb18030",  # Table 0211's value written without its space
    "GB 18030-2005": "gb18030",
    "GB18030-2005": "gb18030",
    # GB 18030-2022, mandatory since 2023-08-01, names the same byte sequences (it moved a
    # few characters' Unicode mappings out of the private use area): was refused AR.
    "GB 18030-2022": "gb18030",
    "GB18030-2022": "gb18030",
    "GB18030": "gb18030",
    "GB 18030": "gb18030",
    "GBK": "gb18030",  # GB 18030 is a superset of GBK and GB 2312
    "GB2312": "gb18030",
    "GB 2312": "gb18030",
    "CNS 11643-1992": "big5",
    "BIG-5": "big5",
    "BIG5": "big5",
}
# Our codec → the Table 0211 value we write back in the ACK's MSH-18.
CHARSET_NAMES: Mapping[str, str] = {
    "ascii": "ASCII",
    "latin-1": "8859/1",
    "utf-8": "UNICODE UTF-8",
    "gb18030": "GB 18030-2000",
    "big5": "CNS 11643-1992",
}
# When MSH-18 is empty: try these in order (UTF-8 first — a GB 18030 text is almost never
# valid UTF-8, while the reverse is not true).
DEFAULT_CHARSETS = ("utf-8", "gb18030")


@dataclass(frozen=True, slots=True)
class IdentifierRule:
    kind: IdentifierKind
    label: str  # Chinese, for error messages


# PID-3 (CX) identifier type code, CX-5 (Table 0203, plus local codes seen in Chinese
# feeds) → our identifier kind. MRNs are assigned by the sending facility (MSH-4).
IDENTIFIER_TYPES: Mapping[str, IdentifierRule] = {
    "NI": IdentifierRule(IdentifierKind.NATIONAL_ID, "居民身份证"),  # national unique id
    "NNCHN": IdentifierRule(IdentifierKind.NATIONAL_ID, "居民身份证"),  # national person id, CHN
    "ID": IdentifierRule(IdentifierKind.NATIONAL_ID, "居民身份证"),  # local: 身份证
    "SFZ": IdentifierRule(IdentifierKind.NATIONAL_ID, "居民身份证"),  # local: 身份证 (pinyin)
    "SS": IdentifierRule(IdentifierKind.INSURANCE, "医保号"),  # social security number
    "MC": IdentifierRule(IdentifierKind.INSURANCE, "医保号"),  # patient's medicare number
    "MA": IdentifierRule(IdentifierKind.INSURANCE, "医保号"),  # patient medicaid number
    "NH": IdentifierRule(IdentifierKind.INSURANCE, "医保号"),  # national health plan id
    "YB": IdentifierRule(IdentifierKind.INSURANCE, "医保号"),  # local: 医保 (pinyin)
    "HC": IdentifierRule(IdentifierKind.HEALTH_CARD, "电子健康卡"),  # health card number
    "JKK": IdentifierRule(IdentifierKind.HEALTH_CARD, "电子健康卡"),  # local: 健康卡 (pinyin)
    "MR": IdentifierRule(IdentifierKind.MRN, "院内病历号"),  # medical record number
    "PI": IdentifierRule(IdentifierKind.MRN, "院内病历号"),  # patient internal identifier
    "PT": IdentifierRule(IdentifierKind.MRN, "院内病历号"),  # patient external identifier
    "": IdentifierRule(IdentifierKind.MRN, "院内病历号"),  # no type: the sender's own id
}
# CX-4 assigning authority names that identify the kind when CX-5 is empty or generic:
# senders write the issuing system ("CHN", "身份证") rather than a type code.
IDENTIFIER_AUTHORITIES: Mapping[str, IdentifierRule] = {
    "CHN": IdentifierRule(IdentifierKind.NATIONAL_ID, "居民身份证"),
    "CN": IdentifierRule(IdentifierKind.NATIONAL_ID, "居民身份证"),
    "身份证": IdentifierRule(IdentifierKind.NATIONAL_ID, "居民身份证"),
    "居民身份证": IdentifierRule(IdentifierKind.NATIONAL_ID, "居民身份证"),
    "医保": IdentifierRule(IdentifierKind.INSURANCE, "医保号"),
    "医保局": IdentifierRule(IdentifierKind.INSURANCE, "医保号"),
    "NHSA": IdentifierRule(IdentifierKind.INSURANCE, "医保号"),  # 国家医疗保障局
    "电子健康卡": IdentifierRule(IdentifierKind.HEALTH_CARD, "电子健康卡"),
    "EHC": IdentifierRule(IdentifierKind.HEALTH_CARD, "电子健康卡"),
}
# Identifier types that are not about the person (visits, accounts): skipped, not errors.
IGNORED_IDENTIFIER_TYPES = frozenset({"VN", "AN", "PN", "VS", "BA", "BC", "FILLER", "PLAC"})

# OBR-25 result status (Table 0123) → report status, following the HL7 v2-to-FHIR
# ConceptMap "ResultStatus" (OBR-25 → DiagnosticReport.status).
RESULT_STATUS: Mapping[str, ResultStatus] = {
    "O": ResultStatus.REGISTERED,  # order received; specimen not yet received
    "I": ResultStatus.REGISTERED,  # no results available; specimen received
    "S": ResultStatus.REGISTERED,  # no results available; procedure scheduled
    "A": ResultStatus.PARTIAL,  # some, but not all, results available
    "P": ResultStatus.PRELIMINARY,  # preliminary
    "R": ResultStatus.PARTIAL,  # results stored; not yet verified
    "F": ResultStatus.FINAL,  # final results
    "C": ResultStatus.CORRECTED,  # correction to results
    "M": ResultStatus.AMENDED,  # v2.6+ "corrected, not final" sent by some LIS as 修订
    "X": ResultStatus.CANCELLED,  # no results available; order cancelled
}
# OBX-11 observation result status (Table 0085) values that override the report status:
# "W — post original as wrong, e.g. transmitted for wrong patient" is entered-in-error
# (v2-to-FHIR ConceptMap "ObservationResultStatus": W → entered-in-error).
OBSERVATION_STATUS_OVERRIDE: Mapping[str, ResultStatus] = {
    "W": ResultStatus.ENTERED_IN_ERROR,
}
# OBX-11 values for which OBX-5 may be empty (no value to report).
OBSERVATION_STATUS_NO_VALUE = frozenset({"X", "D", "W", "I", "N", "O"})
# What an OBX without a value says, by its OBX-11 (Table 0085), kept as the row's text.
OBSERVATION_STATUS_TEXT: Mapping[str, str] = {
    "X": "无法获得结果",  # results cannot be obtained for this observation
    "I": "结果待出",  # specimen in lab; results pending
    "N": "未检测",  # not asked
    "O": "仅医嘱，无结果",  # order detail description only
    "D": "已删除",
    "W": "原结果有误",
}
# OBX-11 values whose row is no current result (Table 0085, v2.5.1 §7.4.2.11): "D —
# deletes the OBX record", "W — post original as wrong". In a report that is not wrong
# as a whole (see OBSERVATION_STATUS_OVERRIDE) such a row is left out of the new version
# rather than stored as a valid value.
OBSERVATION_STATUS_REMOVED = frozenset({"D", "W"})
# OBX-11 "C — record coming over is a correction and thus replaces a final result": a
# report whose OBR-25 still says F but carries a corrected row is a corrected report.
OBSERVATION_STATUS_CORRECTION = "C"

# PID-8 administrative sex (Table 0001) → M | F | O | U.
SEX: Mapping[str, str] = {
    "M": "M",
    "F": "F",
    "O": "O",
    "U": "U",
    "A": "O",  # ambiguous
    "N": "U",  # not applicable
    "男": "M",
    "女": "F",
    "1": "M",  # GB/T 2261.1: 1 男
    "2": "F",  # GB/T 2261.1: 2 女
    "0": "U",  # GB/T 2261.1: 0 未知的性别
    "9": "U",  # GB/T 2261.1: 9 未说明的性别
}

# OBX-8 abnormal flags (Table 0078), with the arrows Chinese LIS print.
ABNORMAL_FLAGS: Mapping[str, str] = {
    **{f: f for f in ("L", "H", "LL", "HH", "<", ">", "N", "A", "AA", "U", "D", "B", "W")},
    **{f: f for f in ("S", "R", "I", "MS", "VS", "NEG", "POS", "DET", "ND", "IND")},
    "↑": "H",
    "↓": "L",
    "↑↑": "HH",
    "↓↓": "LL",
    "高": "H",
    "低": "L",
    "正常": "N",
    "阳性": "POS",
    "阴性": "NEG",
}


class ValueKind(StrEnum):
    NUMERIC = "numeric"
    TEXT = "text"
    CODED = "coded"
    STRUCTURED_NUMERIC = "structured_numeric"
    ATTACHMENT = "attachment"  # not stored by this channel (no clinical value as text)


# OBX-2 value type (Table 0125) → how OBX-5 is read.
VALUE_TYPES: Mapping[str, ValueKind] = {
    "NM": ValueKind.NUMERIC,
    "ST": ValueKind.TEXT,
    "TX": ValueKind.TEXT,
    "FT": ValueKind.TEXT,
    "DT": ValueKind.TEXT,
    "TM": ValueKind.TEXT,
    "TS": ValueKind.TEXT,
    "DTM": ValueKind.TEXT,
    "CE": ValueKind.CODED,
    "CWE": ValueKind.CODED,
    "CNE": ValueKind.CODED,
    "SN": ValueKind.STRUCTURED_NUMERIC,
    "ED": ValueKind.ATTACHMENT,
    "RP": ValueKind.ATTACHMENT,
}


class ReportSection(StrEnum):
    FINDINGS = "findings"  # 检查所见 — what was observed
    CONCLUSION = "conclusion"  # 诊断意见 / 印象 — the physician's conclusion


# Report-text OBX rows of imaging (and ECG, ultrasound, pathology) reports. The common
# convention (DICOM PS3.20 / IHE "report as ORU") suffixes OBX-3.1 with "&GDT" (general
# description: findings) or "&IMP" (impression); senders also use LOINC codes and Chinese
# names. 沪卫医〔2024〕135号: 检查检验结果不包括医师出具的诊断结论 — so the two stay apart.
SECTION_SUFFIXES: Mapping[str, ReportSection] = {
    "GDT": ReportSection.FINDINGS,  # general description
    "FIN": ReportSection.FINDINGS,
    "ADT": ReportSection.FINDINGS,  # addendum to the description
    "IMP": ReportSection.CONCLUSION,  # impression
    "REC": ReportSection.CONCLUSION,  # recommendation
    "CON": ReportSection.CONCLUSION,
}
SECTION_CODES: Mapping[str, ReportSection] = {
    "18782-3": ReportSection.FINDINGS,  # LOINC Radiology Study observation (narrative)
    "59776-5": ReportSection.FINDINGS,  # LOINC Procedure findings Narrative
    "19005-8": ReportSection.CONCLUSION,  # LOINC Radiology Imaging study [Impression]
    "59772-4": ReportSection.CONCLUSION,  # LOINC Procedure impression Narrative
    "18834-2": ReportSection.CONCLUSION,  # LOINC Radiology Comparison study (narrative)
}
SECTION_NAMES: Mapping[str, ReportSection] = {
    "检查所见": ReportSection.FINDINGS,
    "影像所见": ReportSection.FINDINGS,
    "影像表现": ReportSection.FINDINGS,
    "所见": ReportSection.FINDINGS,
    "检查描述": ReportSection.FINDINGS,
    "诊断意见": ReportSection.CONCLUSION,
    "影像诊断": ReportSection.CONCLUSION,
    "诊断结论": ReportSection.CONCLUSION,
    "检查结论": ReportSection.CONCLUSION,
    "印象": ReportSection.CONCLUSION,
    "结论": ReportSection.CONCLUSION,
}

# OBR-24 diagnostic service section (Table 0074, plus local spellings) → category; used
# when the local code is not yet mapped to a unified item (对码缺失) to file the result.
SERVICE_SECTIONS: Mapping[str, Category] = {
    **dict.fromkeys(
        ("LAB", "CH", "HM", "MB", "SR", "IMM", "CG", "BLB", "CP", "HEM", "TX", "VR"), Category.LAB
    ),
    **dict.fromkeys(("RAD", "CT", "MR", "MRI", "DX", "CR", "RX", "NMR", "NMS"), Category.IMAGING),
    **dict.fromkeys(("XRC", "MG", "RF", "PT", "PET", "VUS", "OUS", "US"), Category.IMAGING),
    **dict.fromkeys(("EC", "ECG", "EEG", "PAT", "SP", "CTH", "ICU", "PF", "OSL"), Category.OTHER),
    "检验科": Category.LAB,
    "放射科": Category.IMAGING,
    "影像科": Category.IMAGING,
    "超声科": Category.OTHER,
    "心电图室": Category.OTHER,
    "病理科": Category.OTHER,
}


class ErrorCode(StrEnum):
    """HL7 Table 0357 message error condition codes (ERR-3 / ERR-1.4)."""

    ACCEPTED = "0"
    SEGMENT_SEQUENCE = "100"
    REQUIRED_FIELD_MISSING = "101"
    DATA_TYPE = "102"
    TABLE_VALUE_NOT_FOUND = "103"
    UNSUPPORTED_MESSAGE_TYPE = "200"
    UNSUPPORTED_EVENT = "201"
    UNSUPPORTED_PROCESSING_ID = "202"
    UNSUPPORTED_VERSION = "203"
    UNKNOWN_KEY = "204"
    DUPLICATE_KEY = "205"
    RECORD_LOCKED = "206"
    INTERNAL_ERROR = "207"


ERROR_TEXT: Mapping[ErrorCode, str] = {
    ErrorCode.ACCEPTED: "Message accepted",
    ErrorCode.SEGMENT_SEQUENCE: "Segment sequence error",
    ErrorCode.REQUIRED_FIELD_MISSING: "Required field missing",
    ErrorCode.DATA_TYPE: "Data type error",
    ErrorCode.TABLE_VALUE_NOT_FOUND: "Table value not found",
    ErrorCode.UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    ErrorCode.UNSUPPORTED_EVENT: "Unsupported event code",
    ErrorCode.UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    ErrorCode.UNSUPPORTED_VERSION: "Unsupported version id",
    ErrorCode.UNKNOWN_KEY: "Unknown key identifier",
    ErrorCode.DUPLICATE_KEY: "Duplicate key identifier",
    ErrorCode.RECORD_LOCKED: "Application record locked",
    ErrorCode.INTERNAL_ERROR: "Application internal error",
}

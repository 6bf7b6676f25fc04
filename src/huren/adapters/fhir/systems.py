"""Identifier and code systems the platform reads and writes in FHIR resources.

Hospitals send their own systems for local codes (any system that is not LOINC is taken
as the institution's); patient identifiers and institutions use the systems below, or the
HL7 v2 Table 0203 identifier type codes (``NNCHN`` national person identifier of China,
``MR`` medical record number) that interface engines already fill in."""

from __future__ import annotations

from collections.abc import Mapping

from huren.domain.identity import IdentifierKind

BASE = "https://huren.example/fhir"

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"  # diagnostic service section
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DICOM_UID = "urn:dicom:uid"

NATIONAL_ID = f"{BASE}/sid/national-id"  # 居民身份证
INSURANCE = f"{BASE}/sid/insurance"  # 医保号 / 医保电子凭证
HEALTH_CARD = f"{BASE}/sid/health-card"  # 电子健康卡
MRN_PREFIX = f"{BASE}/sid/mrn/"  # + institution code: 院内病历号
INSTITUTION = f"{BASE}/sid/institution"  # 机构编码 (as in the institution list)
REPORT_NO_PREFIX = f"{BASE}/sid/report-no/"  # + institution code: 报告单编号
ITEM = f"{BASE}/CodeSystem/item"  # unified item codes (互认项目统一编码)
LOCAL_CODE_PREFIX = f"{BASE}/CodeSystem/local/"  # + institution code
MARK_EXTENSION = f"{BASE}/StructureDefinition/recognition-mark"  # 互认标识
SCOPE = f"{BASE}/CodeSystem/scope"

# Imaging findings sent as a narrative Observation (LOINC): kept as the report's findings.
FINDINGS_LOINC = frozenset({"59776-5", "18782-3", "19005-8"})
CONCLUSION_LOINC = frozenset({"19005-8"})

# 患者身份证号标识 as Chinese hospital feeds send it: the OID of WS/T 500 (电子病历共享文档
# 规范, the CDA header's <id root="2.16.156.10011.1.3"/>), in FHIR as an OID URI
# (R4 datatypes.html#Identifier, system: a URI, an OID as "urn:oid:…"), some engines leaving out the prefix.
NATIONAL_ID_OID = "urn:oid:2.16.156.10011.1.3"

IDENTIFIER_SYSTEMS: Mapping[str, IdentifierKind] = {
    NATIONAL_ID: IdentifierKind.NATIONAL_ID,
    NATIONAL_ID_OID: IdentifierKind.NATIONAL_ID,
    NATIONAL_ID_OID.removeprefix("urn:oid:"): IdentifierKind.NATIONAL_ID,
    INSURANCE: IdentifierKind.INSURANCE,
    HEALTH_CARD: IdentifierKind.HEALTH_CARD,
}

# HL7 v2 Table 0203 codes in Identifier.type.
IDENTIFIER_TYPES: Mapping[str, IdentifierKind] = {
    "NNCHN": IdentifierKind.NATIONAL_ID,
    "MR": IdentifierKind.MRN,
    "SN": IdentifierKind.INSURANCE,  # subscriber number
}


def system_of(kind: IdentifierKind, assigner: str = "") -> str:
    if kind is IdentifierKind.MRN:
        return MRN_PREFIX + assigner
    return {
        IdentifierKind.NATIONAL_ID: NATIONAL_ID,
        IdentifierKind.INSURANCE: INSURANCE,
        IdentifierKind.HEALTH_CARD: HEALTH_CARD,
    }[kind]


# R5 DiagnosticReport.note carried in R4 (versions.html#extensions, cross-version
# extensions: http://hl7.org/fhir/[version]/StructureDefinition/extension-[Path]).
REPORT_NOTE_EXTENSION = (
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-DiagnosticReport.note"
)

"""The elements of FHIR R4 resources the platform stores, as msgspec structs.

Full validation with fhir.resources runs at a few thousand Observations per second; this
lean path decodes and type-checks only what intake keeps (unknown elements are ignored)
and is checked against fhir.resources' R4B models in tests/unit/test_fhir_conformance.py.
Element names are FHIR's own (camelCase), so decode errors name the element."""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import Struct, field


class Coding(Struct, frozen=True, omit_defaults=True):
    system: str = ""
    code: str = ""
    display: str = ""


class CodeableConcept(Struct, frozen=True, omit_defaults=True):
    coding: list[Coding] = field(default_factory=list)
    text: str = ""


class Reference(Struct, frozen=True, omit_defaults=True):
    reference: str = ""
    identifier: Identifier | None = None
    display: str = ""


class Identifier(Struct, frozen=True, omit_defaults=True):
    system: str = ""
    value: str = ""
    type: CodeableConcept | None = None
    assigner: Reference | None = None


class Quantity(Struct, frozen=True, omit_defaults=True):
    value: float | None = None
    comparator: Literal["<", "<=", ">=", ">"] | None = None
    unit: str = ""
    system: str = ""
    code: str = ""


class Range(Struct, frozen=True, omit_defaults=True):
    low: Quantity | None = None
    high: Quantity | None = None


class ReferenceRange(Struct, frozen=True, omit_defaults=True):
    low: Quantity | None = None
    high: Quantity | None = None
    text: str = ""


class Period(Struct, frozen=True, omit_defaults=True):
    start: str = ""
    end: str = ""


class HumanName(Struct, frozen=True, omit_defaults=True):
    text: str = ""
    family: str = ""
    given: list[str] = field(default_factory=list)


class Attachment(Struct, frozen=True, omit_defaults=True):
    contentType: str = ""
    data: str = ""  # base64
    title: str = ""


class Meta(Struct, frozen=True, omit_defaults=True):
    versionId: str = ""
    lastUpdated: str = ""


class Resource(Struct, frozen=True, omit_defaults=True, tag_field="resourceType"):
    id: str = ""
    meta: Meta | None = None


class Patient(Resource, tag="Patient", frozen=True, omit_defaults=True):
    identifier: list[Identifier] = field(default_factory=list)
    name: list[HumanName] = field(default_factory=list)
    gender: Literal["male", "female", "other", "unknown"] | None = None
    birthDate: str = ""


class Organization(Resource, tag="Organization", frozen=True, omit_defaults=True):
    identifier: list[Identifier] = field(default_factory=list)
    name: str = ""
    partOf: Reference | None = None


class Practitioner(Resource, tag="Practitioner", frozen=True, omit_defaults=True):
    identifier: list[Identifier] = field(default_factory=list)
    name: list[HumanName] = field(default_factory=list)


ObservationStatus = Literal[
    "registered", "preliminary", "final", "amended", "corrected", "cancelled",
    "entered-in-error", "unknown",
]  # fmt: skip


class Observation(Resource, tag="Observation", frozen=True, omit_defaults=True, kw_only=True):
    status: ObservationStatus
    code: CodeableConcept
    identifier: list[Identifier] = field(default_factory=list)
    category: list[CodeableConcept] = field(default_factory=list)
    subject: Reference | None = None
    effectiveDateTime: str = ""
    issued: str = ""
    valueQuantity: Quantity | None = None
    valueString: str | None = None
    valueCodeableConcept: CodeableConcept | None = None
    valueInteger: int | None = None
    valueBoolean: bool | None = None
    interpretation: list[CodeableConcept] = field(default_factory=list)
    referenceRange: list[ReferenceRange] = field(default_factory=list)
    specimen: Reference | None = None


ReportStatus = Literal[
    "registered", "partial", "preliminary", "final", "amended", "corrected", "appended",
    "cancelled", "entered-in-error", "unknown",
]  # fmt: skip


class DiagnosticReport(
    Resource, tag="DiagnosticReport", frozen=True, omit_defaults=True, kw_only=True
):
    status: ReportStatus
    code: CodeableConcept
    identifier: list[Identifier] = field(default_factory=list)
    category: list[CodeableConcept] = field(default_factory=list)
    subject: Reference | None = None
    effectiveDateTime: str = ""
    effectivePeriod: Period | None = None
    issued: str = ""
    performer: list[Reference] = field(default_factory=list)
    resultsInterpreter: list[Reference] = field(default_factory=list)
    specimen: list[Reference] = field(default_factory=list)
    result: list[Reference] = field(default_factory=list)
    imagingStudy: list[Reference] = field(default_factory=list)
    basedOn: list[Reference] = field(default_factory=list)
    conclusion: str = ""
    presentedForm: list[Attachment] = field(default_factory=list)
    contained: list[msgspec.Raw] = field(default_factory=list)


class ImagingStudy(Resource, tag="ImagingStudy", frozen=True, omit_defaults=True):
    status: str = ""
    identifier: list[Identifier] = field(default_factory=list)
    subject: Reference | None = None
    started: str = ""
    modality: list[Coding] = field(default_factory=list)


class Specimen(Resource, tag="Specimen", frozen=True, omit_defaults=True):
    identifier: list[Identifier] = field(default_factory=list)
    type: CodeableConcept | None = None


class ServiceRequest(Resource, tag="ServiceRequest", frozen=True, omit_defaults=True):
    status: str = ""
    identifier: list[Identifier] = field(default_factory=list)
    code: CodeableConcept | None = None


AnyResource = (
    Patient
    | Organization
    | Practitioner
    | Observation
    | DiagnosticReport
    | ImagingStudy
    | Specimen
    | ServiceRequest
)

SUPPORTED_TYPES = frozenset(
    {
        "Patient",
        "Organization",
        "Practitioner",
        "Observation",
        "DiagnosticReport",
        "ImagingStudy",
        "Specimen",
        "ServiceRequest",
    }
)


class Typed(Struct, frozen=True):
    resourceType: str = ""


class BundleRequest(Struct, frozen=True, omit_defaults=True):
    method: Literal["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]
    url: str
    ifNoneExist: str = ""


class BundleEntry(Struct, frozen=True, omit_defaults=True):
    fullUrl: str = ""
    resource: msgspec.Raw = msgspec.Raw()  # empty: no resource
    request: BundleRequest | None = None


class Bundle(Struct, frozen=True, omit_defaults=True):
    resourceType: Literal["Bundle"]
    type: str
    id: str = ""
    identifier: Identifier | None = None
    entry: list[BundleEntry] = field(default_factory=list)

"""The elements of FHIR R4 resources the platform stores, as msgspec structs.

Full validation with fhir.resources runs at a few thousand Observations per second; this
lean path decodes and type-checks only what intake keeps (unknown elements are ignored)
and is checked against fhir.resources' R4B models in tests/unit/test_fhir_mapping.py.
Element names are FHIR's own (camelCase), so decode errors name the element.

The decoded structs are trees (JSON has no cycles), so they are kept out of the garbage
collector (``gc=False``): a Bundle of a hundred Observations otherwise allocates a few
thousand tracked objects, each young-generation pass walking them again."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec
from msgspec import Struct


class Coding(Struct, frozen=True, omit_defaults=True, gc=False):
    system: str = ""
    code: str = ""
    display: str = ""


class CodeableConcept(Struct, frozen=True, omit_defaults=True, gc=False):
    coding: tuple[Coding, ...] = ()
    text: str = ""


class Reference(Struct, frozen=True, omit_defaults=True, gc=False):
    reference: str = ""
    identifier: Identifier | None = None
    display: str = ""


class Identifier(Struct, frozen=True, omit_defaults=True, gc=False):
    system: str = ""
    value: str = ""
    type: CodeableConcept | None = None
    assigner: Reference | None = None


class Quantity(Struct, frozen=True, omit_defaults=True, gc=False):
    # R4 Quantity.value is a decimal whose precision has significance (datatypes.html
    # #decimal): 7.40 is not 7.4. Kept as the JSON number sent and read by ingest
    # (``_number``: the float and the numerals, a value that is no number refused naming
    # it); a float alone would lose the numerals. Empty: absent.
    value: msgspec.Raw = msgspec.Raw()
    comparator: Literal["<", "<=", ">=", ">"] | None = None
    unit: str = ""
    system: str = ""
    code: str = ""


class Range(Struct, frozen=True, omit_defaults=True, gc=False):
    low: Quantity | None = None
    high: Quantity | None = None


class Ratio(Struct, frozen=True, omit_defaults=True, gc=False):
    numerator: Quantity | None = None
    denominator: Quantity | None = None


class ReferenceRange(Struct, frozen=True, omit_defaults=True, gc=False):
    low: Quantity | None = None
    high: Quantity | None = None
    type: CodeableConcept | None = None
    appliesTo: tuple[CodeableConcept, ...] = ()
    age: Range | None = None
    text: str = ""


class Period(Struct, frozen=True, omit_defaults=True, gc=False):
    start: str = ""
    end: str = ""


class HumanName(Struct, frozen=True, omit_defaults=True, gc=False):
    text: str = ""
    family: str = ""
    given: tuple[str, ...] = ()


class Attachment(Struct, frozen=True, omit_defaults=True, gc=False):
    contentType: str = ""
    data: str = ""  # base64
    url: str = ""
    title: str = ""


class Annotation(Struct, frozen=True, omit_defaults=True, gc=False):
    """R4 Annotation (datatypes.html#Annotation): its text (markdown, 1..1) is what is
    kept; author and time are not read."""

    text: str = ""


class Extension(Struct, frozen=True, omit_defaults=True, gc=False):
    """An extension, read only for the value types the platform keeps (others ignored)."""

    url: str = ""
    valueAnnotation: Annotation | None = None
    valueString: str | None = None


class Meta(Struct, frozen=True, omit_defaults=True, gc=False):
    versionId: str = ""
    lastUpdated: str = ""


class Resource(Struct, frozen=True, omit_defaults=True, gc=False, tag_field="resourceType"):
    id: str = ""
    meta: Meta | None = None


class Patient(Resource, tag="Patient", frozen=True, omit_defaults=True, gc=False):
    identifier: tuple[Identifier, ...] = ()
    name: tuple[HumanName, ...] = ()
    gender: Literal["male", "female", "other", "unknown"] | None = None
    birthDate: str = ""


class Organization(Resource, tag="Organization", frozen=True, omit_defaults=True, gc=False):
    identifier: tuple[Identifier, ...] = ()
    name: str = ""
    partOf: Reference | None = None


class Practitioner(Resource, tag="Practitioner", frozen=True, omit_defaults=True, gc=False):
    identifier: tuple[Identifier, ...] = ()
    name: tuple[HumanName, ...] = ()


ObservationStatus = Literal[
    "registered", "preliminary", "final", "amended", "corrected", "cancelled",
    "entered-in-error", "unknown",
]  # fmt: skip


class ObservationComponent(Struct, frozen=True, omit_defaults=True, gc=False, kw_only=True):
    """R4 Observation.component: a value of its own (code, value[x], dataAbsentReason,
    interpretation, referenceRange), e.g. the systolic and diastolic blood pressure."""

    code: CodeableConcept
    valueQuantity: Quantity | None = None
    valueCodeableConcept: CodeableConcept | None = None
    valueString: str | None = None
    valueBoolean: bool | None = None
    valueInteger: int | None = None
    valueRange: Range | None = None
    valueRatio: Ratio | None = None
    valueSampledData: msgspec.Raw = msgspec.Raw()  # empty: absent (refused when sent)
    valueTime: str | None = None
    valueDateTime: str | None = None
    valuePeriod: Period | None = None
    dataAbsentReason: CodeableConcept | None = None
    interpretation: tuple[CodeableConcept, ...] = ()
    # Each a ReferenceRange, decoded by ingest (``_reference_range``) once per distinct
    # range: an item's range repeats from one Observation to the next.
    referenceRange: tuple[msgspec.Raw, ...] = ()


class Observation(
    Resource, tag="Observation", frozen=True, omit_defaults=True, gc=False, kw_only=True
):
    """The elements of an Observation that become ``ObservationValue``s. Its subject,
    identifiers and category are the DiagnosticReport's (a result is kept per report):
    they are skipped unread, which halves the cost of decoding an Observation. Its
    effective[x] is read only for a report that has none."""

    status: ObservationStatus
    code: CodeableConcept
    effectiveDateTime: str = ""
    effectivePeriod: Period | None = None
    effectiveInstant: str = ""
    valueQuantity: Quantity | None = None
    valueString: str | None = None
    valueCodeableConcept: CodeableConcept | None = None
    valueInteger: int | None = None
    valueBoolean: bool | None = None
    valueRange: Range | None = None
    valueRatio: Ratio | None = None
    valueSampledData: msgspec.Raw = msgspec.Raw()  # empty: absent (refused when sent)
    valueTime: str | None = None
    valueDateTime: str | None = None
    valuePeriod: Period | None = None
    dataAbsentReason: CodeableConcept | None = None
    interpretation: tuple[CodeableConcept, ...] = ()
    # Each a ReferenceRange, decoded by ingest (``_reference_range``) once per distinct
    # range: an item's range repeats from one Observation to the next.
    referenceRange: tuple[msgspec.Raw, ...] = ()
    hasMember: tuple[Reference, ...] = ()
    component: tuple[ObservationComponent, ...] = ()
    note: tuple[Annotation, ...] = ()  # R4 Observation.note: the value's comment


ReportStatus = Literal[
    "registered", "partial", "preliminary", "final", "amended", "corrected", "appended",
    "cancelled", "entered-in-error", "unknown",
]  # fmt: skip


class DiagnosticReport(
    Resource, tag="DiagnosticReport", frozen=True, omit_defaults=True, gc=False, kw_only=True
):
    status: ReportStatus
    code: CodeableConcept
    identifier: tuple[Identifier, ...] = ()
    category: tuple[CodeableConcept, ...] = ()
    subject: Reference | None = None
    effectiveDateTime: str = ""
    effectivePeriod: Period | None = None
    issued: str = ""
    performer: tuple[Reference, ...] = ()
    resultsInterpreter: tuple[Reference, ...] = ()
    specimen: tuple[Reference, ...] = ()
    result: tuple[Reference, ...] = ()
    imagingStudy: tuple[Reference, ...] = ()
    basedOn: tuple[Reference, ...] = ()
    conclusion: str = ""
    conclusionCode: tuple[CodeableConcept, ...] = ()
    presentedForm: tuple[Attachment, ...] = ()
    contained: tuple[msgspec.Raw, ...] = ()
    # R4 DiagnosticReport has no note (R5 does): a report's comment comes as the R5
    # element's cross-version extension (``systems.REPORT_NOTE_EXTENSION``).
    extension: tuple[Extension, ...] = ()


class ImagingStudy(Resource, tag="ImagingStudy", frozen=True, omit_defaults=True, gc=False):
    status: str = ""
    identifier: tuple[Identifier, ...] = ()
    subject: Reference | None = None
    started: str = ""
    modality: tuple[Coding, ...] = ()


class Specimen(Resource, tag="Specimen", frozen=True, omit_defaults=True, gc=False):
    identifier: tuple[Identifier, ...] = ()
    type: CodeableConcept | None = None


class ServiceRequest(Resource, tag="ServiceRequest", frozen=True, omit_defaults=True, gc=False):
    status: str = ""
    identifier: tuple[Identifier, ...] = ()
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


class Typed(Struct, frozen=True, gc=False):
    resourceType: str = ""


class BundleRequest(Struct, frozen=True, omit_defaults=True, gc=False):
    method: Literal["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]
    url: str
    ifNoneExist: str = ""


class BundleEntry(Struct, frozen=True, omit_defaults=True, gc=False):
    fullUrl: str = ""
    resource: msgspec.Raw = msgspec.Raw()  # empty: no resource
    request: BundleRequest | None = None


# ---------------------------------------------------------------- stored components
# An Observation with components (R4 observation.html, Observation.component: e.g. the
# systolic and diastolic values of the vital-signs blood pressure, LOINC 85354-9) is
# stored as one observation row per value — its own value[x] first when it has one, then
# one row per component — so that every point of care shows each value as a row. Which
# rows were the components of which Observation is kept in their codes: a component's
# code is stored as ``{Observation code}::{component code}`` (``component_code``), so that
# the FHIR read-back (render.py) gives one Observation with its ``component`` array, as
# sent. A row whose code has no separator is an Observation of its own; a component
# joins the Observation of the row before it when that one has the same code and does
# not hold a component of the same code yet (``component_groups``), and ingest keeps a
# component's plain code where that rule would not give back the Observation sent.
COMPONENT_SEPARATOR = "::"


def component_code(parent: str, code: str) -> str:
    """The stored code of component ``code`` of an Observation of code ``parent``."""
    return f"{parent}{COMPONENT_SEPARATOR}{code}"


def split_component_code(code: str) -> tuple[str, str] | None:
    """(Observation code, component code) of a stored component code, else None."""
    if COMPONENT_SEPARATOR not in code:  # the usual row, decided without a split
        return None
    parent, _, own = code.partition(COMPONENT_SEPARATOR)
    if parent and own and COMPONENT_SEPARATOR not in own:
        return parent, own
    return None


class CodeGroup(Struct, frozen=True, gc=False):
    """The stored rows of one Observation: ``start`` the index of its first row, ``code``
    its code, ``own`` whether that row is its own value[x], ``components`` (index of the
    row, component code) of each component row."""

    start: int
    code: str
    own: bool
    components: tuple[tuple[int, str], ...] = ()


def component_groups(codes: Sequence[str]) -> list[CodeGroup]:
    """The Observations the stored rows of these codes came from, in order. In one pass
    (an Observation may have hundreds of components): each group's component codes so far
    are kept in a set."""
    # (start, code, own, component rows, their codes) of each group
    found: list[tuple[int, str, bool, list[tuple[int, str]], set[str]]] = []
    for i, code in enumerate(codes):
        split = split_component_code(code)
        if split is None:
            found.append((i, code, True, [], set()))
            continue
        parent, own = split
        if found and found[-1][1] == parent and own not in found[-1][4]:
            found[-1][3].append((i, own))
            found[-1][4].add(own)
        else:
            found.append((i, parent, False, [(i, own)], {own}))
    return [CodeGroup(start, code, own, tuple(rows)) for start, code, own, rows, _ in found]


class Bundle(Struct, frozen=True, omit_defaults=True, gc=False):
    resourceType: Literal["Bundle"]
    type: str
    id: str = ""
    identifier: Identifier | None = None
    entry: tuple[BundleEntry, ...] = ()

"""Result intake (R3): every channel's message becomes an ``InboundMessage`` of
``ResultSubmission``s, stored atomically, idempotently, with versions and marks.

CONTRACT (shared by the FHIR, HL7 v2, bulk and DICOM adapters); the implementation is
being built — see issue 7."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from huren.domain.results import ResultSubmission


class Channel(StrEnum):
    HL7V2_MLLP = "hl7v2-mllp"
    HL7V2_HTTP = "hl7v2-http"
    FHIR = "fhir"
    BULK = "bulk"
    DICOM = "dicom"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class InboundMessage:
    channel: Channel
    institution: str  # producing institution's code (from MSH-4, the API key, Bundle meta…)
    control_id: str  # MSH-10, Bundle.id/identifier, file:line
    raw: str  # the message as received (kept for the engineer's page and for replays)
    submissions: tuple[ResultSubmission, ...]


class Disposition(StrEnum):
    CREATED = "created"
    UPDATED = "updated"  # new version (amended, corrected, entered-in-error …)
    UNCHANGED = "unchanged"  # same content resent


@dataclass(frozen=True, slots=True)
class StoredRef:
    result_id: int
    version: int
    disposition: Disposition
    report_no: str
    local_code: str
    item_code: str | None  # None: unmapped (对码缺失), stored and flagged
    mark_symbol: str | None


@dataclass(frozen=True, slots=True)
class ReceiveOutcome:
    message_id: int
    duplicate: bool  # the identical message was accepted before; nothing changed
    results: tuple[StoredRef, ...]

    @property
    def unmapped_codes(self) -> tuple[str, ...]:
        return tuple(r.local_code for r in self.results if r.item_code is None)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message refused as a whole (AE/AR, OperationOutcome): recorded for the
    integration engineer's page, nothing of its content stored."""

    channel: Channel
    institution: str | None
    control_id: str
    raw: str
    error: str  # Chinese, naming the field


# The service (``container.intake``) offers:
#   receive(message: InboundMessage) -> ReceiveOutcome
#       one transaction: patient matching, 对码, marks at issue time, versions; idempotent.
#       Raises huren.domain.errors.ValidationFailed (problems name the fields) and stores
#       nothing of the message when any part is invalid (unknown institution, invalid
#       身份证, missing report number …); unmapped codes are NOT an error.
#   reject(rejection: Rejection) -> int
#       records a refused message in inbound_message with status "rejected".

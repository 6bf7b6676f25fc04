"""Refusals that are about HTTP itself — the format asked for or sent, the method, the
size — shared by the FHIR, DICOMweb and HL7-over-HTTP routes. Each is a ``DomainError``
with its status, answered as problem+json (or OperationOutcome on /fhir) naming the
header or element."""

from __future__ import annotations

from huren.domain.errors import DomainError


class MethodNotAllowed(DomainError):
    """An interaction not offered on an existing kind of resource: 405."""

    code = "method_not_allowed"
    status = 405


class NotAcceptable(DomainError):
    """A response format the client asks for (Accept, FHIR ``_format``) that is not
    served: 406 (RFC 9110 §15.5.7)."""

    code = "not_acceptable"
    status = 406


class PreconditionFailed(DomainError):
    """A condition of the request that cannot hold as asked: 412 (RFC 9110 §15.5.13)."""

    code = "precondition_failed"
    status = 412


class ContentTooLarge(DomainError):
    """A body over the size taken: 413 (RFC 9110 §15.5.14)."""

    code = "content_too_large"
    status = 413


class UnsupportedMediaType(DomainError):
    """A body in a format (or content coding) that is not read: 415 (RFC 9110 §15.5.16)."""

    code = "unsupported_media_type"
    status = 415

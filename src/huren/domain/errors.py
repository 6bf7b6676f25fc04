"""Domain errors. Each carries a stable ``code`` and a Chinese ``message``; every edge
(HTTP problem+json, FHIR OperationOutcome, HL7 ACK, DICOM status) maps them once."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input: where (``field``, e.g. ``PID-3`` or ``row 7: code``)
    and why, in Chinese."""

    field: str
    message: str


class DomainError(Exception):
    """Base of all rule violations. ``code`` is stable English, ``message`` Chinese."""

    code: str = "domain_error"
    status: int = 400

    def __init__(self, message: str, *, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems: list[Problem] = problems or []


class ValidationFailed(DomainError):
    code = "validation_failed"
    status = 422


class NotFound(DomainError):
    code = "not_found"
    status = 404


class Conflict(DomainError):
    code = "conflict"
    status = 409


class Forbidden(DomainError):
    code = "forbidden"
    status = 403


class Unauthorized(DomainError):
    code = "unauthorized"
    status = 401


class ScopeCycle(ValidationFailed):
    code = "scope_cycle"


@dataclass
class ProblemCollector:
    """Collects problems across a whole input so that all of them are reported at once."""

    problems: list[Problem] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.problems.append(Problem(where, message))

    def raise_if_any(self, message: str) -> None:
        if self.problems:
            raise ValidationFailed(message, problems=list(self.problems))

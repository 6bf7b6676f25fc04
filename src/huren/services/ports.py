"""Ports the services need from the outside world. Adapters implement them; bootstrap
wires them; tests may pass fakes."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...


class IdentifierVault(Protocol):
    """Keyed hashing for lookup and authenticated encryption for display (R4)."""

    def lookup_hash(self, kind: str, assigner: str, value: str) -> str: ...

    def encrypt(self, value: str) -> str: ...

    def decrypt(self, token: str) -> str: ...

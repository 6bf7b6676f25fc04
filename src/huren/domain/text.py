"""Checks on text that every layer makes."""

from __future__ import annotations


def is_digits(text: str) -> bool:
    """Made of the ASCII digits 0–9 only, and not empty. ``str.isdigit`` also accepts
    superscripts and other scripts' digits: ``int()`` refuses some of them (``"¹"``; a
    vread of ``_history/¹`` answered 500, found by schemathesis) and reads others as a
    number (``"٣"`` is 3), neither of which an identifier, a date or a count should do."""
    return text.isascii() and text.isdigit()

"""The small text helpers of the CDS Hooks cards."""

from __future__ import annotations

from huren.adapters.cdshooks.cards import _md


def test_markdown_escape_escapes_each_special_character_once() -> None:
    assert _md("a|b*c_d`e\\f") == "a\\|b\\*c\\_d\\`e\\\\f"
    assert _md("\\|") == "\\\\\\|"  # the backslash added for | is not escaped again
    assert _md("谷丙转氨酶 56 U/L") == "谷丙转氨酶 56 U/L"

"""The CDS card builder's cheap paths (issue 5) give what the plain ones gave: Markdown
escaping looked for before translating, and the cards' UUIDs from one read of the OS's
random source."""

from __future__ import annotations

import uuid

import pytest

from huren.adapters.cdshooks.cards import _MD_ESCAPES, _md, _uuids


@pytest.mark.parametrize("ch", list("\\|*_`"))
def test_each_special_character_alone_is_escaped(ch: str) -> None:
    assert _md(ch) == "\\" + ch
    assert _md(f"钾 {ch} 6.1") == f"钾 \\{ch} 6.1"


@pytest.mark.parametrize(
    "text", ["", "血红蛋白", "RPT-2024-000123", "3.5–5.5", "mmol/L", "a_b", "x**y**", "`c`"]
)
def test_escaping_is_what_translating_every_text_gave(text: str) -> None:
    assert _md(text) == text.translate(_MD_ESCAPES)


def test_uuids_are_distinct_random_version_4_uuids_as_uuid4_writes_them() -> None:
    made = list(_uuids(10))
    assert len(made) == 10
    assert len(set(made)) == 10
    for text in made:
        u = uuid.UUID(text)
        assert u.version == 4
        assert u.variant == uuid.RFC_4122
        assert str(u) == text  # lower-case, hyphenated: uuid4()'s text
    assert list(_uuids(0)) == []

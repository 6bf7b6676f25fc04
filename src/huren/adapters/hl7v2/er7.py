"""ER7 ("pipe and hat") details python-hl7 leaves to the caller: the delimiters of one
message, splitting one field's text into repetitions / components / subcomponents, and
the escape sequences of HL7 v2.5.1 §2.7."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Delimiters:
    """MSH-1 and MSH-2 of one message (v2.5.1 §2.5.5)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def encoding_characters(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent

    def repetitions(self, text: str) -> list[str]:
        return text.split(self.repetition) if text else []

    def components(self, text: str) -> list[str]:
        return text.split(self.component)

    def subcomponents(self, text: str) -> list[str]:
        return text.split(self.subcomponent)

    def escape_text(self, text: str) -> str:
        """Escape a value for writing (v2.5.1 §2.7.1); line breaks become ``\\.br\\``."""
        e = self.escape
        if not any(
            ch in text
            for ch in (
                e,
                self.field,
                self.component,
                self.repetition,
                self.subcomponent,
                "\r",
                "\n",
            )
        ):
            return text  # the common case: nothing to escape
        table = {
            e: f"{e}E{e}",
            self.field: f"{e}F{e}",
            self.component: f"{e}S{e}",
            self.repetition: f"{e}R{e}",
            self.subcomponent: f"{e}T{e}",
        }
        out = "".join(table.get(ch, ch) for ch in text)
        return out.replace("\r\n", f"{e}.br{e}").replace("\n", f"{e}.br{e}").replace("\r", "")

    def unescape_text(self, text: str) -> str:
        """Resolve escape sequences in a received value; ``\\.br\\`` is a line break,
        highlighting (``\\H\\``/``\\N\\``) and formatting commands are dropped. An escape
        character that starts no escape sequence of v2.5.1 §2.7 (a sender that did not
        escape a Windows path, ``D:\\report\\2026\\a.pdf``) stays as it is: read as pairs,
        ``\\report\\`` was dropped as an unknown sequence and the pairs after it
        misaligned, so that text — and valid sequences after it — were lost."""
        e = self.escape
        if e not in text:
            return text
        pattern = _escape_pattern(e)
        table = {
            "F": self.field,
            "S": self.component,
            "R": self.repetition,
            "T": self.subcomponent,
            "E": e,
            ".br": "\n",
            "H": "",
            "N": "",
        }

        def sub(match: re.Match[str]) -> str:
            seq = match.group(1)
            if seq in table:
                return table[seq]
            if seq.startswith(".sp"):
                return "\n"
            if seq.startswith("X") and len(seq) > 1:
                return _hex_text(seq[1:])
            return ""  # .in, .ti, .ce, .fi, .nf, Z…: formatting, not content

        return pattern.sub(sub, text)


@functools.lru_cache(maxsize=8)
def _escape_pattern(escape: str) -> re.Pattern[str]:
    """The escape sequences of v2.5.1 §2.7 between two escape characters: delimiters
    (F S T R E), highlighting (H N), hexadecimal data (X), locally defined (Z),
    character set switches (C, M) and the formatting commands of FT (§2.7.6)."""
    e = re.escape(escape)
    sequence = (
        r"F|S|T|R|E|H|N|X[^" + e + r"\s]*|Z[^" + e + r"\s]*|C[0-9A-Fa-f]{4}|M[0-9A-Fa-f]{4,6}"
        r"|\.(?:br|fi|nf|ce|sp[+-]?\d*|sk[+-]?\d*|in[+-]?\d*|ti[+-]?\d*)"
    )
    return re.compile(e + "(" + sequence + ")" + e)


# C0 control characters a hexadecimal escape may spell but no text value holds (HL7 text
# types allow none of them; PostgreSQL cannot store NUL): dropped, like the formatting
# commands. Tab and line breaks stay.
_CONTROLS = {c: None for c in range(32) if chr(c) not in "\t\n\r"}


def _hex_text(digits: str) -> str:
    """``\\Xdddd…\\``: bytes in the message's character set, which is UTF-8 or GB18030
    by the time a value is read (``parse.decode``); a byte string that is neither is
    read as Latin-1. Control characters are dropped (found by a fuzzer: ``\\X00\\``
    reached PostgreSQL as a NUL and the message was answered AR 207)."""
    try:
        data = bytes.fromhex(digits)
    except ValueError:
        return ""
    for charset in ("utf-8", "gb18030"):
        try:
            return data.decode(charset).translate(_CONTROLS)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1").translate(_CONTROLS)


class FieldValue:
    """One field's raw ER7 text with typed accessors (1-based like HL7).

    The first repetition is split into components once, when first read: a parser reads
    several components of one field (OBX-3 code, text, system, alternate …), and splitting
    the field again for each was the parser's largest cost. A field with neither escape
    nor subcomponent characters (nearly all) is marked plain then: its components need no
    further look."""

    __slots__ = ("_components", "_plain", "delimiters", "text")

    def __init__(self, text: str, delimiters: Delimiters) -> None:
        self.text = text
        self.delimiters = delimiters
        self._components: list[str] | None = None
        self._plain = False

    def __repr__(self) -> str:
        return f"FieldValue({self.text!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FieldValue):
            return NotImplemented
        return (self.text, self.delimiters) == (other.text, other.delimiters)

    def __hash__(self) -> int:
        return hash((self.text, self.delimiters))

    def rep(self, n: int = 1) -> FieldValue:
        reps = self.delimiters.repetitions(self.text)
        return FieldValue(reps[n - 1] if 0 < n <= len(reps) else "", self.delimiters)

    def reps(self) -> list[FieldValue]:
        return [FieldValue(r, self.delimiters) for r in self.delimiters.repetitions(self.text)]

    def _split(self) -> list[str]:
        d = self.delimiters
        text = self.text
        self._plain = d.subcomponent not in text and d.escape not in text
        if d.repetition in text:
            text = text.split(d.repetition, 1)[0]
        comps = self._components = text.split(d.component) if text else []
        return comps

    def component_text(self, n: int = 1) -> str:
        """Component ``n`` of the first repetition, subcomponents left joined."""
        comps = self._components
        if comps is None:
            comps = self._split()
        return comps[n - 1] if 0 < n <= len(comps) else ""

    def component(self, n: int = 1) -> str:
        """Component ``n`` of the first repetition, first subcomponent, unescaped."""
        comps = self._components
        if comps is None:
            comps = self._split()
        raw = comps[n - 1] if 0 < n <= len(comps) else ""
        if self._plain:
            return raw.strip()  # the common case: nothing to split or unescape
        d = self.delimiters
        if d.subcomponent not in raw and d.escape not in raw:
            return raw.strip()
        return self.subcomponents(n)[0]

    def subcomponents(self, n: int = 1) -> list[str]:
        raw = self.component_text(n)
        d = self.delimiters
        if d.escape not in raw:  # the common case (XCN ``id&family&given``): nothing to unescape
            return list(map(str.strip, raw.split(d.subcomponent)))
        return [d.unescape_text(s).strip() for s in raw.split(d.subcomponent)]

    def value(self) -> str:
        """The whole first repetition as text (components kept), unescaped."""
        first = self.delimiters.repetitions(self.text)[:1]
        return self.delimiters.unescape_text(first[0]).strip() if first else ""

    def __bool__(self) -> bool:
        text = self.text
        if not text:
            return False
        if text[0].isalnum():
            return True  # the common case, without building the set of delimiters
        return bool(text.strip(self.delimiters.encoding_characters + " "))

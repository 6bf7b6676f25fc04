"""Checks on text that every layer makes: digits, and whether a value can be recorded
(PostgreSQL text holds no NUL, UTF-8 no lone surrogate, columns have widths, platform
ids are 64-bit). A value that cannot is refused naming its field before anything is read
or written, rather than failing in the database (a 500, or on SQLite an overflow)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from huren.domain.errors import Problem

MAX_ID = 2**63 - 1  # a BIGINT id


def is_digits(text: str) -> bool:
    """Made of the ASCII digits 0–9 only, and not empty. ``str.isdigit`` also accepts
    superscripts and other scripts' digits: ``int()`` refuses some of them (``"¹"``; a
    vread of ``_history/¹`` answered 500, found by schemathesis) and reads others as a
    number (``"٣"`` is 3), neither of which an identifier, a date or a count should do."""
    return text.isascii() and text.isdigit()


def text_problem(value: str, max_length: int | None = None) -> str | None:
    """What keeps ``value`` from being recorded, in Chinese, or None: a NUL, a lone
    surrogate (JSON can escape one as ``\\ud800``), more than ``max_length`` characters."""
    if "\x00" in value:
        return "不能包含空字符 NUL（\\u0000）"
    try:
        value.encode()
    except UnicodeEncodeError:
        return "含有无效的 Unicode 字符（单独的代理项 \\ud800–\\udfff）"
    if max_length is not None and len(value) > max_length:
        return f"过长：最多 {max_length} 个字符，收到 {len(value)} 个"
    return None


def id_problem(value: int) -> str | None:
    """What is wrong with a platform id (result, patient, reminder, version), or None."""
    if not -MAX_ID - 1 <= value <= MAX_ID:
        return f"超出范围：应为不超过 {MAX_ID} 的整数"
    return None


def text_problems(fields: Iterable[tuple[str, str, str | None, int | None]]) -> list[Problem]:
    """The fields ``(name, Chinese label, value or None, maximum length or None)`` that
    cannot be recorded, each named, its label before the reason."""
    out = []
    for name, label, value, max_length in fields:
        why = text_problem(value, max_length) if value is not None else None
        if why is not None:
            out.append(Problem(name, f"{label}{why}"))
    return out


def id_problems(fields: Iterable[tuple[str, str, int | None]]) -> list[Problem]:
    """The ids ``(name, Chinese label, value or None)`` beyond 64 bits, each named."""
    out = []
    for name, label, value in fields:
        why = id_problem(value) if value is not None else None
        if why is not None:
            out.append(Problem(name, f"{label}{why}"))
    return out


def json_text_problems(data: Any, base: str = "", skip: Collection[str] = ()) -> list[Problem]:
    """Each string of a decoded JSON document that cannot be recorded, keys included,
    named by its path from ``base`` (``Bundle.entry[0].resource.code``); a key that
    cannot is named by where it is. ``skip``: members of the top object not walked."""
    problems: list[Problem] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, str):
            why = text_problem(value)
            if why is not None:
                problems.append(Problem(where or "body", why))
        elif isinstance(value, dict):
            for k, v in value.items():
                why = text_problem(k)
                if why is not None:
                    problems.append(Problem(where or "body", f"字段名{why}"))
                elif not (value is data and k in skip):
                    walk(v, f"{where}.{k}" if where else k)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{where or 'body'}[{i}]")

    walk(data, base)
    return problems

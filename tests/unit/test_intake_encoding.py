"""What the intake write path encodes by hand instead of through SQLAlchemy or the
dataclass machinery must be exactly what those would give: SQLite's time text, the
submission's content hash and the domain objects the channel adapters build."""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite

from huren.adapters.db.results import sqlite_time
from huren.adapters.db.tables import result_version
from huren.domain.results import ObservationValue, ResultSubmission
from huren.services.intake import (
    encode_submission,
    new_observation,
    new_submission,
    observation_json,
    positional_constructor,
    submission_hash,
)
from tests.fixtures.results import imaging_report, lab_panel

CST = timezone(timedelta(hours=8))


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 6, 14, 8, 30, tzinfo=CST),
        datetime(2026, 6, 14, 0, 0, 0, 123456, tzinfo=UTC),
        datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5))),
    ],
)
def test_sqlite_time_is_what_the_column_type_binds(at: datetime) -> None:
    dialect = sqlite.dialect()
    bind = result_version.c.recorded_at.type.dialect_impl(dialect).bind_processor(dialect)
    assert bind is not None
    assert sqlite_time(at.astimezone(UTC)) == bind(at)


@pytest.mark.parametrize("sub", [lab_panel(), imaging_report()], ids=["lab", "imaging"])
def test_encoded_submission_hashes_as_the_whole_submission(sub: ResultSubmission) -> None:
    content_hash, observations = encode_submission(sub)
    assert content_hash == submission_hash(sub)
    assert json.loads(observations) == [observation_json(o) for o in sub.observations]


@pytest.mark.parametrize("sub", [lab_panel(), imaging_report()], ids=["lab", "imaging"])
def test_positional_constructors_make_the_same_objects(sub: ResultSubmission) -> None:
    made = new_submission(*(getattr(sub, f.name) for f in fields(sub)))
    assert type(made) is ResultSubmission
    assert (made, hash(made), repr(made)) == (sub, hash(sub), repr(sub))
    for o in sub.observations:
        copy = new_observation(*(getattr(o, f.name) for f in fields(o)))
        assert type(copy) is ObservationValue
        assert (copy, hash(copy), repr(copy)) == (o, hash(o), repr(o))


def test_positional_constructor_refuses_a_class_with_more_to_its_init() -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True, slots=True)
    class Checked:
        value: int

        def __post_init__(self) -> None:  # pragma: no cover - never called
            raise AssertionError

    with pytest.raises(TypeError):
        positional_constructor(Checked)

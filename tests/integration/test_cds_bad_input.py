"""The plain REST recognition API (``/api/v1/recognition``) given values it cannot record:
each refused with a 422 naming the field, nothing written. Found by a mutation fuzzer of
the point-of-care API; before, a NUL, a lone surrogate or a code wider than its column
reached the database (a 500 on PostgreSQL, for a surrogate on both backends), and an id
beyond 64 bits or a time at the end of the calendar an unnamed 422 or a 500."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from huren.adapters.db.tables import audit_event, decision, reminder
from huren.api.app import create_app
from huren.bootstrap import Container
from huren.domain.accounts import Role
from tests.fixtures.results import ZHANG_SAN_ID
from tests.fixtures.world import HOSP_B

BY_NATIONAL_ID = {"identifiers": [{"kind": "national_id", "value": ZHANG_SAN_ID}]}


@pytest.fixture
def client(world: Container) -> Iterator[TestClient]:
    with TestClient(create_app(world), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def clinician(login: Callable[..., dict[str, str]]) -> dict[str, str]:
    return login(Role.CLINICIAN, institution=HOSP_B)


def _post(client: TestClient, headers: dict[str, str], path: str, body: Any) -> Any:
    # ``json.dumps`` escapes a lone surrogate (``\ud800``) as a client may send it.
    r = client.post(
        f"/api/v1/recognition/{path}",
        content=json.dumps(body).encode(),
        headers={**headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    return r.json()


def _rows(world: Container) -> list[int]:
    with world.engine.connect() as conn:
        return [
            conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (reminder, decision, audit_event)
        ]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"items": ["B-LFT", "B-CT\ud800"]}, "items[1]"),
        ({"items": ["B-LFT\u0000"]}, "items[0]"),
        ({"items": ["B-" + "9" * 63]}, "items[0]"),
        ({"request_id": "\u0000"}, "request_id"),
        ({"department": "心内科\u0000"}, "department"),
        ({"patient": {"id": 2**70}}, "patient.id"),
        ({"patient": {"id": 2**63}}, "patient.id"),
    ],
)
def test_check_with_a_value_that_cannot_be_recorded_is_422_naming_it(
    world: Container,
    client: TestClient,
    clinician: dict[str, str],
    change: dict[str, Any],
    field: str,
) -> None:
    body = {"patient": BY_NATIONAL_ID, "items": ["B-LFT"], **change}
    answer = _post(client, clinician, "check", body)
    assert [e["field"] for e in answer["errors"]] == [field]
    assert _rows(world) == [0, 0, 0]


@pytest.mark.parametrize(
    "performed_at",
    ["0001-01-01T00:00:00+08:00", "9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00"],
)
def test_decision_on_a_report_dated_at_the_end_of_the_calendar_is_422_naming_the_time(
    world: Container, client: TestClient, clinician: dict[str, str], performed_at: str
) -> None:
    body = {
        "item": "B-LFT",
        "action": "accepted",
        "patient": BY_NATIONAL_ID,
        "external_report": {
            "institution_name": "涞水县医院",
            "report_no": "LS-20260610-077",
            "performed_at": performed_at,
            "result": "丙氨酸氨基转移酶 38 U/L",
        },
    }
    answer = _post(client, clinician, "decisions", body)
    assert [e["field"] for e in answer["errors"]] == ["external_report.performed_at"]
    assert "1900–2199" in answer["errors"][0]["message"]
    assert _rows(world)[1] == 0


def test_decision_with_ids_beyond_64_bits_is_422_naming_each(
    world: Container, client: TestClient, clinician: dict[str, str]
) -> None:
    body = {
        "item": "B-LFT",
        "action": "accepted",
        "result_id": 2**70,
        "reminder_id": -(2**70),
        "patient": {"id": 2**64},
    }
    answer = _post(client, clinician, "decisions", body)
    assert [e["field"] for e in answer["errors"]] == ["result_id", "reminder_id", "patient.id"]
    assert _rows(world)[1] == 0

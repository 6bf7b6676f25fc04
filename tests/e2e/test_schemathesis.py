"""The standing property-based test (issue 3, "Bad input"): every operation in the app's
OpenAPI document, called with generated input by an authenticated operator against the
small test world, must never answer 5xx and must answer in the documented shape.

The schema is read from the app itself (``create_app`` with every router in
``api.routes.ROUTERS``), so routes other areas add later are covered without touching
this file. Runs on SQLite and, when configured, on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from huren.api.app import create_app
from huren.bootstrap import Container, build
from huren.config import Settings
from huren.domain.accounts import Role

# The document only: an app over an unopened in-memory database serves the same schema.
schema = schemathesis.openapi.from_asgi(
    "/openapi.json",
    create_app(
        build(
            Settings(
                database_url="sqlite://",
                start_dicom=False,
                start_mllp=False,
                background_jobs=False,
            )
        ),
        check_migrated=False,
    ),
)


@pytest.fixture
def world_app(world: Container) -> FastAPI:
    return create_app(world)


@pytest.fixture
def operator_headers(world: Container, login: Callable[..., dict[str, str]]) -> dict[str, str]:
    return login(Role.OPERATOR)


@schema.parametrize()
@settings(
    # Fixed example choice so CI is reproducible; run with --hypothesis-seed=random
    # (or derandomize off) locally to explore further.
    derandomize=True,
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_operation_answers_without_server_error_and_as_documented(
    case: schemathesis.Case[Any], world_app: FastAPI, operator_headers: dict[str, str]
) -> None:
    headers: dict[str, Any] = {**operator_headers, **dict(case.headers or {})}
    case.call_and_validate(
        app=world_app,
        headers=headers,
        checks=[not_a_server_error, response_schema_conformance],
    )

"""The problem+json safety nets every route relies on."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from huren.api.problems import install
from huren.domain.errors import Problem, ValidationFailed


def _app(exc: Exception) -> TestClient:
    app = FastAPI()
    install(app)

    @app.get("/boom")
    def boom() -> None:
        raise exc

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize(
    "exc",
    [psycopg.DataError("invalid byte sequence"), sqlite3.DataError("string or blob too big")],
    ids=["psycopg", "sqlite3"],
)
def test_a_value_a_driver_refuses_is_a_422_not_a_500(exc: Exception) -> None:
    # The hot paths write on the drivers' own cursors: their errors are not SQLAlchemy's.
    r = _app(exc).get("/boom")
    assert (r.status_code, r.json()["code"]) == (422, "unstorable_value")


def test_a_lone_surrogate_repeated_in_an_error_is_written_as_its_escape() -> None:
    # A request may carry "\ud800" (JSON can escape it); repeating it back in the problem
    # made the answer itself fail to encode (a 500).
    exc = ValidationFailed("hook 无效：\ud800", problems=[Problem("hook", "收到 \ud800")])
    r = _app(exc).get("/boom")
    assert r.status_code == 422
    assert r.json()["detail"] == "hook 无效：\\ud800"
    assert r.json()["errors"] == [{"field": "hook", "message": "收到 \\ud800"}]

"""Shared fixtures. Integration tests run against SQLite always and against PostgreSQL
when HUREN_TEST_DATABASE_URL is set (``.ci/run`` sets it when the local server answers).

Each test gets an empty, migrated database: SQLite by copying a migrated template file,
PostgreSQL by truncating every table of a per-worker database migrated once."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from huren.adapters.clock import FixedClock
from huren.adapters.crypto import new_key
from huren.adapters.db import engine as db_engine
from huren.adapters.db.schema import metadata
from huren.bootstrap import Container, build
from huren.config import Settings
from tests.fixtures.actors import SEED, Login

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

PG_URL = os.environ.get("HUREN_TEST_DATABASE_URL", "")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])

# The moment tests live in, unless a test moves the clock.
TEST_NOW = datetime(2026, 6, 15, 9, 30, tzinfo=UTC)


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    db_engine.upgrade(f"sqlite:///{path}")
    return path


@contextmanager
def scratch_pg_database(name: str) -> Iterator[str]:
    """A new, empty PostgreSQL database beside HUREN_TEST_DATABASE_URL's, dropped after."""
    base = make_url(PG_URL)
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each backend, for a migration test to build up and take down:
    a SQLite file, or a scratch PostgreSQL database named after the test module."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    module = request.module.__name__.rsplit(".", 1)[-1]
    with scratch_pg_database(f"huren_{module}_{os.getpid()}") as url:
        yield url


def table_names(url: str) -> set[str]:
    eng = create_engine(url)
    try:
        return set(inspect(eng).get_table_names())
    finally:
        eng.dispose()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    if not PG_URL:
        pytest.skip("HUREN_TEST_DATABASE_URL 未设置: 跳过 PostgreSQL")
    with scratch_pg_database(f"huren_test_{_worker()}_{os.getpid()}") as url:
        db_engine.upgrade(url)
        yield url


def _truncate_all(url: str) -> None:
    eng = create_engine(url)
    names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    with eng.begin() as c:
        c.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    eng.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "huren.db"
        shutil.copy(template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("pg_database")
    _truncate_all(url)
    return url


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=db_url,
        data_dir=tmp_path / "data",
        identifier_hash_key=SecretStr(new_key()),
        identifier_encryption_key=SecretStr(new_key()),
        token_signing_key=SecretStr(new_key()),
        start_mllp=False,
        start_dicom=False,
        background_jobs=False,
    )


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(TEST_NOW)


@pytest.fixture
def container(settings: Settings, clock: FixedClock) -> Iterator[Container]:
    c = build(settings, clock=clock)
    yield c
    c.close()


@pytest.fixture
def world(container: Container) -> Container:
    """The container with ``tests/fixtures/world.py`` written into its database."""
    from tests.fixtures.world import seed_world

    seed_world(container.engine, container.clock.now())
    container.catalog.invalidate()
    return container


@pytest.fixture
def login(container: Container) -> Login:
    """``login(role, *, institution=, jurisdiction=, department=, patient_id=)`` creates an
    account of that role in the test database and returns its ``Authorization`` header.
    Institution and jurisdiction must exist (use ``world``); the operator needs neither."""
    from huren.domain.accounts import Role
    from huren.services.accounts import NewAccount

    counter = iter(range(1, 1_000_000))

    def _login(
        role: Role,
        *,
        institution: str | None = None,
        jurisdiction: str | None = None,
        department: str | None = None,
        patient_id: int | None = None,
    ) -> dict[str, str]:
        username = f"{role.value}-{next(counter)}"
        created = container.accounts.create_account(
            NewAccount(
                username,
                f"测试{role.value}",
                role,
                institution=institution,
                jurisdiction=jurisdiction,
                department=department,
                patient_id=patient_id,
            ),
            generate_password=False,
            actor=SEED,
        )
        token = container.accounts.issue_token(created.account.principal())
        return {"Authorization": f"Bearer {token.access_token}"}

    return _login


@pytest.fixture
def client(world: Container) -> Iterator[TestClient]:
    """A client of the app over ``world``, signed in as no one: each request carries
    the headers of whoever makes it (``login``)."""
    from fastapi.testclient import TestClient

    from huren.api.app import create_app

    with TestClient(create_app(world)) as tc:
        yield tc


@pytest.fixture
def lis_client(world: Container) -> Iterator[TestClient]:
    """A client of the app authenticated as hospital A's LIS interface (an API key)."""
    from fastapi.testclient import TestClient

    from huren.api.app import create_app
    from huren.domain.accounts import Role
    from huren.services.accounts import NewAccount
    from tests.fixtures.world import HOSP_A

    world.accounts.create_account(
        NewAccount("lis-a", "医院A LIS 接口", Role.INTEGRATION, institution=HOSP_A), actor=SEED
    )
    key = world.accounts.create_api_key("lis-a", "LIS", actor=SEED).key
    with TestClient(create_app(world), headers={"Authorization": f"ApiKey {key}"}) as tc:
        yield tc

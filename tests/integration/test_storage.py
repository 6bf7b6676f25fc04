"""The schema migrates on both backends and the server refuses an unmigrated database."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect

from huren.adapters.db import engine as db_engine
from huren.adapters.db.schema import metadata
from huren.api.app import create_app
from huren.bootstrap import Container
from huren.services.accounts import NewAccount
from tests.fixtures.actors import SEED


def test_migrations_create_every_table_in_the_metadata(container: Container) -> None:
    tables = set(inspect(container.engine).get_table_names())
    assert {t.name for t in metadata.sorted_tables} <= tables


def test_migrated_database_is_at_head(container: Container) -> None:
    assert db_engine.current_revision(container.engine) == db_engine.head_revision()


def test_server_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    eng = db_engine.make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(db_engine.DatabaseNotMigrated, match="huren db upgrade"):
        db_engine.require_migrated(eng)


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    eng = db_engine.make_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    with eng.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_healthz_reports_database_and_revision(container: Container) -> None:
    with TestClient(create_app(container)) as client:
        body = client.get("/healthz").json()
    assert body["status"] == "ok"
    assert body["schema_revision"] == db_engine.head_revision()
    assert body["database"] in {"sqlite", "postgresql"}


def test_unknown_route_is_problem_json_in_chinese(container: Container) -> None:
    with TestClient(create_app(container)) as client:
        r = client.get("/api/v1/no-such-thing")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["title"] == "未找到"


def test_sqlite_wal_is_checkpointed_in_the_background(tmp_path: Path) -> None:
    # Automatic checkpoints are off in committing connections (they cost the writer its
    # fsyncs); only the background checkpointer moves the rows into the database file.
    import time

    from sqlalchemy import text

    path = tmp_path / "ckpt.db"
    eng = db_engine.make_engine(f"sqlite:///{path}")
    with eng.begin() as c:
        c.execute(text("CREATE TABLE t (x TEXT)"))
        c.execute(text("INSERT INTO t VALUES (:x)"), [{"x": "y" * 500} for _ in range(5000)])
    deadline = time.monotonic() + 10
    while path.stat().st_size < 2_000_000 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert path.stat().st_size > 2_000_000  # the rows reached the database file
    eng.dispose()


@pytest.mark.parametrize("interval", [0.02, 3600], ids=["checkpointer", "writers-alone"])
def test_the_wal_stays_bounded_under_a_steady_stream_of_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: float
) -> None:
    # A passive checkpoint never catches up with writers that commit back to back, and
    # the WAL starts over only after a full copy: without the locked copy the WAL grew by
    # everything written (77 MB here). The checkpointer is a thread that a busy machine
    # may starve (CI saw 27 MB): past twice its bound the next writer copies the WAL back
    # itself, so the bound holds even with no checkpointer turn at all (writers-alone).
    from sqlalchemy import text

    monkeypatch.setattr(db_engine, "CHECKPOINT_INTERVAL_SECONDS", interval)
    monkeypatch.setattr(db_engine, "WAL_BOUND_FRAMES", 256)  # 1 MB
    monkeypatch.setattr(db_engine, "WAL_LOCKED_FRAMES", 64)
    path = tmp_path / "stream.db"
    wal = tmp_path / "stream.db-wal"
    eng = db_engine.make_engine(f"sqlite:///{path}")
    with eng.begin() as c:
        c.execute(text("CREATE TABLE t (x TEXT)"))
    largest = 0
    for _ in range(1500):  # 60 MB in about half a second
        with eng.begin() as c:
            c.execute(text("INSERT INTO t VALUES (:x)"), [{"x": "x" * 2000}] * 20)
        largest = max(largest, wal.stat().st_size)
    with eng.connect() as c:
        assert c.execute(text("SELECT count(*) FROM t")).scalar() == 30_000
    eng.dispose()
    # The ceiling (2 MB) and one transaction's frames (about 50 KB).
    assert largest < 3 * 2**20, largest


def test_after_dispose_no_checkpoint_keeps_the_wal_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the checkpointer ticking without pause, disposal often lands mid-checkpoint:
    # once dispose() returns, its connection must be closed and no new one opened (a
    # temporary directory could not be removed otherwise).
    from sqlalchemy import text

    monkeypatch.setattr(db_engine, "CHECKPOINT_INTERVAL_SECONDS", 0.0)
    for n in range(20):
        path = tmp_path / f"d{n}.db"
        eng = db_engine.make_engine(f"sqlite:///{path}")
        with eng.begin() as c:
            c.execute(text("CREATE TABLE t (x INTEGER)"))
        eng.dispose()
        # The writer lock's file stays: removing a file that another process may be
        # about to lock would let two writers lock two different files.
        leftovers = {p.name for p in tmp_path.iterdir() if p.name.startswith(f"d{n}.db-")}
        assert leftovers == {f"d{n}.db-writer.lock"}


def test_a_value_the_database_cannot_store_is_a_422_not_a_500(container: Container) -> None:
    # Found by schemathesis: a NUL in a query (PostgreSQL text) or an id beyond 64 bits.
    from huren.domain.accounts import Role

    with TestClient(create_app(container)) as client:
        token = container.accounts.issue_token(
            container.accounts.create_account(
                NewAccount("ops", "运维", Role.OPERATOR), actor=SEED
            ).account.principal()
        ).access_token
        headers = {"Authorization": f"Bearer {token}"}
        huge = client.post(
            f"/api/v1/qc/evaluations/{2**70}/rectification",
            json={"rectification": "已整改"},
            headers=headers,
        )
        nul = client.get("/api/v1/integration/messages?channel=a%00b", headers=headers)
    assert huge.status_code == 422
    assert nul.status_code in (200, 422)  # SQLite stores NUL; PostgreSQL refuses it

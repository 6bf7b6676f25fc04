"""The SQLite writer lock: writers of several processes on one file queue on it (huren
serve --workers), and a process killed while holding it leaves nothing held."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text

from huren.adapters.db.engine import make_engine, writer_lock

# A second process: takes the writer lock of the same database, prints when it got it.
CHILD = """
import sys, time, os
from huren.adapters.db.engine import make_engine, writer_lock
engine = make_engine(sys.argv[1])
print("ready", flush=True)
with writer_lock(engine):
    print(time.time(), flush=True)
    if sys.argv[2] == "die":
        os.kill(os.getpid(), 9)
engine.dispose()
"""


def _child(url: str, mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, mode], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _holds_until(url: str, end: Callable[[], object]) -> None:
    """A process asking for the lock gets it only after ``end`` has run."""
    child = _child(url, "hold")
    time.sleep(0.5)
    ended = time.time()
    end()
    out, _ = child.communicate(timeout=30)
    assert float(out.strip()) >= ended


def _free(url: str) -> None:
    """A process asking for the lock gets it."""
    child = _child(url, "hold")
    child.communicate(timeout=30)
    assert child.returncode == 0


def test_a_writer_in_another_process_waits_until_the_lock_is_given_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    engine = make_engine(url)
    lock = writer_lock(engine)
    assert lock is not None
    assert writer_lock(engine) is lock  # one per database file: every store shares it
    try:
        lock.acquire()
        _holds_until(url, lock.release)
    finally:
        engine.dispose()


def test_a_process_killed_holding_the_lock_does_not_keep_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    child = _child(url, "die")
    child.wait(timeout=30)
    assert child.returncode == -9
    engine = make_engine(url)
    got = threading.Event()

    def take() -> None:
        lock = writer_lock(engine)
        assert lock is not None
        with lock:
            got.set()

    t = threading.Thread(target=take, daemon=True)
    t.start()
    try:
        assert got.wait(10), "the killed process's lock was never released"
    finally:
        engine.dispose()


def test_postgresql_engines_have_no_writer_lock() -> None:
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test")
    try:
        assert writer_lock(engine) is None
    finally:
        engine.dispose()


# Writers in other processes, one after another without pause, each holding the lock for
# 10 ms (as intake's group commits do under load); each prints its running count.
QUEUED_WRITERS = """
import sys, time, os
from sqlalchemy import text
from huren.adapters.db.engine import make_engine, writer_lock
engine = make_engine(sys.argv[1])
lock = writer_lock(engine)
stop, n = sys.argv[2], 0
deadline = time.time() + 60
while not os.path.exists(stop) and time.time() < deadline:
    with lock, engine.begin() as c:
        c.execute(text("INSERT INTO busy (v) VALUES ('x')"))
        time.sleep(0.01)
    n += 1
    print(n, flush=True)
engine.dispose()
"""


def test_a_write_outside_the_stores_is_not_starved_by_queued_writers(tmp_path: Path) -> None:
    # Before every write took the lock, such a write waited in SQLite's busy handler,
    # whose polls found the database free only once the queue stopped: 19 s measured,
    # or "database is locked" after the 30 s busy timeout.
    url = f"sqlite:///{tmp_path / 'w.db'}"
    stop = tmp_path / "stop"
    engine = make_engine(url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE busy (id INTEGER PRIMARY KEY, v TEXT)"))
        c.execute(text("CREATE TABLE admin (id INTEGER PRIMARY KEY)"))
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", QUEUED_WRITERS, url, str(stop)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for w in writers:  # both are writing
            assert w.stdout is not None
            w.stdout.readline()

        def written() -> int:
            with engine.connect() as c:
                return int(c.execute(text("SELECT count(*) FROM busy")).scalar_one())

        before = written()
        with engine.begin() as c:
            c.execute(text("INSERT INTO admin DEFAULT VALUES"))
        # It queued behind a few of their transactions (about two, when measured), not
        # behind the hundreds the busy handler's polls let by.
        waited = written() - before
        assert waited < 50, waited
        time.sleep(0.3)
        assert written() > before + waited  # and they are still writing
    finally:
        stop.touch()
        for w in writers:
            w.communicate(timeout=90)
        engine.dispose()


def test_a_write_transaction_holds_the_lock_until_it_ends_and_a_read_never(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    engine = make_engine(url)
    try:
        with engine.begin() as c:
            c.execute(text("CREATE TABLE t (x INTEGER)"))
        with engine.connect() as c:
            c.execute(text("SELECT count(*) FROM t")).scalar_one()
            _free(url)  # while this read is open
            c.rollback()
        for end in ("commit", "rollback"):
            with engine.connect() as c:
                c.execute(text("INSERT INTO t VALUES (1)"))
                _holds_until(url, getattr(c, end))
        # On the driver's connection too, through sqlite3's own ``execute`` shortcut (as
        # intake writes).
        pooled = engine.raw_connection()
        try:
            pooled.driver_connection.execute("INSERT INTO t VALUES (2)")  # type: ignore[union-attr]
            _holds_until(url, pooled.commit)
            driver: Any = pooled.driver_connection
            with driver:  # sqlite3 commits a ``with`` block without calling commit()
                driver.execute("INSERT INTO t VALUES (3)")
            _free(url)
        finally:
            pooled.close()
    finally:
        engine.dispose()


def test_the_lock_is_reentrant_and_one_for_the_engines_of_a_file(tmp_path: Path) -> None:
    # begin_write holds it around a transaction whose statements take it again; a thread
    # holding it through one engine writes through another of the same file (with a
    # lock per engine, its flock would wait for itself for ever).
    url = f"sqlite:///{tmp_path / 'w.db'}"
    first, second = make_engine(url), make_engine(url)
    wrote = threading.Event()

    def write() -> None:
        lock = writer_lock(first)
        assert lock is not None
        assert writer_lock(second) is lock
        with lock, second.begin() as c:
            c.execute(text("CREATE TABLE t (x INTEGER)"))
        wrote.set()

    try:
        t = threading.Thread(target=write, daemon=True)
        t.start()
        assert wrote.wait(10)
        _free(url)  # and it is free again afterwards
    finally:
        first.dispose()
        second.dispose()

"""Engines for the embedded SQLite store and for PostgreSQL, and the migration gate."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError

if TYPE_CHECKING:
    # alembic is imported where migrations are read: it is over a second of every
    # command's start otherwise.
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
CHECKPOINT_INTERVAL_SECONDS = 0.5
# Frames (a page each, 4 KB) the WAL may hold before the checkpointer holds writers back
# for a moment to copy the last of them, so that the next writer starts it over
# (_WalCheckpointer); also the size the file is cut back to then (journal_size_limit).
WAL_BOUND_FRAMES = 16_384
# Frames the writers may add during one unlocked copy for the next copy to be the locked
# one (which then copies about as many); more, and it copies without the lock again.
WAL_LOCKED_FRAMES = 512
# Past this many times its bound the WAL is copied back by the next writer itself, before
# it writes (SqliteWriterLock.keep_wal_bounded): the checkpointer is a thread of its own
# and, on a machine busy with other work, may not get its turns while writers commit back
# to back (measured in CI: 27 MB of WAL where 10 MB was usual).
WAL_CEILING_FACTOR = 2

log = logging.getLogger("huren.db")


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _on_disk(database: str | None) -> TypeGuard[str]:
    """A SQLite database that is a file (not in memory): it has a WAL and a writer lock."""
    return bool(database) and database != ":memory:"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the single writer; NORMAL sync is durable in WAL mode
    # across process crashes (only an OS crash may lose the last transactions), which is
    # what "acknowledged is never lost when the process is killed" needs.
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    # No automatic checkpoint inside a committing transaction: SQLite's default runs it
    # (with its fsyncs) in whichever commit crosses 1000 WAL pages, which took up to half
    # of the intake time. _WalCheckpointer does it in the background instead.
    cur.execute("PRAGMA wal_autocheckpoint=0")
    # A WAL started over is cut back to its bound (SQLite keeps the file at its largest).
    cur.execute(f"PRAGMA journal_size_limit={WAL_BOUND_FRAMES * 4096}")
    # A 64 MB page cache per connection (SQLite's default is 2 MB): on a 10-million-result
    # database a recognition check reads ~13 priors with their observations from index
    # pages spread over the file, and each page missing from the cache is a read() from
    # the OS. Measured (bench_recognition, 10M, 3 runs each): check CPU p50 -10 %, p99
    # -15 %. The pool keeps 5 connections (up to 15 under load): at most 320 MB held.
    # mmap_size was tried too: no better (it maps only the first 2 GB of the file).
    cur.execute("PRAGMA cache_size=-65536")
    cur.close()


class _WalCheckpointer(threading.Thread):
    """Copies the WAL back into the database file every half second. Commits stay
    durable across process kills either way — they are in the WAL — and the WAL stays
    bounded. The thread ends when its engine is disposed or collected.

    A PASSIVE checkpoint never blocks writers or readers, but it copies only the frames
    committed before it started, and SQLite starts the WAL over (from its beginning)
    only once every frame has been copied. Under a steady stream of commits — ``huren
    ingest``, a busy MLLP feed — frames arrive while it copies, it never catches up and
    the WAL grows by everything written: measured, 334 MB of WAL after 1.8 s of FHIR
    Bundles (90 MB of them), so a back-load of a hospital's history would have grown it
    to several times the database. Past ``WAL_BOUND_FRAMES`` the checkpointer therefore
    copies without blocking until the writers add few frames during a copy, then takes
    the writer lock and copies the rest (about ``WAL_LOCKED_FRAMES``, 2 MB, and its
    sync: writers wait 5-7 ms), so that the next writer begins with every frame copied
    and starts the WAL over (measured: it stays at 67 MB where it grew to 667 MB).

    Each tick opens and closes its own connection, outside the engine's pool, under a
    lock that the engine's disposal takes too: once ``dispose()`` has returned no
    checkpoint is running and none will start, so no connection of this thread keeps the
    ``-wal`` and ``-shm`` files open (or makes them again) after it."""

    def __init__(self, engine: Engine, path: str) -> None:
        super().__init__(name="huren-wal-checkpoint", daemon=True)
        self._path = path
        self._writer = _lock_for(path)
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        weakref.finalize(engine, self._stop_event.set)
        event.listen(engine, "engine_disposed", self._stop)

    def _stop(self, _engine: Engine | None = None) -> None:
        with self._lock:  # waits for a checkpoint under way
            self._stop_event.set()
            # That checkpoint's connection and the pool's may have closed at the same
            # moment, each seeing the other open, so neither removed the WAL (the last
            # connection to close does): one more, now alone, does.
            self._checkpoint()

    def _checkpoint(self) -> None:
        try:
            # mode=rw: a database file removed meanwhile is not made again, empty.
            conn = sqlite3.connect(f"file:{quote(self._path)}?mode=rw", uri=True, timeout=0)
            try:
                self._copy(conn)
            finally:
                conn.close()
        except sqlite3.Error:  # a failed checkpoint is retried at the next tick
            log.debug("WAL checkpoint failed", exc_info=True)

    def _copy(self, conn: sqlite3.Connection) -> None:
        before = 0
        for _ in range(6):
            _busy, frames = _passive(conn)
            if frames <= WAL_BOUND_FRAMES:
                return
            # Copying (and syncing) took a while, and the writers added about as many
            # frames as they did the previous pass: once that is few, lock them out.
            if frames - before <= WAL_LOCKED_FRAMES:
                break
            before = frames
        # SQLite syncs the database file only after a copy that a writer did not overtake,
        # which is the locked one: written back now, the pages copied so far do not make
        # the writers wait for the disk (25 ms at a stream of 50,000 Observations/s).
        _sync(self._path)
        # Even when all was copied, a writer under way began reading before and will add
        # to the WAL: it starts over only for a writer that begins after a full copy.
        with self._writer:
            _passive(conn)

    def run(self) -> None:
        while not self._stop_event.wait(CHECKPOINT_INTERVAL_SECONDS):
            with self._lock:
                if self._stop_event.is_set():
                    return
                self._checkpoint()


def _passive(conn: sqlite3.Connection) -> tuple[bool, int]:
    """A PASSIVE checkpoint: whether another checkpoint was under way (nothing was copied
    then), and the frames in the WAL."""
    busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return bool(busy), int(frames)


def _sync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _json_text(value: Any) -> str:
    """JSON columns as UTF-8 text, as intake writes its snapshots (msgspec): Chinese text
    as itself, not as six-byte \\u escapes (SQLAlchemy's default, ``json.dumps``), which
    made a SQLite version snapshot written through SQLAlchemy about half again as big."""
    return json.dumps(value, ensure_ascii=False)


class SqliteWriterLock:
    """One writer at a time on a SQLite database, across this process's threads and the
    other processes on the same file (``huren serve --workers N``, ``huren ingest``).

    SQLite admits one writer and makes the others wait in its busy handler, which polls
    with sleeps of 1, 2, 5 … 100 ms: a writer that arrives while another commits loses
    milliseconds for a lock held for a fraction of one, and meanwhile neither uses the
    CPU. Writers that take this lock first queue instead: threads on a ``threading.Lock``,
    processes on an ``flock`` of ``<database>-writer.lock``, and each is woken the moment
    the one before has committed. The kernel drops the flock of a process that dies, so a
    killed worker never leaves it held.

    Every write takes it: the engine's connections take it before their first writing
    statement and give it back when their transaction ends (``_LockingConnection``). A
    writer left to the busy handler would starve behind the queue: while intake commits
    batch after batch, its polls almost never find the database free (measured: an admin
    write through SQLAlchemy waited 19 s, until two intake processes stopped). Stores
    that read before they write take it around the whole transaction as well
    (``begin_write``; intake's ``BEGIN IMMEDIATE``), so that no other writer commits
    between their reads and their writes. It is re-entrant in the thread that holds it.

    One per database file in a process, shared by its engines. Measured
    (bench/bench_mllp.py, ``--workers 2``, 256 connections, alternating): 3,334 and 3,559
    against 3,194 and 3,077 messages/s, CPU per message 445/429 against 460/475 µs."""

    def __init__(self, database: str | None) -> None:
        self._threads = threading.Lock()
        self._database = database if _on_disk(database) else None
        self._path = f"{database}-writer.lock" if _on_disk(database) else None
        self._fd: int | None = None
        self._pid = 0
        self._owner: int | None = None  # the holding thread's ident
        self._depth = 0

    def _file(self) -> int:
        # Opened once per process: a forked worker must not share its parent's open file
        # (flock locks belong to the open file, so the two would not exclude each other).
        if self._fd is None or self._pid != os.getpid():
            assert self._path is not None
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd

    def acquire(self) -> None:
        me = threading.get_ident()
        if self._owner == me:  # only this thread sets it to its own ident
            self._depth += 1
            return
        self._threads.acquire()
        try:
            if self._path is not None:
                fcntl.flock(self._file(), fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise
        self._owner, self._depth = me, 1

    def release(self) -> None:
        self._depth -= 1
        if self._depth:
            return
        self._owner = None
        try:
            if self._fd is not None:  # opened by acquire when there is a file
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def keep_wal_bounded(self) -> None:
        """Called by a writer holding the lock before it writes: a WAL grown past
        ``WAL_CEILING_FACTOR`` times its bound — the checkpointer fell behind — is copied
        back now, so that this writer starts it over. A stat() per write transaction;
        the copy itself, only when the checkpointer did not get its turns. Failing, the
        write goes on and the next one tries again."""
        if self._database is None:
            return
        try:
            size = os.stat(f"{self._database}-wal").st_size
        except OSError:
            return
        if size <= WAL_CEILING_FACTOR * WAL_BOUND_FRAMES * 4096:
            return
        try:
            conn = sqlite3.connect(f"file:{quote(self._database)}?mode=rw", uri=True, timeout=0)
            try:
                # Busy: the checkpointer is copying without the lock; it stops at the
                # frames it began with, and its locked copy waits for this lock.
                deadline = time.monotonic() + 5
                while _passive(conn)[0] and time.monotonic() < deadline:
                    time.sleep(0.001)
            finally:
                conn.close()
        except sqlite3.Error:
            log.warning("WAL checkpoint by a writer failed", exc_info=True)

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *_: object) -> None:
        self.release()


# Statements that write: they start a write transaction, or (outside one) write at once.
# A plain BEGIN is not one: its first writing statement takes the lock.
_WRITING = (
    "INSERT",
    "UPDATE",
    "DELETE",
    "REPLACE",
    "CREATE",
    "DROP",
    "ALTER",
    "BEGIN IMMEDIATE",
    "BEGIN EXCLUSIVE",
    "VACUUM",
    "REINDEX",
    "ANALYZE",
)
_DML = re.compile(r"\b(?:INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)


def _writes(sql: str) -> bool:
    head = sql[:20].lstrip().upper()
    return head.startswith(_WRITING) or (head.startswith("WITH") and bool(_DML.search(sql)))


class _LockingCursor(sqlite3.Cursor):
    """Takes the connection's writer lock before a writing statement."""

    connection: _LockingConnection

    def _locked(self, writes: bool, run: Any, *args: Any) -> _LockingCursor:
        conn = self.connection
        if writes:
            conn.will_write()
        try:
            run(*args)
        finally:
            conn.settle()
        return self

    def execute(self, sql: str, parameters: Any = (), /) -> _LockingCursor:
        return self._locked(_writes(sql), super().execute, sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> _LockingCursor:
        return self._locked(_writes(sql), super().executemany, sql, seq_of_parameters)

    def executescript(self, sql_script: str, /) -> _LockingCursor:
        return self._locked(True, super().executescript, sql_script)


class _LockingConnection(sqlite3.Connection):
    """A sqlite3 connection that holds its database's ``SqliteWriterLock`` from just
    before its first writing statement until its transaction has ended (committed,
    rolled back, or the connection closed)."""

    writer: SqliteWriterLock  # set on the subclass made for each database
    _holds = False

    def cursor(self, factory: Any = _LockingCursor) -> Any:
        return super().cursor(factory)

    # sqlite3's own shortcuts make their cursor without calling ``cursor()``.
    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> Any:
        return self.cursor().executemany(sql, seq_of_parameters)

    def executescript(self, sql_script: str, /) -> Any:
        return self.cursor().executescript(sql_script)

    def will_write(self) -> None:
        if not self._holds:
            self.writer.acquire()
            self._holds = True
            self.writer.keep_wal_bounded()

    def settle(self) -> None:
        """Give the lock back if no transaction is open (any more)."""
        if self._holds and not self.in_transaction:
            self._give_back()

    def _give_back(self) -> None:
        self._holds = False
        self.writer.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.settle()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.settle()

    def __exit__(self, *exc: Any) -> Any:  # ``with connection:`` commits in C
        try:
            return super().__exit__(*exc)
        finally:
            self.settle()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._holds:  # in_transaction cannot be read on a closed connection
                self._give_back()


_WRITER_LOCKS: weakref.WeakValueDictionary[str, SqliteWriterLock] = weakref.WeakValueDictionary()
_WRITER_LOCKS_GUARD = threading.Lock()


def _lock_for(database: str | None) -> SqliteWriterLock:
    """The process's lock of a database: one for all the engines of a file, so that a
    thread holding it through one engine does not wait on itself through another.
    Databases in memory share one lock without a file."""
    key = os.path.realpath(database) if _on_disk(database) else ""
    with _WRITER_LOCKS_GUARD:
        lock = _WRITER_LOCKS.get(key)
        if lock is None:
            lock = _WRITER_LOCKS[key] = SqliteWriterLock(key or None)
        return lock


def writer_lock(engine: Engine) -> SqliteWriterLock | None:
    """The ``SqliteWriterLock`` of the engine's database (shared by every store writing
    through it); None on PostgreSQL, whose writers do not exclude each other."""
    if engine.dialect.name != "sqlite":
        return None
    return _lock_for(engine.url.database)


def _locking_connection_class(lock: SqliteWriterLock) -> type[_LockingConnection]:
    return type("HurenSqliteConnection", (_LockingConnection,), {"writer": lock})


@contextmanager
def begin_write(engine: Engine) -> Iterator[Connection]:
    """``engine.begin()`` for a transaction that reads what it then writes: on SQLite
    the writer lock is held from the start (not only from the first write), so that no
    other writer commits in between. Taken with the connection already in hand, so that
    a lock holder never waits for the pool while the pool's connections wait for the
    lock. A transaction that only writes needs only ``engine.begin()``."""
    with engine.connect() as conn, writer_lock(engine) or nullcontext(), conn.begin():
        yield conn


def make_engine(url: str, **kwargs: Any) -> Engine:
    kwargs.setdefault("json_serializer", _json_text)
    if is_sqlite(url):
        db = make_url(url).database
        if _on_disk(db):
            Path(db).parent.mkdir(parents=True, exist_ok=True)
            # The connection used last first: each SQLite connection keeps its own page
            # cache, and one that another connection has since written past throws it
            # away, so the oldest idle one (the default order) read a check's pages
            # anew: about 110 µs of a check's first read instead of 8 (issue 5).
            kwargs.setdefault("pool_use_lifo", True)
        engine = create_engine(
            url,
            connect_args={
                "check_same_thread": False,
                "factory": _locking_connection_class(_lock_for(db)),
            },
            **kwargs,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        if _on_disk(db):
            _WalCheckpointer(engine, db).start()
        return engine
    kwargs.setdefault("pool_size", 20)
    kwargs.setdefault("max_overflow", 20)
    engine = create_engine(url, **kwargs)
    event.listen(engine, "checkin", _note_checkin)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


# A pooled PostgreSQL connection is checked before use only when it sat idle in the pool
# for a while (SQLAlchemy's ``pool_pre_ping`` pings on every checkout: one more round trip
# on every transaction — on the hot paths a third of their round trips). A connection
# given back moments ago is alive unless the server went away in between; then the first
# statement fails, SQLAlchemy invalidates the whole pool (its "optimistic" disconnect
# handling), that one request fails (an MLLP sender gets no ACK and resends) and the next
# ones reconnect. Connections idle longer — after a quiet night, a server restart,
# a firewall dropping idle flows — are pinged and replaced before use.
PING_AFTER_IDLE_SECONDS = 5.0


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    since = record.info.get("checked_in_at")
    if since is None or time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
        return  # new (just connected) or recently used
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
    except Exception as exc:  # the pool discards it and connects anew (up to 3 times)
        raise DisconnectionError("连接已失效，重新连接") from exc


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


class DatabaseNotMigrated(RuntimeError):
    """The database is not at the newest schema; the server refuses to start."""


def require_migrated(engine: Engine) -> None:
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise DatabaseNotMigrated(
            f"数据库结构不是最新版本（当前 {current or '未初始化'}，应为 {head}）。"
            f"请先运行: huren db upgrade"
        )

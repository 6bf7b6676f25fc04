"""The SQLite writer lock: writers of several processes on one file queue on it (huren
serve --workers), and a process killed while holding it leaves nothing held."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

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


def test_a_writer_in_another_process_waits_until_the_lock_is_given_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    engine = make_engine(url)
    lock = writer_lock(engine)
    assert lock is not None
    assert writer_lock(engine) is lock  # one per engine: intake and recognition share it
    try:
        with lock:
            child = _child(url, "hold")
            time.sleep(0.5)
            released = time.time()
        out, _ = child.communicate(timeout=30)
        assert child.returncode == 0
        assert float(out.strip()) >= released
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

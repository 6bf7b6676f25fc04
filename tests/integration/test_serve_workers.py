"""``huren serve --workers 2``: two worker processes share the MLLP port (SO_REUSEPORT)
under a supervising parent. Every acknowledged message is stored exactly once, a worker
that dies is started again, and SIGTERM to the parent stops every worker (SQLite and
PostgreSQL). Runs the real command as a subprocess, on free ports, with python-hl7's
MLLP client."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hl7.client import MLLPClient
from sqlalchemy import func, select

from huren.adapters.clock import SystemClock
from huren.adapters.db import engine as db_engine
from huren.adapters.db.tables import inbound_message, result
from tests.e2e.live import ServeProcess, free_port, serve_env
from tests.fixtures.hl7 import LAB_LFT_V251, ack_of, sample_text, with_control_id, with_field
from tests.fixtures.world import seed_world

CONNECTIONS = 6
MESSAGES_PER_CONNECTION = 25
LISTENING = re.compile(r"\[worker (\d+)\] huren\.mllp: MLLP 监听")


def message(conn: int, n: int) -> str:
    text = with_control_id(sample_text(LAB_LFT_V251), f"W{conn}-{n:04d}")
    return with_field(text, "OBR", 3, f"RPT-WORKERS-{conn}-{n:04d}")


class Workers(ServeProcess):
    """``huren serve --workers 2`` with its log; ``pids()``: the live workers."""

    def __init__(self, db_url: str, tmp_path: Path) -> None:
        self.mllp_port = free_port()
        env = serve_env(
            db_url,
            tmp_path,
            MLLP_PORT=str(self.mllp_port),
            DICOM_PORT=str(free_port()),
            BACKGROUND_JOBS="false",
        )
        super().__init__(env, self.mllp_port, tmp_path / "serve.log", args=("--workers", "2"))
        self.start()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_listening(self, times: int) -> None:
        """Until the workers have started their MLLP listeners ``times`` times in all."""
        deadline = time.monotonic() + 90
        while len(LISTENING.findall(self.text())) < times:
            assert self.process.poll() is None, self.text()[-3000:]
            assert time.monotonic() < deadline, self.text()[-3000:]
            time.sleep(0.1)

    def pids(self) -> set[int]:
        """The worker processes (not multiprocessing's resource tracker)."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children")
        return {
            int(pid)
            for pid in children.read_text().split()
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        }


@pytest.fixture
def workers(db_url: str, tmp_path: Path) -> Iterator[Workers]:
    engine = db_engine.make_engine(db_url)
    seed_world(engine, SystemClock().now())
    engine.dispose()
    running = Workers(db_url, tmp_path)
    try:
        running.wait_listening(2)
        yield running
    finally:
        running.stop(timeout=60)


def send_all(port: int) -> list[tuple[str, str]]:
    """Each connection sends its messages one after another, waiting for each ACK."""
    acks: list[tuple[str, str]] = []
    lock = threading.Lock()

    def run(conn: int) -> None:
        with MLLPClient("127.0.0.1", port) as client:
            for n in range(MESSAGES_PER_CONNECTION):
                ack = ack_of(client.send_message(message(conn, n)))
                with lock:
                    acks.append(ack)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return acks


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_every_acknowledged_message_is_stored_once_and_sigterm_stops_every_worker(
    workers: Workers, db_url: str
) -> None:
    pids = workers.pids()
    assert len(pids) == 2

    acks = send_all(workers.mllp_port)

    total = CONNECTIONS * MESSAGES_PER_CONNECTION
    assert sorted(acks) == sorted(
        ("AA", f"W{c}-{n:04d}") for c in range(CONNECTIONS) for n in range(MESSAGES_PER_CONNECTION)
    )
    engine = db_engine.make_engine(db_url)
    try:
        with engine.connect() as conn:
            numbers = [r for (r,) in conn.execute(select(result.c.report_no))]
            accepted = conn.execute(
                select(func.count())
                .select_from(inbound_message)
                .where(inbound_message.c.status == "accepted")
            ).scalar_one()
    finally:
        engine.dispose()
    assert len(numbers) == len(set(numbers)) == total
    assert accepted == total

    workers.process.send_signal(signal.SIGTERM)
    assert workers.process.wait(60) == 0
    assert not any(alive(pid) for pid in pids)
    assert "所有工作进程已停止" in workers.text()


def test_a_worker_that_dies_is_started_again_and_serves(workers: Workers) -> None:
    pids = workers.pids()
    victim = max(pids)
    os.kill(victim, signal.SIGKILL)

    workers.wait_listening(3)  # the replacement listens
    replaced = workers.pids()
    assert len(replaced) == 2
    assert victim not in replaced
    assert "意外退出" in workers.text()
    acks = send_all(workers.mllp_port)
    assert {code for code, _ in acks} == {"AA"}
    assert len(acks) == CONNECTIONS * MESSAGES_PER_CONNECTION

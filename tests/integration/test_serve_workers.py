"""``huren serve --workers 2``: two worker processes share the MLLP port (SO_REUSEPORT)
under a supervising parent. Every acknowledged message is stored exactly once, a worker
that dies is started again, and SIGTERM to the parent stops every worker (SQLite and
PostgreSQL). Runs the real command as a subprocess, on free ports, with python-hl7's
MLLP client."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest
from hl7.client import MLLPClient
from sqlalchemy import func, select

from huren.adapters.clock import SystemClock
from huren.adapters.crypto import new_key
from huren.adapters.db import engine as db_engine
from huren.adapters.db.tables import inbound_message, result
from tests.fixtures.hl7 import LAB_LFT_V251, sample_text, with_control_id, with_field
from tests.fixtures.world import seed_world

CONNECTIONS = 6
MESSAGES_PER_CONNECTION = 25
LISTENING = re.compile(r"\[worker (\d+)\] huren\.mllp: MLLP 监听")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def message(conn: int, n: int) -> str:
    text = with_control_id(sample_text(LAB_LFT_V251), f"W{conn}-{n:04d}")
    return with_field(text, "OBR", 3, f"RPT-WORKERS-{conn}-{n:04d}")


def ack_of(reply: bytes) -> tuple[str, str]:
    msa = hl7.parse(reply.strip(b"\x0b\x1c\r").decode()).segment("MSA")
    return str(msa[1]), str(msa[2])


class Workers:
    """``huren serve --workers 2`` with its log; ``pids()``: the live workers."""

    def __init__(self, db_url: str, tmp_path: Path) -> None:
        self.mllp_port = free_port()
        self.log = tmp_path / "serve.log"
        env = os.environ | {
            "HUREN_DATABASE_URL": db_url,
            "HUREN_DATA_DIR": str(tmp_path / "data"),
            "HUREN_PORT": str(free_port()),
            "HUREN_MLLP_PORT": str(self.mllp_port),
            "HUREN_DICOM_PORT": str(free_port()),
            "HUREN_BACKGROUND_JOBS": "false",
            "HUREN_IDENTIFIER_HASH_KEY": new_key(),
            "HUREN_IDENTIFIER_ENCRYPTION_KEY": new_key(),
            "HUREN_TOKEN_SIGNING_KEY": new_key(),
        }
        huren = Path(sys.executable).parent / "huren"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(huren), "serve", "--workers", "2"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_listening(self, times: int) -> None:
        """Until the workers have started their MLLP listeners ``times`` times in all."""
        deadline = time.monotonic() + 90
        while len(LISTENING.findall(self.text())) < times:
            assert self.proc.poll() is None, self.text()[-3000:]
            assert time.monotonic() < deadline, self.text()[-3000:]
            time.sleep(0.1)

    def pids(self) -> set[int]:
        """The worker processes (not multiprocessing's resource tracker)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return {
            int(pid)
            for pid in children.read_text().split()
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        }

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


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
        running.close()


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

    workers.proc.send_signal(signal.SIGTERM)
    assert workers.proc.wait(60) == 0
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

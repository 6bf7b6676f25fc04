"""R3: an acknowledged result is never lost, even if the process is killed right after
the ACK; and resending after the crash stores nothing twice.

Runs the real ``huren serve`` as a subprocess on its own SQLite file and free ports,
streams ORU^R01 messages over several MLLP connections with python-hl7's client, kills
the server with SIGKILL mid-stream, restarts it, and checks the database."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hl7.client import MLLPClient
from sqlalchemy import create_engine, func, select

from huren.adapters.clock import SystemClock
from huren.adapters.db import engine as db_engine
from huren.adapters.db.tables import result, result_version
from tests.e2e.live import ServeProcess, free_port, serve_env
from tests.fixtures.hl7 import (
    LAB_LFT_V251,
    ack_of,
    sample_text,
    with_control_id,
    with_field,
)
from tests.fixtures.world import seed_world

pytestmark = pytest.mark.slow

MESSAGES_PER_CONNECTION = 60
CONNECTIONS = 3
KILL_AFTER_ACKS = 45


def message(conn: int, n: int) -> str:
    control = f"K{conn}-{n:04d}"
    text = with_control_id(sample_text(LAB_LFT_V251), control)
    return with_field(text, "OBR", 3, f"RPT-KILL-{conn}-{n:04d}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServeProcess, str]]:
    url = f"sqlite:///{tmp_path / 'huren.db'}"
    db_engine.upgrade(url)
    eng = db_engine.make_engine(url)
    seed_world(eng, SystemClock().now())
    eng.dispose()
    mllp_port = free_port()
    env = serve_env(url, tmp_path, MLLP_PORT=str(mllp_port), START_DICOM="false", START_MLLP="true")
    s = ServeProcess(env, mllp_port, tmp_path / "server.log")
    try:
        yield s, url
    finally:
        s.stop()


def stream(
    port: int, conn: int, acked: list[str], refused: list[bytes], lock: threading.Lock
) -> None:
    """Send this connection's messages until the server goes away."""
    try:
        with MLLPClient("127.0.0.1", port) as client:
            for n in range(MESSAGES_PER_CONNECTION):
                reply = client.send_message(message(conn, n))
                if not reply:
                    return  # connection closed by the dying server: not acknowledged
                code, control = ack_of(reply)
                with lock:
                    (acked.append(control) if code == "AA" else refused.append(reply))
    except OSError:
        return


def report_numbers(url: str) -> list[str]:
    eng = create_engine(url)
    with eng.connect() as c:
        rows = [r for (r,) in c.execute(select(result.c.report_no))]
    eng.dispose()
    return rows


def test_every_acknowledged_message_survives_sigkill_and_resend_stores_nothing_twice(
    server: tuple[ServeProcess, str],
) -> None:
    srv, url = server
    srv.start()
    acked: list[str] = []
    refused: list[bytes] = []
    lock = threading.Lock()
    threads = [
        threading.Thread(target=stream, args=(srv.port, conn, acked, refused, lock))
        for conn in range(CONNECTIONS)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while len(acked) < KILL_AFTER_ACKS and time.monotonic() < deadline:
        time.sleep(0.005)
    srv.kill()  # mid-stream: the connections are still sending
    for t in threads:
        t.join(30)
    total = CONNECTIONS * MESSAGES_PER_CONNECTION
    assert refused == []
    assert KILL_AFTER_ACKS <= len(acked) < total, "the kill must land mid-stream"

    # Every acknowledged message is stored after the crash.
    stored = set(report_numbers(url))
    for control in acked:
        conn_no, msg_no = control[1:].split("-")
        assert f"RPT-KILL-{conn_no}-{msg_no}" in stored, f"{control} was acknowledged but is lost"

    # Restart and resend everything: all accepted, nothing stored twice.
    srv.start()
    with MLLPClient("127.0.0.1", srv.port) as client:
        for conn in range(CONNECTIONS):
            for n in range(MESSAGES_PER_CONNECTION):
                assert ack_of(client.send_message(message(conn, n)))[0] == "AA"
    numbers = report_numbers(url)
    assert len(numbers) == len(set(numbers)) == total
    eng = create_engine(url)
    with eng.connect() as c:
        versions = c.execute(select(func.max(result_version.c.version))).scalar_one()
        assert c.execute(select(func.count()).select_from(result_version)).scalar_one() == total
    eng.dispose()
    assert versions == 1

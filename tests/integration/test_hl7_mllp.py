"""The MLLP listener with the real intake behind it, driven by python-hl7's MLLP client
and its ``mllp_send`` tool as a hospital interface engine would."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hl7
import pytest
from hl7.client import MLLPClient
from sqlalchemy import func, select

from huren.adapters.db.tables import inbound_message, result
from huren.adapters.hl7v2.mllp import MllpServer, frame
from huren.adapters.hl7v2.receiver import Hl7Receiver
from huren.adapters.hl7v2.responses import SqlResponseLog
from huren.bootstrap import Container
from huren.services.intake import Channel
from tests.fixtures.hl7 import (
    CBC_V23_GB18030,
    LAB_LFT_V251,
    sample_bytes,
    sample_text,
    with_control_id,
    with_field,
)


class RunningServer:
    """An MllpServer on its own event loop thread, on a free port."""

    def __init__(self, server: MllpServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def port(self) -> int:
        return self.server.port


@pytest.fixture
def mllp(world: Container) -> Iterator[RunningServer]:
    receiver = Hl7Receiver(
        world.intake, world.clock, Channel.HL7V2_MLLP, SqlResponseLog(world.engine)
    )
    server = MllpServer(lambda raw: receiver.handle(raw).payload, "127.0.0.1", 0, workers=4)
    with RunningServer(server) as running:
        yield running


def stored(world: Container) -> int:
    with world.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(result)).scalar_one())


def lab_message(n: int) -> str:
    text = with_control_id(sample_text(LAB_LFT_V251), f"LIS2026061400{n:04d}")
    return with_field(text, "OBR", 3, f"RPT-LIS-20260614-{n:04d}")


def ack_fields(ack: bytes, encoding: str = "utf-8") -> tuple[str, str]:
    msa = hl7.parse(ack.strip(b"\x0b\x1c\r").decode(encoding)).segment("MSA")
    return str(msa[1]), str(msa[2])


def recv_frame(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\x1c\r"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_mllp_client_gets_aa_after_the_result_is_stored(
    mllp: RunningServer, world: Container
) -> None:
    with MLLPClient("127.0.0.1", mllp.port) as client:
        ack = client.send_message(sample_text(LAB_LFT_V251))
        assert ack_fields(ack) == ("AA", "LIS202606140001")
        assert stored(world) == 1


def test_several_messages_on_one_connection_are_answered_in_order(
    mllp: RunningServer, world: Container
) -> None:
    with MLLPClient("127.0.0.1", mllp.port) as client:
        controls = [ack_fields(client.send_message(lab_message(n)))[1] for n in range(1, 6)]
    assert controls == [f"LIS2026061400{n:04d}" for n in range(1, 6)]
    assert stored(world) == 5


def test_concurrent_connections_each_get_their_own_acks(
    mllp: RunningServer, world: Container
) -> None:
    def send(conn: int) -> list[tuple[str, str]]:
        with MLLPClient("127.0.0.1", mllp.port) as client:
            return [ack_fields(client.send_message(lab_message(conn * 100 + i))) for i in range(5)]

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(send, range(1, 7)))
    for conn, acks in enumerate(results, start=1):
        assert acks == [("AA", f"LIS2026061400{conn * 100 + i:04d}") for i in range(5)]
    assert stored(world) == 30


def test_gb18030_message_gets_a_gb18030_ack(mllp: RunningServer) -> None:
    with MLLPClient("127.0.0.1", mllp.port, encoding="gb18030") as client:
        ack = client.send_message(sample_bytes(CBC_V23_GB18030))
    assert ack_fields(ack, "gb18030") == ("AA", "BD20260613000311")
    assert "未对码项目".encode("gb18030") in ack


def test_frame_split_over_writes_and_garbage_between_frames(
    mllp: RunningServer, world: Container
) -> None:
    first, second = frame(lab_message(1).encode()), frame(lab_message(2).encode())
    with socket.create_connection(("127.0.0.1", mllp.port)) as sock:
        sock.sendall(b"\r\n\r\n" + first[:50])
        sock.sendall(first[50:-1])
        sock.sendall(first[-1:] + b"\x00noise\n")
        assert ack_fields(recv_frame(sock)) == ("AA", "LIS20260614000001")
        sock.sendall(second)
        assert ack_fields(recv_frame(sock)) == ("AA", "LIS20260614000002")
    assert stored(world) == 2


def test_bad_message_gets_ae_and_the_connection_stays_usable(
    mllp: RunningServer, world: Container
) -> None:
    bad = with_field(lab_message(1), "OBR", 3, "")
    with MLLPClient("127.0.0.1", mllp.port) as client:
        assert ack_fields(client.send_message(bad)) == ("AE", "LIS20260614000001")
        assert ack_fields(client.send_message(lab_message(2))) == ("AA", "LIS20260614000002")
    assert stored(world) == 1
    with world.engine.connect() as conn:
        statuses = conn.execute(select(inbound_message.c.status).order_by(inbound_message.c.id))
        assert [s for (s,) in statuses] == ["rejected", "accepted"]


def test_mllp_send_tool_delivers_a_file_of_messages(
    mllp: RunningServer, world: Container, tmp_path: Path
) -> None:
    batch = tmp_path / "batch.hl7"
    batch.write_bytes(b"".join(frame(lab_message(n).encode()) for n in range(1, 4)))
    mllp_send = Path(sys.executable).parent / "mllp_send"
    out = subprocess.run(
        [str(mllp_send), "--file", str(batch), "--port", str(mllp.port), "127.0.0.1"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    acks = [line for line in out.stdout.split(b"\x1c") if b"MSA|" in line]
    assert [ack_fields(a)[0] for a in acks] == ["AA", "AA", "AA"]
    assert stored(world) == 3

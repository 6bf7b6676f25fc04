"""The MLLP listener with group commit, as ``huren serve`` runs it: messages of all
connections that arrive while one batch commits are stored in one transaction, and each
ACK still comes only after its own commit, in order per connection (SQLite and
PostgreSQL). Driven by python-hl7's MLLP client and by raw sockets."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import hl7
import pytest
from hl7.client import MLLPClient
from sqlalchemy import select

from huren.adapters.db.results import SqlIntakeStore
from huren.adapters.db.tables import inbound_message, result
from huren.adapters.hl7v2.mllp import FrameReader, MllpServer, frame
from huren.adapters.hl7v2.parse import AckCode, ParsedOru
from huren.adapters.hl7v2.receiver import Hl7Receiver, MllpGroupCommit, Refusal
from huren.adapters.hl7v2.responses import SqlResponseLog
from huren.bootstrap import Container
from huren.services.intake import Channel, IntakeService
from tests.fixtures.hl7 import with_control_id, with_field
from tests.integration.test_hl7_mllp import RunningServer, ack_fields, lab_message, stored
from tests.integration.test_intake_receive_many import _WatchedStore


class HeldFirstCommit(MllpGroupCommit):
    """Holds the first commit until all ``expected`` messages are prepared and waiting,
    so that the rest arrive in the next batch together (what a busy server sees)."""

    def __init__(self, receiver: Hl7Receiver, expected: int) -> None:
        super().__init__(receiver)
        self.expected = expected
        self.server: MllpServer | None = None
        self.batch_sizes: list[int] = []

    def commit(self, prepared: Sequence[ParsedOru | Refusal]) -> list[bytes]:
        if not self.batch_sizes:
            assert self.server is not None
            assert self.server.committer is not None
            deadline = time.monotonic() + 20
            while self.server.committer.backlog() < self.expected - len(prepared):
                assert time.monotonic() < deadline, "the pipelined messages never arrived"
                time.sleep(0.005)
        self.batch_sizes.append(len(prepared))
        return super().commit(prepared)


def _receiver(world: Container) -> Hl7Receiver:
    return Hl7Receiver(world.intake, world.clock, Channel.HL7V2_MLLP, SqlResponseLog(world.engine))


@pytest.fixture
def mllp(world: Container) -> Iterator[RunningServer]:
    server = MllpServer(host="127.0.0.1", port=0, batch=MllpGroupCommit(_receiver(world)))
    with RunningServer(server) as running:
        yield running


def read_acks(sock: socket.socket, n: int) -> list[bytes]:
    reader = FrameReader(1 << 20)
    acks: list[bytes] = []
    while len(acks) < n:
        data = sock.recv(65536)
        assert data, "the server closed the connection"
        acks += reader.feed(data)
    return acks


def test_concurrent_connections_each_get_their_acks_in_order(
    mllp: RunningServer, world: Container
) -> None:
    def send(conn: int) -> list[tuple[str, str]]:
        with MLLPClient("127.0.0.1", mllp.port) as client:
            return [ack_fields(client.send_message(lab_message(conn * 100 + i))) for i in range(8)]

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(send, range(1, 7)))
    for conn, acks in enumerate(results, start=1):
        assert acks == [("AA", f"LIS2026061400{conn * 100 + i:04d}") for i in range(8)]
    assert stored(world) == 48
    committer = mllp.server.committer
    assert committer is not None
    assert committer.messages == 48


def test_messages_sent_without_waiting_are_committed_together_and_acknowledged_in_order(
    world: Container,
) -> None:
    """Ten messages in one write: what piled up while the first batch committed is
    committed in one more transaction — among them a correction of the first report, a
    resend, and a message intake refuses — and the ACKs come back in the order sent."""
    messages = [lab_message(n) for n in range(1, 9)]
    corrected = with_control_id(with_field(lab_message(1), "OBR", 25, "C"), "LIS2026061400C1")
    too_long = lab_message(9).replace("RPT-LIS-20260614-0009", "RPT-" + "9" * 70)
    messages[4] = messages[2]  # a resend of the third message, same control id
    messages += [corrected, too_long]
    handler = HeldFirstCommit(_receiver(world), expected=len(messages))
    server = MllpServer(host="127.0.0.1", port=0, batch=handler)
    handler.server = server
    with (
        RunningServer(server) as running,
        socket.create_connection(("127.0.0.1", running.port)) as sock,
    ):
        sock.sendall(b"".join(frame(m.encode()) for m in messages))
        acks = read_acks(sock, len(messages))

    assert len(handler.batch_sizes) <= 2  # the first message alone at most, then the rest
    assert sum(handler.batch_sizes) == len(messages)
    controls = [hl7.parse(m).segment("MSH")[10][0] for m in messages]
    assert [ack_fields(a)[1] for a in acks] == [str(c) for c in controls]
    codes = [ack_fields(a)[0] for a in acks]
    assert codes == ["AA"] * 9 + ["AE"]
    err = hl7.parse(acks[-1].decode()).segment("ERR")
    assert str(err[2]) == "OBR^1^3^1"
    assert "重复消息" in hl7.parse(acks[4].decode()).segment("MSA")[3][0]
    with world.engine.connect() as conn:
        rows = conn.execute(select(result.c.report_no, result.c.version, result.c.status)).all()
        statuses = [
            s
            for (s,) in conn.execute(
                select(inbound_message.c.status).order_by(inbound_message.c.id)
            )
        ]
    assert sorted(rows) == sorted(
        [(f"RPT-LIS-20260614-{n:04d}", 1, "final") for n in range(2, 9) if n != 5]
        + [("RPT-LIS-20260614-0001", 2, "corrected")]
    )
    assert statuses.count("duplicate") == 1
    assert statuses.count("rejected") == 1


def test_message_that_cannot_be_stored_gets_ar_and_the_others_of_its_batch_aa(
    world: Container,
) -> None:
    """The batch transaction fails for one message's sake (the database refuses a value):
    the messages are stored one by one; that one is answered AR 207 (send again later)."""
    store = _WatchedStore(SqlIntakeStore(world.engine), "RPT-LIS-20260614-0002")
    intake = IntakeService(store, world.catalog, world.vault, world.clock)  # type: ignore[arg-type]
    receiver = Hl7Receiver(intake, world.clock, Channel.HL7V2_MLLP, SqlResponseLog(world.engine))
    prepared = [receiver.prepare(lab_message(n).encode()) for n in (1, 2, 3)]
    replies = receiver.commit(prepared)

    assert [r.code for r in replies] == [AckCode.AA, AckCode.AR, AckCode.AA]
    assert str(hl7.parse(replies[1].payload.decode()).segment("ERR")[3]).startswith("207^")
    assert stored(world) == 2
    assert store.transactions == 1 + 3


class GatedCommit(MllpGroupCommit):
    """Commits only once ``gate`` is set."""

    def __init__(self, receiver: Hl7Receiver) -> None:
        super().__init__(receiver)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.first_batch = 0

    def commit(self, prepared: Sequence[ParsedOru | Refusal]) -> list[bytes]:
        self.first_batch = self.first_batch or len(prepared)
        self.entered.set()
        assert self.gate.wait(20)
        return super().commit(prepared)


def test_stopping_the_server_commits_and_answers_what_it_received(world: Container) -> None:
    """Stopping stops reading, but the messages received are committed and acknowledged
    before the connection closes."""
    handler = GatedCommit(_receiver(world))
    running = RunningServer(MllpServer(host="127.0.0.1", port=0, batch=handler)).__enter__()
    stopping = threading.Thread(target=running.__exit__, args=(None, None, None))
    try:
        with socket.create_connection(("127.0.0.1", running.port)) as sock:
            sock.sendall(b"".join(frame(lab_message(n).encode()) for n in range(1, 6)))
            assert handler.entered.wait(20)
            committer = running.server.committer
            assert committer is not None
            deadline = time.monotonic() + 20
            while handler.first_batch + committer.backlog() < 5:  # all five received
                assert time.monotonic() < deadline
                time.sleep(0.005)
            stopping.start()
            time.sleep(0.2)  # the server is stopping while the batch waits at the gate
            handler.gate.set()
            acks = read_acks(sock, 5)
            assert sock.recv(65536) == b""  # then the server closes the connection
    finally:
        handler.gate.set()
        if not stopping.is_alive() and stopping.ident is None:
            running.__exit__(None, None, None)
        stopping.join(20)
    assert [ack_fields(a)[0] for a in acks] == ["AA"] * 5
    assert stored(world) == 5
    assert not any(t.is_alive() for t in threading.enumerate() if t.name.startswith("mllp-"))


def test_a_refused_message_is_recorded_and_answered_in_order_among_accepted_ones(
    mllp: RunningServer, world: Container
) -> None:
    """A message the parser refuses is recorded by the committing thread (``prepare``
    only parses) and answered in its place among the others of its batch."""
    not_oru = lab_message(2).replace("ORU^R01^ORU_R01", "ADT^A01^ADT_A01")
    with socket.create_connection(("127.0.0.1", mllp.port)) as sock:
        sock.sendall(b"".join(frame(m.encode()) for m in (lab_message(1), not_oru, lab_message(3))))
        acks = [ack_fields(a) for a in read_acks(sock, 3)]
    assert [a[0] for a in acks] == ["AA", "AR", "AA"]
    assert stored(world) == 2
    with world.engine.connect() as c:
        statuses = [r.status for r in c.execute(select(inbound_message.c.status))]
    assert sorted(statuses) == ["accepted", "accepted", "rejected"]

"""ORU^R01 over MLLP with ACK-after-commit, side by side with an MLLP echo server.

    uv run python bench/bench_mllp.py [--seconds 20] [--rounds 3] [--connections 4]
        [--per-message | --workers N]

Both servers run in this process on free 127.0.0.1 ports — or, with ``--workers N``,
HuRen runs as ``huren serve --workers N`` in its own processes (N workers sharing the
MLLP port). The load comes from a separate
client process (``--client``) holding ``--connections`` MLLP connections, each sending
its next message as soon as the previous ACK arrived (what interface engines do). The
echo server frames and returns each message — the transport's ceiling on this machine;
HuRen parses, stores through ``container.intake`` (patient matching, 对码, marks) and
only then answers AA. By default as ``huren serve`` runs it, with group commit: the
messages of all connections that arrive while one batch commits are stored in one
transaction (``intake.receive_many``), each ACK released after that commit;
``--per-message`` measures one transaction per message instead. Every message is a new
report of one of 500 patients of hospital A (liver panel, 6 OBX). In this process, as in
``huren serve``, what was built before the load is frozen out of the garbage collector
(``gc.freeze``): left in its generations it cost ~7 µs of CPU a message in collections.

SQLite (a temporary file) by default; PostgreSQL when HUREN_TEST_DATABASE_URL is set
(a temporary database is created there and dropped afterwards). Target (issue 7):
≥ 3,000 messages/s sustained. Each round runs the echo server and HuRen (fresh
database) one after the other; prints messages/s, the ratio to the echo server of the
same round and the server's CPU time per message (the server's processes': steadier
than wall time on a shared machine), and their medians. With several workers the kernel
spreads the connections over them by a hash: use more connections than workers.

Few connections measure latency (each waits for its ACK); many measure what the server
can sustain. On 2 cores, six 60 s rounds: ``--workers 2 --connections 256`` gave 2,788–3,400
msg/s (ratio 0.38–0.48); one process is bound by one core at about 2,400 msg/s."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import cast

from pydantic import SecretStr
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from huren.adapters.clock import SystemClock
from huren.adapters.crypto import new_key
from huren.adapters.db import engine as db_engine
from huren.adapters.db.tables import result
from huren.adapters.hl7v2.mllp import FrameReader, MllpServer, frame
from huren.adapters.hl7v2.receiver import Hl7Receiver, MllpGroupCommit
from huren.bootstrap import build
from huren.config import Settings
from huren.services.intake import Channel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.hl7 import LAB_LFT_V251, sample_text, with_control_id, with_field  # noqa: E402
from tests.fixtures.world import seed_world  # noqa: E402

from bench.world import free_port, process_tree_cpu  # noqa: E402

PATIENTS = 500


# ---------------------------------------------------------------- load generator (client)
def message(conn: int, n: int) -> bytes:
    text = with_control_id(sample_text(LAB_LFT_V251), f"B{conn}-{n:07d}")
    text = with_field(text, "OBR", 3, f"BENCH-{conn}-{n:07d}")
    mrn = f"BM{(conn * 7919 + n) % PATIENTS:06d}"
    text = with_field(text, "PID", 3, f"{mrn}^^^H130100001^MR")
    return frame(text.encode())


def client_main(port: int, connections: int, seconds: float, expect_aa: bool) -> None:
    """Run the load; print "<acks> <elapsed>" on stdout."""
    counts = [0] * connections
    failures: list[bytes] = []
    start_gate = threading.Barrier(connections + 1)
    deadline = [0.0]

    def run(conn: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader = FrameReader(1 << 20)
            start_gate.wait()
            n = 0
            while time.perf_counter() < deadline[0]:
                sock.sendall(message(conn, n))
                got: list[bytes] = []
                while not got:
                    data = sock.recv(65536)
                    if not data:
                        return
                    got = reader.feed(data)
                if expect_aa and b"MSA|AA|" not in got[0]:
                    failures.append(got[0])
                    return
                n += 1
                counts[conn] = n

    threads = [threading.Thread(target=run, args=(c,)) for c in range(connections)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    deadline[0] = t0 + seconds
    start_gate.wait()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"not accepted: {failures[0][:400]!r}")
    print(sum(counts), time.perf_counter() - t0)


def load(port: int, connections: int, seconds: float, mode: str) -> tuple[int, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--client", str(port), str(connections), str(seconds), mode],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"load client ({mode}) failed:\n{out.stderr[-2000:]}")
    acks, elapsed = out.stdout.split()
    return int(acks), float(elapsed)


# ---------------------------------------------------------------- servers
class Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def start_echo() -> tuple[asyncio.Server, int]:
    """A bare MLLP echo: frames in, the same frame back."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = FrameReader(1 << 24)
        while data := await reader.read(65536):
            for msg in frames.feed(data):
                writer.write(frame(msg))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


def database(tmp: Path) -> tuple[str, str | None]:
    """(url, admin url to drop it with) — SQLite file or a fresh PostgreSQL database."""
    pg = os.environ.get("HUREN_TEST_DATABASE_URL", "")
    if not pg:
        return f"sqlite:///{tmp / 'bench.db'}", None
    base = make_url(pg)
    name = f"huren_bench_{os.getpid()}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False), pg


def drop(url: str, admin_url: str | None) -> None:
    if admin_url is None:
        return
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


LISTENING = re.compile(r"huren\.mllp: MLLP 监听")


def serve_round(args: argparse.Namespace, tmp: Path, url: str) -> tuple[int, float, float, int]:
    """HuRen as ``huren serve --workers N`` on ``url`` (migrated and seeded): (ACKs,
    seconds, server CPU seconds during the load, results stored)."""
    mllp_port = free_port()
    env = os.environ | {
        "HUREN_DATABASE_URL": url,
        "HUREN_DATA_DIR": str(tmp / "data"),
        "HUREN_PORT": str(free_port()),
        "HUREN_MLLP_PORT": str(mllp_port),
        "HUREN_START_DICOM": "false",
        "HUREN_BACKGROUND_JOBS": "false",
        "HUREN_IDENTIFIER_HASH_KEY": new_key(),
        "HUREN_IDENTIFIER_ENCRYPTION_KEY": new_key(),
        "HUREN_TOKEN_SIGNING_KEY": new_key(),
    }
    log_path = tmp / "serve.log"
    huren = Path(sys.executable).parent / "huren"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [str(huren), "serve", "--workers", str(args.workers)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 180
        while len(LISTENING.findall(log_path.read_text(errors="replace"))) < args.workers:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"huren serve did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        cpu0 = process_tree_cpu(proc.pid)
        acks, seconds = load(mllp_port, args.connections, args.seconds, "ack")
        cpu = process_tree_cpu(proc.pid) - cpu0
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    engine = create_engine(url)
    with engine.connect() as c:
        stored = c.execute(select(func.count()).select_from(result)).scalar_one()
    engine.dispose()
    return acks, seconds, cpu, stored


def run_round(args: argparse.Namespace, loop: Loop) -> tuple[float, float, float, float, str]:
    """One echo run and one HuRen run on a fresh database: (echo msg/s, HuRen msg/s,
    echo CPU µs/msg, HuRen CPU µs/msg, notes). CPU is the servers' (the load client
    runs in its own process): steadier than wall time on a shared machine."""
    server, echo_port = cast(tuple[asyncio.Server, int], loop.run(start_echo()))
    cpu0 = time.process_time()
    echo_acks, echo_s = load(echo_port, args.connections, args.seconds, "echo")
    echo_cpu = time.process_time() - cpu0
    server.close()
    with tempfile.TemporaryDirectory() as tmpdir:
        url, admin_url = database(Path(tmpdir))
        try:
            db_engine.upgrade(url)
            settings = Settings(
                database_url=url,
                data_dir=Path(tmpdir) / "data",
                identifier_hash_key=SecretStr(new_key()),
                identifier_encryption_key=SecretStr(new_key()),
                token_signing_key=SecretStr(new_key()),
            )
            container = build(settings, clock=SystemClock())
            seed_world(container.engine, container.clock.now())
            if args.workers:
                container.close()
                ours_acks, ours_s, ours_cpu, stored = serve_round(args, Path(tmpdir), url)
                return (
                    echo_acks / echo_s,
                    ours_acks / ours_s,
                    echo_cpu / max(echo_acks, 1) * 1e6,
                    ours_cpu / max(ours_acks, 1) * 1e6,
                    f"results stored: {stored} (every ACKed message: {stored >= ours_acks})",
                )
            receiver = Hl7Receiver(container.intake, container.clock, Channel.HL7V2_MLLP)
            if args.per_message:
                mllp = MllpServer(
                    lambda raw: receiver.handle(raw).payload, "127.0.0.1", 0, workers=args.threads
                )
            else:
                mllp = MllpServer(
                    host="127.0.0.1",
                    port=0,
                    batch=MllpGroupCommit(receiver),
                    max_batch=args.max_batch,
                )
            loop.run(mllp.start())
            # As ``huren serve`` does once everything is built (cli/server.py): what lives
            # as long as the server stays out of the collector's generations.
            gc.collect()
            gc.freeze()
            cpu0 = time.process_time()
            ours_acks, ours_s = load(mllp.port, args.connections, args.seconds, "ack")
            ours_cpu = time.process_time() - cpu0
            gc.unfreeze()
            loop.run(mllp.stop())
            committer = mllp.committer
            with container.engine.connect() as c:
                stored = c.execute(select(func.count()).select_from(result)).scalar_one()
            container.close()
        finally:
            drop(url, admin_url)
    notes = f"results stored: {stored} (every ACKed message: {stored >= ours_acks})"
    if committer is not None and committer.batches:
        notes += (
            f"; group commits: {committer.batches}, "
            f"{committer.messages / committer.batches:.1f} messages each on average"
        )
    return (
        echo_acks / echo_s,
        ours_acks / ours_s,
        echo_cpu / max(echo_acks, 1) * 1e6,
        ours_cpu / max(ours_acks, 1) * 1e6,
        notes,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each run")
    parser.add_argument("--rounds", type=int, default=3, help="echo + HuRen runs (median)")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument(
        "--threads", type=int, default=4, help="intake worker threads (--per-message)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="run HuRen as `huren serve --workers N` (default 0: in this process)",
    )
    parser.add_argument(
        "--per-message", action="store_true", help="one transaction per message, no group commit"
    )
    parser.add_argument("--max-batch", type=int, default=64, help="messages per group commit")
    args = parser.parse_args()
    backend = make_url(os.environ.get("HUREN_TEST_DATABASE_URL") or "sqlite://").get_backend_name()
    mode = "one transaction per message" if args.per_message else "group commit"
    if args.workers:
        mode += f", huren serve --workers {args.workers}"
    print(
        f"ORU^R01 over MLLP, {args.connections} connections, {args.seconds:g} s a run, "
        f"{args.rounds} rounds, {backend}, {mode}"
    )
    loop = Loop()
    rounds = []
    header = f"  {'round':<8}{'load':>6}{'echo/s':>9}{'HuRen/s':>9}{'ratio':>8}"
    print(header + f"{'echo CPU µs/msg':>17}{'HuRen CPU µs/msg':>18}")
    for r in range(args.rounds):
        load_avg = os.getloadavg()[0]
        echo, ours, echo_cpu, ours_cpu, notes = run_round(args, loop)
        rounds.append((echo, ours, echo_cpu, ours_cpu))
        print(
            f"  {r + 1:<8}{load_avg:>6.1f}{echo:>9.0f}{ours:>9.0f}{ours / echo:>8.3f}"
            f"{echo_cpu:>17.0f}{ours_cpu:>18.0f}"
        )
        print(f"          {notes}")
    loop.close()
    med = statistics.median
    print(
        f"  {'median':<14}{med(e for e, *_ in rounds):>9.0f}{med(o for _, o, *_ in rounds):>9.0f}"
        f"{med(o / e for e, o, *_ in rounds):>8.3f}{med(c for *_, c, _ in rounds):>17.0f}"
        f"{med(c for *_, c in rounds):>18.0f}"
    )
    print(
        f"  messages per CPU-second of the server: {1e6 / med(c for *_, c in rounds):.0f} "
        f"(echo {1e6 / med(c for *_, c, _ in rounds):.0f})"
    )
    print("  target (issue 7): ≥ 3000 msg/s sustained")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--client":
        client_main(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5] == "ack")
    else:
        main()

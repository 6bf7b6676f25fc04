"""What the database-backed benchmarks share: settings for a throw-away or an existing
database, filling a throw-away one with the synthetic world, and percentiles."""

from __future__ import annotations

import argparse
import os
import socket
import time
from pathlib import Path

from pydantic import SecretStr

from huren.adapters.crypto import new_key
from huren.adapters.db import engine as db_engine
from huren.bootstrap import Container
from huren.config import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its children so far: a server's cost,
    steadier than wall time on a shared machine."""
    ticks = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue  # ended meanwhile
        ticks += int(stat[11]) + int(stat[12])
        pids += [int(c) for c in children]
    return ticks / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def settings_for(args: argparse.Namespace, tmp: Path) -> Settings:
    """``--use-existing``: the database of HUREN_DATABASE_URL (and its keys); otherwise a
    new SQLite file under ``tmp`` with fresh keys."""
    if args.use_existing:
        return Settings(start_mllp=False, start_dicom=False)
    return Settings(
        database_url=f"sqlite:///{tmp / 'bench.db'}",
        data_dir=tmp / "data",
        identifier_hash_key=SecretStr(new_key()),
        identifier_encryption_key=SecretStr(new_key()),
        token_signing_key=SecretStr(new_key()),
        start_mllp=False,
        start_dicom=False,
    )


def prepare(c: Container, args: argparse.Namespace) -> None:
    """Check an existing database is migrated, or migrate and fill the throw-away one."""
    if args.use_existing:
        db_engine.require_migrated(c.engine)
        return
    from huren.cli.synth import fill_demo_database

    db_engine.upgrade(c.settings.database_url)
    t0 = time.perf_counter()
    fill_demo_database(c, seed=args.seed, institutions=60, results=args.results)
    print(f"合成 {args.results} 条结果用时 {time.perf_counter() - t0:.1f} s")

"""An acknowledged result is never lost (R3): a real ``huren serve`` process is killed
with SIGKILL in the middle of a stream of transaction Bundles; after a restart every
acknowledged Bundle is stored, and resending the whole stream stores nothing twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from huren.adapters.crypto import new_key
from huren.adapters.db import engine as db_engine
from huren.adapters.db.tables import result
from huren.bootstrap import build
from huren.config import Settings
from huren.domain.accounts import Role
from huren.services.accounts import NewAccount
from tests.e2e.live import free_port
from tests.fixtures.actors import SEED
from tests.fixtures.fhir.builders import lab_bundle
from tests.fixtures.world import HOSP_A, seed_world

pytestmark = pytest.mark.slow


@contextmanager
def server(env: dict[str, str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "huren.cli.main", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("服务未能启动: " + log.read_text(errors="replace")[-2000:])
        time.sleep(0.1)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_every_acknowledged_bundle_survives_sigkill_and_resend_stores_nothing_twice(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    keys = {"hash": new_key(), "enc": new_key(), "tok": new_key()}
    env = {
        **os.environ,
        "HUREN_DATABASE_URL": url,
        "HUREN_IDENTIFIER_HASH_KEY": keys["hash"],
        "HUREN_IDENTIFIER_ENCRYPTION_KEY": keys["enc"],
        "HUREN_TOKEN_SIGNING_KEY": keys["tok"],
        "HUREN_START_MLLP": "false",
        "HUREN_START_DICOM": "false",
        "HUREN_DATA_DIR": str(tmp_path / "data"),
    }
    db_engine.upgrade(url)
    settings = Settings(
        database_url=url,
        identifier_hash_key=keys["hash"],
        identifier_encryption_key=keys["enc"],
        token_signing_key=keys["tok"],
    )
    c = build(settings)
    seed_world(c.engine, datetime.now(UTC))
    c.accounts.create_account(
        NewAccount("lis-a", "LIS", Role.INTEGRATION, institution=HOSP_A), actor=SEED
    )
    key = c.accounts.create_api_key("lis-a", actor=SEED).key
    headers = {"Authorization": f"ApiKey {key}", "Content-Type": "application/fhir+json"}

    bundles = [
        json.dumps(lab_bundle(f"JY-K-{k:04d}", n_obs=8, bundle_id=f"urn:uuid:k-{k}")).encode()
        for k in range(150)
    ]
    acknowledged: dict[int, str] = {}
    port = free_port()
    log = tmp_path / "server.log"

    with server(env, port, log) as proc:
        stop = threading.Event()

        def stream() -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as http:
                for k, body in enumerate(bundles):
                    if stop.is_set():
                        return
                    try:
                        r = http.post("/fhir", content=body, timeout=5)
                    except httpx.HTTPError:
                        return  # the server died under us: this one is not acknowledged
                    if r.status_code == 200:
                        acknowledged[k] = r.json()["entry"][-1]["response"]["location"]

        sender = threading.Thread(target=stream)
        sender.start()
        while len(acknowledged) < 30 and sender.is_alive():
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)  # in the middle of the stream
        proc.wait(10)
        stop.set()
        sender.join(10)

    assert 30 <= len(acknowledged) < len(bundles)
    with c.engine.connect() as conn:
        stored = set(conn.execute(select(result.c.report_no)).scalars())
    assert {f"JY-K-{k:04d}" for k in acknowledged} <= stored

    with (
        server(env, port, log),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as http,
    ):
        for k, body in enumerate(bundles):
            r = http.post("/fhir", content=body, timeout=10)
            assert r.status_code == 200
            if k in acknowledged:
                assert r.json()["entry"][-1]["response"]["location"] == acknowledged[k]
    with c.engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(result)).scalar_one()
        distinct = conn.execute(select(func.count(func.distinct(result.c.report_no)))).scalar_one()
    assert total == distinct == len(bundles)
    c.close()

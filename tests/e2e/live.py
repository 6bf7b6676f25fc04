"""A real HTTP server (uvicorn) on a free 127.0.0.1 port, serving a test container, for
tests that talk to the platform as an outside client would (httpx, a browser)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from huren.adapters.crypto import new_key
from huren.api.app import create_app
from huren.bootstrap import Container


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(container: Container) -> Iterator[str]:
    """Serve ``container`` over HTTP; yields the base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(container), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("测试服务器未能启动")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def serve_env(db_url: str, tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment of a ``huren serve`` child process: its database, a data folder
    under ``tmp_path``, a free HTTP port and fresh keys; ``settings``: further settings by
    their name after ``HUREN_`` (``MLLP_PORT="2576"``)."""
    return (
        os.environ
        | {
            "HUREN_DATABASE_URL": db_url,
            "HUREN_DATA_DIR": str(tmp_path / "data"),
            "HUREN_PORT": str(free_port()),
            "HUREN_IDENTIFIER_HASH_KEY": new_key(),
            "HUREN_IDENTIFIER_ENCRYPTION_KEY": new_key(),
            "HUREN_TOKEN_SIGNING_KEY": new_key(),
        }
        | {f"HUREN_{name}": value for name, value in settings.items()}
    )


class ServeProcess:
    """``huren serve`` (with ``args``) as a child process with its own environment, for
    tests that kill it (SIGKILL) mid-stream and start it again. ``port`` is the listener
    it waits for."""

    def __init__(
        self,
        env: dict[str, str],
        port: int,
        log: Path,
        timeout: float = 90,
        args: Sequence[str] = (),
    ) -> None:
        self.env, self.port, self.log, self.timeout, self.args = env, port, log, timeout, args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self.proc is not None, "not started"
        return self.proc

    def start(self) -> None:
        huren = Path(sys.executable).parent / "huren"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(huren), "serve", *self.args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text(errors="replace")[-2000:]
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"huren serve 未能在端口 {self.port} 上启动监听")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 15) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

"""Runs the HTTP server with the MLLP and DICOM listeners: in one process, or
(``huren serve --workers N``) in N worker processes under a supervising parent.

With several workers every worker listens on the HTTP port and on the MLLP port
(SO_REUSEPORT: the kernel hands each new connection to one of them; all of a
connection's requests or messages stay with that worker). What must exist once runs in
worker 0 only:

- the DICOM listener: its store journal (one fsync shared by the instances waiting at
  that moment) belongs to one process, and an association must find its C-MOVE
  destinations and pending instances in the process it talks to;
- the background jobs (``huren.api.background``): once a minute in N processes would be
  N times the work for nothing, and two monitoring refreshes on SQLite would only fail
  each other's write (an expiry is recorded once either way: ``close_expired`` writes
  only a qualification still active).

The parent starts the workers, restarts one that dies (after a pause that grows while
it keeps dying early), and on SIGTERM or SIGINT sends SIGTERM to every worker and waits
for them: each stops reading, commits and acknowledges what it received, and exits.
A worker whose parent is gone stops itself."""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from types import FrameType

import uvicorn

from huren.adapters.db import engine as db_engine
from huren.api.app import create_app
from huren.bootstrap import build
from huren.config import Settings

log = logging.getLogger("huren.serve")

# A worker stopping: uvicorn waits for open HTTP requests, the MLLP listener answers
# what it received (up to 5 s per connection) and the DICOM listener its associations.
STOP_SECONDS = 30.0
# A worker that dies within this time of starting is restarted after a growing pause.
EARLY_DEATH_SECONDS = 10.0
MAX_RESTART_PAUSE_SECONDS = 30.0


class PortTaken(RuntimeError):
    """A listener's port is held by another process: nothing was started."""


def require_free_ports(settings: Settings, host: str, port: int) -> None:
    """Raise ``PortTaken`` naming every listener whose port another process holds.

    Checked with a plain bind, without SO_REUSEPORT: the workers of ``huren serve
    --workers`` share their ports with SO_REUSEPORT, and so could any other process
    that sets it — another HuRen started by the same user would then bind the MLLP port
    beside this one, and the kernel would hand each sender's connection to either, so
    that a hospital's messages went into two databases (seen: a second demo printed the
    port as its own while the first received the messages)."""
    listeners = [("HTTP", host, port)]
    if settings.start_mllp:
        listeners.append(("HL7 MLLP（HUREN_MLLP_PORT）", settings.mllp_host, settings.mllp_port))
    if settings.start_dicom:
        listeners.append(("DICOM（HUREN_DICOM_PORT）", settings.dicom_host, settings.dicom_port))
    taken = []
    for name, h, p in listeners:
        family, kind, proto, _, address = socket.getaddrinfo(
            h, p, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is free
            try:
                sock.bind(address)
            except OSError as exc:
                taken.append(f"{name} {h}:{p}（{exc.strerror or exc}）")
    if taken:
        raise PortTaken(
            "端口已被其他进程占用，未启动: " + "；".join(taken) + "。请停止占用的进程或改用其他端口"
        )


def run_server(settings: Settings, host: str, port: int, *, workers: int = 1) -> None:
    """Serve until stopped; ``workers`` > 1: under a supervising parent. Raises
    ``PortTaken`` (and with workers ``DatabaseNotMigrated``) before starting anything."""
    require_free_ports(settings, host, port)
    if workers <= 1:
        _serve(settings, host, port, None)
        return
    engine = db_engine.make_engine(settings.database_url)
    try:
        db_engine.require_migrated(engine)
    finally:
        engine.dispose()
    Supervisor(settings, host, port, workers).run()


def _serve(settings: Settings, host: str, port: int, http_socket: socket.socket | None) -> None:
    container = build(settings)
    app = create_app(container)
    if settings.start_mllp:
        from huren.api.routes.hl7v2 import install_mllp_listener

        install_mllp_listener(app, reuse_port=http_socket is not None)
    # Everything built so far (modules, catalog, app) lives as long as the process: keep it
    # out of the garbage collector's generations so collections stay short on hot paths.
    gc.collect()
    gc.freeze()
    if http_socket is None:
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
        return
    config = uvicorn.Config(app, log_level="info", access_log=False)
    uvicorn.Server(config).run(sockets=[http_socket])


def shared_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket that other processes of this user may also bind
    (SO_REUSEPORT)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock


def worker_settings(settings: Settings, index: int) -> Settings:
    """Worker 0 runs everything; the others leave DICOM and the background jobs to it."""
    if index == 0:
        return settings
    return settings.model_copy(update={"start_dicom": False, "background_jobs": False})


def worker_main(settings: Settings, host: str, port: int, index: int, parent: int) -> None:
    """A worker process (``multiprocessing`` spawn target)."""
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [worker {index}] %(name)s: %(message)s",
    )
    threading.Thread(
        target=_stop_when_orphaned, args=(parent,), name="huren-orphan-watch", daemon=True
    ).start()
    _serve(worker_settings(settings, index), host, port, shared_listener(host, port))


def _stop_when_orphaned(parent: int) -> None:
    """SIGTERM to this worker once its parent is gone (killed without forwarding a
    stop): the worker stops cleanly instead of serving unsupervised."""
    while os.getppid() == parent:
        time.sleep(1.0)
    log.warning("监督进程已退出，工作进程停止")
    os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    started: float = field(default_factory=time.monotonic)
    pause: float = 0.0  # before the next restart, while it keeps dying early


class Supervisor:
    """The parent of ``huren serve --workers N``."""

    def __init__(self, settings: Settings, host: str, port: int, workers: int) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.count = workers
        self._context = multiprocessing.get_context("spawn")
        self._stop = threading.Event()
        self._workers: list[_Worker] = []

    def run(self) -> None:
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            self._workers = [_Worker(i, self._start(i)) for i in range(self.count)]
            log.info(
                "已启动 %s 个工作进程（HTTP %s:%s，MLLP %s:%s）",
                self.count,
                self.host,
                self.port,
                self.settings.mllp_host,
                self.settings.mllp_port,
            )
            while not self._stop.wait(0.5):
                self._restart_dead()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start(self, index: int) -> BaseProcess:
        process = self._context.Process(
            target=worker_main,
            args=(self.settings, self.host, self.port, index, os.getpid()),
            name=f"huren-worker-{index}",
        )
        process.start()
        return process

    def _on_signal(self, _sig: int, _frame: FrameType | None) -> None:
        self._stop.set()

    def _restart_dead(self) -> None:
        now = time.monotonic()
        for worker in self._workers:
            if worker.process.is_alive():
                if now - worker.started >= EARLY_DEATH_SECONDS:
                    worker.pause = 0.0
                continue
            log.error(
                "工作进程 %s（pid %s）意外退出，退出码 %s",
                worker.index,
                worker.process.pid,
                worker.process.exitcode,
            )
            if now - worker.started < EARLY_DEATH_SECONDS:
                worker.pause = min(max(1.0, worker.pause * 2), MAX_RESTART_PAUSE_SECONDS)
            if self._stop.wait(worker.pause):
                return
            worker.process.join()
            worker.process = self._start(worker.index)
            worker.started = time.monotonic()
            log.info("工作进程 %s 已重启（pid %s）", worker.index, worker.process.pid)

    def _stop_all(self) -> None:
        """SIGTERM to every worker; SIGKILL to one still running after STOP_SECONDS."""
        for worker in self._workers:
            if worker.process.is_alive():
                worker.process.terminate()
        deadline = time.monotonic() + STOP_SECONDS
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.error("工作进程 %s 未能在 %s 秒内停止，强制结束", worker.index, STOP_SECONDS)
                worker.process.kill()
                worker.process.join()
        log.info("所有工作进程已停止")

"""MLLP listener (HL7 v2.5.1 Appendix C, Minimal Lower Layer Protocol, release 2).

A frame is <SB=0x0B> message <EB=0x1C><CR=0x0D>. Each connection may carry many
messages; a frame may arrive split over several reads, several frames in one read;
bytes outside a frame (keep-alive newlines, a half frame from a crashed sender followed
by a new <SB>) are skipped. Messages of one connection are answered in order, one ACK
per message, and the ACK is written only after the handler — which commits — returned.
The handler blocks, so it runs in a worker thread; the event loop only moves bytes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("huren.mllp")

SB = b"\x0b"
EB = b"\x1c"
CR = b"\x0d"
FRAME_END = EB + CR

Handler = Callable[[bytes], bytes]  # message bytes (unframed) → ACK bytes (unframed)


def frame(payload: bytes) -> bytes:
    return SB + payload + FRAME_END


class FrameReader:
    """Splits a byte stream into MLLP frames, skipping anything outside them."""

    def __init__(self, max_bytes: int) -> None:
        self.buffer = bytearray()
        self.max_bytes = max_bytes
        self.skipped = 0  # bytes of garbage dropped so far

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        frames: list[bytes] = []
        while True:
            start = self.buffer.find(SB)
            if start < 0:
                self.skipped += len(self.buffer)
                self.buffer.clear()
                return frames
            if start > 0:
                self.skipped += start
                del self.buffer[:start]
            end = self.buffer.find(FRAME_END, 1)
            restart = self.buffer.find(SB, 1)
            if restart > 0 and (end < 0 or restart < end):
                # A new frame starts before this one ended: the sender gave up on it.
                self.skipped += restart
                del self.buffer[:restart]
                continue
            if end < 0:
                if len(self.buffer) > self.max_bytes:
                    raise FrameTooLarge(len(self.buffer))
                return frames
            frames.append(bytes(self.buffer[1:end]))
            del self.buffer[: end + len(FRAME_END)]


class FrameTooLarge(Exception):
    pass


class MllpServer:
    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 2575,
        *,
        workers: int = 8,
        max_message_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mllp")
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, reuse_address=True, limit=1 << 20
        )
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        log.info("MLLP 监听 %s:%s", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)
            self._server = None
        await asyncio.get_running_loop().run_in_executor(None, self.executor.shutdown, True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = writer.get_extra_info("peername")
        frames = FrameReader(self.max_message_bytes)
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for message in frames.feed(data):
                    ack = await loop.run_in_executor(self.executor, self.handler, message)
                    writer.write(frame(ack))
                    await writer.drain()
        except FrameTooLarge as exc:
            log.warning("MLLP %s: 消息超过 %s 字节，断开连接", peer, exc.args[0])
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if frames.skipped:
                log.info("MLLP %s: 跳过帧外字节 %s", peer, frames.skipped)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._connections.discard(task)

"""HL7 v2 ORU^R01 over HTTP (for engines that prefer it to MLLP) and the MLLP listener's
start/stop hooks. Both channels go through the same ``Hl7Receiver``: the ACK comes back
only after the intake transaction has committed."""

from __future__ import annotations

import codecs
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from huren.adapters.hl7v2.mllp import MAX_MESSAGE_BYTES, MllpServer
from huren.adapters.hl7v2.receiver import Hl7Receiver, MllpGroupCommit
from huren.adapters.hl7v2.responses import SqlResponseLog
from huren.api.auth import require_roles
from huren.api.deps import container
from huren.api.http_errors import ContentTooLarge, UnsupportedMediaType
from huren.api.problems import PROBLEM
from huren.bootstrap import Container
from huren.domain.accounts import INSTITUTION_ROLES, Principal, Role
from huren.domain.errors import Problem
from huren.services.intake import Channel

router = APIRouter(tags=["HL7 v2"])

ER7 = "x-application/hl7-v2+er7"
# Media types HL7 engines use for ER7 over HTTP (HAPI "HL7 over HTTP", Mirth HTTP sender).
ACCEPTED_MEDIA_TYPES = frozenset(
    {ER7, "application/hl7-v2", "application/hl7-v2+er7", "application/edi-hl7", "text/plain", ""}
)
# Python codec → IANA charset name for the response's Content-Type.
IANA_CHARSETS = {
    "utf-8": "utf-8",
    "gb18030": "GB18030",
    "latin-1": "ISO-8859-1",
    "ascii": "US-ASCII",
    "big5": "Big5",
}

SENDERS = (Role.INTEGRATION, Role.INSTITUTION_ADMIN, Role.OPERATOR)


async def _message(request: Request) -> bytes:
    """The body, up to the size the MLLP listener takes (``MAX_MESSAGE_BYTES``: a
    message with the largest report document kept); larger is refused with 413 before
    it is held whole (was: read without a limit)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_MESSAGE_BYTES:
        raise _too_large(int(declared))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_MESSAGE_BYTES:
            raise _too_large(len(body))
    return bytes(body)


def _too_large(size: int) -> ContentTooLarge:
    mib = 1024 * 1024
    return ContentTooLarge(
        "消息过大，未保存",
        problems=[
            Problem(
                "body",
                f"消息 {size} 字节，超过单条消息上限 {MAX_MESSAGE_BYTES} 字节"
                f"（约 {MAX_MESSAGE_BYTES // mib} MB）",
            )
        ],
    )


def _charset_hint(content_type: str) -> str | None:
    for part in content_type.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "charset" and value:
            try:
                return codecs.lookup(value.strip().strip('"')).name
            except LookupError:
                return None
    return None


def receiver(c: Container, channel: Channel) -> Hl7Receiver:
    return Hl7Receiver(c.intake, c.clock, channel, SqlResponseLog(c.engine))


_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "一条 ORU^R01 消息（ER7 文本，段以 CR 分隔）；字符集由 MSH-18 或 Content-Type 的 charset 决定",
        "content": {
            ER7: {"schema": {"type": "string"}},
            "text/plain": {"schema": {"type": "string"}},
        },
    }
}


@router.post(
    "/api/v1/hl7v2",
    summary="接收 HL7 v2 ORU^R01 检查检验结果（HTTP）",
    response_class=Response,
    responses={
        200: {"description": "ACK^R01（AA/AE/AR），与请求相同字符集", "content": {ER7: {}}},
        401: {"description": "未认证", "content": {PROBLEM: {}}},
        403: {"description": "无权发送", "content": {PROBLEM: {}}},
        413: {"description": "消息过大", "content": {PROBLEM: {}}},
        415: {"description": "不支持的内容类型", "content": {PROBLEM: {}}},
    },
    openapi_extra=_BODY,
)
async def receive_hl7v2(
    request: Request,
    principal: Annotated[Principal, Depends(require_roles(*SENDERS))],
    c: Annotated[Container, Depends(container)],
) -> Response:
    """ACK ``AA`` only after the results are committed; ``AE`` names the wrong field in
    ERR and MSA-3, ``AR`` when the message cannot be processed at all. An interface
    account may send only its own institution's messages (MSH-4)."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type not in ACCEPTED_MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"不支持的内容类型 {media_type}，请使用 {ER7} 或 text/plain 发送 ER7 文本"
        )
    body = await _message(request)
    sender = principal.institution if principal.role in INSTITUTION_ROLES else None
    reply = await run_in_threadpool(
        receiver(c, Channel.HL7V2_HTTP).handle,
        body,
        charset_hint=_charset_hint(content_type),
        sender_institution=sender,
    )
    charset = IANA_CHARSETS.get(reply.header.charset, reply.header.charset)
    return Response(
        reply.payload,
        media_type=f"{ER7}; charset={charset}",
        headers={"X-HL7-Ack-Code": reply.code.value},
    )


def install_mllp_listener(app: FastAPI, *, reuse_port: bool = False) -> None:
    """Start the MLLP listener (settings.mllp_host / mllp_port) with the app and stop it
    with the app, through the app's startup/shutdown hooks. ``reuse_port``: the other
    worker processes of ``huren serve --workers`` listen on the same port."""
    c: Container = app.state.container

    async def start(app: FastAPI) -> None:
        # Group commit: the messages of all connections that arrive while one batch
        # commits are stored together; each ACK still waits for its own commit.
        server = MllpServer(
            host=c.settings.mllp_host,
            port=c.settings.mllp_port,
            batch=MllpGroupCommit(receiver(c, Channel.HL7V2_MLLP)),
            reuse_port=reuse_port,
        )
        await server.start()
        app.state.mllp = server

    async def stop(app: FastAPI) -> None:
        server: MllpServer | None = getattr(app.state, "mllp", None)
        if server is not None:
            await server.stop()
            app.state.mllp = None

    app.state.on_startup.append(start)
    app.state.on_shutdown.append(stop)

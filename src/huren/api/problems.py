"""RFC 9457 problem+json for every error; domain errors are mapped once, here."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from huren.domain.errors import DomainError

log = logging.getLogger("huren.api")

PROBLEM = "application/problem+json"

_HTTP_TITLES = {
    400: "请求无效",
    401: "未认证或令牌已失效",
    403: "无权访问",
    404: "未找到",
    405: "不支持该请求方法",
    409: "与现有数据冲突",
    413: "请求内容过大",
    415: "不支持的内容类型",
    422: "请求内容未通过校验",
    429: "请求过于频繁，请稍后再试",
    500: "服务器内部错误",
}


def _shown(text: str) -> str:
    """``text`` as UTF-8 can carry it: a lone surrogate (``\\ud800``, which JSON can
    escape and a message may repeat back) is written as its escape, not a failure to
    answer at all."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def problem(
    status: int,
    code: str,
    detail: str,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://huren.example/problems/{code}",
        "title": _HTTP_TITLES.get(status, "错误"),
        "status": status,
        "code": code,
        "detail": _shown(detail),
    }
    if errors:
        body["errors"] = [{k: _shown(v) for k, v in e.items()} for e in errors]
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


# What the database refuses of a value a request carried (a NUL character PostgreSQL
# cannot store in text, an identifier beyond 64 bits): through SQLAlchemy, or from the
# drivers' own cursors (the hot paths write on them). Bad input, not a server fault.
UNSTORABLE: tuple[type[Exception], ...] = (
    DataError,
    psycopg.DataError,
    sqlite3.DataError,
    OverflowError,
)


def field_of(loc: tuple[Any, ...] | list[Any], default: str = "body") -> str:
    """A validation error's location as the field it names (``items.0``)."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "cookie")]
    return ".".join(parts) or default


def install(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        return problem(
            exc.status,
            exc.code,
            exc.message,
            [{"field": p.field, "message": p.message} for p in exc.problems],
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": field_of(e.get("loc", ())), "message": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        fields = "、".join(dict.fromkeys(e["field"] for e in errors))
        return problem(422, "validation_failed", f"请求内容未通过校验: {fields}", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = (
            exc.detail if isinstance(exc.detail, str) else _HTTP_TITLES.get(exc.status_code, "")
        )
        if detail in ("Not Found", "Method Not Allowed", "Unauthorized", "Forbidden"):
            detail = _HTTP_TITLES.get(exc.status_code, detail)
        return problem(
            exc.status_code,
            f"http_{exc.status_code}",
            detail,
            headers=getattr(exc, "headers", None),
        )

    async def _unstorable(_: Request, exc: Exception) -> JSONResponse:
        log.info("request value refused by the database: %s", exc)
        return problem(
            422,
            "unstorable_value",
            "请求中含有无法处理的值（如空字符 NUL 或超出范围的数字），请检查后重试",
        )

    for unstorable in UNSTORABLE:
        app.add_exception_handler(unstorable, _unstorable)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return problem(500, "internal_error", "服务器内部错误，已记录，请联系平台运维")

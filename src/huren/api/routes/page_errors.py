"""Pages answer bad input with a page. A route a browser opens (``include_in_schema=False``)
whose path, query or form does not parse (``/patient/results/abc``, ``offset=-1``), whose
service refuses what it was given and the route itself does not catch, or whose value the
database cannot hold (a NUL, an id beyond 64 bits) gets an HTML page in Chinese naming the
field — not the API's problem+json, which a browser shows as raw text.

Used as the ``route_class`` of the routers that serve pages; the JSON API routes of the
same routers (in the OpenAPI document) keep their problem+json answers."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from huren.api.auth import optional_principal
from huren.api.deps import templates
from huren.api.problems import UNSTORABLE, field_of
from huren.domain.accounts import Role
from huren.domain.errors import DomainError, NotFound, Problem, ValidationFailed

log = logging.getLogger("huren.api")

# What the pages' parameters are called on screen.
FIELD_LABELS = {
    "result_id": "结果编号",
    "correction_id": "纠错申请编号",
    "notification_id": "通知编号",
    "proposal_id": "暂停建议编号",
    "message_id": "消息编号",
    "study_uid": "检查实例 UID",
    "offset": "分页位置",
    "category": "项目类别",
    "level": "层级",
    "province": "省份",
    "institution": "机构编码",
    "item": "项目编码",
    "jurisdiction": "辖区",
    "q": "搜索词",
    "before": "翻页位置",
    "version": "版本号",
    "token": "访问令牌",
    "status": "状态",
    "channel": "通道",
}

_MESSAGES = {
    "int_parsing": "应为整数",
    "int_from_float": "应为整数",
    "missing": "不能为空",
    "enum": "取值无效",
    "literal_error": "取值无效",
    "string_too_long": "过长",
    "greater_than_equal": "过小",
    "greater_than": "过小",
    "less_than_equal": "过大",
    "less_than": "过大",
    "date_from_datetime_parsing": "日期格式应为 YYYY-MM-DD",
    "date_parsing": "日期格式应为 YYYY-MM-DD",
}


def validation_failed(exc: RequestValidationError) -> ValidationFailed:
    """The framework's validation errors as the domain's, in Chinese, naming each field."""
    problems = []
    for e in exc.errors():
        name = field_of(e.get("loc", ()), "请求")
        label = FIELD_LABELS.get(name, name)
        what = _MESSAGES.get(str(e.get("type", "")), "无效")
        ctx = e.get("ctx") or {}
        if "max_length" in ctx:
            what += f"（最多 {ctx['max_length']} 个字符）"
        elif "ge" in ctx:
            what += f"（不能小于 {ctx['ge']}）"
        elif "le" in ctx:
            what += f"（不能大于 {ctx['le']}）"
        problems.append(Problem(name, f"{label}（{name}）{what}"))
    fields = "、".join(dict.fromkeys(p.field for p in problems))
    return ValidationFailed(f"请求参数无效: {fields}", problems=problems)


def error_page(request: Request, exc: DomainError) -> Response:
    user = optional_principal(request)
    patient = user is not None and user.role is Role.PATIENT
    return templates.TemplateResponse(
        request,
        "patient/error.html" if patient else "retrieval/error.html",
        {"user": user, "error": exc},
        status_code=exc.status,
        headers={"Cache-Control": "no-store"},
    )


class PageRoute(APIRoute):
    """An APIRoute whose page routes answer errors with :func:`error_page`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.include_in_schema:
            return handler

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return error_page(request, validation_failed(exc))
            except DomainError as exc:
                return error_page(request, exc)
            except UNSTORABLE as exc:
                log.info("page value refused by the database: %s", exc)
                return error_page(
                    request,
                    ValidationFailed(
                        "请求中含有无法处理的值（如空字符 NUL 或超出范围的数字），请检查后重试"
                    ),
                )

        return page_handler


# Paths machines call: their 404 stays problem+json (or FHIR's, DICOMweb's own answer).
_MACHINE_PATHS = ("/api/", "/fhir", "/cds-services", "/dicomweb", "/static/", "/healthz")


def install_not_found_page(app: FastAPI) -> None:
    """A browser that opens a path no route serves (a mistyped or outdated link) gets the
    Chinese error page rather than ``{"title": "未找到"}`` as raw text; everything else
    keeps the JSON answer of ``problems.install``, which must run first."""
    json_answer = app.exception_handlers[StarletteHTTPException]

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if (
            exc.status_code == 404
            and request.method in ("GET", "HEAD")
            and "text/html" in request.headers.get("accept", "")
            and not request.url.path.startswith(_MACHINE_PATHS)
        ):
            return error_page(request, NotFound(f"页面不存在：{request.url.path}"))
        answer = json_answer(request, exc)
        return await answer if inspect.isawaitable(answer) else answer

    app.add_exception_handler(StarletteHTTPException, not_found)

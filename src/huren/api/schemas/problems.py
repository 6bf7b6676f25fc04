"""The problem+json body (RFC 9457) every error response carries, for OpenAPI.

Routers document their error responses with ``PROBLEM_RESPONSES`` (or a subset via
``problem_responses(401, 403, ...)``) so that clients and the schemathesis test know the
shape: ``APIRouter(responses=PROBLEM_RESPONSES)``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from huren.api.problems import PROBLEM

_DESCRIPTIONS = {
    400: "请求无效",
    401: "未认证或令牌已失效",
    403: "当前角色或辖区无权执行",
    404: "未找到",
    409: "与现有数据冲突",
    422: "请求内容未通过校验（errors 列出字段与原因）",
    429: "请求过于频繁",
}


class ProblemField(BaseModel):
    field: str = Field(description="出错的位置，如 body.items[2] 或 row 7: code")
    message: str = Field(description="原因（中文）")


class ProblemOut(BaseModel):
    type: str
    title: str
    status: int
    code: str = Field(description="稳定的英文错误代码")
    detail: str = Field(description="中文说明")
    errors: list[ProblemField] | None = None


def _inline_schema() -> dict[str, Any]:
    """ProblemOut's JSON schema with its one nested model inlined (no $refs), so it can
    sit under ``application/problem+json`` in any operation."""
    schema = ProblemOut.model_json_schema()
    defs = schema.pop("$defs", {})
    errors = schema["properties"]["errors"]
    errors["anyOf"] = [
        {"type": "array", "items": defs["ProblemField"]} if "items" in option else option
        for option in errors["anyOf"]
    ]
    return schema


PROBLEM_SCHEMA = _inline_schema()


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        s: {
            "description": _DESCRIPTIONS.get(s, "错误"),
            "content": {PROBLEM: {"schema": PROBLEM_SCHEMA}},
        }
        for s in statuses
    }


PROBLEM_RESPONSES = problem_responses(401, 403, 404, 409, 422)

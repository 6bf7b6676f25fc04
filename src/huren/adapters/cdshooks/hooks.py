"""CDS Hooks 2.0 requests (https://cds-hooks.hl7.org/2.0/): discovery entries, the hook
request and the feedback body, parsed leniently (unknown fields are ignored, as the spec's
extension rules require) but with a clear 400 naming the field when a required part is
missing or of the wrong type.

``order-select`` / ``order-sign`` (R4): ``context.draftOrders`` is a Bundle of draft
orders; only ServiceRequests are lab / imaging orders. For ``order-select`` decision
support focuses on ``context.selections``; for ``order-sign`` on every draft order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from huren.adapters.fhir import systems
from huren.domain.errors import DomainError, Problem
from huren.domain.identity import IdentifierKind, PatientIdentifier

ORDER_SELECT = "order-select"
ORDER_SIGN = "order-sign"

PREFETCH = {
    "patient": "Patient/{{context.patientId}}",
    "diagnosticReports": "DiagnosticReport?patient={{context.patientId}}&_sort=-date&_count=20",
}

SERVICES: list[dict[str, Any]] = [
    {
        "hook": ORDER_SELECT,
        "id": "huren-recognition-order-select",
        "title": "检查检验结果互认提醒（选择医嘱时）",
        "description": (
            "选择检查检验医嘱时，提示该患者在其他医疗机构已有的可互认结果"
            "（互认标识、机构、时间、参考时限），并可撤销重复医嘱。"
        ),
        "prefetch": PREFETCH,
        "usageRequirements": "以医疗机构接口账号（Bearer 令牌或 API 密钥）调用。",
    },
    {
        "hook": ORDER_SIGN,
        "id": "huren-recognition-order-sign",
        "title": "检查检验结果互认提醒（签署医嘱前）",
        "description": "签署检查检验医嘱前，再次核对可互认的既往结果，记录互认或不予互认的理由。",
        "prefetch": PREFETCH,
        "usageRequirements": "以医疗机构接口账号（Bearer 令牌或 API 密钥）调用。",
    },
]
SERVICE_HOOKS = {s["id"]: s["hook"] for s in SERVICES}


class MalformedHook(DomainError):
    """A hook or feedback request that does not follow CDS Hooks 2.0 (→ 400)."""

    code = "malformed_hook_request"
    status = 400


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class FhirAuthorization(_Lenient):
    access_token: str
    token_type: str = "Bearer"  # noqa: S105  (the OAuth token type, not a secret)
    expires_in: int | None = None
    scope: str = ""
    subject: str = ""


class HookContext(_Lenient):
    userId: str
    patientId: str
    encounterId: str | None = None
    selections: list[str] | None = None
    draftOrders: dict[str, Any]


class HookRequest(_Lenient):
    hook: str
    hookInstance: str = Field(min_length=1)
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: HookContext
    prefetch: dict[str, Any] | None = None


class OverrideCoding(_Lenient):
    system: str = ""
    code: str = ""
    display: str = ""


class OverrideReason(_Lenient):
    reason: OverrideCoding | None = None
    userComment: str = ""


class AcceptedSuggestion(_Lenient):
    id: str


class FeedbackEntry(_Lenient):
    card: str
    outcome: str
    acceptedSuggestions: list[AcceptedSuggestion] = []
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: str


class FeedbackRequest(_Lenient):
    feedback: list[FeedbackEntry] = Field(min_length=1)


def _problems(exc: ValidationError) -> list[Problem]:
    out = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e.get("loc", ())) or "body"
        kind = e.get("type", "")
        if kind == "missing":
            msg = "缺少必填字段"
        elif kind.endswith("_type") or kind.endswith("_parsing"):
            msg = f"类型错误：{e.get('msg', '')}"
        else:
            msg = str(e.get("msg", ""))
        out.append(Problem(where, msg))
    return out


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedHook(
            "请求体不是有效的 JSON", problems=[Problem("body", f"JSON 解析失败：{exc}")]
        ) from exc


def parse_hook(body: bytes, service_id: str) -> HookRequest:
    data = _json(body)
    if not isinstance(data, dict):
        raise MalformedHook(
            "CDS Hooks 请求体应为 JSON 对象", problems=[Problem("body", "应为对象")]
        )
    try:
        req = HookRequest.model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc)
        fields = "、".join(p.field for p in problems)
        raise MalformedHook(f"CDS Hooks 请求不符合规范：{fields}", problems=problems) from exc
    expected = SERVICE_HOOKS[service_id]
    if req.hook != expected:
        raise MalformedHook(
            f"服务 {service_id} 只响应 {expected} 钩子",
            problems=[Problem("hook", f"收到 {req.hook}，应为 {expected}")],
        )
    if req.fhirAuthorization is not None and not req.fhirServer:
        # CDS Hooks 2.0 §Calling a CDS Service: fhirServer is REQUIRED with fhirAuthorization.
        raise MalformedHook(
            "提供 fhirAuthorization 时必须同时提供 fhirServer",
            problems=[Problem("fhirServer", "缺少必填字段")],
        )
    bundle = req.context.draftOrders
    if bundle.get("resourceType") != "Bundle" or not isinstance(bundle.get("entry", []), list):
        raise MalformedHook(
            "context.draftOrders 应为 FHIR Bundle",
            problems=[Problem("context.draftOrders", "resourceType 应为 Bundle，entry 应为数组")],
        )
    if req.hook == ORDER_SELECT and req.context.selections is None:
        raise MalformedHook(
            "order-select 钩子缺少 context.selections",
            problems=[Problem("context.selections", "缺少必填字段")],
        )
    return req


def parse_feedback(body: bytes) -> FeedbackRequest:
    data = _json(body)
    try:
        return FeedbackRequest.model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc)
        fields = "、".join(p.field for p in problems)
        raise MalformedHook(f"CDS Hooks 反馈不符合规范：{fields}", problems=problems) from exc


@dataclass(frozen=True, slots=True)
class DraftOrder:
    """A draft ServiceRequest: its reference (``ServiceRequest/<id>``) and its codings."""

    reference: str
    codings: tuple[tuple[str, str], ...]  # (system, code)
    text: str


def draft_orders(req: HookRequest) -> list[DraftOrder]:
    """The ServiceRequests the hook is about: the selected ones for order-select, all for
    order-sign. Other resource types (medications, diets …) are not lab/imaging orders."""
    selected = set(req.context.selections or ()) if req.hook == ORDER_SELECT else None
    out: list[DraftOrder] = []
    for n, entry in enumerate(req.context.draftOrders.get("entry", [])):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "ServiceRequest":
            continue
        ref = f"ServiceRequest/{resource.get('id', '')}"
        if selected is not None and ref not in selected:
            continue
        code = resource.get("code")
        codings: list[tuple[str, str]] = []
        text = ""
        if isinstance(code, dict):
            text = str(code.get("text", ""))
            for c in code.get("coding", []) or []:
                if isinstance(c, dict) and c.get("code"):
                    codings.append((str(c.get("system", "")), str(c["code"])))
                    text = text or str(c.get("display", ""))
        if not codings:
            raise MalformedHook(
                "检查检验医嘱缺少项目代码",
                problems=[
                    Problem(
                        f"context.draftOrders.entry[{n}].resource.code.coding",
                        f"{ref} 没有 code.coding",
                    )
                ],
            )
        out.append(DraftOrder(ref, tuple(codings), text))
    return out


def patient_identifiers(resource: Any, institution: str) -> list[PatientIdentifier]:
    """Identifiers of a FHIR Patient that the platform can match on (R4)."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
        return []
    out: list[PatientIdentifier] = []
    for ident in resource.get("identifier", []) or []:
        if not isinstance(ident, dict) or not ident.get("value"):
            continue
        system = str(ident.get("system", ""))
        value = str(ident["value"])
        kind = systems.IDENTIFIER_SYSTEMS.get(system)
        if kind is not None:
            out.append(PatientIdentifier(kind, value))
            continue
        if system.startswith(systems.MRN_PREFIX):
            out.append(
                PatientIdentifier(IdentifierKind.MRN, value, system[len(systems.MRN_PREFIX) :])
            )
            continue
        type_codes = [
            str(c.get("code", ""))
            for c in ((ident.get("type") or {}).get("coding") or [])
            if isinstance(c, dict)
        ]
        for code in type_codes:
            kind = systems.IDENTIFIER_TYPES.get(code)
            if kind is not None:
                assigner = institution if kind is IdentifierKind.MRN else ""
                out.append(PatientIdentifier(kind, value, assigner))
                break
    return out

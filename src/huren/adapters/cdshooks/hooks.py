"""CDS Hooks 2.0 requests (https://cds-hooks.hl7.org/2.0/): discovery entries, the hook
request and the feedback body, parsed leniently (unknown fields are ignored, as the spec's
extension rules require) but with a clear 400 naming the field when a required part is
missing or of the wrong type.

``order-select`` / ``order-sign`` (R4): ``context.draftOrders`` is a Bundle of draft
orders; only ServiceRequests with a coded item are lab / imaging orders (the others are
left out, never refused). For ``order-select`` decision support focuses on
``context.selections``; for ``order-sign`` on every draft order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from huren.adapters.fhir import systems
from huren.domain.errors import DomainError, Problem
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.domain.recognition import CLINICIAN_MAX
from huren.domain.text import json_text_problems, text_problem

# A draft order's reference as its card records it (cds_card.draft_order).
DRAFT_ORDER_MAX = 200

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


class PrefetchUnavailable(DomainError):
    """The patient could be had neither from ``prefetch`` nor from the client's FHIR server
    (→ 412). CDS Hooks 2.0 §Prefetch: "If the CDS Service is unable to obtain required data
    because it cannot access the FHIR server and the request did not contain the necessary
    prefetch keys, the service SHALL respond with an HTTP 412 Precondition Failed status
    code." A card would hide a misconfigured client from its integration engineer."""

    code = "prefetch_unavailable"
    status = 412


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


def _reject_unstorable(data: Any, what: str) -> None:
    """No string of a hook or feedback request (keys included) may hold U+0000 (no FHIR
    string can, and PostgreSQL text cannot store it) or a lone surrogate (``\\ud800``: JSON
    can escape one, UTF-8 cannot encode it — not for the database, not for the answer).
    Looked for in the bytes first (``_needs_scan``), then each is named. The prefetched
    resources are not walked: only their identifiers are read, and ``patient_identifiers``
    skips (and names) one it cannot match on, so that the answer is an info card."""
    problems = json_text_problems(data, skip=("prefetch",))
    if problems and (others := _other_orders(data)):
        # An order that is no ServiceRequest (a medication, a diet) is never read or
        # stored: a character in it is no reason to refuse the lab and imaging orders.
        problems = [p for p in problems if not any(p.field.startswith(o) for o in others)]
    if problems:
        fields = "、".join(dict.fromkeys(p.field for p in problems))
        raise MalformedHook(f"{what}含有无法处理的字符：{fields}", problems=problems)


def _other_orders(data: Any) -> tuple[str, ...]:
    """The paths (with a trailing "." or "[") of the draft orders that are not
    ServiceRequests: ``context.draftOrders.entry[n].``."""
    context = data.get("context") if isinstance(data, dict) else None
    bundle = context.get("draftOrders") if isinstance(context, dict) else None
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    if not isinstance(entries, list):
        return ()
    out: list[str] = []
    for n, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") != "ServiceRequest":
            out += (f"context.draftOrders.entry[{n}].", f"context.draftOrders.entry[{n}][")
    return tuple(out)


def _needs_scan(body: bytes) -> bool:
    """Whether ``body`` may hold a NUL or a lone surrogate: escaped (``\\u0000``,
    ``\\ud800``), or a surrogate's UTF-8-like bytes (``ED A0 80``), which ``json.loads``
    lets through. Korean text and escaped emoji also match: then the scan finds nothing."""
    return b"\\u0000" in body or b"\\ud" in body or b"\\uD" in body or b"\xed" in body


def _fhir_server_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port beyond 65535)
    except ValueError as exc:
        return f"不是有效的地址（{exc}）"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "应为 FHIR 服务器的 http(s) 绝对地址"
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        return "地址中不能含有空白或控制字符"
    return None


def parse_hook(body: bytes, service_id: str) -> HookRequest:
    data = _json(body)
    if not isinstance(data, dict):
        raise MalformedHook(
            "CDS Hooks 请求体应为 JSON 对象", problems=[Problem("body", "应为对象")]
        )
    if _needs_scan(body):
        _reject_unstorable(data, "CDS Hooks 请求")
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
    if req.fhirServer:
        why = _fhir_server_problem(req.fhirServer)
        if why is not None:
            raise MalformedHook("fhirServer 不是有效的地址", problems=[Problem("fhirServer", why)])
    if len(req.context.userId) > CLINICIAN_MAX:
        raise MalformedHook(
            "context.userId 过长",
            problems=[
                Problem(
                    "context.userId",
                    f"最多 {CLINICIAN_MAX} 个字符（如 Practitioner/123），收到 {len(req.context.userId)} 个",
                )
            ],
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
    if _needs_scan(body):
        _reject_unstorable(data, "CDS Hooks 反馈")
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
    where: str = ""  # its entry: context.draftOrders.entry[n]
    # ServiceRequest.status: "draft" as the hooks define draftOrders; a client re-signing
    # an order sends it "active" (no status given counts as a draft).
    status: str = "draft"


def draft_orders(req: HookRequest) -> list[DraftOrder]:
    """The ServiceRequests the hook is about: the selected ones for order-select, all for
    order-sign. Other resource types (medications, diets …) are not lab/imaging orders."""
    selected = set(req.context.selections or ()) if req.hook == ORDER_SELECT else None
    out: list[DraftOrder] = []
    for n, entry in enumerate(req.context.draftOrders.get("entry", [])):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "ServiceRequest":
            continue
        where = f"context.draftOrders.entry[{n}]"
        ref = f"ServiceRequest/{resource.get('id', '')}"
        if selected is not None and ref not in selected:
            continue
        if len(ref) > DRAFT_ORDER_MAX:
            raise MalformedHook(
                "医嘱的 id 过长",
                problems=[
                    Problem(
                        f"{where}.resource.id",
                        f"ServiceRequest 的 id 最多 {DRAFT_ORDER_MAX - 15} 个字符，"
                        f"收到 {len(ref) - 15} 个",
                    )
                ],
            )
        code = resource.get("code")
        codings: list[tuple[str, str]] = []
        text = ""
        if isinstance(code, dict):
            text = str(code.get("text", ""))
            coding = code.get("coding", []) or []
            if not isinstance(coding, list):
                raise MalformedHook(
                    "医嘱的 code.coding 应为数组",
                    problems=[Problem(f"{where}.resource.code.coding", "应为 Coding 数组")],
                )
            for c in coding:
                if isinstance(c, dict) and c.get("code"):
                    codings.append((str(c.get("system", "")), str(c["code"])))
                    text = text or str(c.get("display", ""))
        if not codings:
            # A ServiceRequest with no coded item (only code.text, or no code yet) is valid
            # FHIR R4 (ServiceRequest.code 0..1, CodeableConcept.coding 0..*): a consult,
            # a nursing order, or an order whose details are not chosen yet — order-select
            # "CDS services should expect some of the order information to not yet be
            # specified" (CDS Hooks order-select §Workflow). No lab / imaging item can be
            # looked up for it: it is left out like the other non-lab orders, rather than
            # refusing the whole hook (and the cards of the coded orders beside it).
            continue
        status = resource.get("status")
        out.append(
            DraftOrder(
                ref, tuple(codings), text, where, status if isinstance(status, str) else "draft"
            )
        )
    return out


def prefetched_patient(req: HookRequest) -> tuple[dict[str, Any] | None, str]:
    """The Patient of ``prefetch.patient``, or None with why (in Chinese) it is not usable.

    CDS Hooks 2.0 §Providing FHIR Resources to a CDS Service: a prefetch value is a FHIR
    resource, "in the case of searches … a searchset Bundle" (a client may answer the
    ``Patient/{{context.patientId}}`` template by a search, ``Patient?_id=…``); a key the
    client chose not to satisfy, or failed to, is absent; a key it had no data for is
    ``null``. The Patient is taken from a Bundle too (the entry whose id is
    ``context.patientId``, else the only Patient); anything else (an OperationOutcome a
    client sent instead of leaving the key out) counts as not prefetched, so that the
    client's fhirServer is asked when there is one."""
    prefetch = req.prefetch or {}
    if "patient" not in prefetch:
        return None, "未提供 prefetch.patient"
    value = prefetch["patient"]
    if value is None:
        return None, "prefetch.patient 为 null（HIS 未能取得该患者）"
    if not isinstance(value, dict):
        return None, "prefetch.patient 不是 FHIR 资源"
    kind = value.get("resourceType")
    if kind == "Patient":
        return value, ""
    if kind == "Bundle":
        entries = value.get("entry") or []
        found = [
            e["resource"]
            for e in (entries if isinstance(entries, list) else [])
            if isinstance(e, dict)
            and isinstance(e.get("resource"), dict)
            and e["resource"].get("resourceType") == "Patient"
        ]
        same = [p for p in found if p.get("id") == req.context.patientId]
        if same or len(found) == 1:
            return (same or found)[0], ""
        if not found:
            return None, "prefetch.patient 是不含 Patient 的 Bundle"
        return None, f"prefetch.patient 的 Bundle 含有多个 Patient，均不是 {req.context.patientId}"
    shown = kind if isinstance(kind, str) and kind.isascii() and kind.isalnum() else "其他内容"
    return None, f"prefetch.patient 不是 Patient 资源（收到 {shown[:40]}）"


def patient_identifiers(
    resource: Any, institution: str, rejected: list[str] | None = None
) -> list[PatientIdentifier]:
    """Identifiers of a FHIR Patient that the platform can match on (R4). What is
    malformed (not the FHIR R4 shape, or a value that cannot be matched on) is skipped
    and, naming where it is, added to ``rejected``."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
        return []
    skipped = rejected if rejected is not None else []
    where = "prefetch.patient.identifier"
    identifiers = resource.get("identifier", []) or []
    if not isinstance(identifiers, list):
        skipped.append(f"{where} 应为 Identifier 数组")
        return []
    out: list[PatientIdentifier] = []
    for i, ident in enumerate(identifiers):
        if not isinstance(ident, dict) or not ident.get("value"):
            continue
        system = str(ident.get("system", ""))
        value = str(ident["value"])
        why = text_problem(value) or text_problem(system)
        if why is not None:
            skipped.append(f"{where}[{i}] {why}")
            continue
        kind = systems.IDENTIFIER_SYSTEMS.get(system)
        if kind is not None:
            out.append(PatientIdentifier(kind, value))
            continue
        if system.startswith(systems.MRN_PREFIX):
            out.append(
                PatientIdentifier(IdentifierKind.MRN, value, system[len(systems.MRN_PREFIX) :])
            )
            continue
        type_ = ident.get("type") or {}
        coding = (type_.get("coding") or []) if isinstance(type_, dict) else None
        if not isinstance(coding, list):
            skipped.append(f"{where}[{i}].type 应为 CodeableConcept（含 coding 数组）")
            continue
        type_codes = [str(c.get("code", "")) for c in coding if isinstance(c, dict)]
        for code in type_codes:
            kind = systems.IDENTIFIER_TYPES.get(code)
            if kind is not None:
                assigner = institution if kind is IdentifierKind.MRN else ""
                out.append(PatientIdentifier(kind, value, assigner))
                break
    return out

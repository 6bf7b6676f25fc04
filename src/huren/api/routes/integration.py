"""The integration engineer's view (issue 7 §7, R3): recent inbound messages of every
channel with their status and reason, one message's raw text and our answer, the local
codes still waiting for 对码, and the institution's connection status. JSON under
/api/v1/integration and the same as pages under /integration.

Reach: institution administrators and interface accounts see their own institution;
the operator sees every institution, a regulator those of its jurisdiction."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel

from huren.adapters.db.inbound import (
    ConnectionState,
    ConnectionStatus,
    MessageDetail,
    MessageSummary,
)
from huren.api.auth import optional_principal, principal_can_see_institution, require_roles
from huren.api.deps import container, templates
from huren.api.routes.auth import login_redirect
from huren.api.routes.credentials import check_csrf, csrf_token
from huren.api.routes.page_errors import PageRoute
from huren.bootstrap import Container
from huren.domain.accounts import INSTITUTION_ROLES, Principal, Role
from huren.domain.china_time import CHINA_TZ, local_time
from huren.domain.errors import DomainError, Forbidden, NotFound, Problem, ValidationFailed
from huren.domain.masterdata import CodeMapping
from huren.domain.text import text_problem
from huren.services.intake import Disposition, StoredRef, UnmappedCode, refs_from_json

router = APIRouter(tags=["接口监控"], route_class=PageRoute)

ENGINEER_ROLES = (Role.INSTITUTION_ADMIN, Role.INTEGRATION, Role.OPERATOR, Role.REGULATOR)
Engineer = Annotated[Principal, Depends(require_roles(*ENGINEER_ROLES))]
Services = Annotated[Container, Depends(container)]

STATUS_LABELS = {"accepted": "已接收", "rejected": "已拒收", "duplicate": "重复（未改动）"}
DISPOSITION_LABELS = {
    Disposition.CREATED: "新建",
    Disposition.UPDATED: "新版本",
    Disposition.UNCHANGED: "内容未变",
}
# Who may map a local code from the 未对码 page: the rule of ``MasterDataAdmin.put_code_map``
# (the institution's own 机构管理员, or the operator), offered only to them.
CODE_MAP_EDITORS = (Role.INSTITUTION_ADMIN, Role.OPERATOR)
# The operator's list of institutions, those that need a look first.
STATE_ORDER = {
    ConnectionState.FAILING: 0,
    ConnectionState.CONNECTED: 1,
    ConnectionState.IDLE: 2,
    ConnectionState.NEVER: 3,
}
# The messages list's time filter: since midnight China time (the day hospitals and their
# engineers count in), the last 24 hours, the last 7 days.
SINCE_LABELS = {"today": "今天", "24h": "24 小时内", "7d": "7 天内"}
CHANNEL_LABELS = {
    "hl7v2-mllp": "HL7 v2 MLLP",
    "hl7v2-http": "HL7 v2 HTTP",
    "fhir": "FHIR",
    "bulk": "批量导入",
    "dicom": "DICOM",
    "manual": "手工录入",
}


# ---------------------------------------------------------------- schemas
class MessageOut(BaseModel):
    id: int
    received_at: datetime
    channel: str
    institution: str | None
    control_id: str
    status: str
    status_label: str
    error: str


class MessageDetailOut(MessageOut):
    raw: str
    response: str


class WindowOut(BaseModel):
    messages: int
    rejected: int
    error_rate: float | None


class ConnectionOut(BaseModel):
    institution: str
    institution_name: str
    state: str
    state_label: str
    last_message_at: datetime | None
    last_accepted_at: datetime | None
    last_24h: WindowOut
    last_7d: WindowOut


class UnmappedCodeOut(BaseModel):
    local_code: str
    local_name: str
    results: int
    first_issued: datetime
    last_issued: datetime
    first_message_id: int | None
    last_message_id: int | None
    first_received_at: datetime | None
    last_received_at: datetime | None


class UnmappedOut(BaseModel):
    institution: str
    connection: ConnectionOut
    codes: list[UnmappedCodeOut]


def message_out(m: MessageSummary) -> MessageOut:
    return MessageOut(
        id=m.id,
        received_at=m.received_at,
        channel=m.channel,
        institution=m.institution,
        control_id=m.control_id,
        status=m.status,
        status_label=STATUS_LABELS.get(m.status, m.status),
        error=m.error,
    )


def detail_out(d: MessageDetail) -> MessageDetailOut:
    return MessageDetailOut(**message_out(d.summary).model_dump(), raw=d.raw, response=d.response)


def connection_out(c: Container, s: ConnectionStatus) -> ConnectionOut:
    inst = c.catalog.get().institutions.get(s.institution)
    return ConnectionOut(
        institution=s.institution,
        institution_name=inst.name if inst else "",
        state=s.state.value,
        state_label=s.state_label,
        last_message_at=s.last_message_at,
        last_accepted_at=s.last_accepted_at,
        last_24h=WindowOut(
            messages=s.last_24h.messages,
            rejected=s.last_24h.rejected,
            error_rate=s.last_24h.error_rate,
        ),
        last_7d=WindowOut(
            messages=s.last_7d.messages,
            rejected=s.last_7d.rejected,
            error_rate=s.last_7d.error_rate,
        ),
    )


def unmapped_out(u: UnmappedCode) -> UnmappedCodeOut:
    return UnmappedCodeOut(
        local_code=u.local_code,
        local_name=u.local_name,
        results=u.results,
        first_issued=u.first_issued,
        last_issued=u.last_issued,
        first_message_id=u.first_message_id,
        last_message_id=u.last_message_id,
        first_received_at=u.first_received_at,
        last_received_at=u.last_received_at,
    )


# ---------------------------------------------------------------- reach
def visible_institutions(c: Container, principal: Principal) -> list[str] | None:
    """None: every institution (the operator); otherwise the codes the caller may see."""
    if principal.role is Role.OPERATOR:
        return None
    catalog = c.catalog.get()
    return [
        code
        for code in sorted(catalog.institutions)
        if principal_can_see_institution(principal, code, catalog)
    ]


def chosen_institution(c: Container, principal: Principal, institution: str | None) -> str:
    """The institution a per-institution view is about: an institution account's own,
    or the one asked for, if the caller may see it."""
    if institution is None or institution == "":
        if principal.role in INSTITUTION_ROLES and principal.institution:
            return principal.institution
        raise ValidationFailed("请指定机构（institution 参数）")
    catalog = c.catalog.get()
    if institution not in catalog.institutions:
        raise NotFound(f"未知的机构编码: {institution}")
    if not principal_can_see_institution(principal, institution, catalog):
        raise Forbidden(f"无权查看机构 {institution} 的接口数据")
    return institution


def since_time(choice: str | None, now: datetime) -> datetime | None:
    """The start of the messages list's time filter (``SINCE_LABELS``); None for all."""
    if choice == "today":
        return now.astimezone(CHINA_TZ).replace(hour=0, minute=0, second=0, microsecond=0)
    if choice == "24h":
        return now - timedelta(hours=24)
    if choice == "7d":
        return now - timedelta(days=7)
    return None


def recent_messages(
    c: Container,
    principal: Principal,
    *,
    institution: str | None,
    status: str | None,
    channel: str | None,
    before: int | None,
    limit: int,
    since: str | None = None,
) -> list[MessageSummary]:
    scope = (
        [chosen_institution(c, principal, institution)]
        if institution or principal.role in INSTITUTION_ROLES
        else visible_institutions(c, principal)
    )
    return c.inbound_messages.recent(
        institutions=scope,
        status=status,
        channel=channel,
        before_id=before,
        since=since_time(since, c.clock.now()),
        limit=limit,
    )


def message_detail(c: Container, principal: Principal, message_id: int) -> MessageDetail:
    found = c.inbound_messages.get(message_id)
    if found is None:
        raise NotFound(f"消息 #{message_id} 不存在")
    inst = found.summary.institution
    if principal.role is not Role.OPERATOR and (
        inst is None or not principal_can_see_institution(principal, inst, c.catalog.get())
    ):
        # Messages whose sender could not be read are the operator's to look at.
        raise NotFound(f"消息 #{message_id} 不存在")
    c.inbound_messages.record_read(principal, found.summary, c.clock.now())
    return found


def statuses(c: Container, principal: Principal, institution: str | None) -> list[ConnectionStatus]:
    now = c.clock.now()
    if institution or principal.role in INSTITUTION_ROLES:
        codes = [chosen_institution(c, principal, institution)]
    else:
        visible = visible_institutions(c, principal)
        codes = sorted(c.catalog.get().institutions) if visible is None else visible
    found = c.inbound_messages.connection_statuses(codes, now)
    return [found[code] for code in codes]


StatusFilter = Annotated[
    str | None, Query(pattern="^(accepted|rejected|duplicate)$", description="状态筛选")
]
ChannelFilter = Annotated[str | None, Query(max_length=16, description="通道筛选，如 hl7v2-mllp")]
SinceFilter = Annotated[
    str | None,
    Query(
        pattern="^(today|24h|7d)$",
        description="接收时间筛选: today（北京时间今天）、24h（24 小时内）、7d（7 天内）",
    ),
]
Limit = Annotated[int, Query(ge=1, le=500)]


# ---------------------------------------------------------------- JSON API
@router.get(
    "/api/v1/integration/messages",
    response_model=list[MessageOut],
    summary="最近的上传消息（各通道），可筛选拒收",
)
def list_messages(
    principal: Engineer,
    c: Services,
    institution: str | None = None,
    status: StatusFilter = None,
    channel: ChannelFilter = None,
    since: SinceFilter = None,
    before: int | None = None,
    limit: Limit = 50,
) -> list[MessageOut]:
    rows = recent_messages(
        c,
        principal,
        institution=institution,
        status=status,
        channel=channel,
        before=before,
        limit=limit,
        since=since,
    )
    return [message_out(m) for m in rows]


@router.get(
    "/api/v1/integration/messages/{message_id}",
    response_model=MessageDetailOut,
    summary="一条消息的原文与平台应答",
)
def get_message(message_id: int, principal: Engineer, c: Services) -> MessageDetailOut:
    return detail_out(message_detail(c, principal, message_id))


@router.get(
    "/api/v1/integration/status",
    response_model=list[ConnectionOut],
    summary="机构接口连接状态（最近消息、24 小时与 7 天错误率）",
)
def connection_status(
    principal: Engineer, c: Services, institution: str | None = None
) -> list[ConnectionOut]:
    return [connection_out(c, s) for s in statuses(c, principal, institution)]


@router.get(
    "/api/v1/integration/unmapped",
    response_model=UnmappedOut,
    summary="未对码的本地项目编码及结果数（对码缺失）",
)
def unmapped_codes(principal: Engineer, c: Services, institution: str | None = None) -> UnmappedOut:
    code = chosen_institution(c, principal, institution)
    return UnmappedOut(
        institution=code,
        connection=connection_out(c, c.inbound_messages.connection_status(code, c.clock.now())),
        codes=[unmapped_out(u) for u in c.intake.unmapped_codes(code)],
    )


# ---------------------------------------------------------------- pages
def _percent(rate: float | None) -> str:
    return f"{rate * 100:.1f}%" if rate is not None else "—"


def _readable(text: str) -> str:
    """Segments on their own lines; the intake's JSON answer indented."""
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        try:
            return json.dumps(json.loads(stripped), ensure_ascii=False, indent=2)
        except ValueError:
            pass
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _stored(status: str, response: str) -> list[StoredRef] | None:
    """What an accepted (or duplicate) message stored, from the answer kept with it: the
    intake's list of results (id, version, what was done, 报告单号, local and unified code,
    mark); None when the answer is not that list (an HL7 ACK, an OperationOutcome)."""
    if status == "rejected" or not response.lstrip().startswith("["):
        return None
    try:
        return list(refs_from_json(response))
    except (ValueError, TypeError, IndexError, KeyError):
        return None


def _mapped_since(c: Container, stored: list[StoredRef]) -> dict[str, str]:
    """The local codes stored unmapped with this message whose results have been re-mapped
    since, with the unified code they now have: read from those results themselves (not
    from the institution's whole list of unmapped codes, a scan of all its results)."""
    out: dict[str, str] = {}
    for r in stored:
        if r.item_code is None and r.local_code not in out:
            now = c.results.get_result(r.result_id).item_code
            if now is not None:
                out[r.local_code] = now
    return out


def _page(
    request: Request, name: str, user: Principal, context: dict[str, Any], status: int = 200
) -> Response:
    institutions = container(request).catalog.get().institutions

    def institution_name(code: str | None) -> str:
        """An institution by its name, as the engineer knows it (the code beside it)."""
        found = institutions.get(code) if code else None
        return f"{found.name}（{code}）" if found is not None else (code or "")

    base = {
        "user": user,
        "institution_name": institution_name,
        "local": partial(local_time, seconds=True),
        "percent": _percent,
        "status_labels": STATUS_LABELS,
        "channel_labels": CHANNEL_LABELS,
        "operator_view": user.role in (Role.OPERATOR, Role.REGULATOR),
    }
    return templates.TemplateResponse(request, name, base | context, status_code=status)


def _error_page(request: Request, user: Principal, exc: DomainError) -> Response:
    return _page(request, "integration/error.html", user, {"error": exc}, exc.status)


def _engineer(user: Principal | None) -> bool:
    return user is not None and user.role in ENGINEER_ROLES


@router.get("/integration/messages", response_class=HTMLResponse, include_in_schema=False)
def messages_page(
    request: Request,
    user: Annotated[Principal | None, Depends(optional_principal)],
    c: Services,
    institution: str | None = None,
    status: str | None = None,
    channel: str | None = None,
    since: str | None = None,
    before: int | None = None,
) -> Response:
    if user is None:
        return login_redirect(request)
    try:
        if not _engineer(user):
            raise Forbidden("当前角色无权查看接口消息")
        if status and status not in STATUS_LABELS:
            raise ValidationFailed("状态参数无效")
        if since and since not in SINCE_LABELS:
            raise ValidationFailed("时间筛选参数无效")
        if channel and (problem := text_problem(channel, 16)):
            message = f"通道筛选（channel）{problem}"
            raise ValidationFailed(message, problems=[Problem("channel", message)])
        rows = recent_messages(
            c,
            user,
            institution=institution or None,
            status=status or None,
            channel=channel or None,
            before=before,
            limit=50,
            since=since or None,
        )
    except DomainError as exc:
        return _error_page(request, user, exc)
    return _page(
        request,
        "integration/messages.html",
        user,
        {
            "rows": rows,
            "status": status or "",
            "institution": institution or "",
            "channel": channel or "",
            "since": since or "",
            "since_labels": SINCE_LABELS,
            "paged": before is not None,
            "next_before": rows[-1].id if len(rows) == 50 else None,
        },
    )


@router.get(
    "/integration/messages/{message_id}", response_class=HTMLResponse, include_in_schema=False
)
def message_page(
    message_id: int,
    request: Request,
    user: Annotated[Principal | None, Depends(optional_principal)],
    c: Services,
) -> Response:
    if user is None:
        return login_redirect(request)
    try:
        if not _engineer(user):
            raise Forbidden("当前角色无权查看接口消息")
        found = message_detail(c, user, message_id)
    except DomainError as exc:
        return _error_page(request, user, exc)
    stored = _stored(found.summary.status, found.response)
    return _page(
        request,
        "integration/message.html",
        user,
        {
            "m": found.summary,
            "raw": _readable(found.raw),
            "stored": stored,
            "mapped_since": _mapped_since(c, stored or []),
            "response": "" if stored is not None else _readable(found.response),
            "items": c.catalog.get().items,
            "disposition_labels": DISPOSITION_LABELS,
        },
    )


def _needs_a_look_first(s: ConnectionOut) -> tuple[int, float]:
    last = s.last_message_at.timestamp() if s.last_message_at is not None else 0.0
    return STATE_ORDER[ConnectionState(s.state)], -last


def _unmapped_page(
    request: Request,
    c: Container,
    user: Principal,
    code: str,
    *,
    notice: str = "",
    error: DomainError | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    conn = connection_out(c, c.inbound_messages.connection_status(code, c.clock.now()))
    catalog = c.catalog.get()
    can_map = user.role is Role.OPERATOR or (
        user.role is Role.INSTITUTION_ADMIN and user.institution == code
    )
    context = {
        "conn": conn,
        "codes": c.intake.unmapped_codes(code),
        "code": code,
        "can_map": can_map,
        "items": sorted(catalog.items.values(), key=lambda i: i.code) if can_map else [],
        "csrf": csrf_token(c, request) if can_map else "",
        "notice": notice,
        "error": error,
        "form": form or {},
    }
    return _page(
        request,
        "integration/unmapped.html",
        user,
        context,
        status=error.status if error is not None else 200,
    )


@router.get("/integration/unmapped", response_class=HTMLResponse, include_in_schema=False)
def unmapped_page(
    request: Request,
    user: Annotated[Principal | None, Depends(optional_principal)],
    c: Services,
    institution: str | None = None,
) -> Response:
    if user is None:
        return login_redirect(request)
    try:
        if not _engineer(user):
            raise Forbidden("当前角色无权查看接口状态")
        if not institution and user.role not in INSTITUTION_ROLES:
            # Operator / regulator: every visible institution's connection, pick one —
            # those failing first, then by their last message, those never sending last.
            rows = [connection_out(c, s) for s in statuses(c, user, None)]
            rows.sort(key=_needs_a_look_first)
            return _page(request, "integration/institutions.html", user, {"rows": rows})
        code = chosen_institution(c, user, institution)
    except DomainError as exc:
        return _error_page(request, user, exc)
    return _unmapped_page(request, c, user, code)


@router.post("/integration/unmapped", response_class=HTMLResponse, include_in_schema=False)
def map_unmapped_code(
    request: Request,
    user: Annotated[Principal | None, Depends(optional_principal)],
    c: Services,
    csrf: Annotated[str, Form()] = "",
    institution: Annotated[str, Form()] = "",
    local_code: Annotated[str, Form()] = "",
    local_name: Annotated[str, Form()] = "",
    unified_code: Annotated[str, Form()] = "",
) -> Response:
    """对码 from the list of unmapped codes (issue 7 §3): the institution's code map gets
    the mapping (``MasterDataAdmin.put_code_map``: its own 机构管理员 or the operator), which
    re-maps the results already stored under the local code (the unified code and the mark
    of their issue time)."""
    if user is None:
        return login_redirect(request)
    try:
        if user.role not in CODE_MAP_EDITORS:
            raise Forbidden("只有本机构管理员或平台运维可以对码")
        code = chosen_institution(c, user, institution or None)
        check_csrf(c, request, csrf)
    except DomainError as exc:
        return _error_page(request, user, exc)
    form = {"local_code": local_code, "unified_code": unified_code}
    try:
        local, unified = local_code.strip(), unified_code.strip()
        if not local:
            raise ValidationFailed(
                "未指定本地编码", problems=[Problem("local_code", "请从列表中选择要对码的本地编码")]
            )
        if not unified:
            raise ValidationFailed(
                "未填写统一项目编码",
                problems=[Problem("unified_code", f"请为 {local} 选择统一项目编码")],
            )
        change = c.masterdata_admin.put_code_map(
            user, CodeMapping(code, local, unified, local_name.strip()[:200])
        )
    except DomainError as exc:
        return _unmapped_page(request, c, user, code, error=exc, form=form)
    remapped = change.remapped
    item = c.catalog.get().items.get(unified)
    name = f"{item.name}（{unified}）" if item is not None else unified
    notice = f"已将本地编码 {local} 对码为 {name}，已保存的 {remapped} 条结果已重新对码。"
    return _unmapped_page(request, c, user, code, notice=notice)

"""接口凭据: the page where an institution manages how its interface systems authenticate
— the API keys of its interface accounts, and the CDS clients that sign their own JWT
(CDS Hooks 2.0 §Trusting CDS Clients, https://cds-hooks.hl7.org/2.0/#trusting-cds-clients)
— what ``huren accounts api-key …`` and ``huren accounts cds-client …`` do on the server.

Reach (``services.credentials``): the 机构管理员 their own institution; the operator any,
chosen on the page. Every change is recorded (``account_event``) with the signed-in
account as its actor; the page lists the institution's recent changes (变更记录), those
made from the server's command line included. A new key is shown once, in the answer to the form that made it
(``Cache-Control: no-store``), and never again.

Every form carries a token bound to the session (an HMAC of the session credential under
the platform's token key), checked before anything changes; a form a browser says came
from another site (``Sec-Fetch-Site``) is refused as well. The session cookie's
SameSite=Lax already keeps cross-site POSTs from carrying it; the token also covers
a same-site attacker (another application under the same registrable domain)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, Response

from huren.api.auth import SESSION_COOKIE, optional_principal
from huren.api.deps import container, templates
from huren.api.routes.auth import login_redirect
from huren.api.routes.page_errors import PageRoute
from huren.bootstrap import Container
from huren.domain.accounts import ROLE_LABELS, Principal, Role
from huren.domain.china_time import local_time
from huren.domain.errors import DomainError, Forbidden, Problem, ValidationFailed
from huren.services.accounts import AccountRecord, CreatedApiKey
from huren.services.cds_clients import MAX_JWKS, CdsClientRecord, jwks_key_ids
from huren.services.credentials import HISTORY_LIMIT, InterfaceCredentials

router = APIRouter(tags=["接口凭据"], route_class=PageRoute)

PAGE = "/integration/credentials"
PageUser = Annotated[Principal | None, Depends(optional_principal)]
Services = Annotated[Container, Depends(container)]
FormText = Annotated[str, Form()]
NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
# What a browser may say about where a form came from and still be let through
# (Fetch Metadata, https://www.w3.org/TR/fetch-metadata/): the page itself, or typed.
SAME_ORIGIN = ("same-origin", "none")


def _service(c: Container) -> InterfaceCredentials:
    return InterfaceCredentials(c.accounts, c.cds_clients)


# ---------------------------------------------------------------- CSRF
def csrf_token(c: Container, request: Request) -> str:
    """The form token of this session: an HMAC of its credential (the session cookie,
    else the Authorization header), so it changes with each login and cannot be made
    without the platform's key."""
    credential = request.cookies.get(SESSION_COOKIE) or request.headers.get("authorization", "")
    key = c.settings.token_signing_key.get_secret_value().encode()
    return hmac.new(key, b"huren-form\x00" + credential.encode(), hashlib.sha256).hexdigest()


def check_csrf(c: Container, request: Request, token: str) -> None:
    site = request.headers.get("sec-fetch-site", "")
    if site and site not in SAME_ORIGIN:
        raise Forbidden("拒绝来自其他站点的表单提交（CSRF 防护），请在本平台页面上操作")
    if not hmac.compare_digest(token.encode(), csrf_token(c, request).encode()):
        raise Forbidden("表单已失效或来源不明（CSRF 校验未通过），请刷新接口凭据页面后重试")


# ---------------------------------------------------------------- rendering
def _render(
    request: Request,
    c: Container,
    user: Principal,
    institution: str | None,
    *,
    status: int = 200,
    created: CreatedApiKey | None = None,
    notice: str = "",
    error: DomainError | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    shown = _service(c).page(user, institution)
    code = shown.code
    catalog = c.catalog.get()
    context = {
        "code": code or "",
        "institution_name": catalog.institutions[code].name
        if code in catalog.institutions
        else (code or ""),
        "institutions": sorted(catalog.institutions.values(), key=lambda i: i.code)
        if user.role is Role.OPERATOR
        else [],
        "accounts": shown.accounts,
        "history": shown.history,
        "history_limit": HISTORY_LIMIT,
        "local_seconds": partial(local_time, seconds=True),
        "created": created,
        "notice": notice,
        "error": error,
        "form": form or {},
    }
    return _page_for(request, c, user, "credentials/page.html", context, status=status)


def _page_for(
    request: Request,
    c: Container,
    user: Principal,
    name: str,
    context: dict[str, Any],
    *,
    status: int = 200,
) -> Response:
    base = {
        "user": user,
        "local": local_time,
        "csrf": csrf_token(c, request),
        "role_label": ROLE_LABELS[user.role],
    }
    return templates.TemplateResponse(
        request, name, base | context, status_code=status, headers=NO_STORE
    )


def _kids(record: CdsClientRecord) -> str:
    return "、".join(jwks_key_ids(record.jwks))


def _jwks_text(text: str, upload: UploadFile | None) -> str:
    """The JWK Set from the uploaded file when one was chosen, else as pasted."""
    if upload is not None and upload.filename:
        raw = upload.file.read(MAX_JWKS * 4 + 1)
        if len(raw) > MAX_JWKS * 4:
            raise ValidationFailed(
                "JWK Set 文件过大",
                problems=[Problem("jwks_file", f"JWK Set 文件不超过 {MAX_JWKS} 个字符")],
            )
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValidationFailed(
                "JWK Set 文件不是 UTF-8 文本",
                problems=[Problem("jwks_file", "JWK Set 文件应为 UTF-8 编码的 JSON")],
            ) from exc
    if not text.strip():
        raise ValidationFailed(
            "未提供 JWK Set",
            problems=[Problem("jwks", "请粘贴客户端的公钥 JWK Set（JSON），或上传其文件")],
        )
    return text


# ---------------------------------------------------------------- the forms
# What a change answers with on the page: a notice of what was done, or the key just
# made (shown once).
Outcome = str | CreatedApiKey
Change = Callable[[InterfaceCredentials, Principal], Outcome]
Refused = Callable[[InterfaceCredentials, Principal, DomainError], Response]


@dataclass(frozen=True, slots=True)
class Submitted:
    """A form of the page as posted: who posted it, its token, the institution it is for."""

    request: Request
    user: Principal | None
    c: Container
    csrf: str
    institution: str

    def change(
        self,
        change: Change,
        *,
        status: int = 200,
        form: dict[str, str] | None = None,
        refused: Refused | None = None,
    ) -> Response:
        """What every form does around its ``change``: a visitor not signed in is sent
        to log in; one who may not manage the institution is refused, then a form without
        this session's token, before anything changes. A change the service refuses
        shows the page again with why, and what was entered (``form``), or as
        ``refused`` shows it; one made shows the page with its outcome (``status``)."""
        request, user, c, institution = self.request, self.user, self.c, self.institution
        if user is None:
            return login_redirect(request)
        service = _service(c)
        service.institution(user, institution)
        check_csrf(c, request, self.csrf)
        try:
            outcome = change(service, user)
        except DomainError as exc:
            if refused is not None:
                return refused(service, user, exc)
            return _render(request, c, user, institution, status=exc.status, error=exc, form=form)
        if isinstance(outcome, str):
            return _render(request, c, user, institution, status=status, notice=outcome)
        return _render(request, c, user, institution, status=status, created=outcome)


def _submitted(
    request: Request, user: PageUser, c: Services, csrf: FormText = "", institution: FormText = ""
) -> Submitted:
    return Submitted(request, user, c, csrf, institution)


Posted = Annotated[Submitted, Depends(_submitted)]


@dataclass(frozen=True, slots=True)
class Opened:
    """A page opened: who opened it, the institution asked for (an operator's choice)."""

    request: Request
    user: Principal | None
    c: Container
    institution: str | None

    def show(self, page: Callable[[InterfaceCredentials, Principal], Response]) -> Response:
        """``page`` for a visitor signed in; one who is not is sent to log in."""
        if self.user is None:
            return login_redirect(self.request)
        return page(_service(self.c), self.user)

    def confirm(
        self,
        user: Principal,
        *,
        title: str,
        action: str,
        facts: list[tuple[str, str]],
        revoked: bool,
        consequence: str,
        issuer: str = "",
    ) -> Response:
        """The page that asks before a revocation: what would be revoked (``facts``),
        what follows (``consequence``), and the form that does it (posted to ``action``)."""
        context = {
            "code": self.institution or "",
            "title": title,
            "action": action,
            "issuer": issuer,
            "facts": facts,
            "revoked": revoked,
            "consequence": consequence,
        }
        return _page_for(self.request, self.c, user, "credentials/confirm.html", context)


def _opened(
    request: Request, user: PageUser, c: Services, institution: str | None = None
) -> Opened:
    return Opened(request, user, c, institution)


Viewer = Annotated[Opened, Depends(_opened)]


# ---------------------------------------------------------------- the page
@router.get(PAGE, response_class=HTMLResponse, include_in_schema=False)
def credentials_page(opened: Viewer) -> Response:
    return opened.show(lambda _, u: _render(opened.request, opened.c, u, opened.institution))


@router.post(f"{PAGE}/accounts", response_class=HTMLResponse, include_in_schema=False)
def create_account(
    posted: Posted, username: FormText = "", display_name: FormText = "", label: FormText = ""
) -> Response:
    """A new interface account with its first key (shown once)."""
    return posted.change(
        lambda s, u: s.create_account(u, posted.institution, username, display_name, label),
        status=201,
        form={"new_username": username, "new_display_name": display_name, "new_label": label},
    )


@router.post(f"{PAGE}/keys", response_class=HTMLResponse, include_in_schema=False)
def create_key(posted: Posted, username: FormText = "", label: FormText = "") -> Response:
    return posted.change(
        lambda s, u: s.create_key(u, posted.institution, username, label), status=201
    )


@router.get(f"{PAGE}/keys/{{prefix}}/revoke", response_class=HTMLResponse, include_in_schema=False)
def revoke_key_confirm(prefix: str, opened: Viewer) -> Response:
    def page(s: InterfaceCredentials, u: Principal) -> Response:
        key, owner = s.key(u, opened.institution, prefix)
        return opened.confirm(
            u,
            title=f"吊销 API 密钥 {key.prefix}",
            action=f"{PAGE}/keys/{key.prefix}/revoke",
            facts=[
                ("密钥前缀", key.prefix),
                ("接口系统账号", owner.username),
                ("用途说明", key.label or "—"),
                ("创建时间", local_time(key.created_at)),
            ],
            revoked=key.revoked_at is not None,
            consequence="吊销后，使用该密钥的接口系统的请求将立即被拒绝（401），且无法恢复；"
            "如需继续对接，请先创建新密钥并在接口引擎中替换。",
        )

    return opened.show(page)


@router.post(f"{PAGE}/keys/{{prefix}}/revoke", response_class=HTMLResponse, include_in_schema=False)
def revoke_key(prefix: str, posted: Posted) -> Response:
    def change(s: InterfaceCredentials, u: Principal) -> str:
        s.revoke_key(u, posted.institution, prefix)
        return f"已吊销 API 密钥 {prefix}"

    return posted.change(change)


@router.post(f"{PAGE}/cds-clients", response_class=HTMLResponse, include_in_schema=False)
def register_client(
    posted: Posted,
    username: FormText = "",
    issuer: FormText = "",
    jwks: FormText = "",
    jku: FormText = "",
    label: FormText = "",
    jwks_file: Annotated[UploadFile | None, File()] = None,
) -> Response:
    def change(s: InterfaceCredentials, u: Principal) -> str:
        text = _jwks_text(jwks, jwks_file)
        record = s.register_client(u, posted.institution, username, issuer, text, jku, label)
        return f"已登记 CDS 客户端 {record.issuer}（公钥 kid：{_kids(record)}）"

    form = {"username": username, "issuer": issuer, "jwks": jwks, "jku": jku, "label": label}
    return posted.change(change, status=201, form=form)


def _client_context(
    record: CdsClientRecord, owner: AccountRecord, institution: str | None
) -> dict[str, Any]:
    return {
        "code": institution or "",
        "client": record,
        "kids": jwks_key_ids(record.jwks),
        "owner": owner.username,
    }


@router.get(f"{PAGE}/cds-clients/keys", response_class=HTMLResponse, include_in_schema=False)
def client_keys_form(opened: Viewer, issuer: str = "") -> Response:
    def page(s: InterfaceCredentials, u: Principal) -> Response:
        record, owner = s.client(u, opened.institution, issuer)
        context = _client_context(record, owner, opened.institution) | {"form": {"jku": record.jku}}
        return _page_for(opened.request, opened.c, u, "credentials/set_keys.html", context)

    return opened.show(page)


@router.post(f"{PAGE}/cds-clients/keys", response_class=HTMLResponse, include_in_schema=False)
def set_client_keys(
    posted: Posted,
    issuer: FormText = "",
    jwks: FormText = "",
    jku: FormText = "",
    jwks_file: Annotated[UploadFile | None, File()] = None,
) -> Response:
    def change(s: InterfaceCredentials, u: Principal) -> str:
        record = s.set_client_keys(u, posted.institution, issuer, _jwks_text(jwks, jwks_file), jku)
        return f"已更换 CDS 客户端 {record.issuer} 的公钥（kid：{_kids(record)}）"

    def refused(s: InterfaceCredentials, u: Principal, exc: DomainError) -> Response:
        """The form again, with what was entered and why it was refused."""
        current, owner = s.client(u, posted.institution, issuer)
        context = _client_context(current, owner, posted.institution) | {
            "form": {"jku": jku, "jwks": jwks},
            "error": exc,
        }
        return _page_for(
            posted.request, posted.c, u, "credentials/set_keys.html", context, status=exc.status
        )

    return posted.change(change, refused=refused)


@router.get(f"{PAGE}/cds-clients/revoke", response_class=HTMLResponse, include_in_schema=False)
def revoke_client_confirm(opened: Viewer, issuer: str = "") -> Response:
    def page(s: InterfaceCredentials, u: Principal) -> Response:
        record, owner = s.client(u, opened.institution, issuer)
        return opened.confirm(
            u,
            title=f"吊销 CDS 客户端 {record.issuer}",
            action=f"{PAGE}/cds-clients/revoke",
            facts=[
                ("iss", record.issuer),
                ("接口系统账号", owner.username),
                ("公钥 kid", _kids(record) or "—"),
                ("用途说明", record.label or "—"),
                ("登记时间", local_time(record.created_at)),
            ],
            revoked=record.revoked_at is not None,
            consequence="吊销后，该客户端以自有 JWT 发起的 CDS Hooks 调用将立即被拒绝（401），"
            "且该 iss 不能再次登记；如需继续对接，请以新的 iss 重新登记。",
            issuer=record.issuer,
        )

    return opened.show(page)


@router.post(f"{PAGE}/cds-clients/revoke", response_class=HTMLResponse, include_in_schema=False)
def revoke_client(posted: Posted, issuer: FormText = "") -> Response:
    def change(s: InterfaceCredentials, u: Principal) -> str:
        s.revoke_client(u, posted.institution, issuer)
        return f"已吊销 CDS 客户端 {issuer}"

    return posted.change(change)
